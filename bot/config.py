"""Settings: read once from the environment (and an optional `.env`), validated in one pass.

Every problem is collected so an admin sees the whole list at once instead of fixing one setting per
restart. Secrets are wrapped in `Secret` so they never appear in reprs, logs or error messages.

Why one module of ~730 lines: each setting is declared once (its `Settings` field and default), read
once (`load_settings`) and checked with the rules it shares with the others (bounds, URLs, secrets,
near-miss names); split, a new setting would be written in three places that must agree, and the tests
that hold README and `.env.example` to it read this one module.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from PIL import Image

from bot.domain.credits import MAX_CREDITS_PER_CHANGE
from bot.domain.options import BACKGROUNDS, OUTPUT_FORMATS, QUALITIES, SIZES, TRANSPARENT_FORMATS
from bot.observability.healthcheck import heartbeat_file

if TYPE_CHECKING:
    from dotenv.parser import Binding

ENV_EXAMPLE_HINT = "See .env.example for every setting with an explanation."
# Provider name -> (environment prefix, default base URL). Order = the default routing order's
# tie-break for providers PROVIDER_ORDER does not name (the catalog lists routes in this order too).
PROVIDER_ENV = {
    "openai": ("OPENAI", "https://api.openai.com/v1"),
    "atlascloud": ("ATLASCLOUD", "https://api.atlascloud.ai/api/v1"),
    "wavespeed": ("WAVESPEED", "https://api.wavespeed.ai/api/v3"),
    "segmind": ("SEGMIND", "https://api.segmind.com/v1"),
    "oneminai": ("ONEMINAI", "https://api.1min.ai/api"),
}
KNOWN_PROVIDERS = tuple(PROVIDER_ENV)
SEGMIND_UPLOAD_URL = "https://workflows-api.segmind.com/upload-asset"
# The hard ceiling on a provider's calls in flight unless `<PREFIX>_MAX_CONCURRENT` says otherwise (0 =
# MAX_CONCURRENT_JOBS); the limit in force adapts below it (bot/concurrency.py). WaveSpeed's entry tier
# (every new account) runs 3 tasks at once and queues a 4th on its side instead of answering 429, so
# no refusal would ever tell the adaptive limit to stay at 3.
DEFAULT_PROVIDER_CONCURRENCY = {"wavespeed": 3}
MAX_PORT = 65535
# Ceilings on the durations that become dates (now ± the setting): far above any sensible value, and far
# below the ones that overflow a date (JOB_HISTORY_DAYS=1000000 reaches before year 1; the sweep and
# every edit then failed at run time). Documented in .env.example and the README.
MAX_DAYS = 36_500  # 100 years
MAX_HOURS = 876_000  # 100 years
MAX_SECONDS = 31_536_000  # one year
# Ceilings on the input limits, far above what is honoured (both are lowered at load to the providers'
# and Pillow's limits, with a warning) and far below the values whose bytes or pixels overflow
# (MAX_INPUT_MB=1e308 stopped the start with an OverflowError traceback). 1024 MB is above any Discord
# attachment (Nitro's 500 MB).
MAX_INPUT_MB_CEILING = 1024
MAX_INPUT_MEGAPIXELS_CEILING = 1000
# Ceilings on counts, far above any real use: SQLite's INTEGER stops at 2**63 - 1 (STARTING_CREDITS=
# 99999999999999999999 failed every new member's first command with an OverflowError), and a shard plan
# and a provider's fleet slots are lists as long as the count (SHARD_COUNT=100000000 took gigabytes).
# STARTING_CREDITS takes MAX_CREDITS_PER_CHANGE, the same ceiling as `/admin policy allowance starting`.
MAX_CREDITS_PER_USD = 1_000_000  # 1 credit = $0.000001
# Discord asks for a shard per 2,500 servers at most, and its largest bots run a few thousand shards.
MAX_SHARD_COUNT = 10_000
MAX_CONCURRENCY = 10_000  # MAX_CONCURRENT_JOBS and <PREFIX>_MAX_CONCURRENT
LOG_FORMATS = ("plain", "json")  # LOG_FORMAT: lines for people, or one JSON object per line
# The operator's monthly provider spend across every server unless MONTHLY_BUDGET_USD says otherwise:
# a bot started with its defaults cannot run up an open-ended bill.
DEFAULT_MONTHLY_BUDGET_USD = Decimal("20")
# DATABASE_URL's accepted forms (bot/storage/connection.py opens them).
DATABASE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")


class ConfigError(Exception):
    """Raised with every problem found, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Secret(str):
    """A string that hides itself when printed."""

    def __repr__(self) -> str:
        return "Secret('***')" if self else "Secret('')"

    def reveal(self) -> str:
        return str.__str__(self)


