"""Settings are declared once (a `Settings` field and its default) and documented everywhere a user
looks: every variable the reader accepts has a commented line in `.env.example` and a row in the
README's settings table, and the reader's defaults are the fields' defaults."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from bot.config import PROVIDER_ENV, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
SOURCE = (ROOT / "bot" / "config.py").read_text()


def variables() -> set[str]:
    """Every environment variable bot/config.py reads."""
    plain = set(re.findall(r'r\.\w+\(\s*"([A-Z][A-Z0-9_]+)"', SOURCE))
    per_provider = {
        f"{prefix}_{what}" for prefix, _ in PROVIDER_ENV.values() for what in ("API_KEY", "BASE_URL")
    }
    return plain | per_provider | {"DISCORD_TOKEN"}


def test_every_setting_has_a_line_in_env_example_and_a_row_in_the_readme():
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    names = variables()
    assert len(names) > 40  # the reader was parsed, not an empty match
    assert sorted(n for n in names if not re.search(rf"^#? ?{n}=", example, re.M)) == []
    assert sorted(n for n in names if n not in readme) == []


def test_the_readers_defaults_are_the_fields_defaults():
    loaded = load_settings({"DISCORD_TOKEN": "t" * 30, "OPENAI_API_KEY": "sk-test-0123456789"})
    declared = Settings(discord_token=loaded.discord_token)
    skip = {"discord_token", "providers", "data_dir"}  # set here, or normalised (./data vs data)
    differing = [
        f.name
        for f in fields(Settings)
        if f.name not in skip and getattr(loaded, f.name) != getattr(declared, f.name)
    ]
    assert differing == []
    assert loaded.data_dir == declared.data_dir
