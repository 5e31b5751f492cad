"""`python -m bot`: load settings, open the resources, run the bot until a signal stops it.

Exit codes: 0 after a clean (signal) shutdown; 2 for configuration problems (a token Discord refuses,
a DEV_GUILD_ID server the bot is not in, a DISCORD_API_BASE without /api/v10, an unwritable DATA_DIR,
a SQLite file that cannot be opened there, a PostgreSQL database, role or schema that does not exist
or lacks a privilege, and a metrics port that cannot be listened on included); 1
for anything else (Discord or the database server unreachable or refusing, a database from a newer
release, a SQLite file another bot process runs on or one that is not a database). Each of those is
said in one log line, without a traceback. The operator's one-off commands (`--check-config`,
`--sync`, `--copy-to-postgres`) exit with the same codes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.app import utc_today
from bot.catalog import Catalog, CatalogError, load_catalog
from bot.config import (
    ENV_EXAMPLE_HINT,
    ConfigError,
    Settings,
    database_passwords,
    load_settings,
    mask_userinfo,
)
from bot.errors import InvalidOptions
from bot.lifecycle import ModelLifecycle
from bot.observability.logs import configure_logging

if TYPE_CHECKING:
    import discord

log = logging.getLogger("bot")

EXIT_CONFIG = 2
EXIT_FAILURE = 1


def describe_connection_error(exc: BaseException) -> str:
    """What went wrong on the way to a host, in a few words (aiohttp's own text can hold a URL)."""
    os_error = getattr(exc, "os_error", None) or (exc if isinstance(exc, OSError) else None)
    reason = getattr(os_error, "strerror", None)
    host = getattr(exc, "host", None)
    what = type(exc).__name__ + (f": {reason}" if reason else "")
    return f"{host}: {what}" if isinstance(host, str) and host else what


def _unwritable(folder: Path) -> str | None:
    """Why the bot cannot keep its files in `folder` (None: it can). Checked before anything starts:
    the first write there (the database, the job files, the salt) would otherwise fail mid-start."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


# What SQLite says when the file itself is the problem: it cannot be opened or written there, or it is
# not a database at all (any other error comes from inside a working file).
_PLACE_ERRORS = ("unable to open database file", "readonly database", "disk i/o error")
_NOT_A_DATABASE = ("file is not a database", "database disk image is malformed", "malformed database schema")


def _says(exc: OSError | sqlite3.Error, words: tuple[str, ...]) -> bool:
    return any(word in str(exc).lower() for word in words)


def _about_the_file(exc: OSError | sqlite3.Error) -> bool:
    return isinstance(exc, OSError) or _says(exc, (*_PLACE_ERRORS, *_NOT_A_DATABASE))


def _sqlite_file_unusable(database: str, exc: OSError | sqlite3.Error) -> int:
    """Say in one line why the SQLite file `database` (DATA_DIR's default one, or DATABASE_URL's) cannot
    be used; the exit code. A place the bot cannot open or write (the file or its `.lock` a folder, a
    read-only file) is a settings problem; a file that is not a SQLite database is not."""
    # An OSError names the file it failed on: the `.lock` beside the database may be the one in the way.
    where = mask_userinfo(str(getattr(exc, "filename", None) or database))
    if _says(exc, _NOT_A_DATABASE):
        log.error(
            "Retouch cannot open %s (%s): it is not a SQLite database, or it is damaged; restore a backup, "
            "or move it away to start with an empty one",
            where,
            exc,
        )
        return EXIT_FAILURE
    reason = (exc.strerror if isinstance(exc, OSError) else str(exc)) or type(exc).__name__
    log.error(
        "Retouch cannot use %s (%s): set DATA_DIR (or DATABASE_URL) to a folder it can write to",
        where,
        reason,
    )
    return EXIT_CONFIG


def _discord_refused(api_base: str | None, exc: discord.HTTPException) -> int:
    """Say in one line why Discord (or what DISCORD_API_BASE points at) refused a start-up request
    (a `discord.HTTPException` other than 401 and 5xx); the exit code. Its body is not quoted: a proxy's
    page can be long and say anything."""
    status = f"HTTP {exc.status} {getattr(exc.response, 'reason', '') or ''}".strip()
    if exc.status == 404 and api_base and not api_base.rstrip("/").endswith("/api/v10"):
        # Every request goes to DISCORD_API_BASE + a path: without /api/v10 none of them exists.
        log.error(
            "Discord answered %s at DISCORD_API_BASE %s: it must end in /api/v10 (or unset it to use "
            "Discord itself)",
            status,
            mask_userinfo(api_base),
        )
        return EXIT_CONFIG
    via = ""
    if api_base:  # a proxy that refuses the bot (its own 403) must not read as Discord's verdict
        via = f" via DISCORD_API_BASE {mask_userinfo(api_base)}; check that it lets the bot through"
    log.error("Discord refused the bot's start-up requests (%s)%s", status, via)
    return EXIT_FAILURE


def _fail_config(problems: list[str]) -> int:
    lines = ["Retouch cannot start. Fix these settings:"]
    lines += [f"  - {p}" for p in problems]
    lines.append(ENV_EXAMPLE_HINT)
    sys.stderr.write("\n".join(lines) + "\n")
    return EXIT_CONFIG


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bot", description="Run the Retouch Discord bot.")
    command = parser.add_mutually_exclusive_group()
    command.add_argument("--sync", action="store_true", help="publish slash commands globally, then exit")
    command.add_argument(
        "--check-config", action="store_true", help="validate settings and the catalog, then exit"
    )
    command.add_argument(
        "--copy-to-postgres",
        action="store_true",
        help="copy the SQLite database into the empty PostgreSQL database DATABASE_URL names, then exit "
        "(stop the bot first)",
    )
    parser.add_argument(
        "--from",
        dest="source",
        metavar="FILE",
        help="with --copy-to-postgres: the SQLite file to copy (default: DATA_DIR/retouch.sqlite3)",
    )
    args = parser.parse_args(argv)
    if args.source and not args.copy_to_postgres:
        parser.error("--from goes with --copy-to-postgres")
    return args


async def run(settings: Settings, catalog: Catalog, *, sync: bool) -> int:
    """Own every resource for the process's lifetime: one HTTP session, one database."""
    # Imported here so `--check-config` and config errors never pay for importing discord.py.
    import aiohttp
    import discord

    from bot.app import build_providers, build_services, provider_session, shard_sharing, split_with_fleet
    from bot.client import DevGuildUnavailable, RetouchBot, point_discord_at
    from bot.concurrency import RateLimitWatch
    from bot.observability.ops import OpsUnavailable, serve_ops
    from bot.storage import Storage
    from bot.storage.connection import (
        DatabaseInUse,
        DatabaseRefused,
        DatabaseUnavailable,
        SchemaTooNew,
        is_postgres,
    )
    from bot.storage.postgres import PostgresDatabase

    if settings.discord_api_base:
        point_discord_at(settings.discord_api_base)
    if (unwritable := _unwritable(settings.data_dir)) is not None:
        log.error(
            "Retouch cannot write to DATA_DIR %s (%s): set DATA_DIR to a folder it can write to",
            settings.data_dir,
            unwritable,
        )
        return EXIT_CONFIG
    try:
        # The bot itself, unlike `--sync` (which runs no jobs), is the one process on a SQLite file.
        # `--sync` may run beside it, so it does not migrate either: a newer release's `--sync` would
        # change the schema under an older running bot, and two at once would race the same migration.
        # The next start of the bot migrates, under its lock.
        storage = await Storage.open(settings.database, sole_process=not sync, migrate=not sync)
    except DatabaseInUse as exc:
        log.error(
            "Retouch cannot start: another Retouch process is running on the SQLite database %s, and a "
            "SQLite file serves only one. Stop the other process, or, to run several, set DATABASE_URL "
            'to a PostgreSQL database (see "Several processes" in the README).',
            exc.path,
        )
        return EXIT_FAILURE
    except SchemaTooNew as exc:
        log.error(
            "Retouch cannot start: %s was written by a newer Retouch (schema %d; this release knows up to "
            "%d). Run that newer release, or restore a backup made with this one.",
            mask_userinfo(settings.database),
            exc.found,
            exc.known,
        )
        return EXIT_FAILURE
    except DatabaseUnavailable as exc:
        log.error("Retouch cannot open the database %s: %s", mask_userinfo(settings.database), exc)
        return EXIT_FAILURE
    except DatabaseRefused as exc:  # its text names DATABASE_URL and the fix
        log.error(
            "Retouch cannot use the database DATABASE_URL names (%s): %s",
            mask_userinfo(settings.database),
            exc,
        )
        return EXIT_CONFIG
    except (OSError, sqlite3.Error) as exc:
        if is_postgres(settings.database) or not _about_the_file(exc):
            # Not a place on disk, or a failure inside a working file (a migration's): a traceback
            # for a bug report, never advice to move the database away.
            raise
        return _sqlite_file_unusable(settings.database, exc)
    try:
        # Its connection pool is sized from MAX_CONCURRENT_JOBS (see `provider_connection_limit`); every
        # 429 a provider answers on it reaches the adaptive limits (`RateLimitWatch`).
        watch = RateLimitWatch.for_settings(settings)
        session_options: dict[str, Any] = {
            "headers": {"User-Agent": "Retouch (+discord bot)"},
            "trace_configs": [watch.trace_config()],
        }
        async with provider_session(settings, **session_options) as session:
            services = build_services(settings, catalog, storage, build_providers(settings, session))
            watch.attach(services.edits.router.limiter)
            # With SQLite this process serves every shard; with PostgreSQL the shards are shared out
            # among every process on that database, through leases in it.
            pool = storage.db.pool if isinstance(storage.db, PostgresDatabase) else None
            owner = services.edits.engine.owner  # the name this process's shards and jobs are held by
            # Every live process calls the providers with the same accounts: each takes its part.
            share = split_with_fleet(services)
            listen = storage.db.listen if pool is not None else None
            shards = (
                None
                if sync
                else shard_sharing(settings, pool=pool, owner=owner, on_fleet=share, listen=listen)
            )
            bot = RetouchBot(services, sync_commands=sync, shards=shards)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, lambda: asyncio.ensure_future(bot.shutdown()))
            ops = serve_ops(
                host=settings.metrics_host,
                port=0 if sync else settings.metrics_port,
                registry=services.metrics.registry,
                connected=bot.connected,
                storage=storage,
                live_models=services.edits.lifecycle.live_model_problem,
            )
            try:
                async with ops, bot:
                    if sync:
                        # login() runs setup_hook, which publishes the commands; no gateway needed.
                        await bot.login(settings.discord_token.reveal())
                        return 0
                    await bot.start(settings.discord_token.reveal())
            except discord.LoginFailure:
                log.error("Discord refused DISCORD_TOKEN; check the bot token in your .env")
                return EXIT_CONFIG
            except OpsUnavailable:  # said where it happened, naming the setting
                return EXIT_CONFIG
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                # Said once, without a traceback: the cause is the network, not the code.
                log.error(
                    "Retouch cannot reach Discord (%s); check the network, DNS and any firewall or proxy",
                    describe_connection_error(exc),
                )
                return EXIT_FAILURE
            except discord.DiscordServerError as exc:
                log.error("Discord is failing (HTTP %s); try again later", exc.status)
                return EXIT_FAILURE
            except DevGuildUnavailable as exc:
                log.error(
                    "Discord refused the commands for DEV_GUILD_ID %s (HTTP %s): the bot is not in that "
                    "server; invite it there, or unset DEV_GUILD_ID",
                    exc.guild_id,
                    exc.status,
                )
                return EXIT_CONFIG
            except discord.HTTPException as exc:
                return _discord_refused(settings.discord_api_base, exc)
    finally:
        await storage.close()
    log.info("stopped")
    return 0


