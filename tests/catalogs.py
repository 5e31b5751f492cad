"""Catalog files for tests that must not change when the packaged catalog does."""

from __future__ import annotations

from pathlib import Path

# bot/data/catalog.toml as shipped in November 2026: gpt-image-1, -1-mini and -1.5 on five providers.
NOVEMBER_CATALOG = Path(__file__).parent / "data" / "catalog-2026-11.toml"
