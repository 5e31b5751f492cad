"""Job states are one enum, mirrored by the database (migration 0008 and its PostgreSQL part), and
storage's state sets use it."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from bot.jobs.model import JobState
from bot.storage import Storage
from bot.storage.jobs import LIVE_STATES, TERMINAL_STATES
from tests.fixtures import MIGRATIONS, upgraded

STATE_MIGRATION = 8


def _jobs_before_states(db: sqlite3.Connection) -> None:
    """A job in every state, as the release before migration 0008 stored them."""
    for index, state in enumerate(JobState):
        db.execute(
            "INSERT INTO jobs (id, guild_id, user_id, channel_id, state, model, quality, size, count, "
            "created_at, updated_at) VALUES (?, 1, 2, 3, ?, 'm', 'low', 'auto', 1, ?, ?)",
            (f"job{index}", state.value, "2026-12-01T00:00:00.000+00:00", "2026-12-01T00:00:00.000+00:00"),
        )


async def test_state_migration_keeps_the_rows_and_indexes_of_an_existing_database(tmp_path: Path):
    path = tmp_path / "db.sqlite3"
    async with upgraded(path, STATE_MIGRATION, _jobs_before_states) as storage:
        rows = await storage.jobs.jobs_in_states(tuple(JobState))
        assert sorted((r.id, r.state) for r in rows) == [(f"job{i}", s.value) for i, s in enumerate(JobState)]
        live = await storage.jobs.jobs_in_states(LIVE_STATES)
        assert {r.state for r in live} == set(LIVE_STATES)
    db = sqlite3.connect(path)
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"jobs_user", "jobs_state"} <= indexes
    with pytest.raises(sqlite3.IntegrityError, match="JobState"):
        db.execute("UPDATE jobs SET state = 'finished' WHERE id = 'job0'")
    db.close()


async def _new_job(storage: Storage, job_id: str) -> None:
    await storage.jobs.create_job(
        job_id, guild_id=1, user_id=2, channel_id=3, model="m", quality="low", size="auto", count=1
    )


@pytest.mark.parametrize("state", list(JobState))
async def test_the_database_takes_every_job_state(storage: Storage, state: JobState):
    await _new_job(storage, "j1")
    await storage.jobs.set_job_state("j1", state)
    row = await storage.jobs.get_job("j1")
    assert row is not None and row.state == state


async def test_the_database_refuses_a_state_that_is_not_a_job_state(storage: Storage):
    await _new_job(storage, "j1")
    with pytest.raises(storage.db.Error, match="JobState"):
        await storage.jobs.set_job_state("j1", "done")
    row = await storage.jobs.get_job("j1")
    assert row is not None and row.state == JobState.QUEUED
    with pytest.raises(storage.db.Error, match="JobState"):
        await storage.db.write_one(
            "INSERT INTO jobs (id, guild_id, user_id, state, model, quality, size, count, created_at, "
            "updated_at) VALUES ('j2', 1, 2, 'Queued', 'm', 'low', 'auto', 1, 'x', 'x')",
            (),
        )


@pytest.mark.sqlite_only
async def test_the_sqlite_file_refuses_a_state_written_by_another_program(storage: Storage, tmp_path: Path):
    db = sqlite3.connect(tmp_path / "retouch.sqlite3")
    with pytest.raises(sqlite3.IntegrityError, match="JobState"):
        db.execute(
            "INSERT INTO jobs (id, guild_id, user_id, state, model, quality, size, count, created_at, "
            "updated_at) VALUES ('j2', 1, 2, 'Queued', 'm', 'low', 'auto', 1, 'x', 'x')"
        )
    db.close()


def test_the_database_constraint_lists_exactly_the_job_states():
    sql = next(MIGRATIONS.glob(f"{STATE_MIGRATION:04d}_*.sql")).read_text("utf-8")
    lists = re.findall(r"NOT IN \(([^)]*)\)", sql)
    assert len(lists) == 2  # inserts and updates
    postgres = next((MIGRATIONS / "postgres").glob(f"{STATE_MIGRATION:04d}_*.sql")).read_text("utf-8")
    lists += re.findall(r"CHECK \(state IN \(([^)]*)\)", postgres)
    assert len(lists) == 3
    for listed in lists:
        assert re.findall(r"'([a-z_]+)'", listed) == [s.value for s in JobState]


def test_live_and_terminal_states_split_the_job_states():
    assert all(isinstance(s, JobState) for s in (*LIVE_STATES, *TERMINAL_STATES))
    assert set(LIVE_STATES).isdisjoint(TERMINAL_STATES)
    assert set(LIVE_STATES) | set(TERMINAL_STATES) == set(JobState)
    assert JobState.FAILED == "failed"  # stored strings are unchanged