@dataclass(frozen=True)
class ProviderSettings:
    """One configured provider: its key (masked in every repr), base URL and call limits."""

    name: str
    api_key: Secret
    base_url: str
    upload_url: str | None = None  # Segmind: its asset upload lives on another host
    sync_mode: bool = False  # WaveSpeed: wait for the result in the submit call
    max_concurrent: int = 0  # hard ceiling on calls in flight (0 = MAX_CONCURRENT_JOBS)


@dataclass(frozen=True)
class Settings:
    """Every setting, read once from the environment or `.env` by `load_settings`."""

    discord_token: Secret
    discord_api_base: str | None = None
    data_dir: Path = Path("data")
    # None: the SQLite file DATA_DIR/retouch.sqlite3. `sqlite:///path` or `postgresql://…` (bot/storage/).
    database_url: str | None = None
    providers: tuple[ProviderSettings, ...] = ()
    provider_order: tuple[str, ...] = ()  # routing preference; unnamed providers follow
    # Hours after a "model gone" answer retired a route that it is tried again (bot.lifecycle); 0 = never.
    gone_route_retry_hours: float = 24.0
    # None: the first catalog model that is live and sold by a configured provider (bot.lifecycle).
    default_model: str | None = None
    default_quality: str = "auto"
    default_size: str = "auto"
    default_background: str = "auto"
    default_format: str = "png"
    starting_credits: int = 500
    credits_per_usd: int = 1000
    dev_guild_id: int | None = None
    log_level: str = "INFO"
    shutdown_grace_seconds: float = 60.0
    catalog_path: Path | None = None
    thread_results: bool = False
    max_input_bytes: int = 20 * 1024 * 1024
    max_input_pixels: int = 40_000_000
    job_timeout_seconds: float = 300.0
    provider_call_timeout_seconds: float = 240.0
    owner_ids: frozenset[int] = field(default_factory=frozenset)
    # When set, only these users (and OWNER_IDS) may change credits and policy, even server admins.
    admin_user_ids: frozenset[int] = field(default_factory=frozenset)
    metrics_port: int = 8080  # 0 disables the /healthz + /metrics server
    metrics_host: str = "127.0.0.1"
    log_format: str = "plain"
    audit_channel_id: int | None = None
    # Durable jobs (bot/jobs/): the queue's limits, its patience, and how long files are kept.
    max_concurrent_jobs: int = 64
    max_jobs_per_user: int = 2
    queue_timeout_seconds: float = 900.0
    input_retention_hours: float = 24.0
    result_retention_hours: float = 72.0
    # The operator's money (bot/services/access.py, bot/services/policy.py): where the bot serves and
    # what it may spend.
    allowed_guild_ids: frozenset[int] = field(default_factory=frozenset)
    allow_dms: bool = False
    monthly_budget_usd: Decimal = DEFAULT_MONTHLY_BUDGET_USD  # 0 = no cap
    commands_per_minute: int = 10  # per member; 0 = no limit
    max_mask_previews: int = 3  # open /mask pickers and previews per member
    job_history_days: float = 90.0
    # The free safety check before paid calls (bot/services/moderation.py): servers may override the level.
    moderation: str = "standard"
    moderation_timeout_seconds: float = 5.0
    # Discord gateway shards (bot/sharding.py): 0 = Discord's recommended count. With PostgreSQL they are
    # shared out among the running processes by leases of this length; with SQLite one process runs all.
    shard_count: int = 0
    shard_lease_seconds: float = 30.0
    # With PostgreSQL, the process that runs a job holds it by a lease of this length, renewed every third
    # of it (bot/jobs/leases.py); a dead process's jobs are taken over by the others when theirs run out.
    job_lease_seconds: float = 30.0
    # Names Retouch never reads (a misspelt setting), each as (where: ".env" or "the environment", name,
    # the setting it may have meant or "" when none is close): warned about at start.
    unread_settings: tuple[tuple[str, str, str], ...] = ()
    # Settings lowered at load to what Retouch can honour, one line each saying so: warned about at start.
    capped_settings: tuple[str, ...] = ()

    @property
    def provider_limits(self) -> dict[str, int]:
        """{provider: calls it may have in flight} for providers with a limit."""
        return {p.name: p.max_concurrent for p in self.providers if p.max_concurrent > 0}

    @property
    def database_path(self) -> Path:
        """The SQLite file used when DATABASE_URL does not name another database."""
        return self.data_dir / "retouch.sqlite3"

    @property
    def database(self) -> str:
        """What `Storage.open` opens: DATABASE_URL, else the SQLite file in DATA_DIR."""
        return self.database_url or str(self.database_path)

    @property
    def heartbeat_path(self) -> Path:
        return heartbeat_file(self.data_dir)

    def describe(self) -> dict[str, Any]:
        """Settings as printable values, secrets masked."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Secret):
                value = "***" if value else ""
            elif isinstance(value, str) and "://" in value:
                value = mask_userinfo(value)
            elif f.name == "providers":
                value = [
                    {"name": p.name, "base_url": mask_userinfo(p.base_url), "api_key": "***"}
                    | ({"upload_url": mask_userinfo(p.upload_url)} if p.upload_url else {})
                    | ({"sync_mode": True} if p.sync_mode else {})
                    for p in value
                ]
            out[f.name] = value
        return out


# libpq's query parameters that carry a secret (`postgresql://host/db?password=…`).
_SECRET_PARAMS = re.compile(r"(?i)\b((?:ssl)?password|passfile|sslkey)=[^&#]*")


def mask_userinfo(url: str) -> str:
    """`url` with anything that may be a credential hidden: everything before its last `@` (a
    `user:password@`, also one whose password holds `/`, `?` or `#`, or one with a mistyped scheme)
    becomes `***@`, and a `password=` parameter's value `***`. A proxy, gateway or database URL can
    carry either; hiding a little more than needed is the safe side."""
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return _SECRET_PARAMS.sub(r"\1=***", head + sep + rest)


def database_passwords(url: str | None) -> list[str]:
    """The password a PostgreSQL URL carries (in its user info or as `?password=`), for the log filter:
    as written in the URL and decoded (a password with `@` or `/` is written percent-encoded, and a
    logged URL would show it so)."""
    if not url or not url.startswith(("postgresql://", "postgres://")):
        return []
    try:
        parts = urlsplit(url)
        if parts.password:
            forms = (parts.password, unquote(parts.password))
        else:
            raw = (p.split("=", 1)[1] for p in parts.query.split("&") if p.startswith("password="))
            forms = (next(raw, ""), dict(parse_qsl(parts.query)).get("password", ""))
    except ValueError:
        return []
    return [p for p in dict.fromkeys(forms) if p]


# What a refusal of a URL setting's scheme quotes of its value: the scheme alone (`'ftp://…'`). A value
# without an accepted scheme may be a secret typed into the wrong setting (a bot token in
# DISCORD_API_BASE), and the refusal is printed to the console and the container's log.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,19}://")


def _scheme_shown(value: str) -> str:
    """`value` as a refusal of its scheme may show it: its scheme only, or that it has none."""
    match = _SCHEME.match(value)
    return repr(match[0] + "…") if match else "a value with no scheme, not shown"


def _readable_url(url: str) -> bool:
    """Whether a server URL splits into its parts: a `/`, `?` or `#` left raw in a password ends the
    host part early, and the password is then read as a port (which a driver reports, quoting it)."""
    try:
        _ = urlsplit(url).port  # raises ValueError for a port that is not a number
    except ValueError:
        return False
    return True


def _base_url_problem(url: str) -> str | None:
    """What is wrong with a server base URL (None: nothing), in words that end in what to do."""
    if not url.startswith(("http://", "https://")):
        return "must start with http:// or https://"
    try:
        netloc = urlsplit(url).netloc
    except ValueError:  # an unbalanced [ or ] ("Invalid IPv6 URL")
        return "cannot be read: check its host (an IPv6 address is written in [ ]) and port"
    if "@" in netloc:
        # aiohttp refuses (ValueError) credentials in a URL beside an Authorization header, which the
        # Discord and provider calls all send: every call would fail, not just start-up.
        return "must not hold a user name or password: remove the user:password@ part"
    if not _readable_url(url):
        return "cannot be read: check its host and port (a port is a number)"
    if not urlsplit(url).hostname:
        return "must name a host, as in https://api.example.com/v1"
    return None


def _temporary_sqlite(url: str) -> bool:
    """Whether a `sqlite:///…` URL names no file (SQLite then keeps the database in memory)."""
    path = url[len("sqlite:///") :].strip()
    return path in ("", ":memory:")


class _Reader:
    """Pulls typed values out of an env mapping, recording problems instead of raising."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []
        self.asked: set[str] = set()  # every name read (`unread_names`)

    def raw(self, key: str) -> str | None:
        self.asked.add(key)
        value = self.env.get(key)
        if value is None or not value.strip():
            return None
        return value.strip()

    def text(self, key: str, default: str) -> str:
        return self.raw(key) or default

    def choice(self, key: str, default: str, allowed: tuple[str, ...]) -> str:
        value = self.text(key, default).lower()
        if value not in allowed:
            self.problems.append(f"{key} must be one of {', '.join(allowed)} (got {value!r})")
            return default
        return value

    def number(
        self, key: str, default: Any, kind: Callable[[str], Any], minimum: float, maximum: float | None = None
    ) -> Any:
        value = self.raw(key)
        if value is None:
            return default
        try:
            parsed = kind(value)
        except ValueError:
            self.problems.append(f"{key} must be a number (got {value!r})")
            return default
        if not math.isfinite(parsed):  # NaN passes every comparison below, and inf never ends a wait
            self.problems.append(f"{key} must be a finite number (got {value!r})")
            return default
        if parsed < minimum:
            self.problems.append(f"{key} must be at least {minimum} (got {value!r})")
            return default
        if maximum is not None and parsed > maximum:
            self.problems.append(
                f"{key} must be at most {maximum} (allowed: {minimum} to {maximum}; got {value!r})"
            )
            return default
        return parsed

    def flag(self, key: str, default: bool) -> bool:
        value = self.raw(key)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        self.problems.append(f"{key} must be on or off (got {value!r})")
        return default

    def url(self, key: str, default: str | None) -> str | None:
        value = self.raw(key) or default
        if value is None:
            return None
        problem = _base_url_problem(value)
        if problem is not None:
            web = value.startswith(("http://", "https://"))
            shown = repr(mask_userinfo(value)) if web else _scheme_shown(value)
            self.problems.append(f"{key} {problem} (got {shown})")
            return default
        return value.rstrip("/")

    def id_list(self, key: str, what: str = "user ids") -> frozenset[int]:
        value = self.raw(key)
        if value is None:
            return frozenset()
        # Commas or spaces between ids: "1 2" must not run together into one id nobody has.
        parts = [part for part in re.split(r"[,\s]+", value) if part]
        if not all(part.isascii() and part.isdigit() and int(part) > 0 for part in parts):
            self.problems.append(f"{key} must be a comma-separated list of Discord {what}")
            return frozenset()
        return frozenset(int(part) for part in parts)

    def database_url(self, key: str) -> str | None:
        """A SQLite (`sqlite:///path`) or PostgreSQL (`postgresql://…`) URL; None when unset."""
        value = self.raw(key)
        if value is not None and not value.startswith(DATABASE_SCHEMES):
            self.problems.append(
                f"{key} must start with sqlite:/// or postgresql:// (got {_scheme_shown(value)})"
            )
            return None
        if value is not None and value.startswith("sqlite:///") and _temporary_sqlite(value):
            # SQLite opens "" and ":memory:" as a database that vanishes with the process: every
            # balance, ledger entry and job would be lost at each restart.
            self.problems.append(
                f"{key} names no SQLite file (got {value!r}): write sqlite:///path/to/retouch.sqlite3, "
                "or unset it to use DATA_DIR/retouch.sqlite3"
            )
            return None
        if value is not None and not value.startswith("sqlite:") and not _readable_url(value):
            self.problems.append(
                f"{key} cannot be read (got {mask_userinfo(value)!r}): percent-encode the characters "
                "/ ? # @ : in its user name and password (/ as %2F, ? as %3F, # as %23, @ as %40, : as %3A)"
            )
            return None
        return value

    def usd(self, key: str, default: Decimal) -> Decimal:
        """A non-negative dollar amount, kept exact (a Decimal, never a float)."""
        value = self.raw(key)
        if value is None:
            return default
        try:
            parsed = Decimal(value)
        except InvalidOperation:
            parsed = Decimal(-1)
        if not parsed.is_finite() or parsed < 0:
            self.problems.append(f"{key} must be an amount in US dollars, 0 or more (got {value!r})")
            return default
        return parsed


