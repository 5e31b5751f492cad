"""What every reseller adapter (Atlas Cloud, WaveSpeed, Segmind, 1min.ai) is built from.

Each takes the same settings (the shared session, its key and base URL, the retry policy, timeouts,
an output size cap, mask conventions, a name) and turns them into one `VendorClient`. A vendor's
module supplies only what differs, in a `Vendor`: its name, base URL, paid-call timeout, key header,
error mapping and mask conventions; an adapter with settings of its own adds them in its `__init__`
and passes the rest on (`AdapterOptions`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, TypedDict

import aiohttp

from bot.providers.base import EditRequest
from bot.providers.http import Classifier, RetryPolicy, VendorClient, convert_mask, redact_url

IO_TIMEOUT = 60.0  # one upload, poll or download call
MAX_OUTPUT_BYTES = 50 * 1024 * 1024  # one result image; real ones are a few MB


@dataclass(frozen=True, slots=True)
class Vendor:
    """One reseller's defaults and its way of reading errors."""

    name: str  # the adapter's default name: the provider id in settings, the catalog and logs
    base_url: str  # the documented API base
    call_timeout: float  # the paid call: a submit that queues a job, or a call that makes the image
    classify: Classifier  # the vendor's one error mapping
    message_of: Callable[[bytes], str]  # the vendor's error text of a body (to tell "model gone")
    # The id of a job a body names (None: none), so an error answer to a submit that created one is
    # never sent elsewhere; None for a vendor whose answers name no job.
    job_id_of: Callable[[bytes], str | None] | None = None
    key_header: str = "Authorization"  # where the API key goes; "Authorization" carries a Bearer token
    # How the vendor reads a mask (`bot.providers.masks`) unless the catalog says otherwise for a model:
    # "alpha" is transparent *and* white where to edit, so it reads the same under both documented
    # conventions (alpha = edit, white = edit).
    mask_convention: str = "alpha"

    def key_headers(self, api_key: str) -> dict[str, str]:
        if self.key_header.lower() == "authorization":
            return {self.key_header: f"Bearer {api_key}"}
        return {self.key_header: api_key}


class AdapterOptions(TypedDict, total=False):
    """The keyword settings of `ResellerAdapter`, for an adapter that adds its own and passes these on."""

    policy: RetryPolicy
    call_timeout: float | None
    io_timeout: float
    max_output_bytes: int
    mask_conventions: Mapping[str, str] | None
    name: str | None


class ResellerAdapter:
    """The construction every reseller adapter shares; `vendor` is the subclass's `Vendor`.

    Unset settings take the vendor's defaults. `mask_conventions` (model -> convention, from the
    catalog's routes) override the vendor's own.
    """

    vendor: ClassVar[Vendor]

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api_key: str,
        base_url: str | None = None,
        *,
        policy: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen dataclass, safe as a default
        call_timeout: float | None = None,
        io_timeout: float = IO_TIMEOUT,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
        mask_conventions: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        vendor = self.vendor
        self.name = vendor.name if name is None else name
        self._base = (vendor.base_url if base_url is None else base_url).rstrip("/")
        self._mask_conventions = dict(mask_conventions or {})
        self._client = VendorClient(
            session,
            self._base,
            self.name,
            vendor.key_headers(api_key),
            policy,
            classify=vendor.classify,
            message_of=vendor.message_of,
            call_timeout=vendor.call_timeout if call_timeout is None else call_timeout,
            io_timeout=io_timeout,
            max_output_bytes=max_output_bytes,
            job_id_of=vendor.job_id_of,
        )

    def validate(self, request: EditRequest) -> None:
        """Refuse, without sending anything, a request this adapter cannot send as asked (start-up
        checks every catalog route's declared capabilities against this)."""
        self._check_request(request)

    def _check_request(self, request: EditRequest) -> object:
        """Raise `ModelUnavailable` or `InvalidInput` (`unsupported_options`) for a request this
        adapter cannot send; every edit starts with it."""
        raise NotImplementedError

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}(name={self.name!r}, url={redact_url(self._base)!r})"

    async def _vendor_mask(self, request: EditRequest) -> bytes | None:
        """The request's mask (OpenAI's convention) re-encoded the way this route's model reads one;
        None without a mask. An unreadable mask raises `InvalidInput` (`convert_mask`)."""
        if request.mask is None:
            return None
        convention = self._mask_conventions.get(request.model, self.vendor.mask_convention)
        return await convert_mask(request.mask.data, convention, provider=self.name)
