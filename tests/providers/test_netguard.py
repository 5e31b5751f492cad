"""Outbound fetches of URLs the bot did not build: public http(s) addresses only, every hop re-checked,
checked on the connected socket; API keys never follow a redirect to another origin."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from bot.providers.atlascloud import AtlasCloudProvider
from bot.providers.errors import ServerError, ServiceUnavailable
from bot.providers.http import download, send_idempotent
from bot.providers.netguard import GuardedConnector, is_public_ip
from bot.providers.oneminai import OneMinAIProvider
from bot.providers.segmind import SegmindProvider
from bot.providers.wavespeed import WaveSpeedProvider
from tests.fakes.atlascloud_server import FakeAtlas
from tests.fakes.oneminai_server import FakeOneMin
from tests.fakes.segmind_server import FakeSegmind
from tests.fakes.wavespeed_server import FakeWaveSpeed
from tests.providers.helpers import DATA, FAST, FAST_POLLING, adapter_builder
from tests.providers.test_atlascloud import edit_request as atlas_request
from tests.providers.test_oneminai import edit_request as oneminai_request
from tests.providers.test_segmind import edit_request as segmind_request
from tests.providers.test_wavespeed import edit_request as wavespeed_request

PNG = (DATA / "astronaut.png").read_bytes()


# ----------------------------------------------------------------------------- an internal service


@dataclass
class Recorder:
    """A server on loopback that stands for something internal: it records every request it gets."""

    hits: list[dict[str, str]] = field(default_factory=list)
    port: int = 0

    def url(self, path: str = "/secret.png") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def internal() -> AsyncIterator[Recorder]:
    rec = Recorder()

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        rec.hits.append(dict(request.headers))
        return web.Response(body=PNG, content_type="image/png")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    rec.port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    yield rec
    await runner.cleanup()


def soon() -> float:
    return time.monotonic() + 10.0


# ----------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1%eth0", False),
        ("fd00:ec2::254", False),  # AWS metadata over IPv6
        ("fec0::1", False),  # deprecated site-local, still routed inside some networks
        ("::ffff:127.0.0.1", False),
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::1", False),  # 6to4 of 169.254.169.254
        ("2002:808:808::1", True),  # 6to4 of 8.8.8.8
        ("2001:0:808:808:0:0:f7f7:f7f7", False),  # Teredo (not global, whatever it wraps)
        ("not an address", False),
    ],
)
def test_only_public_addresses_count_as_public(address: str, public: bool) -> None:
    assert is_public_ip(address) is public


# ----------------------------------------------------------------------------- the helper


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/secret.png",
        "http://localhost:{port}/secret.png",
        "http://[::1]:{port}/secret.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/x.png",
        "http://0x7f000001:{port}/secret.png",
        "file:///etc/passwd",
    ],
)
async def test_a_provider_url_to_a_non_public_address_is_never_fetched(
    session: aiohttp.ClientSession, internal: Recorder, url: str
) -> None:
    with pytest.raises(ServerError) as info:
        await download(session, url.format(port=internal.port), max_bytes=10**6, deadline=soon(), policy=FAST)

    assert info.value.accepted is True
    assert internal.hits == []


async def test_a_redirect_from_a_trusted_origin_to_an_internal_one_is_refused(
    session: aiohttp.ClientSession, internal: Recorder
) -> None:
    async with Redirector(internal.url()) as trusted:
        with pytest.raises(ServerError):
            await download(
                session,
                f"{trusted.origin}/out.png",
                max_bytes=10**6,
                deadline=soon(),
                trusted=(trusted.origin,),
            )

    assert trusted.hits == 1
    assert internal.hits == []


async def test_redirects_are_capped(session: aiohttp.ClientSession) -> None:
    async with Redirector("/out.png") as loop:  # redirects to itself forever
        with pytest.raises(ServerError, match="redirects"):
            await download(
                session, f"{loop.origin}/out.png", max_bytes=10**6, deadline=soon(), trusted=(loop.origin,)
            )

    assert loop.hits == 4  # the first request and three redirects


class LyingResolver(AbstractResolver):
    """DNS that answers with loopback for every name (what a rebinding attacker's DNS does)."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET, proto=0, flags=0)
        ]

    async def close(self) -> None:
        return None


async def test_a_name_that_resolves_to_loopback_is_refused_on_the_connected_socket(
    internal: Recorder,
) -> None:
    async with aiohttp.ClientSession(connector=GuardedConnector(resolver=LyingResolver())) as session:
        with pytest.raises(ServerError, match="non-public"):
            await download(
                session,
                f"http://cdn.example.com:{internal.port}/secret.png",
                max_bytes=10**6,
                deadline=soon(),
                policy=FAST,
            )

    assert internal.hits == []


async def test_a_session_that_cannot_check_addresses_refuses_untrusted_urls(internal: Recorder) -> None:
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(ServerError):
            await download(plain, "https://cdn.example.com/out.png", max_bytes=10**6, deadline=soon())


async def test_api_key_headers_never_follow_a_redirect_to_another_origin(
    session: aiohttp.ClientSession, internal: Recorder
) -> None:
    """Even to an origin the bot trusts: a key belongs to the origin it was configured for."""
    async with Redirector(internal.url("/moved")) as api:
        resp = await send_idempotent(
            session,
            "GET",
            f"{api.origin}/v1/status",
            policy=FAST,
            deadline=soon(),
            call_timeout=5.0,
            provider="t",
            headers={"x-api-key": "K-SECRET", "API-KEY": "K-SECRET", "Authorization": "Bearer K-SECRET"},
            trusted=(api.origin, f"http://127.0.0.1:{internal.port}"),
        )

    assert resp.status == 200
    assert len(internal.hits) == 1
    assert not any("K-SECRET" in value for value in internal.hits[0].values())
    assert api.headers[0]["x-api-key"] == "K-SECRET"  # the first hop is the configured origin


