"""`decode_base64_image` decodes clean base64 straight from the string (strict mode) and everything
else through its tolerant path; both must give the bytes that were encoded, or ValueError.

(Lives outside tests/providers/ only because that folder was being restructured when the fast path
was added.)
"""

from __future__ import annotations

import base64
import random

import pytest

from bot.providers.http import decode_base64_image

SAMPLES = [bytes(random.Random(seed).randbytes(n)) for seed, n in enumerate((1, 2, 3, 4, 57, 1000, 65_537))]


def _forms(data: bytes) -> dict[str, str]:
    clean = base64.b64encode(data).decode()
    return {
        "clean": clean,
        "data-url": "data:image/png;base64," + clean,
        "surrounding-space": f"  {clean}\n",
        "wrapped": "\n".join(clean[i : i + 76] for i in range(0, len(clean), 76)),
        "unpadded": clean.rstrip("="),
        "urlsafe": base64.urlsafe_b64encode(data).decode(),
    }


@pytest.mark.parametrize("data", SAMPLES, ids=lambda d: f"{len(d)}B")
def test_every_accepted_form_decodes_to_the_original_bytes(data: bytes) -> None:
    for form, text in _forms(data).items():
        assert decode_base64_image(text) == data, form


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "====",
        "QQ==QQ==",
        "QUJD\u00e9",
        "QUJ$RA==",
        "data:image/png;base64,",
        "data:image/png;base64,!!",
    ],
)
def test_what_neither_path_accepts_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        decode_base64_image(text)
