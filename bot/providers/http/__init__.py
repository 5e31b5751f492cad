"""The HTTP layer every provider adapter shares, one module per concern.

* `transport` — one request: deadlines, size caps, redirects checked hop by hop (credentials never
  follow a redirect to another origin; untrusted hops must be public addresses, checked on the
  connected socket by `bot.providers.netguard`), the retry policy and response type.
* `requests` — `send_paid` (never re-sent once it may have reached the server) and
  `send_idempotent` (retried freely within the job's deadline).
* `polling` — following a submitted job to its end; parallel calls that fail together.
* `outputs` — result downloads (a provider's URL is never trusted), base64, masks.
* `vendor` — reading vendors' answers: safe messages, JSON, error summaries, the "model gone" rule.
* `health` — the cheap authenticated call behind `/diagnose`.
* `client` — `VendorClient`: one adapter's session, base URL, key, policy and timeouts, bound once
  for its paid submit, its idempotent calls and its result downloads.

Nothing here knows about Discord or about one vendor: each vendor passes its own `classify`
function that turns an error response into a `ProviderError`. The names below are the package's
public API (what the adapters import).
"""

from __future__ import annotations

from bot.providers.http.client import (
    VendorClient,
)
from bot.providers.http.health import (
    CHECK_POLICY,
    CHECK_TIMEOUT,
    health_from_error,
    send_check,
)
from bot.providers.http.outputs import (
    convert_mask,
    decode_base64_image,
    download,
    fetch_output,
    sniff_image_format,
    usable_image_format,
)
from bot.providers.http.polling import (
    NotAnswered,
    gather_or_cancel,
    poll,
)
from bot.providers.http.requests import (
    send_idempotent,
    send_paid,
)
from bot.providers.http.transport import (
    CANCEL_TIMEOUT,
    CONNECT_TIMEOUT,
    DEFAULT_MIN_RETRY_WINDOW,
    MAX_RESPONSE_BYTES,
    Classifier,
    HttpResponse,
    RetryPolicy,
    classify_http_status,
    http_date,
    parse_retry_after,
    redact_url,
    redirected,
    seconds_until,
)
from bot.providers.http.vendor import (
    MAX_MESSAGE,
    before_submit,
    classify_reseller,
    error_summary,
    gone_on_submit,
    is_http_url,
    mark_unsubmitted,
    mask_secrets,
    mentions,
    names_a_job,
    parse_json,
    safe_message,
    says_model_gone,
    submit_classifier,
    submit_server_error,
    unsupported_options,
    usable_job_id,
)

__all__ = [
    "CANCEL_TIMEOUT",
    "CHECK_POLICY",
    "CHECK_TIMEOUT",
    "CONNECT_TIMEOUT",
    "DEFAULT_MIN_RETRY_WINDOW",
    "MAX_MESSAGE",
    "MAX_RESPONSE_BYTES",
    "Classifier",
    "HttpResponse",
    "NotAnswered",
    "RetryPolicy",
    "VendorClient",
    "before_submit",
    "classify_http_status",
    "classify_reseller",
    "convert_mask",
    "decode_base64_image",
    "download",
    "error_summary",
    "fetch_output",
    "gather_or_cancel",
    "gone_on_submit",
    "health_from_error",
    "http_date",
    "is_http_url",
    "mark_unsubmitted",
    "mask_secrets",
    "mentions",
    "names_a_job",
    "parse_json",
    "parse_retry_after",
    "poll",
    "redact_url",
    "redirected",
    "safe_message",
    "says_model_gone",
    "seconds_until",
    "send_check",
    "send_idempotent",
    "send_paid",
    "sniff_image_format",
    "submit_classifier",
    "submit_server_error",
    "unsupported_options",
    "usable_image_format",
    "usable_job_id",
]
