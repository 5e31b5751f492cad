"""What `/mask` shows before any credits move: the grid picker's picture and the priced preview.

Plain values in and out (jobs, bytes, numbers); the Discord side lives in `cogs/mask/`. Nothing here
reserves or charges credits: that happens only in `EditService.submit`, after the user confirmed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

from bot import imaging
from bot.services.edits import EditJob, EditService, MaskSpec, PreparedJob, Progress
from bot.services.policy import PolicyService

# The grids the picker offers: coarse by default, finer on request. 16 cells still fit one select
# menu (Discord allows 25 options).
GRIDS: tuple[tuple[int, int], ...] = ((3, 3), (4, 4))
DEFAULT_GRID = GRIDS[0]
# The picker is redrawn on every change, so it is kept smaller than the final preview.
PICKER_MAX_SIDE = 768
# The picture a session's picker and preview are drawn from (`shown_picture`): as large as either shows
# it, so both look as they would drawn from the image itself.
SHOWN_MAX_SIDE = max(PICKER_MAX_SIDE, imaging.PREVIEW_MAX_SIDE)


@dataclass(frozen=True)
class MaskPreview:
    """The confirmation step: the picture with the area to change tinted, and what it may cost."""

    image: bytes  # JPEG
    cost: int  # worst-case credits, exactly what `submit` will hold
    balance: int  # the user's spendable credits now
    coverage: float  # fraction of the image that may change

    @property
    def affordable(self) -> bool:
        return self.balance >= self.cost


def next_grid(grid: tuple[int, int]) -> tuple[int, int]:
    """The grid the picker's "finer/coarser" button switches to."""
    index = GRIDS.index(grid) if grid in GRIDS else -1
    return GRIDS[(index + 1) % len(GRIDS)]


def with_cells(job: EditJob, grid: tuple[int, int], cells: tuple[int, ...]) -> EditJob:
    """`job` with its mask set to `cells` of `grid` (numbered 1.. row by row), other mask options kept."""
    spec = job.mask or MaskSpec()
    return replace(job, mask=replace(spec, upload=None, grid=grid, cells=tuple(sorted(set(cells)))))


async def prepare_picker(
    edits: EditService, job: EditJob, *, progress: Progress | None = None
) -> PreparedJob:
    """Validate a picker job before the user has picked anything. Moves no credits.

    The service refuses a grid mask without cells, so this prepares the job with a provisional one-cell
    mask: options, images, the model's mask support and the price are all checked up front, and the
    result's first image is the upright, validated picture the grid is drawn on (so cell numbers
    mean the same pixels as the final mask). The real cells are prepared again once chosen.
    """
    return await edits.prepare(with_cells(job, DEFAULT_GRID, (1,)), progress=progress)


async def shown_picture(image: bytes) -> bytes:
    """The picture the picker and the preview are drawn from, made once from the job's validated image
    (`imaging.preview_picture`, at most SHOWN_MAX_SIDE px): each click then decodes ~1 MP instead of the
    whole image, which for a 40 MP photo took ~170 MB a click, several clicks at once as many times."""
    return await asyncio.to_thread(imaging.preview_picture, image, SHOWN_MAX_SIDE)


async def grid_picture(picture: bytes, grid: tuple[int, int], cells: tuple[int, ...]) -> bytes:
    """JPEG of `picture` (`shown_picture`'s) under a numbered grid with the chosen cells tinted."""
    rows, cols = grid
    return await asyncio.to_thread(imaging.grid_overlay, picture, rows, cols, cells, max_side=PICKER_MAX_SIDE)


async def preview(prepared: PreparedJob, picture: bytes, policy: PolicyService) -> MaskPreview:
    """The tinted picture, the worst-case cost and the balance for a prepared masked job.

    `picture` is `shown_picture`'s of the job's image; the area, at the image's own size, is shrunk onto
    it (the job's mask itself is unchanged). The balance is the one `/credits` shows (allowance top-up
    included, the same refill the reservation would do anyway).
    """
    if prepared.mask is None:
        raise ValueError("preview needs a masked job")
    tinted = await asyncio.to_thread(imaging.tint_preview, picture, prepared.mask.region)
    job = prepared.job
    balance = (await policy.credits(job.guild_id, job.user_id, job.role_ids)).account.balance
    return MaskPreview(tinted, prepared.reserve, balance, prepared.mask.coverage)
