"""Logging setup with a redaction filter: secrets never reach a log line.

Redacts the configured secrets verbatim, interaction/webhook tokens inside Discord API paths, and the
query string of any URL (Discord CDN and provider result URLs are signed in their query strings).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

_PATH_TOKENS = re.compile(r"(/(?:webhooks|interactions)/\d+/)[A-Za-z0-9_\-.]+")
_URL_QUERY = re.compile(r"(https?://[^\s?#'\"]+)\?[^\s'\"]+")
_BEARER = re.compile(r"(?i)(bearer\s+|bot\s+|api-key:\s*|x-api-key:\s*)[A-Za-z0-9_\-.]{8,}")
REDACTED = "***"


class RedactingFilter(logging.Filter):
    """Rewrites each record's final message with secrets removed."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        text = _PATH_TOKENS.sub(rf"\1{REDACTED}", text)
        text = _URL_QUERY.sub(rf"\1?{REDACTED}", text)
        return _BEARER.sub(rf"\1{REDACTED}", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg = self.redact(message)
        record.args = None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


def configure_logging(level: str, secrets: Iterable[str] = ()) -> RedactingFilter:
    """Plain-text logs to stderr at `level`, every handler behind the redaction filter."""
    redactor = RedactingFilter(secrets)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(redactor)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # discord.py's gateway chatter is noise at INFO.
    logging.getLogger("discord.gateway").setLevel(max(logging.getLevelName(level), logging.INFO))
    return redactor
