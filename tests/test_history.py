"""Edit history as a service against a real database (each backend): chains of versions, Undo steps, and the
retention promise (rows go RESULT_RETENTION_HOURS after they were posted), with an injected clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest

from bot.services.history import EditHistory, NothingToUndo
from bot.storage import Storage

GUILD, ALICE, BOB, CHANNEL = 10, 20, 21, 30
START = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[tuple[EditHistory, Storage, Clock]]:
    clock = Clock()
    storage = await Storage.open(database_url, clock=clock)
    try:
        yield EditHistory(storage, retention_hours=72), storage, clock
    finally:
        await storage.close()


async def delivered(
    storage: Storage, job_id: str, message_id: int, origin: int | None = None, user: int = ALICE
) -> None:
    """`user`'s job that was delivered as `message_id` (started from the message `origin`)."""
    await storage.jobs.create_job(
        job_id,
        guild_id=GUILD,
        user_id=user,
        channel_id=CHANNEL,
        model="m",
        quality="low",
        size="auto",
        count=1,
        spec=None,
        origin_message_id=origin,
    )
    # Where the engine's settle_delivered puts a result (written directly: no hold or capture needed here).
    await storage.db.write_one(
        "UPDATE jobs SET state = 'delivered', result_channel_id = ?, result_message_id = ? WHERE id = ?",
        (CHANNEL, message_id, job_id),
    )


async def test_versions_chain_and_undo_steps_back_one_version_at_a_time(world):
    history, storage, _ = world
    await delivered(storage, "a" * 16, 101)
    await delivered(storage, "b" * 16, 102, origin=101)
    await delivered(storage, "c" * 16, 103, origin=101)  # Edit again on the first: continues the chain
    for job in ("a", "b", "c"):
        await history.record_result(job * 16)
    latest = await history.latest(101)
    assert latest is not None and (latest.message_id, latest.chain_id, latest.parent_message_id) == (
        103,
        101,
        101,
    )
    step = await history.undo_step(103)
    assert step.previous.message_id == 101
    repost = await history.record_repost(step, message_id=104, channel_id=CHANNEL)
    assert (repost.job_id, repost.parent_message_id, repost.chain_id) == ("a" * 16, None, 101)
    with pytest.raises(NothingToUndo):
        await history.undo_step(104)
    assert [e.version.message_id for e in await history.recent(GUILD, ALICE)] == [104, 103, 102, 101]


async def test_an_edit_of_another_members_version_starts_a_chain_of_its_own(world):
    """Bob's Edit again on alice's result must not become the newest version of her chain: her next
    Edit again would edit his picture. His Undo steps back to the version he started from."""
    history, storage, _ = world
    await delivered(storage, "a" * 16, 101)
    await delivered(storage, "b" * 16, 102, origin=101, user=BOB)
    await delivered(storage, "c" * 16, 103, origin=102)  # alice continues from bob's: hers again
    for job in ("a", "b", "c"):
        await history.record_result(job * 16)
    latest = await history.latest(101)
    assert latest is not None and latest.message_id == 101  # alice's chain is hers alone
    bobs = await history.latest(102)
    assert bobs is not None and (bobs.message_id, bobs.chain_id, bobs.user_id) == (102, 102, BOB)
    assert (await history.undo_step(102)).previous.message_id == 101
    third = await history.latest(103)
    assert third is not None and (third.chain_id, third.parent_message_id) == (103, 102)
    assert [e.version.message_id for e in await history.recent(GUILD, BOB)] == [102]


async def test_a_deleted_version_is_not_listed_nor_continued_from_but_its_undo_still_finds_it(world):
    """Deleted with its Delete button: /history would link to nothing, Edit again would continue from
    a message that is gone. The version after it still steps back to it (Undo then says it was
    deleted, rather than that there is nothing to undo)."""
    history, storage, _ = world
    await delivered(storage, "a" * 16, 101)
    await delivered(storage, "b" * 16, 102, origin=101)
    await delivered(storage, "c" * 16, 103, origin=102)
    for job in ("a", "b", "c"):
        await history.record_result(job * 16)
    await history.deleted(102)
    assert (await history.undo_step(103)).previous.message_id == 102  # found, then said deleted
    await history.deleted(103)
    assert [e.version.message_id for e in await history.recent(GUILD, ALICE)] == [101]
    latest = await history.latest(101)
    assert latest is not None and latest.message_id == 101  # Edit again continues from the first
    assert (await storage.history.get_version(102)) is not None  # still in its chain
    await delivered(storage, "d" * 16, 104, origin=101)
    await history.record_result("d" * 16)
    assert [e.version.message_id for e in await history.recent(GUILD, ALICE)] == [104, 101]


async def test_nothing_is_kept_past_the_retention(world):
    history, storage, clock = world
    await delivered(storage, "a" * 16, 101)
    await history.record_result("a" * 16)
    clock.now = START + dt.timedelta(hours=71, minutes=59)
    assert [e.version.message_id for e in await history.recent(GUILD, ALICE)] == [101]
    clock.now = START + dt.timedelta(hours=72)
    assert await history.recent(GUILD, ALICE) == []
    assert await history.latest(101) is None
    await delivered(storage, "b" * 16, 102)
    await history.record_result("b" * 16)  # each write also deletes what has expired
    assert [r[0] for r in await storage.db.all("SELECT message_id FROM edit_versions")] == [102]


async def test_whether_a_result_continues_a_chain_is_a_kept_version_and_a_failed_read_says_no(
    world, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """Only Undo's button rides on this answer: a database error must not fail the result's post."""
    history, storage, _ = world
    await delivered(storage, "a" * 16, 101)
    await history.record_result("a" * 16)
    assert await history.continues_chain(101)
    assert not await history.continues_chain(555)  # a member's own message ("Edit image")
    assert not await history.continues_chain(None)

    async def broken(message_id: int) -> None:
        raise OSError("disk I/O error")

    monkeypatch.setattr(storage.history, "get_version", broken)
    assert not await history.continues_chain(101)
    assert "could not tell whether 101 continues an edit chain" in caplog.text
