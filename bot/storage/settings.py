"""Settings the bot keeps: member defaults, guild policy and role tiers, the operator's servers, and
what run time learned about model routes (status and the notices owed to members it moved)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from bot.storage.connection import Body, Database, checked, execute_many, fetch_all, fetch_one

_GUILD_POLICY_FIELDS = frozenset(
    {
        "allowance",
        "allowance_period",
        "starting_credits",
        "max_quality",
        "models",
        "max_images",
        "monthly_cap_usd",
        "cooldown_seconds",
        "max_concurrent",
        "default_model",
        "default_quality",
        "default_size",
        "provider_order",
    }
)
_ROLE_TIER_FIELDS = frozenset({"allowance", "max_quality", "models", "max_images"})
_USER_SETTING_FIELDS = frozenset(
    {"quality", "model", "size", "output_format", "background", "skip_mask_preview"}
)
_ROUTE_STATUS_FIELDS = frozenset({"shutdown", "listed", "gone_at", "gone_reason"})


@dataclass(frozen=True)
class PendingNotices:
    """A member's model notices not taken yet, oldest first (`Settings.pending_model_notices`)."""

    # Each one's (rowid, notice, created_at), for `take_model_notices(only=...)`: SQLite gives a deleted
    # row's rowid to the next insert, so an id alone could name a notice added after the read.
    keys: tuple[tuple[int, str, str], ...] = ()

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(notice for _, notice, _ in self.keys)


