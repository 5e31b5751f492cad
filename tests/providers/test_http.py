"""Tests for the shared HTTP helper: retry rules, deadlines, polling, downloads, redaction."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import io
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from bot.providers.errors import (
    ConnectionFailed,
    ModelUnavailable,
    ProviderJobFailed,
    ProviderTimeout,
    RateLimited,
    ServerError,
    ServiceUnavailable,
)
from bot.providers.http import (
    HttpResponse,
    NotAnswered,
    RetryPolicy,
    decode_base64_image,
    download,
    fetch_output,
    parse_retry_after,
    poll,
    redact_url,
    send_idempotent,
    send_paid,
    sniff_image_format,
    usable_image_format,
)
from tests.providers.helpers import DATA, FAST, closed_port

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


# ----------------------------------------------------------------------------- a scriptable server


@dataclass
class Script:
    """Per-path queue of responses for the tiny test server; the last one repeats."""

    routes: dict[str, list[Callable[[web.Request], Awaitable[web.StreamResponse]]]] = field(
        default_factory=dict
    )
    hits: dict[str, int] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def on(self, path: str, *handlers: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        self.routes[path] = list(handlers)


def status(code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Callable:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=code, body=body, headers=headers)

    return handler


def chunked(total: int) -> Callable:
    """A streamed body of `total` bytes without Content-Length."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        sent = 0
        while sent < total:
            piece = min(64 * 1024, total - sent)
            await resp.write(b"x" * piece)
            sent += piece
        await resp.write_eof()
        return resp

    return handler


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, Script]]:
    script = Script()

    async def dispatch(request: web.Request) -> web.StreamResponse:
        path = request.path
        script.hits[path] = script.hits.get(path, 0) + 1
        handlers = script.routes.get(path)
        if not handlers:
            return web.Response(status=404)
        handler = handlers.pop(0) if len(handlers) > 1 else handlers[0]
        return await handler(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", dispatch)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", script
    finally:
        script.release.set()
        await runner.cleanup()


def soon(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


# ----------------------------------------------------------------------------- pure helpers


def http_date(offset: float) -> str:
    return email.utils.formatdate(time.time() + offset, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "100", "retry-after": "9"}, 0.1),  # ms wins
        ({"retry-after-ms": "soon", "retry-after": "2"}, 2.0),  # unusable ms falls back
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "-4"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "next tuesday"}, None),
        ({"retry-after": http_date(-3600)}, 0.0),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_parse_retry_after_http_date_in_the_future() -> None:
    value = parse_retry_after({"Retry-After": http_date(30)})
    assert value is not None and 27 <= value <= 31


def test_retry_policy_delay_doubles_is_capped_and_jittered_downwards() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=8.0, jitter=0.25)
    for attempt, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (9, 8.0), (400, 8.0)]:
        for _ in range(50):
            assert cap * 0.75 <= policy.delay(attempt) <= cap
    exact = RetryPolicy(base_delay=0.5, max_delay=8.0, jitter=0.0)
    assert [exact.delay(n) for n in (1, 2, 3, 4, 5, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


@pytest.mark.parametrize("kw", [{"attempts": 0}, {"base_delay": -1}, {"jitter": 1.5}])
def test_retry_policy_rejects_nonsense(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://cdn.example.com/out/a.png?X-Amz-Signature=SECRET&e=1", "https://cdn.example.com/out/a.png"),
        ("https://user:pw@host.example:8443/p#frag", "https://host.example:8443/p"),
        ("http://127.0.0.1:5000/v1/images/edits", "http://127.0.0.1:5000/v1/images/edits"),
        ("https://[::1]:9/x?token=t", "https://[::1]:9/x"),
    ],
)
def test_redact_url_drops_query_fragment_and_credentials(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(PNG).decode(),
        "data:image/png;base64," + base64.b64encode(PNG).decode(),
        "  " + base64.b64encode(PNG).decode()[:20] + "\n" + base64.b64encode(PNG).decode()[20:] + "\n",
        base64.b64encode(PNG).decode().rstrip("="),
        base64.urlsafe_b64encode(b"\xfb\xff" + PNG).decode(),
    ],
    ids=["bare", "data-url", "wrapped", "unpadded", "urlsafe"],
)
def test_decode_base64_image_accepts_bare_and_data_url_forms(text: str) -> None:
    assert decode_base64_image(text).endswith(PNG)


