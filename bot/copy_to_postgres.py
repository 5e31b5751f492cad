"""`python -m bot --copy-to-postgres`: move a bot's data from its SQLite file into PostgreSQL, once,
before running several processes on it (README: "Moving to PostgreSQL").

The target is `DATABASE_URL` (the setting the bot itself will use from then on, so the operator writes
the address once, and its password never goes on a command line); the source is the SQLite file the bot
used until now, `DATA_DIR/retouch.sqlite3`, or `--from FILE`. The copy itself is `bot/storage/copy.py`.
Every outcome is said in a few log lines, never with a traceback for a reason to refuse, and never with
the database's password.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

from bot.config import Settings, mask_userinfo
from bot.storage.connection import (
    DatabaseInUse,
    DatabaseRefused,
    DatabaseUnavailable,
    is_postgres,
    sqlite_path,
)

log = logging.getLogger("bot")

# The exit codes of bot/__main__.py: a setting to fix, or a refusal or failure said in the log.
EXIT_CONFIG = 2
EXIT_FAILURE = 1


def shown(url: str) -> str:
    """The database's address as logs may show it: no user, no password, and no query string (libpq
    also accepts `?password=`)."""
    parts = urlsplit(mask_userinfo(url))
    return urlunsplit(parts._replace(query=""))


async def copy_to_postgres(settings: Settings, source: str | None) -> int:
    """Copy the SQLite database `source` (default: the bot's own file) into DATABASE_URL's PostgreSQL
    database; the process's exit code."""
    from bot.storage.copy import CopyRefused, copy_database  # asyncpg loads only for this command

    target = settings.database_url
    if target is None or not is_postgres(target):
        log.error(
            "--copy-to-postgres copies into the PostgreSQL database DATABASE_URL names: set DATABASE_URL "
            "to postgresql://user:password@host:5432/database (the one the bot will use from now on) "
            '(see "Moving to PostgreSQL" in the README)'
        )
        return EXIT_CONFIG
    path = sqlite_path(source) if source else str(settings.database_path)
    log.info("copying the SQLite database %s into %s", path, shown(target))
    try:
        report = await copy_database(path, target)
    except DatabaseInUse:
        log.error(
            "Nothing was copied: a Retouch bot is running on %s. Stop it first (docker compose down, or "
            "Ctrl-C), so no credit moves while it is copied, then run the copy again.",
            path,
        )
        return EXIT_FAILURE
    except DatabaseUnavailable as exc:
        log.error("Nothing was copied: cannot open the database %s: %s", shown(target), exc)
        return EXIT_FAILURE
    except DatabaseRefused as exc:  # its text names DATABASE_URL and the fix
        log.error(
            "Nothing was copied: cannot use the database DATABASE_URL names (%s): %s", shown(target), exc
        )
        return EXIT_CONFIG
    except CopyRefused as exc:
        log.error("Nothing was copied: %s.", exc)
        return EXIT_FAILURE
    log.info(
        "copied %d rows in %d tables, checked before committing (each table's row count, and every "
        "account's balance and holds against its ledger): %s",
        report.rows,
        len(report.tables),
        ", ".join(f"{table} {rows}" for table, rows in report.tables),
    )
    log.info(
        "Next: start Retouch with this DATABASE_URL, as many processes as you like, all sharing DATA_DIR "
        "(docker compose --profile scale up -d --scale retouch=3). %s is left as it was: keep it as a "
        "backup, but never run a bot on it again (its credits are no longer the real ones).",
        path,
    )
    return 0