def _warn_unread(unread: tuple[tuple[str, str, str], ...]) -> None:
    """Say each name `.env` (or the environment) sets that Retouch does not read, with the setting it may
    have meant."""
    for where, name, near in unread:
        hint = f" (did you mean {near}?)" if near else ""
        log.warning("%s sets %s, which is not a Retouch setting%s", where, name, hint)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        return _fail_config(exc.problems)
    try:
        catalog = load_catalog(settings.catalog_path)
    except CatalogError as exc:
        return _fail_config([str(exc)])
    secrets = [settings.discord_token.reveal()] + [p.api_key.reveal() for p in settings.providers]
    secrets += database_passwords(settings.database)
    configure_logging(settings.log_level, secrets, settings.log_format)
    _warn_unread(settings.unread_settings)
    for line in settings.capped_settings:
        log.warning("%s", line)
    if settings.default_model and settings.default_model not in catalog.models:
        # Not fatal (a catalog copy may drop a model): said, since members then get another model.
        log.warning(
            "DEFAULT_MODEL=%s is not a model of the catalog (%s): members get the first live one instead",
            settings.default_model,
            ", ".join(catalog.models),
        )
    if args.check_config:
        log.info("settings OK: %s", settings.describe())
        log.info("catalog OK: %s", ", ".join(catalog.models))
        log.info("default model: %s", _default_model_line(settings, catalog))
        return 0
    if args.copy_to_postgres:
        from bot.copy_to_postgres import copy_to_postgres

        return asyncio.run(copy_to_postgres(settings, args.source))
    return asyncio.run(run(settings, catalog, sync=args.sync))


def _default_model_line(settings: Settings, catalog: Catalog) -> str:
    """Which model members get without choosing, by the catalog's dates alone (the running bot also
    reads OpenAI's model list and any "model gone" answers)."""
    configured = frozenset(p.name for p in settings.providers)
    lifecycle = ModelLifecycle(catalog, configured, utc_today, default_model_id=settings.default_model)
    try:
        model = lifecycle.default_model()
    except InvalidOptions:
        return f"none: no live catalog model is sold by {', '.join(sorted(configured))}"
    sellers = sorted({r.provider for r in lifecycle.live_routes(model)})
    return f"{model.id} (sold here by {', '.join(sellers)})"


if __name__ == "__main__":
    sys.exit(main())