def _read_providers(r: _Reader) -> tuple[ProviderSettings, ...]:
    """Every provider whose API key is set, with its base URL (and vendor extras)."""
    providers = []
    for name, (prefix, default_base) in PROVIDER_ENV.items():
        key = r.raw(f"{prefix}_API_KEY")
        if not key:
            continue
        base = r.url(f"{prefix}_BASE_URL", default_base) or default_base
        upload_url = r.url("SEGMIND_UPLOAD_URL", SEGMIND_UPLOAD_URL) if name == "segmind" else None
        sync_mode = r.flag("WAVESPEED_SYNC_MODE", False) if name == "wavespeed" else False
        limit = r.number(
            f"{prefix}_MAX_CONCURRENT", DEFAULT_PROVIDER_CONCURRENCY.get(name, 0), int, 0, MAX_CONCURRENCY
        )
        providers.append(
            ProviderSettings(
                name, Secret(key), base, upload_url=upload_url, sync_mode=sync_mode, max_concurrent=limit
            )
        )
    if not providers:
        keys = [f"{prefix}_API_KEY" for prefix, _ in PROVIDER_ENV.values()]
        r.problems.append(f"no provider is configured: set {', '.join(keys[:-1])} or {keys[-1]}")
    return tuple(providers)


def _read_provider_order(r: _Reader) -> tuple[str, ...]:
    """PROVIDER_ORDER: comma-separated provider names, most preferred first (typos are errors)."""
    raw = r.raw("PROVIDER_ORDER")
    if raw is None:
        return ()
    names = [part.strip().lower() for part in raw.split(",") if part.strip()]
    unknown = [n for n in names if n not in KNOWN_PROVIDERS]
    if unknown:
        r.problems.append(
            f"PROVIDER_ORDER names unknown provider(s) {', '.join(unknown)} "
            f"(known: {', '.join(KNOWN_PROVIDERS)})"
        )
    return tuple(dict.fromkeys(n for n in names if n in KNOWN_PROVIDERS))


