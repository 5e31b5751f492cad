"""Spend since a period start, for the budgets: running totals minus a mark per period, plus open holds.

A budget (a server's monthly cap or allotment, the bot-wide budget) compares credits captured since the
month began, plus provider spend nobody was charged for (`absorbed_spend`) since then, plus every open
hold, with its cap. Summing the append-only ledger for that made every budget-checked reservation cost
as much as the month had captures. Instead (migration 0012):

- `spend_totals`: per server, captured and absorbed credits of all time, added by triggers in the
  transaction that writes each row, so the totals always equal the sums of the rows and only grow.
- `spend_periods` / `spend_marks`: for a period start `since`, the totals of the rows created before
  it, per server and for the bot, taken once per period by the first budget check that needs them
  (under the budget lock, so marks are never taken twice side by side). Spend since `since` = running
  total - mark: one row per server, the sum of every server's rows for the bot.
- open holds: `SUM(held)` over the accounts with `held > 0`, through a partial index of exactly those.

A mark is the totals read in the same statement as the rows since `since` (one snapshot), minus those
rows: exactly the rows created before `since` that had committed by then. Why spend = total - mark can
only count too much, never too little: the total grows with every row committed later, whatever its
`created_at`. A row created at or after `since` is counted, as it must be; a row created before `since`
that commits after the mark was taken (a transaction that read the clock before midnight and commits
after it, or a process whose clock is behind) is counted too, although it belongs to the period
before. So a budget may refuse a little early, by such late rows, and never lets spend pass it. To keep
even that rare, marks are taken only once the period is MARK_DELAY old by the storage clock; until
then (and for a `since` in the future) spend is summed over the ledger rows since `since` as before,
which is exact and cheap, since there are only a minute's rows. A clock moving backwards is safe: an old
period is marked once, by whatever rows exist when it is needed, and the same argument holds for it.

The reads (totals, marks and holds) are ONE statement: a capture moves credits from a hold to the totals
in one transaction, and two statements on PostgreSQL's READ COMMITTED could see the hold gone but not
the capture yet. The reports (`spend_by_guild`) read the same marks, so what `/admin` and `/owner` show
agrees with what the budgets count.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from bot.storage.connection import Body, Reader, Statement, execute, fetch_one, iso, stamp

# How old a period must be (by the storage clock) before it is marked: longer than a transaction takes
# from reading the clock to its commit, and than processes' clocks differ, so a row stamped before the
# period that commits after its mark (counted in both periods, see above) takes a stalled transaction or
# a clock that far off. Until then, spend is summed over the period's own rows.
MARK_DELAY = dt.timedelta(minutes=1)

# Marks of periods that began longer ago than this are deleted by the hourly sweep (`prune_marks`): a
# budget counts from the start of its current period, a month at most, so no check reads them again, and
# a report of an old period that finds none sums its rows instead. Two months, so last month's report
# still reads its marks.
MARK_RETENTION = dt.timedelta(days=62)

_MARKED = "(SELECT 1 FROM spend_periods WHERE since = ?)"

# Exact sums over the rows since `since` (the period is young, or `since` is in the future).
_GUILD_SINCE = (
    "(SELECT COALESCE(SUM(amount), 0) FROM ledger"
    " WHERE kind = 'capture' AND created_at >= ? AND guild_id = ?)"
    " + (SELECT COALESCE(SUM(credits), 0) FROM absorbed_spend WHERE created_at >= ? AND guild_id = ?)"
)
_BOT_SINCE = (
    "(SELECT COALESCE(SUM(amount), 0) FROM ledger WHERE kind = 'capture' AND created_at >= ?)"
    " + (SELECT COALESCE(SUM(credits), 0) FROM absorbed_spend WHERE created_at >= ?)"
)
# Running totals minus the period's marks (no mark: 0, which is also what `since` "" gets).
_GUILD_TOTAL = (
    "COALESCE((SELECT captured + absorbed FROM spend_totals WHERE guild_id = ?), 0)"
    " - COALESCE((SELECT captured_before + absorbed_before FROM spend_marks"
    "             WHERE guild_id = ? AND since = ?), 0)"
)
_BOT_TOTAL = (
    "COALESCE((SELECT SUM(captured + absorbed) FROM spend_totals), 0)"
    " - COALESCE((SELECT captured_before + absorbed_before FROM spend_periods WHERE since = ?), 0)"
)
# `held > 0` repeated so both databases use the partial index accounts_open_holds.
_GUILD_HELD = "(SELECT COALESCE(SUM(held), 0) FROM accounts WHERE guild_id = ? AND held > 0)"
_BOT_HELD = "(SELECT COALESCE(SUM(held), 0) FROM accounts WHERE held > 0)"

# Every server's mark for a period, from its totals and its rows since `since`, in one snapshot.
_MARK_GUILDS = (
    "INSERT INTO spend_marks (guild_id, since, captured_before, absorbed_before) "
    "SELECT t.guild_id, CAST(? AS TEXT), t.captured - COALESCE(c.credits, 0), "
    "       t.absorbed - COALESCE(a.credits, 0) "
    "FROM spend_totals t "
    "LEFT JOIN (SELECT guild_id, SUM(amount) AS credits FROM ledger "
    "           WHERE kind = 'capture' AND created_at >= ? GROUP BY guild_id) c ON c.guild_id = t.guild_id "
    "LEFT JOIN (SELECT guild_id, SUM(credits) AS credits FROM absorbed_spend WHERE created_at >= ? "
    "           GROUP BY guild_id) a ON a.guild_id = t.guild_id "
    "WHERE true ON CONFLICT DO NOTHING"  # SQLite reads `ON CONFLICT` after a SELECT only behind a WHERE
)
# The bot's mark: the sum of the servers' marks just taken (the same snapshot).
_MARK_PERIOD = (
    "INSERT INTO spend_periods (since, captured_before, absorbed_before, marked_at) "
    "SELECT CAST(? AS TEXT), COALESCE(SUM(captured_before), 0), COALESCE(SUM(absorbed_before), 0), "
    "       CAST(? AS TEXT) "
    "FROM spend_marks WHERE since = ? ON CONFLICT DO NOTHING"
)


def marks_due(moment: dt.datetime, since: dt.datetime) -> bool:
    """Whether spend since `since` is counted from marks (the period is MARK_DELAY old at `moment`)."""
    return moment >= since + MARK_DELAY


def _read(since: str, guild_id: int | None, bot: bool, *, marked: bool) -> Statement:
    """One statement: (whether `since` is marked, the server's spend, the bot's spend), each spend with
    its open holds; None for a spend not asked for. `marked`: from totals and marks, else summed over the
    ledger rows since `since`."""
    parts: list[str] = [_MARKED]
    params: list[object] = [since]
    if guild_id is not None:
        if marked:
            parts.append(f"{_GUILD_TOTAL} + {_GUILD_HELD}")
            params += [guild_id, guild_id, since, guild_id]
        else:
            parts.append(f"{_GUILD_SINCE} + {_GUILD_HELD}")
            params += [since, guild_id, since, guild_id, guild_id]
    else:
        parts.append("NULL")
    if bot:
        parts.append(f"{_BOT_TOTAL} + {_BOT_HELD}" if marked else f"{_BOT_SINCE} + {_BOT_HELD}")
        params += [since] if marked else [since, since]
    else:
        parts.append("NULL")
    return fetch_one("SELECT " + ", ".join(parts), params)


def _mark(since: str, now: str) -> Body[None]:
    """Take the period's marks. Only under the budget lock: marks taken side by side from two snapshots
    would not add up to the bot's."""
    yield execute(_MARK_GUILDS, (since, since, since))
    yield execute(_MARK_PERIOD, (since, now, since))


