"""Settings are declared once (a `Settings` field and its default) and documented everywhere a user
looks: every variable the reader accepts has a commented line in `.env.example` and a row in the
README's settings table, and the reader's defaults are the fields' defaults."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from bot.config import PROVIDER_ENV, Settings, load_settings
from bot.domain.options import BACKGROUNDS, OUTPUT_FORMATS, QUALITIES, SIZES

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


# The settings whose `.env.example` comment lists every value the reader takes.
CHOICE_SETTINGS = {
    "DEFAULT_QUALITY": QUALITIES,
    "DEFAULT_SIZE": SIZES,
    "DEFAULT_BACKGROUND": BACKGROUNDS,
    "DEFAULT_FORMAT": OUTPUT_FORMATS,
}


def listed_values(example: str, name: str) -> set[str]:
    """The values the comment above `# NAME=` offers: `Label: a, b or c (remark).`"""
    [comment] = re.findall(rf"^# [^:\n]+: ([^\n]*)\n# {name}=", example, re.M)
    offered = re.split(r"\s*\(|\.$", comment)[0]
    return {v.strip() for v in re.split(r",|\bor\b", offered) if v.strip()}


def test_env_example_offers_exactly_the_values_a_choice_setting_takes():
    # A value offered there but refused at start-up (DEFAULT_SIZE=WIDTHxHEIGHT was) stops the bot.
    example = (ROOT / ".env.example").read_text()
    for name, allowed in CHOICE_SETTINGS.items():
        assert listed_values(example, name) == set(allowed), name


def test_every_variable_docker_compose_reads_has_a_line_in_env_example():
    # README tells operators to put POSTGRES_PASSWORD in .env; .env.example had no line for it.
    example = (ROOT / ".env.example").read_text()
    compose = (ROOT / "docker-compose.yml").read_text()
    names = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", compose))
    assert names  # the file was parsed, not an empty match
    assert sorted(n for n in names if not re.search(rf"^#? ?{n}=", example, re.M)) == []
