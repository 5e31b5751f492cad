"""Persistent buttons keep reading the custom ids already on posted messages.

Every control is declared once (prefix and fields) and that declaration both writes and parses its
custom id. The ids below are the ones earlier versions wrote; a message posted then must keep
working, so a change of prefix or field pattern fails here before it orphans real buttons.
"""

from __future__ import annotations

from typing import Any

import discord
import pytest

from bot.client import approve_view
from cogs._affordable import CheaperRun
from cogs._history import UndoControl
from cogs._moderation import StopControl
from cogs._results import JobControl
from cogs._ui import PersistentControl
from cogs.credits import HistoryButton
from cogs.mask.controls import MaskControl
from cogs.owner import ApproveButton

JOB = "0123456789abcdef"
SID = "0123456789ab"
CONTROLS: list[type[PersistentControl]] = [
    JobControl,
    UndoControl,
    StopControl,
    CheaperRun,
    MaskControl,
    HistoryButton,
    ApproveButton,
]

POSTED = [
    (JobControl, f"retouch:job:{JOB}:cancel", (JOB, "cancel")),
    (JobControl, f"retouch:job:{JOB}:again", (JOB, "again")),
    (JobControl, f"retouch:job:{JOB}:retry", (JOB, "retry")),
    (JobControl, f"retouch:job:{JOB}:delete", (JOB, "delete")),
    (UndoControl, f"retouch:undo:{JOB}", (JOB,)),
    (StopControl, f"retouch:stop:{JOB}", (JOB,)),
    (CheaperRun, f"retouch:cheaper:{SID}", (SID,)),
    (MaskControl, f"retouch:mask:{SID}:cells", (SID, "cells")),
    (MaskControl, f"retouch:mask:{SID}:run", (SID, "run")),
    (HistoryButton, "retouch:credits:12:older", ("12", "older")),
    (HistoryButton, "retouch:credits:0:newer", ("0", "newer")),
    (HistoryButton, "retouch:credits:999999:older", ("999999", "older")),
    (ApproveButton, "retouch:approve:123456789012345678", ("123456789012345678",)),
]


def matching(custom_id: str) -> list[type[PersistentControl]]:
    # discord.py dispatches a click to the dynamic item whose template fully matches its custom id.
    return [c for c in CONTROLS if c.__discord_ui_compiled_template__.fullmatch(custom_id)]


@pytest.mark.parametrize(("control", "custom_id", "state"), POSTED, ids=[p[1] for p in POSTED])
async def test_a_posted_custom_id_reaches_its_control_with_its_state_and_is_written_the_same_way(
    control: type[PersistentControl], custom_id: str, state: tuple[str, ...]
):
    assert matching(custom_id) == [control]
    item: discord.ui.Button[Any] = discord.ui.Button(label="x", custom_id=custom_id)
    match = control.__discord_ui_compiled_template__.fullmatch(custom_id)
    assert match is not None
    rebuilt = await control.from_custom_id(None, item, match)  # type: ignore[arg-type]
    assert isinstance(rebuilt, control) and rebuilt.state == state and rebuilt.item is item
    assert control.custom_id_of(*state) == custom_id
    built = control.button(*state, label="x", style=discord.ButtonStyle.secondary)
    assert built.custom_id == custom_id and built.state == state


@pytest.mark.parametrize(
    "custom_id",
    [
        f"retouch:job:{JOB}:explode",  # not an action
        f"retouch:job:{JOB[:-1]}:cancel",  # a job id is 16 hex digits
        f"retouch:undo:{JOB}:extra",
        f"retouch:cheaper:{SID.upper()}",
        "retouch:credits:x:older",
        "retouch:credits:1234567:older",  # a forged page: 20 digits overflowed the SQL offset
        f"retouch:credits:{'9' * 20}:older",
        "retouch:approve:",
        "retouch:other:1",
    ],
)
def test_an_id_no_control_wrote_reaches_none(custom_id: str):
    assert matching(custom_id) == []


def test_the_approve_button_the_client_offers_reaches_the_owner_cog():
    [button] = approve_view(42).children
    assert isinstance(button, discord.ui.Button) and button.custom_id is not None
    assert matching(button.custom_id) == [ApproveButton]