class Settings:
    """Per-member, per-server and per-route settings rows."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def _upsert(self, table: str, keys: dict[str, Any], fields: dict[str, Any]) -> None:
        """Create `table`'s row for `keys`, or overwrite just `fields` in it (its other columns stay).

        Table and column names come from this module (requested columns pass `checked` first)."""
        columns = [*keys, *fields]
        updates = ", ".join(f"{name} = excluded.{name}" for name in fields)
        await self._db.write_one(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)}) "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}",
            (*keys.values(), *fields.values()),
        )

    async def guild_thread_results(self, guild_id: int) -> bool | None:
        row = await self._db.one("SELECT thread_results FROM guild_settings WHERE guild_id = ?", (guild_id,))
        return None if row is None or row[0] is None else bool(row[0])

    async def set_guild_thread_results(self, guild_id: int, value: bool | None) -> None:
        thread_results = None if value is None else int(value)
        await self._upsert("guild_settings", {"guild_id": guild_id}, {"thread_results": thread_results})

    async def guild_moderation(self, guild_id: int) -> str | None:
        """The server's safety-check level (off / standard / strict), None when it set none."""
        row = await self._db.one("SELECT moderation FROM guild_settings WHERE guild_id = ?", (guild_id,))
        return None if row is None else row[0]

    async def set_guild_moderation(self, guild_id: int, level: str | None) -> None:
        await self._upsert("guild_settings", {"guild_id": guild_id}, {"moderation": level})

    # -- credit policy ------------------------------------------------------------------------------

    async def guild_policy_row(self, guild_id: int) -> dict[str, Any] | None:
        row = await self._db.one("SELECT * FROM guild_policy WHERE guild_id = ?", (guild_id,))
        return None if row is None else dict(row)

    async def update_guild_policy(
        self, guild_id: int, fields: dict[str, Any], *, actor_id: int | None
    ) -> None:
        """Set some guild policy columns (None clears one back to its default); creates the row."""
        fields = {
            **checked(fields, _GUILD_POLICY_FIELDS),
            "updated_by": actor_id,
            "updated_at": self._db.timestamp(),
        }
        await self._upsert("guild_policy", {"guild_id": guild_id}, fields)

    async def role_tier_rows(self, guild_id: int) -> list[dict[str, Any]]:
        rows = await self._db.all("SELECT * FROM role_tiers WHERE guild_id = ? ORDER BY role_id", (guild_id,))
        return [dict(r) for r in rows]

    async def put_role_tier(
        self, guild_id: int, role_id: int, fields: dict[str, Any], *, actor_id: int | None
    ) -> None:
        """Create or replace a role's whole tier (fields not given go back to "inherit")."""
        fields = checked(fields, _ROLE_TIER_FIELDS)
        whole = {name: fields.get(name) for name in sorted(_ROLE_TIER_FIELDS)}
        whole |= {"updated_by": actor_id, "updated_at": self._db.timestamp()}
        await self._upsert("role_tiers", {"guild_id": guild_id, "role_id": role_id}, whole)

    async def delete_role_tier(self, guild_id: int, role_id: int) -> bool:
        deleted = await self._db.write_one(
            "DELETE FROM role_tiers WHERE guild_id = ? AND role_id = ?", (guild_id, role_id)
        )
        return deleted == 1

    # -- model routes (bot.lifecycle) ---------------------------------------------------------------

    async def route_status_rows(self) -> list[dict[str, Any]]:
        """Everything run time learned about model routes (see migration 0004)."""
        rows = await self._db.all(
            "SELECT provider, model, shutdown, listed, gone_at, gone_reason FROM route_status"
        )
        return [dict(r) for r in rows]

    async def put_route_status(self, provider: str, model: str, fields: dict[str, Any]) -> None:
        """Record some of a route's facts (shutdown, listed, gone_at, gone_reason); creates the row."""
        fields = {**checked(fields, _ROUTE_STATUS_FIELDS), "updated_at": self._db.timestamp()}
        await self._upsert("route_status", {"provider": provider, "model": model}, fields)

    async def replace_route_gone(
        self,
        provider: str,
        model: str,
        seen_gone_at: Collection[str],
        gone_at: str | None,
        gone_reason: str | None,
    ) -> bool:
        """Restamp (or with None, clear) a retired route's "model gone" only while its stored `gone_at`
        is still one of `seen_gone_at` (the forms of the stamp the caller read). False when another
        process changed it meanwhile (brought it back, or restamped it): nothing is written, so of two
        processes deciding on the same stamp only one does, and only that one announces it."""
        if not seen_gone_at:
            return False
        marks = ", ".join("?" for _ in seen_gone_at)
        changed = await self._db.write_one(
            "UPDATE route_status SET gone_at = ?, gone_reason = ?, updated_at = ? "
            f"WHERE provider = ? AND model = ? AND gone_at IN ({marks})",
            (gone_at, gone_reason, self._db.timestamp(), provider, model, *seen_gone_at),
        )
        return changed == 1

    async def stored_models(self) -> set[str]:
        """Every model id a member's or a server's stored default points at."""
        rows = await self._db.all(
            "SELECT model FROM user_settings WHERE model IS NOT NULL "
            "UNION SELECT default_model FROM guild_policy WHERE default_model IS NOT NULL"
        )
        return {str(r[0]) for r in rows}

    async def move_stored_model(
        self, dead: str, replacement: str | None, notice: str
    ) -> tuple[list[int], list[int]]:
        """Point every stored default at `dead` to `replacement` (None: back to the default) and queue
        `notice` for each member moved, in one transaction. Returns (user ids, guild ids) moved."""
        now = self._db.timestamp()

        def body() -> Body[tuple[list[int], list[int]]]:
            # Moved by the UPDATEs themselves (RETURNING), so a default changed meanwhile by another
            # process is either moved and noticed or left alone, never one without the other.
            users = yield fetch_all(
                "UPDATE user_settings SET model = ?, updated_at = ? WHERE model = ? RETURNING user_id",
                (replacement, now, dead),
            )
            guilds = yield fetch_all(
                "UPDATE guild_policy SET default_model = ?, updated_at = ? WHERE default_model = ? "
                "RETURNING guild_id",
                (replacement, now, dead),
            )
            moved = sorted(r[0] for r in users)
            if moved:
                yield execute_many(
                    "INSERT INTO model_notices (user_id, notice, created_at) VALUES (?, ?, ?)",
                    [(user_id, notice, now) for user_id in moved],
                )
            return moved, sorted(r[0] for r in guilds)

        return await self._db.transaction(body)

    async def pending_model_notices(self, user_id: int) -> PendingNotices:
        """The member's model notices, oldest first, left in place: a job shows them, and takes them
        (`take_model_notices(only=...)`) only once it is accepted, so a refused one loses none."""
        rows = await self._db.all(
            "SELECT rowid, notice, created_at FROM model_notices WHERE user_id = ? ORDER BY rowid", (user_id,)
        )
        return PendingNotices(tuple((int(r[0]), str(r[1]), str(r[2])) for r in rows))

    async def take_model_notices(
        self, user_id: int, *, only: Sequence[tuple[int, str, str]] | None = None
    ) -> list[str]:
        """The member's model notices, oldest first; each is returned once. `only`: just these (the
        `keys` `pending_model_notices` returned; any added since stay for the next job)."""
        if await self._db.one("SELECT 1 FROM model_notices WHERE user_id = ? LIMIT 1", (user_id,)) is None:
            return []  # the common case reads only, without taking the write lock

        def body() -> Body[list[str]]:
            if only is None:
                # Taken and deleted by one statement: a notice added meanwhile is returned or kept.
                rows = yield fetch_all(
                    "DELETE FROM model_notices WHERE user_id = ? RETURNING rowid, notice", (user_id,)
                )
                return [str(notice) for _, notice in sorted(rows, key=lambda r: r[0])]
            taken = []
            for rowid, notice, created_at in only:
                row = yield fetch_one(
                    "DELETE FROM model_notices WHERE user_id = ? AND rowid = ? AND notice = ? "
                    "AND created_at = ? RETURNING notice",
                    (user_id, rowid, notice, created_at),
                )
                if row is not None:
                    taken.append(notice)
            return taken

        return await self._db.transaction(body)

    async def user_settings_row(self, user_id: int) -> dict[str, Any] | None:
        row = await self._db.one("SELECT * FROM user_settings WHERE user_id = ?", (user_id,))
        return None if row is None else dict(row)

    async def update_user_settings(self, user_id: int, fields: dict[str, Any]) -> None:
        """Set some of a user's defaults (None clears one); creates the row."""
        fields = {**checked(fields, _USER_SETTING_FIELDS), "updated_at": self._db.timestamp()}
        await self._upsert("user_settings", {"user_id": user_id}, fields)

    async def operator_guild(self, guild_id: int) -> tuple[bool, str | None]:
        """(approved by the operator's command, monthly allotment in USD as text or None)."""
        row = await self._db.one(
            "SELECT approved, allotment_usd FROM operator_guilds WHERE guild_id = ?", (guild_id,)
        )
        return (False, None) if row is None else (bool(row[0]), row[1])

    async def operator_guilds(self) -> dict[int, tuple[bool, str | None]]:
        rows = await self._db.all("SELECT guild_id, approved, allotment_usd FROM operator_guilds")
        return {r[0]: (bool(r[1]), r[2]) for r in rows}

    async def set_guild_approved(self, guild_id: int, approved: bool, *, actor_id: int) -> None:
        fields = {"approved": int(approved), "updated_by": actor_id, "updated_at": self._db.timestamp()}
        await self._upsert("operator_guilds", {"guild_id": guild_id}, fields)

    async def set_guild_allotment(self, guild_id: int, usd: str | None, *, actor_id: int) -> None:
        fields = {"allotment_usd": usd, "updated_by": actor_id, "updated_at": self._db.timestamp()}
        await self._upsert("operator_guilds", {"guild_id": guild_id}, fields)