@pytest.mark.parametrize(
    "text", ["", "!!!not base64!!!", "data:text/plain;base64,aGk=", "data:image/png,raw"]
)
def test_decode_base64_image_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        decode_base64_image(text)


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (PNG, "png"),
        (b"\xff\xd8\xff\xe0rest", "jpeg"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"),
        (b"GIF89a", None),
    ],
)
def test_sniff_image_format(data: bytes, fmt: str | None) -> None:
    assert sniff_image_format(data) == fmt


def result_image(fmt: str, mode: str) -> bytes:
    """The astronaut photo in `mode`, encoded as `fmt`: a result as a provider would send it."""
    with Image.open(DATA / "astronaut.png") as photo:
        picture = photo.convert(mode)
    buf = io.BytesIO()
    picture.save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [
        ("PNG", "RGB"),  # the plain PNG whose rows are only inflated
        ("PNG", "RGBA"),
        ("PNG", "P"),  # a palette: Pillow decodes it
        ("PNG", "I;16"),
        ("JPEG", "RGB"),
        ("WEBP", "RGBA"),
    ],
)
async def test_a_result_is_usable_only_when_it_decodes_whole(fmt: str, mode: str) -> None:
    """A result cut off in transit keeps its signature and header: sniffing it says nothing."""
    whole = result_image(fmt, mode)
    cut_off = whole[: len(whole) // 3]

    assert await usable_image_format(whole) == fmt.lower()
    assert sniff_image_format(cut_off) == fmt.lower()
    assert await usable_image_format(cut_off) is None


@pytest.mark.parametrize(
    "data",
    [b"", PNG, b"GIF89a" + b"\x00" * 32, b"<html>not an image</html>"],
    ids=["empty", "signature-only", "gif", "html"],
)
async def test_bytes_that_are_no_whole_png_jpeg_or_webp_are_not_usable(data: bytes) -> None:
    assert await usable_image_format(data) is None


@pytest.mark.parametrize("form", ["url", "base64"])
async def test_a_cut_off_output_is_an_accepted_server_error_fetched_once(
    server: tuple[str, Script], session: aiohttp.ClientSession, form: str
) -> None:
    """The job ran and was billed; its result cannot be delivered, and asking again brings the same."""
    base, script = server
    whole = result_image("PNG", "RGB")
    cut_off = whole[: len(whole) // 3]
    script.on("/out.png", status(200, cut_off))
    value = f"{base}/out.png" if form == "url" else base64.b64encode(cut_off).decode()

    with pytest.raises(ServerError) as info:
        await fetch_output(
            session,
            value,
            max_bytes=len(whole),
            deadline=soon(),
            policy=FAST,
            call_timeout=5,
            provider="t",
            trusted=(base,),
        )

    assert type(info.value) is ServerError and info.value.accepted is True
    assert script.hits.get("/out.png", 0) == (1 if form == "url" else 0)


# ----------------------------------------------------------------------------- send_paid


async def post_paid(session: aiohttp.ClientSession, url: str, **kw: Any) -> HttpResponse:
    """`send_paid` POST with these tests' defaults (FAST policy, 10 s deadline, 5 s per call)."""
    kw = {"policy": FAST, "deadline": soon(), "call_timeout": 5, "provider": "t", **kw}
    return await send_paid(session, "POST", url, **kw)


async def test_send_paid_retries_connect_failures_with_a_fresh_body_each_time() -> None:
    bodies = 0

    def factory() -> aiohttp.FormData:
        nonlocal bodies
        bodies += 1
        form = aiohttp.FormData()
        form.add_field("image[]", PNG, filename="a.png", content_type="image/png")
        return form

    async with aiohttp.ClientSession() as session:
        with pytest.raises(ConnectionFailed) as info:
            await post_paid(
                session,
                f"http://127.0.0.1:{closed_port()}/v1/x",
                data_factory=factory,
                headers={"Authorization": "Bearer sk-secret"},
            )

    assert info.value.accepted is False
    assert bodies == FAST.attempts


async def test_send_paid_does_not_retry_5xx_and_marks_it_accepted(
    server: tuple[str, Script], session: aiohttp.ClientSession
) -> None:
    base, script = server
    script.on("/submit", status(503, b"<html>busy</html>", {"x-request-id": "req_9"}))

    with pytest.raises(ServerError) as info:
        await post_paid(session, f"{base}/submit", json={"a": 1})

    assert info.value.accepted is True
    assert info.value.request_id == "req_9"
    assert script.hits["/submit"] == 1


@pytest.mark.parametrize(("retry", "hits"), [(True, 2), (False, 1)])
async def test_a_paid_429_is_retried_inside_send_paid_only_when_the_policy_says_so(
    server: tuple[str, Script], session: aiohttp.ClientSession, retry: bool, hits: int
) -> None:
    """The bot turns the adapter-internal retry off: its adaptive limiter sends the call again."""
    base, script = server
    script.on("/submit", status(429, b'{"error": {}}', {"retry-after": "0.01"}))
    policy = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02, retry_paid_429=retry)
    with pytest.raises(RateLimited) as info:
        await post_paid(session, f"{base}/submit", json={"a": 1}, policy=policy)
    assert info.value.accepted is False
    assert script.hits["/submit"] == hits


async def test_send_paid_returns_the_2xx_response_with_body_and_request_id(
    server: tuple[str, Script], session: aiohttp.ClientSession
) -> None:
    base, script = server
    script.on(
        "/submit",
        status(201, b'{"id": "pred_1"}', {"x-request-id": "req_1", "Content-Type": "application/json"}),
    )

    resp = await post_paid(session, f"{base}/submit", json={"a": 1})

    assert (resp.status, resp.request_id, resp.json(), resp.content_type) == (
        201,
        "req_1",
        {"id": "pred_1"},
        "application/json",
    )


def held_body(code: int, body: bytes, sent: asyncio.Event, go_on: asyncio.Event) -> Callable:
    """An answer whose status line, headers and first half of its body go at once, the rest at `go_on`."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=code)
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        sent.set()
        await go_on.wait()
        with contextlib.suppress(ConnectionResetError):  # the client gave up meanwhile
            await resp.write(body[len(body) // 2 :])
            await resp.write_eof()
        return resp

    return handler


@pytest.mark.parametrize("code", [200, 500])
async def test_send_paid_reads_a_2xx_body_that_is_a_result_within_its_grace_and_an_error_body_without(
    server: tuple[str, Script], session: aiohttp.ClientSession, code: int
) -> None:
    """A synchronous call's 2xx body is the finished result: once its status line is in, the read
    gets the grace `result_in_body` gives past the call's timeout. An error's body does not."""
    base, script = server
    sent, go_on = asyncio.Event(), asyncio.Event()
    script.on("/submit", held_body(code, PNG * 1000, sent, go_on))
    deadline = soon()
    marks: list[str] = []

    @contextlib.contextmanager
    def result_in_body() -> Iterator[float]:
        marks.append("in")
        yield deadline + 5.0
        marks.append("out")

    call = asyncio.create_task(
        post_paid(
            session,
            f"{base}/submit",
            json={},
            deadline=deadline,
            call_timeout=0.5,
            result_in_body=result_in_body,
        )
    )
    await asyncio.wait_for(sent.wait(), 5)
    ends = time.monotonic() + 0.5  # past the call's own timeout
    await asyncio.wait([call], timeout=max(0.0, ends - time.monotonic()) + 0.3)
    go_on.set()

    if code == 200:
        resp = await call
        assert resp.body == PNG * 1000 and marks == ["in", "out"]
    else:
        with pytest.raises(ProviderTimeout) as info:
            await call
        assert info.value.accepted is True and marks == []


async def test_send_paid_does_not_follow_redirects(
    server: tuple[str, Script], session: aiohttp.ClientSession
) -> None:
    base, script = server
    script.on("/submit", status(307, headers={"Location": "/elsewhere"}))
    script.on("/elsewhere", status(200))

    with pytest.raises(ServiceUnavailable) as info:  # the base URL is the operator's to fix
        await post_paid(session, f"{base}/submit", json={})

    assert "/elsewhere" not in script.hits
    assert info.value.code == "redirected" and not info.value.accepted


async def test_send_paid_caps_the_response_size_as_accepted(
    server: tuple[str, Script], session: aiohttp.ClientSession
) -> None:
    base, script = server
    script.on("/submit", chunked(300_000))

    with pytest.raises(ServerError) as info:
        await post_paid(session, f"{base}/submit", json={}, max_body=100_000)

    assert info.value.accepted is True


# ----------------------------------------------------------------------------- send_idempotent


async def get(session: aiohttp.ClientSession, url: str, **kw: Any) -> HttpResponse:
    """`send_idempotent` GET with these tests' defaults (FAST policy, 10 s deadline, 5 s per call)."""
    kw = {"policy": FAST, "deadline": soon(), "call_timeout": 5, "provider": "t", **kw}
    return await send_idempotent(session, "GET", url, **kw)


async def test_send_idempotent_retries_5xx_then_succeeds(
    server: tuple[str, Script], session: aiohttp.ClientSession
) -> None:
    base, script = server
    script.on("/poll", status(503), status(502), status(200, b"done"))

    resp = await get(session, f"{base}/poll")

    assert resp.body == b"done"
    assert script.hits["/poll"] == 3


async def test_send_idempotent_honours_retry_after_ms(
    server: tuple[str, Script], session: aiohttp.ClientSession
) -> None:
    base, script = server
    script.on("/poll", status(429, headers={"retry-after-ms": "30"}), status(200, b"ok"))

    resp = await get(session, f"{base}/poll")

    assert resp.body == b"ok" and script.hits["/poll"] == 2


async def test_send_idempotent_gives_up_after_the_policy_with_the_given_accepted_flag(
    server: tuple[str, Script], session: aiohttp.ClientSession
) -> None:
    base, script = server
    script.on("/poll", status(500))

    with pytest.raises(ServerError) as info:
        await get(session, f"{base}/poll", accepted=True)

    assert info.value.accepted is True
    assert script.hits["/poll"] == FAST.attempts


async def test_send_idempotent_does_not_retry_a_client_error(
    server: tuple[str, Script], session: aiohttp.ClientSession
) -> None:
    base, script = server
    script.on("/poll", status(404))

    with pytest.raises(ModelUnavailable):
        await get(session, f"{base}/poll")

    assert script.hits["/poll"] == 1


async def test_send_idempotent_stops_when_the_wait_would_cross_the_deadline(
    server: tuple[str, Script], session: aiohttp.ClientSession
) -> None:
    base, script = server
    script.on("/poll", status(429, headers={"retry-after": "3"}))
    started = time.monotonic()

    with pytest.raises(RateLimited):
        await get(session, f"{base}/poll", deadline=soon(1.0))

    assert time.monotonic() - started < 0.5
    assert script.hits["/poll"] == 1


async def test_send_idempotent_raises_a_retry_after_beyond_the_policy_at_once(
    server: tuple[str, Script], session: aiohttp.ClientSession
) -> None:
    """The policy's `max_retry_after`: a longer wait means "do not retry here", not "retry after the
    usual backoff" (which would hammer an API that asked for an hour's rest)."""
    base, script = server
    script.on("/poll", status(429, headers={"retry-after": "3600"}), status(200, b"ok"))

    with pytest.raises(RateLimited) as info:
        await get(session, f"{base}/poll", deadline=soon(30.0), accepted=True)

    assert script.hits["/poll"] == 1
    assert info.value.retry_after == 3600 and info.value.accepted is True


@pytest.mark.parametrize("accepted", [True, False], ids=["for a billed job", "for nothing paid yet"])
async def test_a_retry_after_beyond_the_policy_is_waited_only_for_a_job_the_provider_billed(
    server: tuple[str, Script], session: aiohttp.ClientSession, accepted: bool
) -> None:
    """A CDN asking for a minute's rest on a result download (the provider billed the job): given up
    at once, the member's paid image was lost; within the deadline the wait is worth it. An upload
    (nothing paid yet) still gives up, so routing can try another provider."""
    base, script = server
    script.on("/out", status(429, headers={"retry-after": "1"}), status(200, b"image"))
    patient = replace(FAST, max_retry_after=0.1)

    if accepted:
        resp = await get(session, f"{base}/out", deadline=soon(30.0), accepted=True, policy=patient)
        assert resp.body == b"image" and script.hits["/out"] == 2
    else:
        with pytest.raises(RateLimited):
            await get(session, f"{base}/out", deadline=soon(30.0), accepted=False, policy=patient)
        assert script.hits["/out"] == 1


async def test_send_idempotent_retries_timeouts(
    server: tuple[str, Script], session: aiohttp.ClientSession
) -> None:
    base, script = server

    async def hang(request: web.Request) -> web.Response:
        await script.release.wait()
        return web.Response()

    script.on("/poll", hang)

    with pytest.raises(ProviderTimeout):
        await get(session, f"{base}/poll", call_timeout=0.1)

    assert script.hits["/poll"] == FAST.attempts


# ----------------------------------------------------------------------------- poll


async def test_poll_returns_the_first_finished_result() -> None:
    states = iter(["queued", "processing", "completed", "never reached"])
    calls = 0

    async def fetch() -> str:
        nonlocal calls
        calls += 1
        return next(states)

    result = await poll(
        fetch, is_done=lambda s: s == "completed", deadline=soon(), interval=0.01, max_interval=0.02
    )

    assert (result, calls) == ("completed", 3)


async def test_poll_deadline_calls_cancel_once_and_raises_accepted_timeout() -> None:
    cancelled = asyncio.Event()
    calls = 0

    async def fetch() -> str:
        nonlocal calls
        calls += 1
        return "processing"

    async def cancel() -> None:
        assert not cancelled.is_set()
        cancelled.set()

    with pytest.raises(ProviderTimeout) as info:
        await poll(
            fetch,
            is_done=lambda s: s == "completed",
            deadline=soon(0.2),
            interval=0.02,
            max_interval=0.05,
            cancel=cancel,
        )

    assert cancelled.is_set()
    assert info.value.accepted is True
    assert calls >= 3


async def test_poll_logs_but_does_not_raise_a_failing_cancel(caplog: pytest.LogCaptureFixture) -> None:
    async def fetch() -> str:
        return "processing"

    async def cancel() -> None:
        raise ConnectionFailed("cancel endpoint down")

    with pytest.raises(ProviderTimeout):
        await poll(
            fetch,
            is_done=lambda s: False,
            deadline=soon(0.05),
            interval=0.01,
            max_interval=0.01,
            cancel=cancel,
            provider="t",
        )

    assert "cancelling the job" in caplog.text


async def test_poll_cancels_when_a_fetch_runs_into_the_deadline() -> None:
    cancelled = False

    async def fetch() -> str:
        await asyncio.sleep(0.1)
        raise ProviderTimeout("deadline passed", accepted=True)

    async def cancel() -> None:
        nonlocal cancelled
        cancelled = True

    with pytest.raises(ProviderTimeout):
        await poll(
            fetch,
            is_done=lambda s: False,
            deadline=soon(0.05),
            interval=0.01,
            max_interval=0.01,
            cancel=cancel,
        )

    assert cancelled


async def test_poll_propagates_job_failures_without_cancelling() -> None:
    cancelled = False

    async def fetch() -> str:
        raise ProviderJobFailed("failed on the provider", accepted=True)

    async def cancel() -> None:
        nonlocal cancelled
        cancelled = True

    with pytest.raises(ProviderJobFailed):
        await poll(
            fetch, is_done=lambda s: False, deadline=soon(), interval=0.01, max_interval=0.01, cancel=cancel
        )

    assert not cancelled


async def test_poll_goes_on_through_unanswered_fetches_and_waits_a_429s_hint() -> None:
    answers: list[BaseException | str] = [
        NotAnswered(ServerError("503", accepted=True)),
        NotAnswered(RateLimited("429", retry_after=0.2, accepted=True)),
        "processing",
        "completed",
    ]
    fetched: list[float] = []

    async def fetch() -> str:
        fetched.append(time.monotonic())
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    result = await poll(
        fetch, is_done=lambda s: s == "completed", deadline=soon(), interval=0.01, max_interval=0.02
    )

    assert result == "completed" and answers == []
    assert fetched[2] - fetched[1] >= 0.2  # the 429's retry-after, not the 0.02 s poll interval


async def test_poll_unanswered_until_the_deadline_raises_an_accepted_timeout_from_the_last_error() -> None:
    async def fetch() -> str:
        raise NotAnswered(ConnectionFailed("reset", accepted=True))

    with pytest.raises(ProviderTimeout) as info:
        await poll(fetch, is_done=lambda s: True, deadline=soon(0.1), interval=0.01, max_interval=0.02)

    assert info.value.accepted is True
    assert isinstance(info.value.__cause__, ConnectionFailed)


# ----------------------------------------------------------------------------- download


async def test_download_returns_the_bytes(server: tuple[str, Script], session: aiohttp.ClientSession) -> None:
    base, script = server
    script.on("/out.png", status(503), status(200, PNG))

    data = await download(
        session, f"{base}/out.png?sig=abc", max_bytes=1000, deadline=soon(), policy=FAST, trusted=(base,)
    )

    assert data == PNG
    assert script.hits["/out.png"] == 2


@pytest.mark.parametrize("declared_length", [True, False])
async def test_download_size_cap(
    server: tuple[str, Script], session: aiohttp.ClientSession, declared_length: bool
) -> None:
    base, script = server
    script.on("/big", status(200, b"x" * 300_000) if declared_length else chunked(300_000))

    with pytest.raises(ServerError) as info:
        await download(
            session, f"{base}/big", max_bytes=100_000, deadline=soon(), policy=FAST, trusted=(base,)
        )

    assert info.value.accepted is True
    assert script.hits["/big"] == 1  # a size violation is not retried


@pytest.mark.parametrize("code", [400, 403, 404, 410])
async def test_a_result_url_refused_is_an_accepted_server_error_not_retried(
    server: tuple[str, Script], session: aiohttp.ClientSession, code: int
) -> None:
    """An expired presigned URL (S3's 403) or a missing file (a CDN's 404/410) is the job's lost
    result: not the provider's key failing (admin alert, circuit breaker) nor the model unavailable."""
    base, script = server
    script.on("/out.png", status(code, b"<Error><Code>AccessDenied</Code></Error>"))

    with pytest.raises(ServerError) as info:
        await fetch_output(
            session,
            f"{base}/out.png?X-Amz-Signature=abc",
            max_bytes=1000,
            deadline=soon(),
            policy=FAST,
            call_timeout=5,
            provider="t",
            trusted=(base,),
        )

    assert type(info.value) is ServerError
    assert info.value.accepted is True and info.value.status == code
    assert not info.value.retryable_elsewhere
    assert script.hits["/out.png"] == 1  # asking again does not bring an expired URL back


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "data:image/png;base64,iVBORw0KGgo=",
        "//host/no-scheme",
    ],
)
async def test_download_refuses_other_schemes(session: aiohttp.ClientSession, url: str) -> None:
    with pytest.raises(ServerError):
        await download(session, url, max_bytes=1000, deadline=soon())


async def test_download_decodes_data_urls_only_when_allowed(session: aiohttp.ClientSession) -> None:
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()

    assert await download(session, url, max_bytes=1000, deadline=soon(), allow_data_url=True) == PNG
    with pytest.raises(ServerError):
        await download(session, url, max_bytes=10, deadline=soon(), allow_data_url=True)


async def test_signed_url_queries_never_reach_the_log(
    server: tuple[str, Script], session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    base, script = server
    script.on("/out.png", status(503))
    caplog.set_level(logging.DEBUG)

    with pytest.raises(ServerError) as info:
        await download(
            session,
            f"{base}/out.png?X-Amz-Signature=TOPSECRET",
            max_bytes=1000,
            deadline=soon(),
            policy=FAST,
            provider="t",
            trusted=(base,),
        )

    assert "/out.png" in caplog.text
    assert "TOPSECRET" not in caplog.text
    assert "TOPSECRET" not in str(info.value)
