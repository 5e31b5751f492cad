"""The end-to-end harness itself: what keeps its tests independent of the date they run on."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.harness import clear_of_midnight


@pytest.mark.parametrize(
    ("at", "waited"),
    [
        (dt.datetime(2027, 1, 31, 23, 59, 30, tzinfo=dt.UTC), 31.0),  # a month's last half minute
        (dt.datetime(2028, 2, 29, 23, 58, 30, tzinfo=dt.UTC), 91.0),  # a leap day's end
        (dt.datetime(2027, 1, 31, 23, 57, 0, tzinfo=dt.UTC), None),  # three minutes left: no wait
        (dt.datetime(2027, 2, 1, 0, 0, 0, tzinfo=dt.UTC), None),  # just past midnight
    ],
)
async def test_a_bot_never_starts_close_enough_to_a_utc_midnight_to_run_across_it(
    at: dt.datetime, waited: float | None
) -> None:
    """Budgets and allowances run by UTC day and month: a test that charged before midnight and checked
    after it would see another month."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    await clear_of_midnight(now=lambda: at, sleep=sleep)
    assert slept == ([] if waited is None else [waited])
