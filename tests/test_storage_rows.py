"""The job, settings and history repositories on each backend: what goes in comes back, ties keep their
creation order, retention forgets text but never amounts."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import pytest

from bot.storage import Storage
from bot.storage.history import VersionRow
from bot.storage.settings import PendingNotices
from tests.postgres import until_waiting_on
from tests.test_history import START, Clock

GUILD, USER, ADMIN = 10, 2**62 + 20, 2**62 + 99  # Discord ids need all 64 bits


@pytest.fixture
def storage_clock() -> Clock:
    return Clock()


def at(minutes: float) -> str:
    return (START + dt.timedelta(minutes=minutes)).isoformat(timespec="milliseconds")


async def new_job(storage: Storage, job_id: str, **extra: str) -> None:
    await storage.jobs.create_job(
        job_id,
        guild_id=GUILD,
        user_id=USER,
        channel_id=3,
        model="m",
        quality="low",
        size="auto",
        count=2,
        **extra,
    )


async def test_a_job_keeps_what_each_step_stored(storage: Storage, storage_clock: Clock):
    await new_job(storage, "j1", spec='{"prompt": "x"}', deadline_at=at(5))
    await storage.jobs.set_job_state("j1", "submitting", provider="openai", started_at=at(0))
    await storage.jobs.mark_submitted("j1", "wavespeed", "task-a")
    await storage.jobs.mark_submitted("j1", "wavespeed", "task-b")  # an emulated count: one call per image
    await storage.jobs.update_job("j1", result='{"files": 2}', completed_at=at(2))
    storage_clock.now = START + dt.timedelta(minutes=3)
    await storage.jobs.set_job_state("j1", "delivered")
    row = await storage.jobs.get_job("j1")
    assert row is not None
    assert (row.guild_id, row.user_id, row.state, row.provider) == (GUILD, USER, "delivered", "wavespeed")
    assert row.provider_job_ids == ("task-a", "task-b")
    assert (row.spec, row.result, row.finished_at) == ('{"prompt": "x"}', '{"files": 2}', at(3))
    assert await storage.jobs.recent_run_seconds(5) == [120.0]
    assert [r.id for r in await storage.jobs.jobs_in_states(("delivered", "failed"))] == ["j1"]
    with pytest.raises(ValueError, match="unknown"):
        await storage.jobs.update_job("j1", state="queued")


async def test_a_jobs_public_notice_is_recorded_while_it_runs_and_taken_by_exactly_one_caller(
    storage: Storage,
):
    notice = (3, 2**62 + 7)  # a channel and a message id (Discord ids need all 64 bits)
    await new_job(storage, "live")
    assert await storage.jobs.record_notice("live", *notice)
    assert await storage.jobs.take_notice("live") == notice
    assert await storage.jobs.take_notice("live") is None  # the job's end or a Stop click, not both
    assert await storage.jobs.record_notice("live", *notice)  # a Stop click handing it back
    await storage.jobs.set_job_state("live", "cancelled")
    assert await storage.jobs.take_notice("live") == notice  # whoever ends the job finds it
    # A notice that arrives after its job ended is not recorded: its poster removes it at once.
    assert not await storage.jobs.record_notice("live", *notice)
    assert not await storage.jobs.record_notice("unknown", *notice)
    assert await storage.jobs.take_notice("live") is None


async def test_a_notice_another_caller_takes_while_this_one_reads_it_is_not_taken_twice(postgres_url: str):
    """On PostgreSQL two takers (the job's end and a Stop click, in different processes) can both read the
    notice before either clears it. The one that clears second must find it gone and get None, or both
    would edit or delete the same message."""
    notice = (3, 2**62 + 7)
    storage = await Storage.open(postgres_url)
    holder = await asyncpg.connect(postgres_url)
    try:
        await new_job(storage, "live")
        assert await storage.jobs.record_notice("live", *notice)
        async with holder.transaction():  # the other taker, between its clearing and its commit
            await holder.execute("UPDATE jobs SET notice_message_id = NULL WHERE id = 'live'")
            taking = asyncio.ensure_future(storage.jobs.take_notice("live"))
            await until_waiting_on(holder)
        assert await taking is None
    finally:
        await holder.close()
        await storage.close()


async def test_jobs_created_in_the_same_millisecond_are_listed_newest_first(storage: Storage):
    for job_id in ("b", "c", "a"):  # ids out of order: only the creation order can break the tie
        await new_job(storage, job_id)
    assert [r.id for r in await storage.jobs.recent_jobs(GUILD, USER, limit=5)] == ["a", "c", "b"]


async def test_jobs_created_in_the_same_millisecond_are_claimed_and_listed_in_creation_order(
    storage: Storage,
):
    """The queue's order after a restart or a takeover: the same on both backends, whatever the ids or
    where PostgreSQL keeps the rows (a row written again moves to the end of its table)."""
    for job_id in ("c", "a", "b"):  # ids out of order: only the creation order can break the tie
        await new_job(storage, job_id)
    await storage.jobs.update_job("c", spec='{"prompt": "x"}')
    claimed = await storage.jobs.claim_jobs("p", at(0), at(1), limit=2)
    assert [r.id for r in claimed] == ["c", "a"]
    assert [r.id for r in await storage.jobs.jobs_in_states(("queued",))] == ["c", "a", "b"]


async def test_only_live_jobs_past_their_deadline_are_overdue(storage: Storage):
    for job_id, deadline in (("late", at(1)), ("early", at(10)), ("none", None)):
        await new_job(storage, job_id, **({"deadline_at": deadline} if deadline else {}))
        await storage.jobs.set_job_state(job_id, "submitted")
    await new_job(storage, "ended", deadline_at=at(1))
    await storage.jobs.set_job_state("ended", "failed")
    overdue = await storage.jobs.overdue_jobs(START + dt.timedelta(minutes=5))
    assert [r.id for r in overdue] == ["late"]


async def test_retention_forgets_ended_jobs_and_old_ledger_text_but_never_an_amount(
    storage: Storage, storage_clock: Clock
):
    await storage.ledger.grant(GUILD, USER, 50, actor_id=ADMIN, reason="thanks", starting_credits=0)
    await new_job(storage, "old", spec="{}", files_expire_at=at(1))
    await storage.ledger.reserve("old", GUILD, USER, 20, starting_credits=0)
    await storage.ledger.settle_delivered("old", 15, via="channel", channel_id=1, message_id=2)
    await new_job(storage, "live", spec="{}")
    storage_clock.now = START + dt.timedelta(days=1)
    assert await storage.jobs.forget_expired_details() == 1
    assert (await storage.jobs.get_job("old")).spec is None  # type: ignore[union-attr]
    assert (await storage.jobs.get_job("live")).spec == "{}"  # type: ignore[union-attr]
    assert await storage.jobs.prune_history(START + dt.timedelta(hours=1)) == (1, 1)
    assert await storage.jobs.get_job("old") is None and await storage.jobs.get_job("live") is not None
    rows = await storage.reports.account_history(GUILD, USER, kinds=("grant",), offset=0, limit=5)
    [grant] = rows[0]
    assert (grant.amount, grant.actor_id, grant.reason) == (50, None, None)
    totals = await storage.reports.ledger_totals(GUILD, USER)
    assert (totals.granted, totals.captured, totals.balance) == (50, 15, 35)
    with pytest.raises(storage.db.Error, match="append-only"):
        await storage.db.write_one("UPDATE ledger SET reason = 'back' WHERE kind = 'grant'", ())


async def test_settings_rows_are_created_replaced_and_cleared(storage: Storage):
    await storage.settings.update_guild_policy(GUILD, {"allowance": 5, "models": "a b"}, actor_id=ADMIN)
    await storage.settings.update_guild_policy(GUILD, {"models": None}, actor_id=ADMIN)
    policy = await storage.settings.guild_policy_row(GUILD)
    assert policy is not None and (policy["allowance"], policy["models"], policy["updated_by"]) == (
        5,
        None,
        ADMIN,
    )
    await storage.settings.put_role_tier(GUILD, 7, {"allowance": 9, "max_quality": "high"}, actor_id=ADMIN)
    await storage.settings.put_role_tier(GUILD, 7, {"max_images": 2}, actor_id=ADMIN)  # the whole tier
    [tier] = await storage.settings.role_tier_rows(GUILD)
    assert (tier["allowance"], tier["max_quality"], tier["max_images"]) == (None, None, 2)
    assert await storage.settings.delete_role_tier(GUILD, 7) and not await storage.settings.delete_role_tier(
        GUILD, 7
    )
    await storage.settings.set_guild_thread_results(GUILD, True)
    await storage.settings.set_guild_moderation(GUILD, "strict")
    assert (
        await storage.settings.guild_thread_results(GUILD),
        await storage.settings.guild_moderation(GUILD),
    ) == (
        True,
        "strict",
    )
    await storage.settings.set_guild_approved(GUILD, True, actor_id=ADMIN)
    await storage.settings.set_guild_allotment(GUILD, "2.50", actor_id=ADMIN)
    assert await storage.settings.operator_guilds() == {GUILD: (True, "2.50")}
    await storage.settings.put_route_status("openai", "m1", {"listed": 0})
    await storage.settings.put_route_status("openai", "m1", {"gone_at": at(1)})
    [route] = await storage.settings.route_status_rows()
    assert (route["listed"], route["gone_at"]) == (0, at(1))


async def test_a_routes_gone_stamp_round_trips_and_clears(storage: Storage):
    """A "model gone" moment is stored to the second (a retired route's trial counts from it) and
    cleared when the route comes back, on each backend; the other facts of the row stay."""
    await storage.settings.put_route_status("atlascloud", "m1", {"shutdown": "2027-01-10", "listed": 1})
    stamp = "2026-11-15T09:30:00+00:00"
    await storage.settings.put_route_status(
        "atlascloud", "m1", {"gone_at": stamp, "gone_reason": "ModelGone status=404 code=not_found"}
    )
    [route] = await storage.settings.route_status_rows()
    assert (route["gone_at"], route["gone_reason"], route["shutdown"]) == (
        stamp,
        "ModelGone status=404 code=not_found",
        "2027-01-10",
    )
    await storage.settings.put_route_status("atlascloud", "m1", {"gone_at": None, "gone_reason": None})
    [route] = await storage.settings.route_status_rows()
    assert (route["gone_at"], route["gone_reason"], route["listed"]) == (None, None, 1)


async def test_a_dead_models_members_are_moved_and_told_once_in_order(storage: Storage):
    for user in (USER, USER + 1):
        await storage.settings.update_user_settings(user, {"model": "dead"})
    await storage.settings.update_guild_policy(GUILD, {"default_model": "dead"}, actor_id=None)
    moved = await storage.settings.move_stored_model("dead", "alive", "moved to alive")
    assert moved == ([USER, USER + 1], [GUILD])
    await storage.settings.move_stored_model("alive", None, "back to the default")
    assert await storage.settings.stored_models() == set()
    assert await storage.settings.take_model_notices(USER) == ["moved to alive", "back to the default"]
    assert await storage.settings.take_model_notices(USER) == []


async def test_model_notices_are_read_in_place_and_taken_only_up_to_what_was_read(storage: Storage):
    settings = storage.settings
    await settings.update_user_settings(USER, {"model": "dead"})
    await settings.move_stored_model("dead", "alive", "moved to alive")
    read = await settings.pending_model_notices(USER)
    assert read.texts == ("moved to alive",)
    assert (await settings.pending_model_notices(USER)).texts == ("moved to alive",)  # still there
    await settings.move_stored_model("alive", None, "back to the default")  # after the read
    assert await settings.take_model_notices(USER, only=read.keys) == ["moved to alive"]
    assert (await settings.pending_model_notices(USER)).texts == ("back to the default",)
    assert await settings.pending_model_notices(USER + 1) == PendingNotices()


async def test_a_notice_added_after_a_read_is_not_taken_in_its_place_when_its_row_id_is_reused(
    storage: Storage,
):
    """SQLite gives the next insert a deleted row's rowid: job A read notice 1, job B took it, a new
    notice 1 came; job A's take must leave the new one for the member."""
    settings = storage.settings
    await settings.update_user_settings(USER, {"model": "dead"})
    await settings.move_stored_model("dead", "alive", "moved to alive")
    first = await settings.pending_model_notices(USER)
    assert await settings.take_model_notices(USER) == ["moved to alive"]  # another job took it
    await settings.move_stored_model("alive", None, "back to the default")
    assert await settings.take_model_notices(USER, only=first.keys) == []
    assert (await settings.pending_model_notices(USER)).texts == ("back to the default",)


async def test_edit_versions_expire_and_ties_go_to_the_newest_message(storage: Storage):
    await new_job(storage, "j")
    for message in (5, 3, 4):  # posted in the same millisecond
        await storage.history.add_version(VersionRow(message, 1, GUILD, USER, "j", 3, None, at(0), at(60)))
    latest = await storage.history.latest_version(3)
    assert latest is not None and latest.message_id == 5
    assert [v.message_id for v, _ in await storage.history.recent_versions(GUILD, USER, 5)] == [5, 4, 3]
