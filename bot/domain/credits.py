"""The credits vocabulary: how many credits one change may move, shared by the settings and `/admin`.

A leaf: it imports nothing of ours.
"""

from __future__ import annotations

# The most credits one change gives or sets: an admin's grant, a server's starting credits or allowance,
# and STARTING_CREDITS. Far above any real use (10 million credits are $10,000 at the default rate) and
# far below SQLite's INTEGER (2**63 - 1), so balances built of many such changes still fit.
MAX_CREDITS_PER_CHANGE = 10_000_000