MIB = 1024 * 1024
MEGA = 1_000_000
# OpenAI takes input images "< 50 MB each" (providers.md), and the resellers relay to it: a larger
# upload was accepted, queued and then refused by every route, the member waiting for nothing.
PROVIDER_MAX_INPUT_BYTES = 50 * MIB - 1


def _default(name: str) -> Any:
    """A setting's default, declared once: on the `Settings` field (the reader falls back to it)."""
    spec = Settings.__dataclass_fields__[name]
    if spec.default is not MISSING:
        return spec.default
    factory: Callable[[], Any] = spec.default_factory  # type: ignore[assignment]
    return factory()


def _load_dotenv(path: Path) -> list[str]:
    """Add `path` (`.env` in the working directory) to the environment; real environment variables win,
    as compose users expect. Returns the names it sets (`unread_names`). Raises ConfigError when it is
    not UTF-8 (an editor's Latin-1 "café" in a comment would otherwise stop start-up with a
    UnicodeDecodeError traceback), or has a line that is not a setting."""
    from dotenv import load_dotenv

    try:
        statements = _dotenv_statements(path)
    except UnicodeDecodeError:
        raise ConfigError([_not_utf8(path)]) from None
    unreadable = [_statement_line(b.original.string, b.original.line) for b in statements if b.error]
    if unreadable:
        # python-dotenv only logs a warning and skips such a line: the bot would start on that setting's
        # default (a $20 MONTHLY_BUDGET_USD instead of the operator's) without anyone noticing.
        raise ConfigError(
            [f"{path.name} line {n} cannot be read: write it as NAME=value" for n in unreadable]
        )
    load_dotenv(path, override=False)
    return [b.key for b in statements if b.key]


