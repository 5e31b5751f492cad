"""What the admin and operator embeds show: a list too long for its field keeps whole lines and says how
many it left out, and a report's UTC period is given as the UTC days it covers. The renderers are pure,
so these build their inputs directly."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip

import discord
import pytest

from bot.jobs.model import EditOutcome, ResultFile
from bot.messages import LINK_SHOWN, as_typed
from bot.services.admin import GuildPolicy, OperatorReport, RoleTier, ServerSpend, SpendReport
from bot.services.diagnostics import DatabaseStatus, Diagnosis
from bot.services.policy import Budget
from bot.storage.reports import LedgerEntry
from cogs._admin_render import budget_text, policy_embed, report_embed, report_file
from cogs._moderation import notice_text
from cogs._ui import FIELD_CHARS, MORE, fit_lines, result_embed
from cogs.diagnose import diagnosis_embed
from cogs.owner import operator_embed

SINCE = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
BUDGET = Budget(captured=0, held=0, server_cap=None, allotment=None, bot_captured=0, bot_held=0, bot_cap=None)


def field(embed: discord.Embed, prefix: str) -> str:
    [value] = [f.value for f in embed.fields if f.name and f.name.startswith(prefix)]
    assert value is not None
    return value


def assert_whole_lines_then_the_rest_counted(value: str, lines: list[str], more: str = MORE) -> None:
    """`value` is the first lines of `lines` unchanged, then the note counting every line left out."""
    *shown, note = value.split("\n")
    assert len(value) <= FIELD_CHARS
    assert shown == lines[: len(shown)] and len(shown) < len(lines)
    assert note == more.format(len(lines) - len(shown))


def test_fit_lines_keeps_what_fits_and_says_nothing_when_nothing_is_left_out():
    assert fit_lines(["a", "b"]) == "a\nb"
    assert fit_lines([], empty="None yet.") == "None yet."
    assert fit_lines([], hidden=3) == "…and 3 more"
    assert fit_lines(["a" * 30, "b" * 30, "c"], limit=45) == "a" * 30 + "\n…and 2 more"
    assert fit_lines(["a" * 50], limit=40) == "…and 1 more"  # never a line cut in two


@pytest.mark.parametrize("count", [1, 3, 40])
def test_a_results_notes_never_push_its_embed_past_discords_limits(count: int):
    """However many notes pile up (a model notice per default that moved, the server's rules), the
    result's embed stays within 25 fields and 6,000 characters: Discord would refuse a paid result."""
    notes = tuple(f"note {i}: " + "x" * 1500 for i in range(count))
    outcome = EditOutcome(
        "0123456789abcdef",
        "p" * 6000,
        "m",
        "Model",
        "openai",
        "high",
        "1024x1024",
        (ResultFile("r.png", b"", "png"),),
        10,
        90,
        notes,
    )
    embed = result_embed(outcome, "alice")
    names = [f.name for f in embed.fields]
    assert len(embed) <= 6000 and len(names) <= 25
    assert names.count("Note") == min(count, 3) - (count > 3)
    if count > 3:
        rest = field(embed, "Notes")
        assert rest.endswith(MORE.format(count - 3)) and rest.startswith("note 2: ")


def test_the_operator_report_with_many_servers_lists_whole_lines_then_how_many_more():
    servers = tuple(
        ServerSpend(1_400_000_000_000_000_000 + i, i % 2 == 0, 123_456_000 + i, 0, 1_234_560_000)
        for i in range(30)
    )
    embed = operator_embed(OperatorReport(SINCE, servers, None, 1000))
    value = field(embed, "Servers")
    every = [f"`{s.guild_id}` (" for s in servers]
    *shown, note = value.split("\n")
    assert [line[: len(every[0])] for line in shown] == every[: len(shown)]
    assert note == f"…and {len(servers) - len(shown)} more" and len(value) <= FIELD_CHARS


def test_policy_show_with_many_role_tiers_lists_whole_lines_then_how_many_more():
    tiers = tuple(
        RoleTier(
            1_500_000_000_000_000_000 + i, 100_000 + i, "high", frozenset({"gpt-image-1.5", "ws-mini"}), 3
        )
        for i in range(14)
    )
    embed = policy_embed(GuildPolicy(1, tiers=tiers), BUDGET, 0, 1000)
    lines = [
        f"<@&{t.role_id}>: allowance {t.allowance}, quality up to high, models gpt-image-1.5, ws-mini, "
        "3 images per edit"
        for t in tiers
    ]
    assert_whole_lines_then_the_rest_counted(field(embed, "Role tiers"), lines)


def test_the_spend_report_lists_whole_lines_then_how_many_more_are_in_the_csv():
    long_names = [(f"{'model-' * 30}{i}", 1000 - i) for i in range(12)]
    report = SpendReport(1, "this month", SINCE, None, (), 1000, by_model=tuple(long_names))
    lines = [f"{name} — {credits} (${credits / 1000:.2f})" for name, credits in long_names]
    value = field(report_embed(report), "By model")
    assert_whole_lines_then_the_rest_counted(value, lines, "…and {} more (see the CSV)")


def utc(*day: int) -> dt.datetime:
    return dt.datetime(*day, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("since", "until", "says"),
    [
        (utc(2026, 11, 1), utc(2026, 12, 1), "From 2026-11-01 through 2026-11-30 (UTC)."),  # this month
        (utc(2026, 11, 10), utc(2026, 11, 11), "On 2026-11-10 (UTC)."),  # today
        (None, None, "All time."),
    ],
)
def test_a_spend_report_gives_its_period_as_the_utc_days_it_covers(
    since: dt.datetime | None, until: dt.datetime | None, says: str
):
    """Not Discord's <t:…:D>, which shows each reader's own day: a UTC-5 reader saw the month start on
    the last day of the month before, and the exclusive end as one day too many."""
    description = report_embed(SpendReport(1, "this month", since, until, (), 1000)).description
    assert description is not None and description.startswith(says)


def test_the_operator_report_gives_the_utc_day_its_month_starts():
    description = operator_embed(OperatorReport(SINCE, (), None, 1000)).description
    assert description is not None and description.startswith("Since 2026-11-01 (UTC): **$0.00**")


def ledger_rows(count: int) -> tuple[LedgerEntry, ...]:
    return tuple(
        LedgerEntry(
            i, 5, 100 + i % 7, f"job{i:06d}", "capture", 12, 0, -12, None, None, "2026-11-02T10:00:00"
        )
        for i in range(count)
    )


@pytest.mark.parametrize(("limit", "attached"), [(10**6, ".csv"), (3_000, ".csv.gz"), (200, None)])
async def test_the_reports_csv_fits_the_upload_limit_compressed_or_is_left_out(
    limit: int, attached: str | None
):
    """A busy server's "all time" can hold more rows than one upload takes: the CSV is sent as it is,
    else gzipped, else not at all (the command then says to pick a shorter period); never refused."""
    report = SpendReport(5, "this month", SINCE, None, ledger_rows(200), credits_per_usd=1000)
    file = await report_file(report, 5, limit)
    if attached is None:
        assert file is None
        return
    assert file is not None and file.filename.endswith(attached)
    data = file.fp.read()
    assert len(data) <= limit
    text = (gzip.decompress(data) if attached.endswith(".gz") else data).decode("utf-8")
    assert text == report.csv() and text.count("\n") == 201  # the header and every row


def test_diagnose_lists_keep_whole_lines_and_count_what_did_not_fit():
    warnings = [
        f"gpt-image-{i} on wavespeed shuts down on 2027-01-{i % 28 + 1:02d} (in {i} days)" for i in range(40)
    ]
    diagnosis = Diagnosis(("Send Messages",), None, DatabaseStatus(14, 14, True, "SQLite"), tuple(warnings))
    value = field(diagnosis_embed(diagnosis, 0.05), "Models")
    assert_whole_lines_then_the_rest_counted(value, [f"⚠️ {w}" for w in warnings])


def test_a_provider_order_too_long_for_its_field_names_whole_providers_then_how_many_more():
    """However long the stored order, the Defaults field fits: Discord refuses the whole reply for one
    field over 1,024 characters, and every /admin policy answer shows this embed."""
    order = tuple(f"provider-{i:03}" for i in range(200))
    embed = policy_embed(GuildPolicy(1, provider_order=order), BUDGET, 0, 1000)
    value = field(embed, "Defaults")
    assert len(value) <= FIELD_CHARS
    defaults, providers = value.split("\nProviders: ")
    assert defaults == "model bot default · quality bot default · size bot default"
    *named, note = providers.split(" → ")
    assert named == list(order[: len(named)]) and note == MORE.format(len(order) - len(named))


def test_policy_show_with_many_allowed_models_names_whole_ids_then_how_many_more():
    """An operator's catalog can hold dozens of models: listed whole, everyone's went past Discord's
    1,024 characters for a field and every /admin policy reply was refused (50035), after the change
    it answered was saved. A tier allowing them all still leaves the other tiers in view."""
    models = tuple(f"vendor-image-model-{n:02d}" for n in range(48))
    tiers = (RoleTier(2, models=frozenset(models)), RoleTier(3, allowance=500))
    embed = policy_embed(GuildPolicy(1, models=frozenset(models), tiers=tiers), BUDGET, 0, 1000)
    assert all(len(f.value or "") <= FIELD_CHARS for f in embed.fields)
    everyone = field(embed, "Everyone")
    assert everyone.startswith("Quality up to max · models vendor-image-model-00, vendor-image-model-01, ")
    named, rest = everyone.removeprefix("Quality up to max · models ").split(" · ", 1)
    *shown, note = named.split(", ")
    assert shown == list(models[: len(shown)]) and note == MORE.format(len(models) - len(shown))
    assert rest.startswith("4 images per edit\nCooldown 0 s")
    vip, other = field(embed, "Role tiers").split("\n")
    assert vip.startswith("<@&2>: models vendor-image-model-00, ") and vip.endswith(" more")
    assert other == "<@&3>: allowance 500"


def test_fit_lines_joins_with_the_separator_given():
    assert fit_lines(["a", "b"], sep=" → ") == "a → b"
    assert fit_lines(["a" * 30, "b" * 30, "c"], limit=45, sep=" → ") == "a" * 30 + " → …and 2 more"
    assert fit_lines([], sep=" → ", empty="catalog order") == "catalog order"


def test_the_public_notice_does_not_repeat_a_prompts_links():
    """The bot posts the notice in the channel in its own name: no invite card nor phishing link."""
    text = notice_text(
        "alice", "make it like https://evil.example/x and discord.gg/abc or www.x.io, discord.com/invite/q"
    )
    assert "“make it like [link] and [link] or [link] [link]”" in text
    assert "://" not in text and "discord.gg" not in text
    assert "“a cat: 16:9 ratio”" in notice_text("alice", "a cat: 16:9 ratio")
    # Nor a link in the member's display name, which any member may set.
    assert notice_text("discord.gg/freenitro", "make it blue").startswith("🖌️ **[link]** is editing")


@pytest.mark.parametrize(
    "link",
    [
        "discord.gift/AbCdEf12",
        "discord.new/xyz123",
        "discord.com/gifts/AbCdEf12",
        "discord.com/template/xyz123",
        "discordapp.com/gifts/q",
        "dsc.gg/server",
        "DISCORD.GIFT/x",
        "promos.discord.gg/abc",
    ],
)
def test_the_public_notice_does_not_repeat_a_link_written_without_its_scheme(link: str):
    """Discord draws cards for gift, template and short links written bare; only invites were caught."""
    text = notice_text(f"free {link}", f"free nitro {link}, then make it blue")
    assert text == "🖌️ **free [link]** is editing an image: “free nitro [link] then make it blue”"


def test_the_public_notice_drops_control_characters_and_direction_overrides():
    """A right-to-left override in a prompt or a nickname turned the rest of the bot's line around."""
    text = notice_text("al\u202eice", "make\x00 it \u2066blue\u2069\x1b[31m")
    assert text == "🖌️ **alice** is editing an image: “make it blue[31m”"


@pytest.mark.parametrize(
    "prompt",
    [
        "a cat: 16:9 ratio",
        "50/50 split, 1.5x zoom",
        "3.5/5 and/or e.g. red",
        "swap the faces in image1.png/image2.png",
        "put the node.js/react logos on the laptop",
        "St.Louis/Missouri skyline at night",
        "a poster saying Dr.Who/Tardis",
        "evil.example/phish",  # no scheme: Discord neither links nor cards it
    ],
)
def test_the_public_notice_keeps_words_that_only_look_like_links(prompt: str):
    """Only what Discord links or cards is hidden: a prompt naming two files was shown "swap [link]"."""
    assert f"“{prompt}”" in notice_text("alice", prompt)
    assert LINK_SHOWN not in as_typed(prompt)


def test_spend_in_direct_messages_is_its_own_line_not_an_unapproved_server():
    """ALLOW_DMS edits are booked under server id 0: it read "`0` (not approved)"."""
    servers = (ServerSpend(0, False, 40, 0, None), ServerSpend(123, True, 10, 0, None))
    [field] = operator_embed(OperatorReport(SINCE, servers, None, 1000)).fields
    assert field.value == "Direct messages — $0.04 of bot budget\n`123` (approved) — $0.01 of bot budget"


def test_a_tier_for_everyone_is_named_at_everyone_not_mentioned_as_a_role():
    """@everyone's role id is the server's own: `<@&id>` showed as "@@everyone"."""
    tiers = (RoleTier(1, allowance=50), RoleTier(99, allowance=900))
    embed = policy_embed(GuildPolicy(1, tiers=tiers), BUDGET, 0, 1000)
    [field] = [f for f in embed.fields if (f.name or "").startswith("Role tiers")]
    assert field.value == "@everyone: allowance 50\n<@&99>: allowance 900"


def test_the_operators_budget_line_without_any_cap_does_not_speak_of_one():
    """It read "… of the bot-wide budget" and "… of no bot-wide cap" with no cap at all."""
    text = budget_text(BUDGET, 1000)
    assert text == (
        "This server: $0.00 (0 billed + 0 held)\nAll servers: $0.00 (no bot-wide cap)\n"
        "The bot's operator has set no cap on this server's spend."
    )
    capped = budget_text(dataclasses.replace(BUDGET, bot_cap=20_000), 1000)
    assert capped.startswith("This server: $0.00 (0 billed + 0 held) of the bot-wide budget\n")
    assert "All servers: $0.00 of the bot-wide budget $20.00" in capped
