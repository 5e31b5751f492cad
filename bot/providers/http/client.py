"""One adapter's calls to its vendor, bound once: the shared session, the configured base URL, the key
header, the retry policy, the timeouts and the vendor's error mapping.

Every reseller adapter makes the same kinds of call: one paid submit (`send_paid`, classified with
the "model gone" rule), idempotent uploads and polls with its key (`send_idempotent`), and result
downloads without its key (`fetch_output`, trusting only its own base URL). `VendorClient` makes them
with the adapter's settings so each adapter says only what differs: paths, bodies and answers.

It holds the key, so it is also where the key is kept out of error text: a vendor may echo it in an
error message ("API key SG_… is not permitted"), and exception text ends up in logs. Every error read
from an answer, by its calls or by an adapter through it (`error`, `submit_classifier`), has the key
headers' values masked (the transport's own errors hold no vendor text).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from bot.providers.errors import ProviderError
from bot.providers.http.outputs import fetch_output
from bot.providers.http.polling import gather_or_cancel
from bot.providers.http.requests import send_idempotent, send_paid
from bot.providers.http.transport import MAX_RESPONSE_BYTES, Classifier, HttpResponse, RetryPolicy
from bot.providers.http.vendor import mask_secrets, submit_classifier


@dataclass(frozen=True, slots=True)
class VendorClient:
    """The HTTP side of one adapter (see the module docstring)."""

    session: aiohttp.ClientSession
    base_url: str  # configured, without a trailing slash; results on its origin are trusted
    provider: str
    headers: Mapping[str, str]  # the key; never sent to another origin (nor to result URLs)
    policy: RetryPolicy
    classify: Classifier  # the vendor's one error mapping
    message_of: Callable[[bytes], str]  # the vendor's error text of a body (to tell "model gone")
    call_timeout: float  # the paid call
    io_timeout: float  # one upload, poll or download
    max_output_bytes: int  # one result image
    job_id_of: Callable[[bytes], str | None] | None = None  # the job an error answer names, if any

    def url(self, path: str) -> str:
        """`path` under the configured base URL."""
        return f"{self.base_url}{path}"

    @property
    def secrets(self) -> tuple[str, ...]:
        """What error text must never show: each header value, and the credential after a scheme
        word (the key of `Bearer <key>`)."""
        found: list[str] = []
        for value in self.headers.values():
            found.append(value)
            _scheme, _, credential = value.partition(" ")
            if credential.strip():
                found.append(credential.strip())
        return tuple(found)

    def masked(self, err: ProviderError) -> ProviderError:
        """`err` with the key (`secrets`) masked in its text; the same object, for `raise`."""
        text = str(err)
        masked = mask_secrets(text, self.secrets)
        if masked != text:
            err.args = (masked, *err.args[1:])
        return err

    def masking(self, classify: Classifier) -> Classifier:
        """`classify` with the key masked in the errors it returns."""

        def classify_masked(
            status: int, body: bytes, headers: Mapping[str, str], *, provider: str
        ) -> ProviderError:
            return self.masked(classify(status, body, headers, provider=provider))

        return classify_masked

    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ProviderError:
        """The vendor's error for an answer an adapter reads itself (a 2xx that reports a failure),
        with the key masked."""
        return self.masked(self.classify(status, body, headers, provider=self.provider))

    def submit_classifier(self, model: str) -> Classifier:
        """The vendor's mapping for a paid submit of `model`, plus the "model gone" rule (key masked)."""
        classify = submit_classifier(self.classify, self.message_of, model=model, job_id_of=self.job_id_of)
        return self.masking(classify)

    async def submit(
        self,
        url: str,
        body: Any,
        *,
        deadline: float,
        model: str,
        max_body: int = MAX_RESPONSE_BYTES,
        result_in_body: Callable[[], contextlib.AbstractContextManager[float]] | None = None,
    ) -> HttpResponse:
        """POST the one paid JSON request of a job: never re-sent once it may have arrived.

        `result_in_body`: a synchronous call's 2xx answer is the finished result, read with its grace
        past `deadline` (`send_paid`)."""
        return await send_paid(
            self.session,
            "POST",
            url,
            policy=self.policy,
            deadline=deadline,
            call_timeout=self.call_timeout,
            json=body,
            headers=self.headers,
            provider=self.provider,
            classify=self.submit_classifier(model),
            max_body=max_body,
            result_in_body=result_in_body,
        )

    async def call(
        self,
        method: str,
        url: str,
        *,
        deadline: float,
        json: Any = None,
        data_factory: Callable[[], Any] | None = None,
        accepted: bool = False,
    ) -> HttpResponse:
        """An idempotent call with the key (an upload, a poll), retried within `deadline`.

        Pass `accepted=True` for a call that follows a submitted job (its failures may be billed).
        """
        return await send_idempotent(
            self.session,
            method,
            url,
            policy=self.policy,
            deadline=deadline,
            call_timeout=self.io_timeout,
            provider=self.provider,
            headers=self.headers,
            json=json,
            data_factory=data_factory,
            classify=self.masking(self.classify),
            accepted=accepted,
        )

    async def upload(
        self, url: str, field: str, file: tuple[bytes, str, str], *, deadline: float
    ) -> HttpResponse:
        """POST one `(data, filename, mime)` file as a multipart form whose only part is `field`.

        An upload creates nothing billable, so it is retried like any idempotent call (with a fresh
        form for every try). The answer is the vendor's to read.
        """
        data, filename, mime = file

        def form() -> aiohttp.FormData:
            fd = aiohttp.FormData()
            # BytesIO: aiohttp writes a large raw-bytes part in one blocking call.
            fd.add_field(field, io.BytesIO(data), filename=filename, content_type=mime)
            return fd

        return await self.call("POST", url, deadline=deadline, data_factory=form)

    async def output(self, value: str, *, deadline: float) -> bytes:
        """The bytes of one result a job listed (a URL or base64), fetched without the key.

        A result may be on the API's own origin; any other must be a public address (`fetch_output`).
        """
        return await fetch_output(
            self.session,
            value,
            max_bytes=self.max_output_bytes,
            deadline=deadline,
            policy=self.policy,
            call_timeout=self.io_timeout,
            provider=self.provider,
            trusted=(self.base_url,),
        )

    async def outputs(self, values: Iterable[str], *, deadline: float) -> list[bytes]:
        """Every result of a finished job (see `output`), fetched in parallel."""
        return await gather_or_cancel(*(self.output(value, deadline=deadline) for value in values))
