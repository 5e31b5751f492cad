"""Quality caps reach every level (migration 0014): "high" is a cap like the others, since GPT Image 2.5
and 2.6 sell xhigh and max above it; only "max", the top, caps nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg
import pytest

from bot.storage import Storage
from bot.storage.connection import migrations, pending_migrations
from bot.storage.postgres import PG_MIGRATIONS, postgres_ddl
from tests.fixtures import upgraded

CAPS_MIGRATION = 14
POLICY = {
    "guild_id": 7,
    "allowance": 50,
    "allowance_period": "monthly",
    "starting_credits": 10,
    "max_quality": "medium",
    "models": "gpt-image-2",
    "max_images": 2,
    "monthly_cap_usd": "12.50",
    "cooldown_seconds": 30,
    "max_concurrent": 1,
    "default_model": "gpt-image-2",
    "default_quality": "low",
    "default_size": "1024x1024",
    "provider_order": "openai wavespeed",
    "updated_by": 9,
    "updated_at": "2026-11-30T10:00:00.000+00:00",
}
TIER = {
    "guild_id": 7,
    "role_id": 8,
    "allowance": 500,
    "max_quality": "high",
    "models": "*",
    "max_images": 4,
    "updated_by": 9,
    "updated_at": "2026-11-30T10:00:00.000+00:00",
}


def _rules_before_caps(db: sqlite3.Connection) -> None:
    """A server's rules and a tier, as the release before migration 0014 stored them."""
    for table, row in (("guild_policy", POLICY), ("role_tiers", TIER)):
        db.execute(
            f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )
    with pytest.raises(sqlite3.IntegrityError):  # what the old CHECK refused
        db.execute("UPDATE guild_policy SET max_quality = 'xhigh'")


async def test_the_caps_migration_keeps_every_rule_and_tier_and_takes_the_new_levels(tmp_path: Path):
    async with upgraded(tmp_path / "db.sqlite3", CAPS_MIGRATION, _rules_before_caps) as storage:
        assert await storage.settings.guild_policy_row(7) == POLICY
        assert await storage.settings.role_tier_rows(7) == [TIER]
        await storage.settings.update_guild_policy(7, {"max_quality": "xhigh"}, actor_id=9)
        assert (await storage.settings.guild_policy_row(7) or {})["max_quality"] == "xhigh"


async def test_the_caps_migration_keeps_every_rule_and_tier_on_postgresql(postgres_url: str):
    """The same upgrade on PostgreSQL: the schema as the releases before 0014 left it (in that
    backend's words), a rule and a tier in it, then the bot's own migration."""
    conn = await asyncpg.connect(postgres_url)
    try:
        own = dict(migrations(PG_MIGRATIONS))
        for number, sql in pending_migrations(0):
            if number < CAPS_MIGRATION:
                await conn.execute(postgres_ddl(sql) + own.get(number, ""))
        await conn.execute(
            f"CREATE TABLE schema_version (version BIGINT NOT NULL); "
            f"INSERT INTO schema_version VALUES ({CAPS_MIGRATION - 1})"
        )
        for table, row in (("guild_policy", POLICY), ("role_tiers", TIER)):
            marks = ", ".join(f"${n}" for n in range(1, len(row) + 1))
            await conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({marks})", *row.values())
        with pytest.raises(asyncpg.CheckViolationError):  # what the old CHECK refused
            await conn.execute("UPDATE guild_policy SET max_quality = 'xhigh'")
    finally:
        await conn.close()
    storage = await Storage.open(postgres_url)
    try:
        assert await storage.schema_version() >= CAPS_MIGRATION
        assert await storage.settings.guild_policy_row(7) == POLICY
        assert await storage.settings.role_tier_rows(7) == [TIER]
        await storage.settings.update_guild_policy(7, {"max_quality": "xhigh"}, actor_id=9)
        assert (await storage.settings.guild_policy_row(7) or {})["max_quality"] == "xhigh"
    finally:
        await storage.close()


@pytest.mark.parametrize("level", ["low", "medium", "high", "xhigh", "max"])
async def test_every_level_is_a_cap_the_database_takes_and_no_other(storage: Storage, level: str):
    await storage.settings.update_guild_policy(7, {"max_quality": level}, actor_id=9)
    await storage.settings.put_role_tier(7, 8, {"max_quality": level}, actor_id=9)
    assert (await storage.settings.guild_policy_row(7) or {})["max_quality"] == level
    assert (await storage.settings.role_tier_rows(7))[0]["max_quality"] == level
    with pytest.raises(storage.db.Error):
        await storage.settings.update_guild_policy(7, {"max_quality": "ultra"}, actor_id=9)
