"""The application's services, built once from the resources the entry point owns. No Discord here."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bot.catalog import Catalog
from bot.config import Settings
from bot.jobs import EditService
from bot.providers.base import Provider
from bot.providers.http import RetryPolicy
from bot.providers.openai import OpenAIProvider
from bot.storage import Storage

SALT_FILE = "install_salt"


@dataclass
class Services:
    settings: Settings
    catalog: Catalog
    storage: Storage
    providers: dict[str, Provider]
    edits: EditService


def build_providers(settings: Settings, session: aiohttp.ClientSession) -> dict[str, Provider]:
    """One adapter per configured provider, all sharing the process's HTTP session."""
    policy = RetryPolicy()
    built: dict[str, Provider] = {}
    for p in settings.providers:
        if p.name == "openai":
            built["openai"] = OpenAIProvider(
                session,
                p.api_key.reveal(),
                p.base_url,
                policy=policy,
                call_timeout=settings.provider_call_timeout_seconds,
            )
    return built


def load_or_create_salt(data_dir: Path) -> bytes:
    """A per-install random salt so provider-side user ids cannot be mapped back to Discord ids."""
    path = data_dir / SALT_FILE
    if path.exists():
        return path.read_bytes()
    data_dir.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_bytes(32)
    path.write_bytes(salt)
    return salt


def build_services(
    settings: Settings, catalog: Catalog, storage: Storage, providers: dict[str, Provider]
) -> Services:
    edits = EditService(
        settings=settings,
        catalog=catalog,
        storage=storage,
        providers=providers,
        user_salt=load_or_create_salt(settings.data_dir),
    )
    return Services(settings, catalog, storage, providers, edits)
