"""Text people type (prompts, names, admins' reasons): whether it says anything, and what of it may be
repeated. A leaf: it imports nothing of ours."""

from __future__ import annotations

import re
import unicodedata

# Characters that draw nothing though Unicode calls them letters or symbols: the Hangul fillers (a
# favourite "blank" name on Discord) and the braille blank.
BLANK_LOOKING = frozenset("\u115f\u1160\u3164\uffa0\u2800")
# Unicode categories that draw nothing on their own: format characters (zero-width spaces and
# joiners, direction marks), combining marks (with no letter to sit on), controls and separators.
INVISIBLE_CATEGORIES = frozenset({"Cf", "Mn", "Me", "Cc", "Zs", "Zl", "Zp"})
# Control characters (but newline and tab) and the bidirectional embeddings, overrides and isolates:
# repeated in the bot's name, a right-to-left override turns the rest of the bot's line around, and
# a NUL or ESC is refused by Discord in some places (thread names) and garbles logs in others.
_UNSHOWABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> bool:
    """Whether `text` has something to read, not only spaces or invisible characters."""
    return any(
        not ch.isspace() and ch not in BLANK_LOOKING and unicodedata.category(ch) not in INVISIBLE_CATEGORIES
        for ch in text
    )


def showable(text: str) -> str:
    """`text` without control characters (newline and tab kept) or bidirectional overrides."""
    return _UNSHOWABLE.sub("", text)
