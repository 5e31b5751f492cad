"""Issue 15: a provider's concurrency ceiling and its circuit hold across the fleet, seen at the provider.

Three real OS processes (tests/fleet_process.py, built and started as `python -m bot` is, below Discord)
share one PostgreSQL and one fake OpenAI in this process. Each learns how many processes share the
account the way production does: from its shard-lease rounds (bot/sharding.py), with no gateway
connected. What is measured is what the provider saw: the fake counts the edit requests it is working
on at once (`peak_in_flight`) and every request it received (`post_count`). Needs PostgreSQL (skipped
with the reason otherwise).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from bot.storage import Storage
from tests.fakes.openai_server import FakeOpenAI, Fault
from tests.fleet_process import FIRE, GUILD, MEMBER, ROUND
from tests.test_fleet_acceptance import WAIT, child_env, fleet

CEILING = 4  # OPENAI_MAX_CONCURRENT, the account's calls at once, for the whole fleet
SHARES = (10, 10, 10)  # 30 edits over three processes
DELAY = 0.4  # seconds the fake works on each edit: long enough for the calls of all three to overlap
LEASE = 3  # JOB_LEASE_SECONDS (the shortest allowed): a lease round every second


async def grant(storage: Storage, credits: int) -> None:
    await storage.ledger.grant(GUILD, MEMBER, credits, actor_id=None, reason="t", starting_credits=0)


# 4 over 3 processes is 2, 1, 1; 2 over 3 cannot be split, so each call takes one of the ceiling's two
# slots from the database (bot/storage/fleet_slots.py): without them the three would make 3 calls.
@pytest.mark.parametrize("ceiling", [CEILING, 2])
async def test_three_processes_together_never_send_the_provider_more_calls_at_once_than_its_ceiling(
    postgres_url: str, tmp_path: Path, ceiling: int
):
    storage = await Storage.open(postgres_url)  # migrated here, before any child opens it
    try:
        await grant(storage, 1)  # lets the children's price check pass; the rest is granted below
        async with FakeOpenAI(delay=DELAY) as openai:
            # Each process would run 10 of the member's edits at once: only the ceiling holds them back.
            env = child_env(
                openai, postgres_url, tmp_path, OPENAI_MAX_CONCURRENT=str(ceiling), MAX_JOBS_PER_USER="10"
            )
            async with asyncio.timeout(WAIT), fleet(env, tmp_path, SHARES) as children:
                ready = await children.read_all()
                assert [r["fleet"] for r in ready] == [len(SHARES)] * len(SHARES)  # from their rounds
                assert sorted(r["rank"] for r in ready) == list(range(len(SHARES)))  # one place each
                # SHARD_COUNT=1: two of the three serve no shard, and count all the same (they run jobs).
                assert sorted(len(r["shards"]) for r in ready) == [0, 0, 1]
                [per_job] = {r["per_job"] for r in ready}
                await grant(storage, per_job * sum(SHARES) - 1)
                await children.go()
                reports = await children.read_all()
                assert await children.exits() == [0, 0, 0]

        outcomes = Counter(o for r in reports for o in r["outcomes"])
        assert outcomes == {"ok": sum(SHARES)}
        delivered = [job_id for r in reports for job_id in r["delivered"]]
        assert len(set(delivered)) == len(delivered) == sum(SHARES)  # each result once
        assert openai.post_count == openai.edits_served == sum(SHARES)  # each edit sent once, none refused
        # What the provider saw: never more than the ceiling at once, and the whole ceiling at some point
        # (4 over 3 processes is 2, 1, 1: floor(4 / 3) each would have left one call unused), so calls of
        # every process did overlap and the count could catch a breach.
        assert openai.peak_in_flight == ceiling, openai.peak_in_flight
    finally:
        await storage.close()


async def open_circuits(storage: Storage) -> dict[str, float]:
    """The circuits some process has shared as open (read only: nothing is handed over)."""
    return await storage.circuits.exchange({}, ())


async def test_a_circuit_one_process_opens_stops_the_others_calling_the_provider_from_their_next_lease_round(
    postgres_url: str, tmp_path: Path
):
    storage = await Storage.open(postgres_url)
    try:
        await grant(storage, 1)
        async with FakeOpenAI() as openai:
            # Lease rounds a second apart: the round is the promise, so the test waits for rounds, not time.
            env = child_env(openai, postgres_url, tmp_path, JOB_LEASE_SECONDS=str(LEASE))
            async with asyncio.timeout(WAIT), fleet(env, tmp_path, (1, 1, 1)) as children:
                ready = await children.read_all()
                [per_job] = {r["per_job"] for r in ready}
                await grant(storage, per_job * 20)
                a, others = 0, (1, 2)

                # b and c call the provider, and it answers them.
                await children.tell(f"{FIRE} 2", *others)
                assert [r["outcomes"] for r in await children.read(*others)] == [["ok", "ok"]] * 2
                assert openai.post_count == 4

                # The provider fails a's calls: after three failures a's circuit opens, and a shares it.
                openai.fail_always(Fault.SERVER_ERROR)
                await children.tell(f"{FIRE} 3", a)
                [failed] = await children.read(a)
                assert failed["outcomes"] == ["failed"] * 3
                sent = openai.post_count
                assert sent == 4 + 3
                # Shared when it opens; a's next lease round would share it anyway, so within a lease.
                loop = asyncio.get_running_loop()
                deadline = loop.time() + LEASE
                while "openai" not in await open_circuits(storage):
                    assert loop.time() < deadline, "a's open circuit was not shared within a lease"
                    await asyncio.sleep(0.05)

                # The provider answers again: only the shared circuit can keep b and c from calling it.
                openai.clear_faults()
                await children.tell(ROUND, *others)  # each one's next whole lease round
                views = await children.read(*others)
                assert [v["circuits"]["openai"] for v in views] == ["open", "open"]
                await children.tell(f"{FIRE} 3", *others)
                assert [r["outcomes"] for r in await children.read(*others)] == [["failed"] * 3] * 2
                assert openai.post_count == sent  # not one call from b or c reached the provider

                await children.tell("end", a, *others)
                assert await children.exits() == [0, 0, 0]
    finally:
        await storage.close()
