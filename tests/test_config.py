"""Settings: every problem reported at once, secrets never printed, `python -m bot` exits 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from bot.app import provider_session
from bot.config import ConfigError, Secret, load_settings, mask_userinfo
from bot.services.edits import MAX_IMAGES_PER_EDIT

ROOT = Path(__file__).resolve().parents[1]
BASE = {"DISCORD_TOKEN": "tok-abcdef123456", "OPENAI_API_KEY": "sk-test-123456789"}


def test_minimal_settings_take_documented_defaults():
    s = load_settings(BASE)
    assert s.providers[0].name == "openai"
    assert s.providers[0].base_url == "https://api.openai.com/v1"
    assert s.credits_per_usd == 1000
    assert s.database_path == Path("data") / "retouch.sqlite3"
    assert s.discord_api_base is None


def test_the_database_is_the_sqlite_file_in_data_dir_unless_database_url_names_another():
    assert load_settings(BASE).database == str(Path("data") / "retouch.sqlite3")
    url = "postgresql://retouch:hunter2@db:5432/retouch"
    postgres = load_settings({**BASE, "DATABASE_URL": url})
    assert postgres.database == url
    assert "hunter2" not in repr(postgres.describe())
    other_file = "sqlite:////var/lib/retouch/bot.sqlite3"
    assert load_settings({**BASE, "DATABASE_URL": other_file}).database == other_file
    with pytest.raises(ConfigError) as info:
        load_settings({**BASE, "DATABASE_URL": "mysql://retouch:hunter2@db/retouch"})
    assert "DATABASE_URL must start with sqlite:/// or postgresql://" in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("url", ["sqlite:///", "sqlite:///  ", "sqlite:///:memory:"])
def test_a_sqlite_database_url_without_a_file_is_refused(url: str):
    """SQLite opens these as a temporary database: every credit and job would be lost at exit."""
    with pytest.raises(ConfigError) as info:
        load_settings({**BASE, "DATABASE_URL": url})
    [line] = info.value.problems
    assert line.startswith("DATABASE_URL names no SQLite file") and "sqlite:///path/to/" in line


def assert_refused_beyond_its_ceiling(key: str, too_big: str, allowed: str) -> None:
    """`key=too_big` is one settings problem naming the key and the range it allows."""
    with pytest.raises(ConfigError) as info:
        load_settings({**BASE, key: too_big})
    [line] = info.value.problems
    assert line.startswith(f"{key} must be at most") and f"allowed: {allowed}" in line


@pytest.mark.parametrize(
    ("key", "too_big", "allowed"),
    [
        ("JOB_HISTORY_DAYS", "1000000", "1 to 36500"),
        ("INPUT_RETENTION_HOURS", "100000000", "0 to 876000"),
        ("RESULT_RETENTION_HOURS", "876001", "1 to 876000"),
        ("GONE_ROUTE_RETRY_HOURS", "876001", "0 to 876000"),
        ("QUEUE_TIMEOUT_SECONDS", "1e12", "10 to 31536000"),
        ("JOB_TIMEOUT_SECONDS", "1e12", "10 to 31536000"),
        ("PROVIDER_CALL_TIMEOUT_SECONDS", "1e12", "1 to 31536000"),
        ("SHUTDOWN_GRACE_SECONDS", "1e12", "0 to 31536000"),
        ("MODERATION_TIMEOUT_SECONDS", "1e12", "0.5 to 31536000"),
        ("SHARD_LEASE_SECONDS", "1e12", "3 to 31536000"),
        ("JOB_LEASE_SECONDS", "1e12", "3 to 31536000"),
    ],
)
def test_a_duration_too_long_to_be_a_date_is_refused_naming_the_allowed_range(
    key: str, too_big: str, allowed: str
):
    """They passed, then overflowed a date at run time: the sweep, or every edit, failed."""
    assert_refused_beyond_its_ceiling(key, too_big, allowed)


@pytest.mark.parametrize(
    ("key", "too_big", "allowed"),
    [
        ("STARTING_CREDITS", "99999999999999999999", "0 to 10000000"),
        ("CREDITS_PER_USD", "99999999999999999999", "1 to 1000000"),
        ("SHARD_COUNT", "100000000", "0 to 10000"),
        ("MAX_CONCURRENT_JOBS", "100000000", "1 to 10000"),
        ("OPENAI_MAX_CONCURRENT", "100000000000000000000", "0 to 10000"),
    ],
)
def test_a_count_past_its_ceiling_is_refused_naming_the_allowed_range(key: str, too_big: str, allowed: str):
    """They passed: STARTING_CREDITS=99999999999999999999 then failed every new member's first command
    with an OverflowError into SQLite, and SHARD_COUNT=100000000 made a shard plan of 10**8 ids."""
    assert_refused_beyond_its_ceiling(key, too_big, allowed)


def test_starting_credits_take_the_ceiling_of_the_admin_command_that_sets_them():
    from cogs._admin_policy import MAX_CREDITS_PER_CHANGE

    assert (
        load_settings({**BASE, "STARTING_CREDITS": str(MAX_CREDITS_PER_CHANGE)}).starting_credits
        == 10_000_000
    )
    with pytest.raises(ConfigError):
        load_settings({**BASE, "STARTING_CREDITS": str(MAX_CREDITS_PER_CHANGE + 1)})


@pytest.mark.parametrize("fmt", ["jpeg", "JPEG"])
def test_a_transparent_default_background_with_a_jpeg_default_format_is_refused_naming_both(fmt: str):
    """It passed, and then every /edit left at its defaults was refused: JPEG has no transparency."""
    with pytest.raises(ConfigError) as info:
        load_settings({**BASE, "DEFAULT_BACKGROUND": "transparent", "DEFAULT_FORMAT": fmt})
    assert info.value.problems == [
        "DEFAULT_BACKGROUND=transparent needs DEFAULT_FORMAT=png or webp "
        "(got DEFAULT_FORMAT=jpeg, which has no transparency)"
    ]
    for ok in ("png", "webp"):
        assert (
            load_settings({**BASE, "DEFAULT_BACKGROUND": "transparent", "DEFAULT_FORMAT": ok}).default_format
            == ok
        )
    assert (
        load_settings({**BASE, "DEFAULT_BACKGROUND": "opaque", "DEFAULT_FORMAT": fmt}).default_format
        == "jpeg"
    )


def test_every_problem_is_listed_together():
    with pytest.raises(ConfigError) as info:
        load_settings({"CREDITS_PER_USD": "lots", "DEFAULT_QUALITY": "ultra", "DISCORD_API_BASE": "ftp://x"})
    text = str(info.value)
    for expected in (
        "DISCORD_TOKEN is not set",
        "set OPENAI_API_KEY",
        "CREDITS_PER_USD",
        "DEFAULT_QUALITY",
        "DISCORD_API_BASE",
    ):
        assert expected in text


@pytest.mark.parametrize(
    ("value", "ids"),
    [
        ("111111111111111111,222222222222222222", {111111111111111111, 222222222222222222}),
        ("111111111111111111 222222222222222222", {111111111111111111, 222222222222222222}),  # not one id
        (" 111111111111111111 , 222222222222222222 ", {111111111111111111, 222222222222222222}),
        ("-5, 0", None),
        ("²", None),  # a digit to Python, no Discord id
        ("12abc", None),
    ],
)
def test_id_lists_take_commas_or_spaces_and_refuse_what_is_no_discord_id(value: str, ids: set[int] | None):
    if ids is None:
        with pytest.raises(ConfigError, match="OWNER_IDS must be a comma-separated list"):
            load_settings({**BASE, "OWNER_IDS": value})
    else:
        assert load_settings({**BASE, "OWNER_IDS": value}).owner_ids == ids


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://proxyuser:hunter2pass@gateway.example.com/v1", "https://***@gateway.example.com/v1"),
        ("postgresql://u@h/db?password=hunter2pass", "postgresql://***@h/db?password=***"),
        ("postgresql://u:hunter2/pass@h/db", "postgresql://***@h/db"),  # a raw / in the password
        ("postgresql:/u:hunter2pass@h/db", "***@h/db"),  # a mistyped scheme
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
    ],
)
def test_a_url_is_shown_without_anything_that_may_be_a_credential(url: str, shown: str):
    assert mask_userinfo(url) == shown


def test_secrets_are_masked_in_every_printable_form():
    s = load_settings(BASE)
    printed = repr(s) + str(s.describe())
    assert "tok-abcdef123456" not in printed
    assert "sk-test-123456789" not in printed
    assert s.discord_token.reveal() == "tok-abcdef123456"
    assert repr(Secret("x")) == "Secret('***')"


def test_base_urls_are_configurable_for_proxies_and_fakes():
    s = load_settings(
        {**BASE, "DISCORD_API_BASE": "http://127.0.0.1:9/api/v10/", "OPENAI_BASE_URL": "http://p/v1"}
    )
    assert s.discord_api_base == "http://127.0.0.1:9/api/v10"
    assert s.providers[0].base_url == "http://p/v1"


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        (
            "OPENAI_BASE_URL",
            "https://proxyuser:hunter2pass@gateway.example.com/v1",
            "must not hold a user name or password",
        ),
        (
            "DISCORD_API_BASE",
            "https://bob@discord-proxy.example.com/api/v10",
            "must not hold a user name or password",
        ),
        ("OPENAI_BASE_URL", "https://gate:hunter2/pass@gateway.example.com/v1", "cannot be read"),
        ("OPENAI_BASE_URL", "https:///v1", "must name a host"),
        ("DISCORD_API_BASE", "http://", "must name a host"),
        ("DISCORD_API_BASE", "http://:8080/api/v10", "must name a host"),
    ],
)
def test_a_base_url_without_a_host_or_with_credentials_names_the_setting(key: str, value: str, problem: str):
    """Both used to pass: no host fails every call, and aiohttp refuses (ValueError) credentials in a URL
    beside the Authorization header every Discord and provider call sends."""
    with pytest.raises(ConfigError) as info:
        load_settings({**BASE, key: value})
    [line] = info.value.problems
    assert line.startswith(f"{key} {problem}")
    assert "hunter2" not in line and "proxyuser" not in line and "bob" not in line


def run_bot(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SYSTEMROOT")}
    clean["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("MAX_INPUT_MB", "1e308", "MAX_INPUT_MB must be at most 1024 (allowed: 0.1 to 1024; got '1e308')"),
        (
            "MAX_INPUT_MEGAPIXELS",
            "1e308",
            "MAX_INPUT_MEGAPIXELS must be at most 1000 (allowed: 0.01 to 1000; got '1e308')",
        ),
        ("OPENAI_BASE_URL", "https://[::1", "OPENAI_BASE_URL cannot be read: check its host"),
        ("DISCORD_API_BASE", "https://[bad/api/v10", "DISCORD_API_BASE cannot be read: check its host"),
        ("DISCORD_API_BASE", "http://proxy]:8080/api/v10", "DISCORD_API_BASE cannot be read: check its host"),
    ],
)
def test_a_value_that_overflows_or_cannot_be_split_is_one_problem_naming_the_setting(
    tmp_path: Path, key: str, value: str, problem: str
):
    """An OverflowError (a megabyte count times 2**20 past float's range) and a ValueError ("Invalid IPv6
    URL", an unbalanced bracket) stopped the start with a traceback instead of naming the setting."""
    with pytest.raises(ConfigError) as info:
        load_settings({**BASE, key: value})
    [line] = info.value.problems
    assert line.startswith(problem)
    proc = run_bot(["--check-config"], {**BASE, key: value}, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and f"  - {problem}" in proc.stderr


TOKEN_LIKE = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GaBcDe.SECRETsecretSECRETsecret12"
WEB = "must start with http:// or https://"
DATABASE = "must start with sqlite:/// or postgresql://"
NOT_SHOWN = "(got a value with no scheme, not shown)"


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("DISCORD_API_BASE", TOKEN_LIKE, f"DISCORD_API_BASE {WEB} {NOT_SHOWN}"),
        ("OPENAI_BASE_URL", "sk-proj-SECRETsecretSECRET", f"OPENAI_BASE_URL {WEB} {NOT_SHOWN}"),
        (
            "DATABASE_URL",
            "mysql://retouch:SECRETsecret@db/retouch",
            f"DATABASE_URL {DATABASE} (got 'mysql://…')",
        ),
        ("DATABASE_URL", TOKEN_LIKE, f"DATABASE_URL {DATABASE} {NOT_SHOWN}"),
    ],
)
def test_a_url_setting_without_its_scheme_is_refused_without_quoting_what_may_be_a_secret(
    tmp_path: Path, key: str, value: str, problem: str
):
    """A bot token typed into DISCORD_API_BASE was printed back in full ("got 'MTIz….SECRET…'"), into
    the console and the container's log: only a scheme, if any, is quoted."""
    with pytest.raises(ConfigError) as info:
        load_settings({**BASE, key: value})
    assert info.value.problems == [problem]
    proc = run_bot(["--check-config"], {**BASE, key: value}, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"  - {problem}" in proc.stderr and "SECRET" not in proc.stderr


def test_python_m_bot_without_settings_exits_2_naming_what_is_missing(tmp_path: Path):
    proc = run_bot([], {}, tmp_path)
    assert proc.returncode == 2
    assert "DISCORD_TOKEN is not set" in proc.stderr
    assert "OPENAI_API_KEY" in proc.stderr
    assert ".env.example" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_config_accepts_a_dotenv_file_and_never_logs_secrets(tmp_path: Path):
    (tmp_path / ".env").write_text("DISCORD_TOKEN=tok-abcdef123456\nOPENAI_API_KEY=sk-test-123456789\n")
    proc = run_bot(["--check-config"], {}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "settings OK" in proc.stderr
    assert "tok-abcdef123456" not in proc.stderr and "sk-test-123456789" not in proc.stderr


def test_a_gone_routes_retry_defaults_to_a_day_may_be_never_and_is_never_negative():
    assert load_settings(BASE).gone_route_retry_hours == 24.0
    assert load_settings({**BASE, "GONE_ROUTE_RETRY_HOURS": "0"}).gone_route_retry_hours == 0.0
    assert load_settings({**BASE, "GONE_ROUTE_RETRY_HOURS": "1.5"}).gone_route_retry_hours == 1.5
    for bad in ("-1", "soon"):
        with pytest.raises(ConfigError) as info:
            load_settings({**BASE, "GONE_ROUTE_RETRY_HOURS": bad})
        [line] = info.value.problems
        assert line.startswith("GONE_ROUTE_RETRY_HOURS")


def test_queue_settings_have_defaults_and_wavespeed_gets_its_entry_tier_limit():
    s = load_settings({**BASE, "WAVESPEED_API_KEY": "ws-key-123456", "ATLASCLOUD_API_KEY": "atlas-key-1234"})
    assert (s.max_concurrent_jobs, s.max_jobs_per_user, s.queue_timeout_seconds) == (64, 2, 900.0)
    assert (s.input_retention_hours, s.result_retention_hours) == (24.0, 72.0)
    assert s.provider_limits == {"wavespeed": 3}
    raised = load_settings({**BASE, "WAVESPEED_API_KEY": "k" * 12, "WAVESPEED_MAX_CONCURRENT": "100"})
    assert raised.provider_limits == {"wavespeed": 100}
    with pytest.raises(ConfigError) as info:
        load_settings({**BASE, "MAX_CONCURRENT_JOBS": "0", "OPENAI_MAX_CONCURRENT": "-1"})
    assert "MAX_CONCURRENT_JOBS" in str(info.value) and "OPENAI_MAX_CONCURRENT" in str(info.value)


@pytest.mark.parametrize("jobs", [1, 4, 500])
async def test_the_provider_pool_has_a_connection_for_every_call_running_jobs_can_make(jobs: int):
    """aiohttp's default pool (100) would make provider calls queue behind each other beyond 100."""
    settings = load_settings({**BASE, "MAX_CONCURRENT_JOBS": str(jobs)})
    async with provider_session(settings) as session:
        assert isinstance(session.connector, aiohttp.TCPConnector)
        assert session.connector.limit >= jobs * MAX_IMAGES_PER_EDIT
        assert session.connector.limit_per_host == 0


def test_a_dotenv_file_that_is_not_utf8_is_one_settings_problem(tmp_path: Path):
    # Saved by an editor in Latin-1: the é of a comment was a UnicodeDecodeError traceback and exit 1.
    dotenv = "DISCORD_TOKEN=tok-abcdef123456\n# Réglages du café\nOPENAI_API_KEY=sk-test-123456789\n"
    (tmp_path / ".env").write_bytes(dotenv.encode("latin-1"))
    proc = run_bot(["--check-config"], {}, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "  - .env is not UTF-8 (line 2, byte 0xe9): save it as UTF-8" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("bad", "line"),
    [
        ("MONTHLY_BUDGET_USD 500", 4),  # no =
        ("  MAX_INPUT_MB: 20", 4),
        ('MONTHLY_BUDGET_USD="500', 4),  # an unterminated quote, the file's last statement
    ],
)
def test_a_dotenv_line_that_cannot_be_read_is_a_settings_problem(tmp_path: Path, bad: str, line: int):
    """python-dotenv skipped it with a warning: the bot started on that setting's default ($20 a month)."""
    dotenv = f"DISCORD_TOKEN=tok-abcdef123456\nOPENAI_API_KEY=sk-test-123456789\n\n{bad}\n"
    (tmp_path / ".env").write_text(dotenv)
    proc = run_bot(["--check-config"], {}, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"  - .env line {line} cannot be read: write it as NAME=value" in proc.stderr
    assert "Traceback" not in proc.stderr and "python-dotenv" not in proc.stderr


def test_a_misspelt_setting_in_dotenv_is_warned_about_with_the_one_meant(tmp_path: Path):
    """MONTHLY_BUDGET for MONTHLY_BUDGET_USD was ignored without a word: the bot ran on the default
    budget. Compose's and its postgres service's own names are not Retouch's to warn about."""
    (tmp_path / ".env").write_text(
        "DISCORD_TOKEN=tok-abcdef123456\nOPENAI_API_KEY=sk-test-123456789\nMONTHLY_BUDGET=5\n"
        "POSTGRES_PASSWORD=pw-123456\nCOMPOSE_PROJECT_NAME=retouch\nFROBNICATE=1\n"
    )
    proc = run_bot(["--check-config"], {}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    unread = [line for line in proc.stderr.splitlines() if "which is not a Retouch setting" in line]
    assert len(unread) == 2, unread
    assert (
        ".env sets MONTHLY_BUDGET, which is not a Retouch setting (did you mean MONTHLY_BUDGET_USD?)"
        in unread[0]
    )
    assert unread[1].endswith(".env sets FROBNICATE, which is not a Retouch setting")


def test_a_misspelt_setting_in_the_environment_is_warned_about_with_the_one_meant(tmp_path: Path):
    """Docker Compose passes `.env` as environment variables (env_file) and the image holds no `.env`
    file: MONTHLY_BUDGET=100 was ignored without a word. The environment's other names (the image's,
    the host's, a shell's) are not Retouch's to warn about, nor is a near miss of a setting that is set."""
    others = {
        "HOSTNAME": "3f2a9c1d",
        "PYTHON_VERSION": "3.11.10",
        "GPG_KEY": "A035C8C19219BA821ECEA86B64E628F8D684696D",
        "PIP_NO_CACHE_DIR": "1",
        "DATA_DIR": "/tmp/retouch-data",
        "DATABASE_PORT": "5432",
        "METRICS_SERVICE_HOST": "10.0.0.7",
        "OPENAI_API_BASE": "https://api.openai.com/v1",
        "OPENAI_ORG_ID": "org-123",
    }
    env = {**BASE, **others, "MONTHLY_BUDGET": "100", "STARTING_CREDITS": "50", "STARTING_CREDIT": "5"}
    assert load_settings(env).unread_settings == (
        ("the environment", "MONTHLY_BUDGET", "MONTHLY_BUDGET_USD"),
    )
    proc = run_bot(["--check-config"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    unread = [line for line in proc.stderr.splitlines() if "which is not a Retouch setting" in line]
    assert len(unread) == 1, unread
    assert unread[0].endswith(
        "the environment sets MONTHLY_BUDGET, which is not a Retouch setting "
        "(did you mean MONTHLY_BUDGET_USD?)"
    )


def test_max_input_megapixels_over_pillows_bomb_limit_is_lowered_to_it_with_a_warning(tmp_path: Path):
    """Pillow refuses more than ~89.5 MP whatever the setting says: at 120 a member's 100 MP photo was
    refused "over the limit of 120 megapixels". The setting is lowered to what applies, and said."""
    warning = (
        "MAX_INPUT_MEGAPIXELS=120 is over Pillow's decompression-bomb limit: "
        "images are limited to 89.5 megapixels"
    )
    over = load_settings({**BASE, "MAX_INPUT_MEGAPIXELS": "120"})
    assert (over.max_input_pixels, over.capped_settings) == (Image.MAX_IMAGE_PIXELS, (warning,))
    under = load_settings({**BASE, "MAX_INPUT_MEGAPIXELS": "89"})
    assert (under.max_input_pixels, under.capped_settings) == (89_000_000, ())
    proc = run_bot(["--check-config"], {**BASE, "MAX_INPUT_MEGAPIXELS": "120"}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert any(line.endswith(warning) for line in proc.stderr.splitlines()), proc.stderr


def test_max_input_mb_over_the_providers_limit_is_lowered_under_it_with_a_warning(tmp_path: Path):
    """OpenAI refuses an input of 50 MB or more: at MAX_INPUT_MB=100 a 60 MB upload was queued, then
    refused by every route. The setting is lowered under the providers' limit, and said."""
    warning = "MAX_INPUT_MB=100 is over the providers' upload limit: uploads are limited to under 50 MB"
    over = load_settings({**BASE, "MAX_INPUT_MB": "100"})
    assert (over.max_input_bytes, over.capped_settings) == (50 * 1024 * 1024 - 1, (warning,))
    under = load_settings({**BASE, "MAX_INPUT_MB": "49"})
    assert (under.max_input_bytes, under.capped_settings) == (49 * 1024 * 1024, ())
    both = load_settings({**BASE, "MAX_INPUT_MB": "100", "MAX_INPUT_MEGAPIXELS": "120"})
    assert len(both.capped_settings) == 2
    proc = run_bot(["--check-config"], {**BASE, "MAX_INPUT_MB": "100"}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert any(line.endswith(warning) for line in proc.stderr.splitlines()), proc.stderr


def test_every_setting_env_example_offers_is_one_retouch_reads(tmp_path: Path):
    """Each name of `.env.example`, set (empty: its default) in `.env`, is one Retouch reads."""
    example = (ROOT / ".env.example").read_text()
    names = sorted(set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", example, re.M)))
    assert len(names) > 40
    given = {"DISCORD_TOKEN": "tok-abcdef123456", "OPENAI_API_KEY": "sk-test-123456789"}
    lines = [f"{n}={given.get(n, '')}" for n in names]
    (tmp_path / ".env").write_text("\n".join(lines) + "\n")
    proc = run_bot(["--check-config"], {}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "not a Retouch setting" not in proc.stderr


def test_check_config_says_when_default_model_names_no_catalog_model(tmp_path: Path):
    (tmp_path / ".env").write_text(
        "DISCORD_TOKEN=tok-abcdef123456\nOPENAI_API_KEY=sk-test-123456789\nDEFAULT_MODEL=gpt-image-2.6-flair\n"
    )
    proc = run_bot(["--check-config"], {}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "DEFAULT_MODEL=gpt-image-2.6-flair is not a model of the catalog" in proc.stderr
    assert "default model: gpt-image-2.6-flare" in proc.stderr  # what members get instead


@pytest.mark.parametrize(
    ("catalog", "problem"),
    [
        ("# prix en €\n".encode("cp1252"), "it is not UTF-8 text"),
        (
            b'[models.m]\nqualities = ["low"]\nprice.low = 5\nroutes = [{ provider = "openai" }]\n',
            "price.low",
        ),
        (
            b'[models.m]\nqualities = ["low"]\nprice.low = { square = 0.01, other = 0.01 }\ntokens = 5\n'
            b'routes = [{ provider = "openai" }]\n',
            "models.m.tokens: must be a table",
        ),
        # A TOML date and time: --check-config once died on it comparing it with today's date.
        (
            b'[models.m]\nqualities = ["low"]\nprice.low = { square = 0.01, other = 0.01 }\n'
            b'shutdown = 2027-02-10T00:00:00Z\nroutes = [{ provider = "openai" }]\n',
            "models.m.shutdown: must be a date (YYYY-MM-DD, no time of day)",
        ),
    ],
    ids=["not-utf8", "price-a-number", "tokens-a-number", "shutdown-a-datetime"],
)
def test_check_config_lists_a_broken_catalog_file_and_exits_2(tmp_path: Path, catalog: bytes, problem: str):
    (tmp_path / "catalog.toml").write_bytes(catalog)
    proc = run_bot(["--check-config"], {**BASE, "CATALOG_PATH": str(tmp_path / "catalog.toml")}, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert problem in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_config_masks_passwords_in_base_urls(tmp_path: Path):
    (tmp_path / ".env").write_text(
        "DISCORD_TOKEN=tok-abcdef123456\nOPENAI_API_KEY=sk-test-123456789\n"
        "OPENAI_BASE_URL=https://proxyuser:hunter2pass@gateway.example.com/v1\n"
        "DISCORD_API_BASE=https://bob:swordfish@discord-proxy.example.com/api/v10\n"
    )
    proc = run_bot(["--check-config"], {}, tmp_path)
    # Refused (a user:password@ breaks every call), and the refusal shows them masked.
    assert proc.returncode == 2, proc.stderr
    assert "hunter2pass" not in proc.stderr and "proxyuser" not in proc.stderr
    assert "swordfish" not in proc.stderr
    assert "https://***@gateway.example.com/v1" in proc.stderr
    assert "https://***@discord-proxy.example.com/api/v10" in proc.stderr


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e999"])
@pytest.mark.parametrize("key", ["JOB_TIMEOUT_SECONDS", "SHUTDOWN_GRACE_SECONDS", "MAX_INPUT_MB"])
def test_numeric_settings_refuse_nan_and_infinity(key: str, value: str):
    with pytest.raises(ConfigError) as info:
        load_settings({**BASE, key: value})
    assert any(key in problem and "finite" in problem for problem in info.value.problems)


def test_the_install_salt_is_private_and_stable(tmp_path: Path):
    from bot.app import SALT_FILE, load_or_create_salt

    first = load_or_create_salt(tmp_path / "data")
    path = tmp_path / "data" / SALT_FILE
    assert len(first) == 32 and path.read_bytes() == first
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_salt(tmp_path / "data") == first
    assert [p.name for p in path.parent.iterdir()] == [SALT_FILE]  # no temporary file left behind


def test_the_safety_check_settings_default_to_standard_and_are_validated():
    s = load_settings(BASE)
    assert (s.moderation, s.moderation_timeout_seconds) == ("standard", 5.0)
    s = load_settings({**BASE, "MODERATION": "Strict", "MODERATION_TIMEOUT_SECONDS": "2.5"})
    assert (s.moderation, s.moderation_timeout_seconds) == ("strict", 2.5)
    with pytest.raises(ConfigError) as info:
        load_settings({**BASE, "MODERATION": "paranoid", "MODERATION_TIMEOUT_SECONDS": "0"})
    assert "MODERATION must be one of off, standard, strict" in str(info.value)
    assert "MODERATION_TIMEOUT_SECONDS must be at least 0.5" in str(info.value)


@pytest.mark.parametrize(
    ("keys", "line"),
    [
        ({"ATLASCLOUD_API_KEY": "atlas-0123456789"}, "default model: gpt-image-2 (sold here by atlascloud)"),
        (
            {"OPENAI_API_KEY": "sk-test-0123456789"},
            "default model: gpt-image-2.6-flare (sold here by openai)",
        ),
    ],
)
def test_check_config_names_the_default_model_the_keys_can_buy(
    tmp_path: Path, keys: dict[str, str], line: str
):
    proc = run_bot(["--check-config"], {"DISCORD_TOKEN": "tok-abcdef123456", **keys}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert line in proc.stderr


def test_shard_settings_are_read_and_checked():
    settings = load_settings({**BASE, "SHARD_COUNT": "16", "SHARD_LEASE_SECONDS": "12.5"})
    assert (settings.shard_count, settings.shard_lease_seconds) == (16, 12.5)
    with pytest.raises(ConfigError) as info:
        load_settings({**BASE, "SHARD_COUNT": "-1", "SHARD_LEASE_SECONDS": "1"})
    assert [p.split()[0] for p in info.value.problems] == ["SHARD_COUNT", "SHARD_LEASE_SECONDS"]
