"""Logging setup with a redaction filter: secrets never reach a log line.

Redacts the configured secrets verbatim, interaction/webhook tokens inside Discord API paths and in
payload dumps (discord.py logs whole gateway events at DEBUG, `token` included), bearer/bot
authorisation values, and the query string of any URL (Discord CDN and provider result URLs are
signed in their query strings).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from collections.abc import Iterable
from typing import IO

import aiohttp

_PATH_TOKENS = re.compile(r"(/(?:webhooks|interactions)/\d+/)[A-Za-z0-9_\-.]+")
_URL_QUERY = re.compile(r"(https?://[^\s?#'\"]+)\?[^\s'\"]+")
_BEARER = re.compile(r"(?i)(bearer\s+|bot\s+|api-key:\s*|x-api-key:\s*)[A-Za-z0-9_\-.]{8,}")
# `'token': '…'` in a dict repr or `"token": "…"` in JSON (gateway INTERACTION_CREATE dumps).
_TOKEN_FIELD = re.compile(r"""(?i)(['"](?:token|access_token|api_key|authorization)['"]\s*:\s*['"])[^'"]+""")
# Discord interaction tokens are base64 of "interaction:…"; catch them wherever else they appear.
_INTERACTION_TOKEN = re.compile(r"aW50ZXJhY3Rpb246[A-Za-z0-9_\-.]+")
REDACTED = "***"
PLAIN_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class RedactingFilter(logging.Filter):
    """Rewrites each record's final message (and traceback) with secrets removed."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        text = _PATH_TOKENS.sub(rf"\1{REDACTED}", text)
        text = _URL_QUERY.sub(rf"\1?{REDACTED}", text)
        text = _TOKEN_FIELD.sub(rf"\1{REDACTED}", text)
        text = _INTERACTION_TOKEN.sub(REDACTED, text)
        return _BEARER.sub(rf"\1{REDACTED}", text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a library's log call whose arguments do not fit its format
            # Its arguments may hold a secret, and raising here would break the caller: a fixed line.
            message = f"(a log message from {record.name} could not be formatted: {record.msg!r})"
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg = self.redact(message)
        record.args = None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


class QuietNetworkErrors(logging.Filter):
    """discord.py logs a full traceback each time it retries a gateway it cannot reach; while the
    network or Discord is down that is a page of noise per attempt. A network error becomes one line
    naming it; anything else keeps its traceback."""

    NETWORK_ERRORS = (OSError, TimeoutError, aiohttp.ClientError)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, self.NETWORK_ERRORS):
            reason = getattr(getattr(exc, "os_error", None) or exc, "strerror", None)
            what = type(exc).__name__ + (f": {reason}" if reason else "")
            record.msg = f"{record.getMessage()} (Discord unreachable: {what})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, and exc when there is a traceback.

    Runs after the handler's RedactingFilter, so the message and traceback it sees are already clean.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False)


def make_formatter(fmt: str) -> logging.Formatter:
    """The formatter for LOG_FORMAT `plain` or `json`."""
    if fmt == "json":
        return JsonFormatter()
    if fmt == "plain":
        return logging.Formatter(PLAIN_FORMAT)
    raise ValueError(f"unknown log format {fmt!r}")


def _all_handlers() -> list[logging.Handler]:
    """Every handler attached to any logger right now (root included)."""
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [obj for obj in logging.Logger.manager.loggerDict.values() if isinstance(obj, logging.Logger)]
    return [handler for logger in loggers for handler in logger.handlers]


def install_redaction(redactor: RedactingFilter) -> None:
    """Put `redactor` on every handler that exists now.

    A handler filter only sees records that reach that handler, so a library that attached its own
    handler (e.g. `discord.utils.setup_logging`) would otherwise write unredacted lines.
    """
    for handler in _all_handlers():
        if redactor not in handler.filters:
            handler.addFilter(redactor)


def configure_logging(
    level: str, secrets: Iterable[str] = (), fmt: str = "plain", *, stream: IO[str] | None = None
) -> RedactingFilter:
    """Logs to `stream` (stderr by default) at `level` in `fmt`, every handler behind the redaction filter."""
    redactor = RedactingFilter(secrets)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(make_formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    install_redaction(redactor)
    # discord.py's gateway chatter is noise at INFO.
    logging.getLogger("discord.gateway").setLevel(max(logging.getLevelName(level), logging.INFO))
    client_log = logging.getLogger("discord.client")
    if not any(isinstance(f, QuietNetworkErrors) for f in client_log.filters):
        client_log.addFilter(QuietNetworkErrors())
    return redactor