class Redirector:
    """A trusted-origin server whose every answer is a 302 to `target` (recording what it got)."""

    def __init__(self, target: str, status: int = 302) -> None:
        self.target = target
        self.status = status
        self.hits = 0
        self.headers: list[dict[str, str]] = []
        self._runner: web.AppRunner | None = None
        self.origin = ""

    async def __aenter__(self) -> Redirector:
        async def handler(request: web.Request) -> web.Response:
            self.hits += 1
            self.headers.append(dict(request.headers))
            return web.Response(status=self.status, headers={"Location": self.target})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.origin = f"http://127.0.0.1:{sock.getsockname()[1]}"
        await web.SockSite(self._runner, sock).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


# ----------------------------------------------------------------------------- through the adapters


def hostile(fake_cls: type, output_prefix: str) -> type:
    """`fake_cls` answering with `target` in place of its own result URLs (and a 302 at `/bounce`)."""

    class Hostile(fake_cls):  # type: ignore[misc, valid-type]
        target = ""

        async def _dispatch(self, request: web.Request) -> web.StreamResponse:
            if request.path == "/bounce":
                raise web.HTTPFound(self.target_after_bounce)
            resp = await super()._dispatch(request)
            if isinstance(resp, web.Response) and resp.content_type == "application/json" and resp.text:
                pattern = re.escape(self.origin + output_prefix) + r'[^"]*'
                text = re.sub(pattern, self.target.replace("{origin}", self.origin), resp.text)
                headers = {
                    k: v
                    for k, v in resp.headers.items()
                    if k.lower() not in ("content-type", "content-length")
                }
                return web.Response(
                    text=text, status=resp.status, content_type="application/json", headers=headers
                )
            return resp

    return Hostile


VENDORS: dict[str, tuple[type, str, Callable[..., Any], dict[str, Any]]] = {
    "atlascloud": (hostile(FakeAtlas, "/storage/outputs/"), "atlas", atlas_request, FAST_POLLING),
    "wavespeed": (hostile(FakeWaveSpeed, "/media/outputs/"), "wavespeed", wavespeed_request, FAST_POLLING),
    "segmind": (hostile(FakeSegmind, "/assets/out-"), "segmind", segmind_request, {}),
    "oneminai": (hostile(FakeOneMin, "/s3/"), "oneminai", oneminai_request, {}),
}
ADAPTERS = {
    "atlascloud": AtlasCloudProvider,
    "wavespeed": WaveSpeedProvider,
    "segmind": SegmindProvider,
    "oneminai": OneMinAIProvider,
}


@pytest.mark.parametrize("vendor", sorted(VENDORS))
@pytest.mark.parametrize("how", ["loopback", "metadata", "localhost", "302 to loopback"])
async def test_adapters_never_fetch_result_urls_that_point_inside(
    session: aiohttp.ClientSession, internal: Recorder, vendor: str, how: str
) -> None:
    fake_cls, _, edit_request, extra = VENDORS[vendor]
    async with fake_cls() as fake:
        fake.target_after_bounce = internal.url()
        fake.target = {
            "loopback": internal.url(),
            "metadata": "http://169.254.169.254/latest/meta-data/iam",
            "localhost": f"http://localhost:{internal.port}/secret.png",
            "302 to loopback": "{origin}/bounce",
        }[how]
        if vendor == "segmind":
            fake.response_mode = "json-url"
            extra = {"upload_url": fake.upload_url}
        if vendor == "wavespeed":
            fake.url_outputs = True  # a route that answers with URLs although base64 was asked for
        provider = adapter_builder(ADAPTERS[vendor], fake, session, io_timeout=5.0, **extra)()

        with pytest.raises(ServerError) as info:
            await provider.edit(edit_request())

    assert info.value.accepted is True  # the job ran: the engine settles it as a paid failure would be
    assert internal.hits == []


async def test_segmind_check_redirected_elsewhere_does_not_carry_the_key(
    session: aiohttp.ClientSession, internal: Recorder
) -> None:
    async with Redirector(internal.url("/v2/requests/x/status")) as api:
        provider = SegmindProvider(session, "K-SECRET", f"{api.origin}/v1", upload_url=f"{api.origin}/up")
        health = await provider.check()

    assert api.headers[0]["x-api-key"] == "K-SECRET"
    assert not health.ok
    assert all("K-SECRET" not in v for hit in internal.hits for v in hit.values())


async def test_a_redirected_upload_keeps_its_key_at_home(
    session: aiohttp.ClientSession, internal: Recorder
) -> None:
    """1min.ai's `API-KEY` on an asset upload answered with a 307 to another host."""
    async with Redirector(internal.url("/assets"), status=307) as api:
        provider = OneMinAIProvider(session, "K-SECRET", f"{api.origin}/api", policy=FAST)
        with pytest.raises((ServerError, ServiceUnavailable)):
            await provider.edit(oneminai_request())

    assert api.headers and api.headers[0]["API-KEY"] == "K-SECRET"
    assert all("K-SECRET" not in v for hit in internal.hits for v in hit.values())


async def test_a_redirect_to_an_unusable_location_is_an_unusable_answer(
    session: aiohttp.ClientSession,
) -> None:
    async with Redirector("http://[::1") as api:
        with pytest.raises(ServerError):
            await download(
                session, f"{api.origin}/out.png", max_bytes=10**6, deadline=soon(), trusted=(api.origin,)
            )
