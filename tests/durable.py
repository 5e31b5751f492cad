"""Shared by the durable-jobs tests: a catalog with a synchronous and two submit-then-poll providers,
and read-only looks into the bot's SQLite file (the tests wait on job states, never on sleeps)."""

from __future__ import annotations

import os
import sqlite3
import tomllib
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from bot.catalog import Catalog, parse_catalog
from tests.fakes.discord import FakeChannel, FakeDiscord, FakeGuild, FakeInteraction, FakeMessage, FakeUser
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.wavespeed_server import FakeWaveSpeed
from tests.fixtures import provider_env

DATA = Path(__file__).resolve().parent / "data"
PHOTO = (DATA / "chelsea.png").read_bytes()

# gpt-image-1.5 on OpenAI (one synchronous call), ws-mini on WaveSpeed and atlas-mini on Atlas Cloud
# (submit, then poll). List prices are flat so charges are exact: $0.01 = 10 credits, $0.02 = 20.
CATALOG_TOML = """
[models."gpt-image-1.5"]
name = "GPT Image 1.5"
qualities = ["low", "medium", "high", "auto"]
max_input_images = 16
price.low = { square = 0.01, other = 0.02 }
price.medium = { square = 0.01, other = 0.02 }
price.high = { square = 0.01, other = 0.02 }

[[models."gpt-image-1.5".routes]]
provider = "openai"

[models."ws-mini"]
name = "WS Mini"
qualities = ["auto"]
sizes = ["auto"]
max_input_images = 4
price.high = { square = 0.02, other = 0.02 }

[[models."ws-mini".routes]]
provider = "wavespeed"
model = "openai/gpt-image-1-mini/edit"
price = 0.02
max_input_images = 4
backgrounds = ["auto"]
output_formats = ["png"]

[models."atlas-mini"]
name = "Atlas Mini"
qualities = ["low", "medium", "high"]
sizes = ["1024x1024"]
max_input_images = 4
price.low = { square = 0.004, other = 0.004 }
price.medium = { square = 0.004, other = 0.004 }
price.high = { square = 0.004, other = 0.004 }

[[models."atlas-mini".routes]]
provider = "atlascloud"
model = "openai/gpt-image-1-mini/edit"
price = 0.004
max_input_images = 4
backgrounds = ["auto"]
output_formats = ["png"]
"""
CATALOG: Catalog = parse_catalog(tomllib.loads(CATALOG_TOML))


@contextmanager
def database(data_dir: Path) -> Iterator[sqlite3.Connection]:
    """The bot's database, opened read-only beside the running bot (WAL allows it)."""
    conn = sqlite3.connect(f"file:{data_dir / 'retouch.sqlite3'}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    with closing(conn):
        yield conn


def jobs(data_dir: Path) -> list[dict[str, Any]]:
    """Every job row, oldest first ([] before the bot created its schema)."""
    path = data_dir / "retouch.sqlite3"
    if not path.exists():
        return []
    try:
        with database(data_dir) as db:
            return [dict(r) for r in db.execute("SELECT * FROM jobs ORDER BY created_at, rowid")]
    except sqlite3.OperationalError:  # no jobs table yet
        return []


def job_states(data_dir: Path) -> list[str]:
    return [j["state"] for j in jobs(data_dir)]


def ledger_kinds(data_dir: Path, job_id: str) -> list[str]:
    with database(data_dir) as db:
        return [r[0] for r in db.execute("SELECT kind FROM ledger WHERE job_id = ? ORDER BY id", (job_id,))]


def assert_books_balance(data_dir: Path) -> None:
    """Every account: balance and held equal the ledger's sums, and held is exactly what its live jobs
    reserved (no hold survives its job)."""
    with database(data_dir) as db:
        accounts = db.execute("SELECT guild_id, user_id, balance, held FROM accounts").fetchall()
        for guild_id, user_id, balance, held in accounts:
            sums = db.execute(
                "SELECT COALESCE(SUM(delta_balance), 0), COALESCE(SUM(delta_held), 0) FROM ledger "
                "WHERE guild_id = ? AND user_id = ?",
                (guild_id, user_id),
            ).fetchone()
            assert (balance, held) == tuple(sums), (guild_id, user_id)
            live = db.execute(
                "SELECT COALESCE(SUM(reserved), 0) FROM jobs WHERE guild_id = ? AND user_id = ? AND state IN "
                "('reserved', 'submitting', 'submitted', 'completed')",
                (guild_id, user_id),
            ).fetchone()[0]
            assert held == live, (guild_id, user_id, held, live)


def component_id(message: FakeMessage, matches: Callable[[str], bool]) -> str | None:
    """The custom id of the first component on `message` whose custom id `matches`."""
    for row in message.components:
        for component in row.get("components", []):
            custom_id = str(component.get("custom_id", ""))
            if matches(custom_id):
                return custom_id
    return None


def control(message: FakeMessage, action: str) -> str | None:
    """The custom id of a job button (`cancel`, `again`, `retry`, `delete`) on `message`."""
    return component_id(message, lambda c: c.startswith("retouch:job:") and c.endswith(f":{action}"))


async def private_answer(fake: FakeDiscord, it: FakeInteraction) -> str:
    """The private text a click was answered with: acknowledged first (a deferral, before any database
    read), then told privately."""
    [answer] = await fake.wait_until(lambda: it.followups)
    assert it.callbacks[0]["type"] == 6 and answer.ephemeral
    return answer.content


def undo_button(message: FakeMessage) -> str | None:
    """The custom id of the Undo button on `message` (a result that continues an earlier one)."""
    return component_id(message, lambda c: c.startswith("retouch:undo:"))


def results(messages: list[FakeMessage]) -> list[FakeMessage]:
    """Result messages: public, with an image and the job buttons."""
    return [m for m in messages if not m.ephemeral and m.files and control(m, "retry")]


ROOT = Path(__file__).resolve().parents[1]


async def art_club(
    fake: FakeDiscord,
    openai: FakeOpenAI,
    wavespeed: FakeWaveSpeed,
    data_dir: Path,
    *,
    guild_id: int | None = None,
) -> tuple[FakeGuild, FakeChannel, FakeUser, dict[str, str]]:
    """The server a real `python -m bot` process serves in these tests (#art, member alice, approved by
    the operator) and that process's environment: both fake providers, this catalog, `data_dir`.
    `guild_id`: the server's id (which gateway shard it is on), a new one by default."""
    guild = await fake.create_guild(name="Art Club", id=guild_id)
    channel = await guild.create_text_channel("art")
    alice = fake.create_user("alice")
    await guild.add_member(alice)
    catalog = data_dir / "catalog.toml"
    catalog.write_text(CATALOG_TOML)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "DISCORD_TOKEN": fake.token,
        "DISCORD_API_BASE": fake.api_base,
        **provider_env("openai", openai),
        **provider_env("wavespeed", wavespeed),
        "CATALOG_PATH": str(catalog),
        "DATA_DIR": str(data_dir),
        "DEV_GUILD_ID": str(guild.id),
        "ALLOWED_GUILD_IDS": str(guild.id),  # the operator approved the test server
        "METRICS_PORT": "0",
        "LOG_LEVEL": "info",
    }
    return guild, channel, alice, env
