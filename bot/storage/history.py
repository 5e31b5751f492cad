"""Edit chains (bot.services.history): which posted result came from which, kept for RESULT_RETENTION_HOURS.

Only Discord message ids and the job id are stored, never images: Undo and Edit again read the
picture back from Discord's copy of the message.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.storage.connection import Body, Database, execute


@dataclass(frozen=True)
class VersionRow:
    """One version of an edit chain (bot.services.history): where it is posted and what it came from."""

    message_id: int
    channel_id: int
    guild_id: int
    user_id: int
    job_id: str
    chain_id: int
    parent_message_id: int | None
    created_at: str
    expires_at: str
    deleted_at: str | None = None  # its message deleted with the Delete button (`mark_deleted`)


# A version posted again under the same message id replaces the old row whole. (message_id is the
# table's INTEGER PRIMARY KEY, SQLite's rowid itself: the queries order ties by it.)
_COLUMNS = tuple(VersionRow.__dataclass_fields__)
_PUT_VERSION = (
    f"INSERT INTO edit_versions ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)}) "
    "ON CONFLICT (message_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c != "message_id")
)


class Versions:
    """The `edit_versions` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_version(self, version: VersionRow) -> None:
        """Record a posted version; drop every expired one in the same transaction (retention)."""
        now = self._db.timestamp()

        def body() -> Body[None]:
            yield execute("DELETE FROM edit_versions WHERE expires_at <= ?", (now,))
            yield execute(
                _PUT_VERSION,
                (
                    version.message_id,
                    version.channel_id,
                    version.guild_id,
                    version.user_id,
                    version.job_id,
                    version.chain_id,
                    version.parent_message_id,
                    version.created_at or now,
                    version.expires_at,
                    version.deleted_at,
                ),
            )

        await self._db.transaction(body)

    async def get_version(self, message_id: int) -> VersionRow | None:
        row = await self._db.one(
            "SELECT * FROM edit_versions WHERE message_id = ? AND expires_at > ?",
            (message_id, self._db.timestamp()),
        )
        return None if row is None else VersionRow(**dict(row))

    async def mark_deleted(self, message_id: int) -> None:
        """The version's message was deleted (its Delete button): kept for its chain's Undo, no longer
        listed nor continued from."""
        await self._db.write_one(
            "UPDATE edit_versions SET deleted_at = ? WHERE message_id = ? AND deleted_at IS NULL",
            (self._db.timestamp(), message_id),
        )

    async def latest_version(self, chain_id: int) -> VersionRow | None:
        """The chain's newest version whose message was not deleted."""
        row = await self._db.one(
            "SELECT * FROM edit_versions WHERE chain_id = ? AND expires_at > ? AND deleted_at IS NULL "
            "ORDER BY created_at DESC, message_id DESC LIMIT 1",
            (chain_id, self._db.timestamp()),
        )
        return None if row is None else VersionRow(**dict(row))

    async def recent_versions(
        self, guild_id: int, user_id: int, limit: int
    ) -> list[tuple[VersionRow, str | None]]:
        """A member's newest versions in a server, each with its job's spec (JSON; the prompt)."""
        rows = await self._db.all(
            "SELECT v.*, j.spec AS job_spec FROM edit_versions v LEFT JOIN jobs j ON j.id = v.job_id "
            "WHERE v.guild_id = ? AND v.user_id = ? AND v.expires_at > ? AND v.deleted_at IS NULL "
            "ORDER BY v.created_at DESC, v.message_id DESC LIMIT ?",
            (guild_id, user_id, self._db.timestamp(), limit),
        )
        found = []
        for row in rows:
            data = dict(row)
            spec = data.pop("job_spec")
            found.append((VersionRow(**data), spec))
        return found
