"""Logging: plain and JSON formats, and a redaction filter that holds for a whole job at DEBUG."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from bot.config import database_passwords
from bot.observability.logs import REDACTED, RedactingFilter, configure_logging, install_redaction
from tests.fakes.discord import FakeDiscord
from tests.fakes.openai_server import FakeOpenAI
from tests.harness import running_bot

DATA = Path(__file__).parent / "data"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging rewires the root logger; put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    touched = {name: logging.getLogger(name).level for name in ("discord", "discord.gateway", "discord.http")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in touched.items():
        logging.getLogger(name).setLevel(old)


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        (
            "POST http://x/api/v10/interactions/123/aW50ZXJhY3Rpb246abc_-.def/callback",
            "aW50ZXJhY3Rpb246abc_-.def",
        ),
        ("PATCH /api/v10/webhooks/42/tok3n-value.x/messages/@original", "tok3n-value.x"),
        ("GET https://cdn.discordapp.com/attachments/1/2/a.png?ex=6&is=7&hm=abcdef done", "hm=abcdef"),
        ("{'id': '1', 'token': 'secret-token-value', 'type': 2}", "secret-token-value"),
        ('{"token": "secret-token-value"}', "secret-token-value"),
        ("headers Authorization: Bearer sk-proj-abcdefgh12345678", "sk-proj-abcdefgh12345678"),
        ("Authorization: Bot MTIzNDU2Nzg5.abcdef.ghijklmnop", "MTIzNDU2Nzg5.abcdef.ghijklmnop"),
        ("oops the key is configured-secret-1 in text", "configured-secret-1"),
    ],
)
def test_redaction_removes_tokens_keys_and_signed_queries(line: str, secret: str) -> None:
    redacted = RedactingFilter(["configured-secret-1"]).redact(line)
    assert secret not in redacted
    assert REDACTED in redacted


def test_redaction_cleans_arguments_and_tracebacks(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", ["hunter2-secret"], stream=stream)
    log = logging.getLogger("tests.redaction")
    log.info("calling with %s", "hunter2-secret")
    try:
        raise RuntimeError("failed near hunter2-secret")
    except RuntimeError:
        log.exception("boom")
    text = stream.getvalue()
    assert "hunter2-secret" not in text
    assert "calling with ***" in text
    assert "RuntimeError: failed near ***" in text


def test_a_log_call_whose_arguments_do_not_fit_is_logged_not_raised(restore_logging: None) -> None:
    """A library's log call with the wrong arguments must not raise into its caller through the filter
    (logging's own handlers would only print an error), nor print its arguments, which may be secret."""
    stream = io.StringIO()
    configure_logging("DEBUG", ["hunter2-secret"], stream=stream)
    logging.getLogger("tests.badcall").warning("two %s %s", "hunter2-secret")
    text = stream.getvalue()
    assert "a log message from tests.badcall could not be formatted: 'two %s %s'" in text
    assert "hunter2-secret" not in text


def test_a_database_password_is_redacted_as_written_in_the_url_and_decoded(restore_logging: None) -> None:
    """A password with `@` or `/` is written percent-encoded in DATABASE_URL: a logged URL shows that
    form, and a driver's message the decoded one. Both are secrets."""
    url = "postgresql://retouch:p%40ss%2Fw0rd-x@db:5432/retouch"
    stream = io.StringIO()
    configure_logging("DEBUG", database_passwords(url), stream=stream)
    logging.getLogger("tests.db").error("could not use %s (password p@ss/w0rd-x refused)", url)
    text = stream.getvalue()
    assert "p%40ss%2Fw0rd-x" not in text and "p@ss/w0rd-x" not in text
    assert database_passwords("postgresql://u@h/db?password=a%2Bb+c9") == ["a%2Bb+c9", "a+b c9"]
    assert database_passwords("postgresql://u@h/db") == database_passwords("sqlite:///x.db") == []


def test_json_format_writes_one_redacted_object_per_line(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("INFO", ["hunter2-secret"], "json", stream=stream)
    log = logging.getLogger("tests.json")
    log.warning("job %s failed with key %s", "abc", "hunter2-secret")
    try:
        raise ValueError("bad")
    except ValueError:
        log.error("with traceback", exc_info=True)
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert entries[0]["level"] == "WARNING"
    assert entries[0]["logger"] == "tests.json"
    assert entries[0]["message"] == "job abc failed with key ***"
    assert entries[0]["ts"].endswith("+00:00")
    assert "ValueError: bad" in entries[1]["exc"]


def test_redaction_is_installed_on_handlers_other_libraries_added(restore_logging: None) -> None:
    stream = io.StringIO()
    library_handler = logging.StreamHandler(stream)
    library_logger = logging.getLogger("tests.some_library")
    library_logger.addHandler(library_handler)
    try:
        redactor = configure_logging("INFO", ["hunter2-secret"], stream=io.StringIO())
        library_logger.warning("token hunter2-secret")
        assert redactor in library_handler.filters
        assert "hunter2-secret" not in stream.getvalue()
        install_redaction(redactor)  # idempotent
        assert library_handler.filters.count(redactor) == 1
    finally:
        library_logger.removeHandler(library_handler)


async def test_a_whole_edit_at_debug_logs_no_token_key_or_signed_url(
    fake_discord: FakeDiscord, openai: FakeOpenAI, tmp_path: Path, restore_logging: None
) -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", [fake_discord.token, openai.api_key], stream=stream)
    # configure_logging quietens the gateway; open it up so its raw event dumps are tested too.
    logging.getLogger("discord.gateway").setLevel(logging.DEBUG)
    async with running_bot(fake_discord, openai, tmp_path) as world:
        interaction = await world.edit((DATA / "chelsea.png").read_bytes())
        assert (await world.finished(interaction)).startswith("Done")
    text = stream.getvalue()

    secrets = {"bot token": fake_discord.token, "provider key": openai.api_key}
    for it in fake_discord.interactions:
        secrets[f"interaction token {it.id}"] = it.token
    signed = [urlsplit(a.url).query for m in fake_discord.messages for a in m.attachments]
    signed += [urlsplit(r.path).query for r in fake_discord.requests if "hm=" in r.path]
    for index, query in enumerate(q for q in signed if q):
        secrets[f"signed query {index}"] = query
    leaked = [name for name, value in secrets.items() if value in text]
    assert not leaked, f"found in the DEBUG log: {leaked}"
    # The log really covered the dangerous parts, redacted: discord.py's request lines, the raw
    # INTERACTION_CREATE dump and the attachment URL.
    assert f"/interactions/{interaction.id}/{REDACTED}/callback" in text
    assert f"'token': '{REDACTED}'" in text
    assert f".png?{REDACTED}" in text


@pytest.mark.parametrize(
    "error",
    [OSError(101, "Network is unreachable"), aiohttp.ServerDisconnectedError(), TimeoutError()],
    ids=["oserror", "disconnected", "timeout"],
)
def test_discord_reconnect_attempts_after_a_network_error_are_one_line(error: Exception) -> None:
    out = io.StringIO()
    configure_logging("INFO", stream=out)
    try:
        raise error
    except Exception:
        logging.getLogger("discord.client").exception("Attempting a reconnect in %.2fs", 1.5)
    [line] = out.getvalue().strip().splitlines()
    assert "Attempting a reconnect in 1.50s" in line and type(error).__name__ in line
    assert "Traceback" not in out.getvalue()


def test_other_errors_keep_their_traceback() -> None:
    out = io.StringIO()
    configure_logging("INFO", stream=out)
    try:
        raise ValueError("a bug")
    except ValueError:
        logging.getLogger("discord.client").exception("Attempting a reconnect in %.2fs", 1.5)
    assert "Traceback" in out.getvalue()