def _dotenv_statements(path: Path) -> list[Binding]:
    """The statements of `path` as python-dotenv parses them (none when there is no such file): each
    with its name, or an `error` flag where it cannot be parsed (`MAX_INPUT_MB 20`, an unterminated
    quote)."""
    from dotenv.parser import parse_stream

    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as stream:
        return list(parse_stream(stream))


def _statement_line(text: str, line: int) -> int:
    """The line a statement's text starts on: python-dotenv counts from the blank lines before it."""
    skipped = text[: len(text) - len(text.lstrip())]
    return line + skipped.count("\n")


def _not_utf8(path: Path) -> str:
    """Where `path` stops being UTF-8, by line (dotenv decodes in chunks: its offset is not the file's)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return f"{path.name} is not UTF-8 (line {line}, byte {data[exc.start]:#04x}): save it as UTF-8"
    return f"{path.name} is not UTF-8: save it as UTF-8"


# Names a `.env` may hold for others than Retouch: Docker Compose's own, and its postgres service's.
OTHERS_PREFIXES = ("COMPOSE_", "DOCKER_", "POSTGRES_")
# What each provider's prefix takes (read only for a provider whose key is set).
PROVIDER_SETTINGS = ("API_KEY", "BASE_URL", "MAX_CONCURRENT")


# The process environment also holds the host's, the shell's and the image's own names (PATH, HOSTNAME,
# PYTHON_VERSION, a developer's DATABASE_PORT): there only a near miss of a setting left unset is taken
# for a misspelling. Under Docker Compose `.env` arrives this way (env_file), not as a file. A one-letter
# slip in a name of 6 letters or more scores at least 0.83, MONTHLY_BUDGET for MONTHLY_BUDGET_USD 0.875;
# DATABASE_PORT (for DATABASE_URL) scores 0.80, METRICS_SERVICE_HOST (Kubernetes's, METRICS_HOST) 0.75.
ENVIRONMENT_MATCH_CUTOFF = 0.82
ENVIRONMENT_OTHERS_PREFIXES = (*OTHERS_PREFIXES, "PYTHON", "PIP_", "LC_", "XDG_", "KUBERNETES_")


def _known_names(asked: Iterable[str]) -> set[str]:
    """Every setting name: those read, and the per-provider ones read only with that provider's key."""
    known = set(asked) | {
        f"{prefix}_{what}" for prefix, _ in PROVIDER_ENV.values() for what in PROVIDER_SETTINGS
    }
    return known | {"SEGMIND_UPLOAD_URL", "WAVESPEED_SYNC_MODE"}


