"""What to tell the operator when PostgreSQL refuses the bot at start-up for a reason they fix once.

Each refusal is matched by its SQLSTATE class (asyncpg's exception) and said with the fix, in terms of
DATABASE_URL. The names quoted (database, role, schema) are read from the URL, never from the server's
message, and never the password.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

import asyncpg

from bot.storage.connection import DatabaseRefused


def refusal_for(exc: asyncpg.PostgresError, dsn: str) -> DatabaseRefused | None:
    """`exc` said as what to do (None: not one of the refusals an operator fixes by setup)."""
    names = _Names.of(dsn)
    if isinstance(exc, asyncpg.InvalidCatalogNameError):  # 3D000
        advice = (
            f"the database {names.database} does not exist: create it (CREATE DATABASE {names.database}), "
            "or fix its name in DATABASE_URL"
        )
    # 28P01 is a kind of 28000 (asyncpg subclasses it): the password first.
    elif isinstance(exc, asyncpg.InvalidPasswordError):  # 28P01
        advice = (
            f"the server refused the password for the role {names.role}: fix the password in DATABASE_URL"
        )
    elif isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):  # 28000: no such role, pg_hba
        advice = (
            f"the server does not let the role {names.role} log in: create it (CREATE ROLE {names.role} "
            "LOGIN PASSWORD '…'), fix the user name in DATABASE_URL, or allow it in pg_hba.conf"
        )
    elif isinstance(exc, asyncpg.InvalidSchemaNameError):  # 3F000: search_path names no existing schema
        advice = (
            f"the schema {names.schema} that its search_path names does not exist: create the schema first: "
            f"CREATE SCHEMA {names.schema} AUTHORIZATION {names.role}"
        )
    elif isinstance(exc, asyncpg.InsufficientPrivilegeError) and "must be owner" in str(exc):  # 42501
        # An upgrade's ALTER TABLE by a role that may create tables but did not create these.
        advice = (
            f"the role {names.role} does not own the bot's tables and functions, which an upgrade "
            f"changes: run the bot as the role that created them, or make {names.role} their owner "
            f"(ALTER TABLE … OWNER TO {names.role}, and ALTER FUNCTION … for its functions, in the schema "
            f"{names.schema})"
        )
    elif isinstance(exc, asyncpg.InsufficientPrivilegeError):  # 42501
        advice = (
            f"the role {names.role} may not create the bot's tables in the schema {names.schema}: grant it: "
            f"GRANT CREATE ON SCHEMA {names.schema} TO {names.role}"
        )
    elif isinstance(exc, asyncpg.ReadOnlySQLTransactionError):  # 25006: a standby
        advice = "the server only allows reading (a standby): point DATABASE_URL at the primary server"
    else:
        return None
    return DatabaseRefused(advice)


class _Names:
    """The database, role and schema a URL names, or a placeholder for one it leaves to the defaults."""

    def __init__(self, database: str, role: str, schema: str) -> None:
        self.database = database
        self.role = role
        self.schema = schema

    @classmethod
    def of(cls, dsn: str) -> _Names:
        try:
            parts = urlsplit(dsn)
            query = dict(parse_qsl(parts.query))
            role = unquote(parts.username or "") or query.get("user", "")
            database = unquote(parts.path.lstrip("/")) or query.get("dbname", "")
        except ValueError:
            role, database, query = "", "", {}
        # The first schema of search_path is where tables are created; PostgreSQL's default is public.
        schema = query.get("search_path", "").split(",")[0].strip() or "public"
        return cls(database or "<database>", role or "<role>", schema)