def spent(
    moment: dt.datetime, since: dt.datetime | None, guild_id: int | None, bot: bool
) -> Body[tuple[int | None, int | None]]:
    """(credits the server `guild_id` spent since `since`, the same for every server together), each
    with its open holds; None for the one not asked for (`guild_id` None, `bot` False). `since` None:
    since the beginning. Run inside a transaction holding the budget lock (`limits.guard_refusal`), which
    marks the period the first time it is needed."""
    if since is not None and not marks_due(moment, since):
        row = yield _read(iso(since), guild_id, bot, marked=False)
        return _spend(row)
    text = iso(since) if since is not None else ""  # nothing was created before "": no mark
    row = yield _read(text, guild_id, bot, marked=True)
    if since is not None and row[0] is None:
        yield from _mark(text, stamp(moment))
        row = yield _read(text, guild_id, bot, marked=True)
    return _spend(row)


def prune_marks(before: dt.datetime) -> Body[int]:
    """Delete the marks of periods that began before `before` (MARK_RETENTION ago); how many periods.
    Without the budget lock: no budget check reads a period that old (were one to, it would find the
    period unmarked and mark it again from that moment's totals, which is as exact as the first time)."""
    since = iso(before)
    yield execute("DELETE FROM spend_marks WHERE since < ?", (since,))
    periods = yield execute("DELETE FROM spend_periods WHERE since < ?", (since,))
    return int(periods)


def _spend(row: Any) -> tuple[int | None, int | None]:
    guild, bot = row[1], row[2]
    return (None if guild is None else int(guild)), (None if bot is None else int(bot))


# -- the same numbers per server, for the reports ----------------------------------------------------------

_BY_GUILD_MARKED = (
    "SELECT guild_id, SUM(spent), SUM(held) FROM ("
    "  SELECT t.guild_id, t.captured + t.absorbed - COALESCE(m.captured_before + m.absorbed_before, 0)"
    "         AS spent, 0 AS held"
    "  FROM spend_totals t LEFT JOIN spend_marks m ON m.guild_id = t.guild_id AND m.since = ?"
    "  UNION ALL SELECT guild_id, 0, held FROM accounts WHERE held > 0"
    ") AS spend GROUP BY guild_id HAVING SUM(spent) <> 0 OR SUM(held) <> 0"
)
_BY_GUILD_SINCE = (
    "SELECT guild_id, SUM(spent), SUM(held) FROM ("
    "  SELECT guild_id, amount AS spent, 0 AS held FROM ledger WHERE kind = 'capture' AND created_at >= ?"
    "  UNION ALL SELECT guild_id, credits, 0 FROM absorbed_spend WHERE created_at >= ?"
    "  UNION ALL SELECT guild_id, 0, held FROM accounts WHERE held > 0"
    ") AS spend GROUP BY guild_id HAVING SUM(spent) <> 0 OR SUM(held) <> 0"
)


async def spend_by_guild(db: Reader, since: dt.datetime) -> dict[int, tuple[int, int]]:
    """{guild_id: (credits spent since `since`, credits held now)} for every server with either, counted
    as the budget checks count them: from the period's marks once it has them, else over its rows.
    Read only: a period nobody has marked yet (no budget checked since it began) is summed."""
    text = iso(since)
    if marks_due(db.now(), since) and await db.one(f"SELECT {_MARKED}", (text,)) is not None:
        rows = await db.all(_BY_GUILD_MARKED, (text,))
    else:
        rows = await db.all(_BY_GUILD_SINCE, (text, text))
    return {r[0]: (int(r[1]), int(r[2])) for r in rows}