def unread_names(names: Iterable[str], asked: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """Which of `names` (set in `.env`) Retouch never reads, each with the setting it may have meant
    ("" when none is close): a misspelt setting (MONTHLY_BUDGET for MONTHLY_BUDGET_USD) leaves the
    real one at its default without a word."""
    known = _known_names(asked)
    unread = [n for n in dict.fromkeys(names) if n not in known and not n.startswith(OTHERS_PREFIXES)]
    return tuple(
        (n, next(iter(difflib.get_close_matches(n, sorted(known), n=1, cutoff=0.75)), "")) for n in unread
    )


def misspelt_in_environment(
    env: Mapping[str, str], asked: Iterable[str], skip: Iterable[str] = ()
) -> tuple[tuple[str, str], ...]:
    """The names of `env` (but `skip`) that are no setting but a near miss of one `env` leaves unset,
    each with that setting. Unlike `.env`, the environment holds names that are not Retouch's (PATH,
    HOSTNAME): a name is only taken for a misspelling when it is very close to a setting nobody set."""
    known = _known_names(asked)
    unset = sorted(n for n in known if not (env.get(n) or "").strip())
    skipped = set(skip)
    found = []
    for name in env:
        if name in known or name in skipped or name.startswith(ENVIRONMENT_OTHERS_PREFIXES):
            continue
        near = difflib.get_close_matches(name, unset, n=1, cutoff=ENVIRONMENT_MATCH_CUTOFF)
        if near:
            found.append((name, near[0]))
    return tuple(sorted(found))


def load_settings(env: Mapping[str, str] | None = None, *, dotenv: bool = True) -> Settings:
    """Build settings from `env` (default: the process environment plus `.env` if present).

    Raises ConfigError listing every problem. Names `.env` sets that Retouch does not read, and names of
    the environment that are near misses of a setting, are kept in `unread_settings`, and a setting
    lowered to what Retouch can honour is said in `capped_settings`, each for a warning once logging is
    set up.
    """
    in_dotenv: list[str] = []
    if env is None:
        if dotenv:
            in_dotenv = _load_dotenv(Path.cwd() / ".env")
        env = os.environ
    r = _Reader(env)
    token = r.raw("DISCORD_TOKEN")
    if not token:
        r.problems.append("DISCORD_TOKEN is not set")
    providers = _read_providers(r)
    dev_guild = r.number("DEV_GUILD_ID", None, int, 1)
    catalog = r.raw("CATALOG_PATH")
    settings = Settings(
        discord_token=Secret(token or ""),
        discord_api_base=r.url("DISCORD_API_BASE", None),
        data_dir=Path(r.text("DATA_DIR", str(_default("data_dir")))),
        database_url=r.database_url("DATABASE_URL"),
        providers=providers,
        provider_order=_read_provider_order(r),
        gone_route_retry_hours=r.number(
            "GONE_ROUTE_RETRY_HOURS", _default("gone_route_retry_hours"), float, 0, MAX_HOURS
        ),
        default_model=r.raw("DEFAULT_MODEL") or None,
        default_quality=r.choice("DEFAULT_QUALITY", _default("default_quality"), QUALITIES),
        default_size=r.choice("DEFAULT_SIZE", _default("default_size"), SIZES),
        default_background=r.choice("DEFAULT_BACKGROUND", _default("default_background"), BACKGROUNDS),
        default_format=r.choice("DEFAULT_FORMAT", _default("default_format"), OUTPUT_FORMATS),
        starting_credits=r.number(
            "STARTING_CREDITS", _default("starting_credits"), int, 0, MAX_CREDITS_PER_CHANGE
        ),
        credits_per_usd=r.number("CREDITS_PER_USD", _default("credits_per_usd"), int, 1, MAX_CREDITS_PER_USD),
        dev_guild_id=dev_guild,
        log_level=r.choice(
            "LOG_LEVEL", _default("log_level").lower(), ("debug", "info", "warning", "error")
        ).upper(),
        shutdown_grace_seconds=r.number(
            "SHUTDOWN_GRACE_SECONDS", _default("shutdown_grace_seconds"), float, 0, MAX_SECONDS
        ),
        catalog_path=Path(catalog) if catalog else None,
        thread_results=r.flag("THREAD_RESULTS", _default("thread_results")),
        max_input_bytes=int(
            r.number("MAX_INPUT_MB", _default("max_input_bytes") / MIB, float, 0.1, MAX_INPUT_MB_CEILING)
            * MIB
        ),
        max_input_pixels=int(
            r.number(
                "MAX_INPUT_MEGAPIXELS",
                _default("max_input_pixels") / MEGA,
                float,
                0.01,
                MAX_INPUT_MEGAPIXELS_CEILING,
            )
            * MEGA
        ),
        job_timeout_seconds=r.number(
            "JOB_TIMEOUT_SECONDS", _default("job_timeout_seconds"), float, 10, MAX_SECONDS
        ),
        provider_call_timeout_seconds=r.number(
            "PROVIDER_CALL_TIMEOUT_SECONDS", _default("provider_call_timeout_seconds"), float, 1, MAX_SECONDS
        ),
        owner_ids=r.id_list("OWNER_IDS"),
        admin_user_ids=r.id_list("ADMIN_USER_IDS"),
        metrics_port=r.number("METRICS_PORT", _default("metrics_port"), int, 0),
        metrics_host=r.text("METRICS_HOST", _default("metrics_host")),
        log_format=r.choice("LOG_FORMAT", _default("log_format"), LOG_FORMATS),
        audit_channel_id=r.number("AUDIT_CHANNEL_ID", None, int, 1),
        max_concurrent_jobs=r.number(
            "MAX_CONCURRENT_JOBS", _default("max_concurrent_jobs"), int, 1, MAX_CONCURRENCY
        ),
        max_jobs_per_user=r.number("MAX_JOBS_PER_USER", _default("max_jobs_per_user"), int, 1),
        queue_timeout_seconds=r.number(
            "QUEUE_TIMEOUT_SECONDS", _default("queue_timeout_seconds"), float, 10, MAX_SECONDS
        ),
        input_retention_hours=r.number(
            "INPUT_RETENTION_HOURS", _default("input_retention_hours"), float, 0, MAX_HOURS
        ),
        result_retention_hours=r.number(
            "RESULT_RETENTION_HOURS", _default("result_retention_hours"), float, 1, MAX_HOURS
        ),
        allowed_guild_ids=r.id_list("ALLOWED_GUILD_IDS", "server ids"),
        allow_dms=r.flag("ALLOW_DMS", _default("allow_dms")),
        monthly_budget_usd=r.usd("MONTHLY_BUDGET_USD", _default("monthly_budget_usd")),
        commands_per_minute=r.number("COMMANDS_PER_MINUTE", _default("commands_per_minute"), int, 0),
        max_mask_previews=r.number("MAX_MASK_PREVIEWS", _default("max_mask_previews"), int, 1),
        job_history_days=r.number("JOB_HISTORY_DAYS", _default("job_history_days"), float, 1, MAX_DAYS),
        moderation=r.choice("MODERATION", _default("moderation"), ("off", "standard", "strict")),
        moderation_timeout_seconds=r.number(
            "MODERATION_TIMEOUT_SECONDS", _default("moderation_timeout_seconds"), float, 0.5, MAX_SECONDS
        ),
        shard_count=r.number("SHARD_COUNT", _default("shard_count"), int, 0, MAX_SHARD_COUNT),
        # A round every third of the lease: under 3 s, rounds would come faster than once a second.
        shard_lease_seconds=r.number(
            "SHARD_LEASE_SECONDS", _default("shard_lease_seconds"), float, 3, MAX_SECONDS
        ),
        job_lease_seconds=r.number("JOB_LEASE_SECONDS", _default("job_lease_seconds"), float, 3, MAX_SECONDS),
    )
    if settings.default_background == "transparent" and settings.default_format not in TRANSPARENT_FORMATS:
        # Every /edit left at its defaults was refused (a transparent background needs an alpha channel).
        r.problems.append(
            f"DEFAULT_BACKGROUND=transparent needs DEFAULT_FORMAT={' or '.join(TRANSPARENT_FORMATS)} "
            f"(got DEFAULT_FORMAT={settings.default_format}, which has no transparency)"
        )
    if settings.metrics_port > MAX_PORT:
        r.problems.append(f"METRICS_PORT must be at most {MAX_PORT} (got {settings.metrics_port})")
    if r.problems:
        raise ConfigError(r.problems)
    settings, capped_pixels = _capped_pixels(settings)
    settings, capped_bytes = _capped_bytes(settings)
    return replace(
        settings,
        unread_settings=_unread_settings(env, in_dotenv, r.asked),
        capped_settings=capped_pixels + capped_bytes,
    )


def _unread_settings(
    env: Mapping[str, str], in_dotenv: list[str], asked: Iterable[str]
) -> tuple[tuple[str, str, str], ...]:
    """What `Settings.unread_settings` holds: every name `.env` sets that Retouch does not read, then the
    environment's near misses of a setting (those `.env` set are said once, as `.env`'s)."""
    from_dotenv = [(".env", name, near) for name, near in unread_names(in_dotenv, asked)]
    near_misses = misspelt_in_environment(env, asked, skip=in_dotenv)
    from_env = [("the environment", name, near) for name, near in near_misses]
    return tuple(from_dotenv + from_env)


def _capped_pixels(settings: Settings) -> tuple[Settings, tuple[str, ...]]:
    """`settings` with MAX_INPUT_MEGAPIXELS at most Pillow's decompression-bomb limit, and the line
    saying so when it was over.

    Pillow refuses an image over its limit (`Image.MAX_IMAGE_PIXELS`, ~89.5 MP) whatever the setting
    says, so members were refused under the limit their error message named. Raising Pillow's
    process-wide limit instead would also lift it for every other decode (provider outputs included),
    and one decode of a 120 MP RGBA picture takes ~480 MB, several at once: the cap keeps memory bounded
    by Pillow's ceiling and tells the operator the limit that really applies."""
    bomb_limit = Image.MAX_IMAGE_PIXELS
    if bomb_limit is None or settings.max_input_pixels <= bomb_limit:
        return settings, ()
    line = (
        f"MAX_INPUT_MEGAPIXELS={settings.max_input_pixels / MEGA:g} is over Pillow's decompression-bomb "
        f"limit: images are limited to {bomb_limit / MEGA:.1f} megapixels"
    )
    return replace(settings, max_input_pixels=bomb_limit), (line,)


def _capped_bytes(settings: Settings) -> tuple[Settings, tuple[str, ...]]:
    """`settings` with MAX_INPUT_MB under the providers' own upload limit, and the line saying so when
    it was over: a member is refused at once, naming the limit, instead of after the wait in the queue."""
    if settings.max_input_bytes <= PROVIDER_MAX_INPUT_BYTES:
        return settings, ()
    line = (
        f"MAX_INPUT_MB={settings.max_input_bytes / MIB:g} is over the providers' upload limit: "
        "uploads are limited to under 50 MB"
    )
    return replace(settings, max_input_bytes=PROVIDER_MAX_INPUT_BYTES), (line,)
