"""What a stage declares, and the block layouts stages share.

A stage is data: its name, the ``module:function`` of its block function, its block layout,
the config sections its output depends on (its fingerprint), whether a run has it, the arrays
it writes, the files it leaves in the work dir, the input arrays it reads and the inputs it checks. The scheduler builds every daisy task from these records;
the worker imports the block function by name.

A block function is a context manager ``function(setup)`` taking a ``WorkerSetup`` (the plan,
the task, the RAG, the worker's index and the stage's own config section): it sets a worker up
once (loads the model, opens arrays) and yields ``process(block)``, called for every block the
worker gets. It reads its read ROI, writes only its write ROI and the RAG, and is idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from funlib.geometry import Coordinate, Roi

from neurosam.config import RunConfig
from neurosam.io.volumes import open_array
from neurosam.layout import RunPlan

Layout = tuple[Roi, Roi, Roi]
"""The ROI a task's blocks tile, one block's read ROI and its write ROI (nm)."""


class InputError(ValueError):
    """Input that cannot run: the message says which and why."""


@dataclass(frozen=True)
class OutputArray:
    """An array a stage writes, created before any block runs (kept when it exists and fits)."""

    role: str
    path: str
    dtype: type
    block_size: Coordinate
    channels: tuple[int, ...] = ()
    attrs: dict = field(default_factory=dict)
    whole_blocks: bool = True
    """Every block writes its whole write ROI here, so a done block's chunks must exist."""
    layer_axis: int | None = None
    """An axis along which the array holds values on single layers (a block's face) alone: its
    chunks are one voxel thick along it, so a layer is written and read without the voxels around."""


@dataclass(frozen=True)
class Step:
    """One of the daisy tasks a stage runs as, in order, each after the one before (the global
    agglomeration's levels): its name in the task id, its blocks, its level and its block function."""

    name: str
    layout: Layout
    level: int
    block_function: str


@dataclass(frozen=True)
class Stage:
    name: str
    block_function: str
    layout: Callable[[RunPlan], Layout]
    """May raise ``InputError`` when the config asks for blocks that cannot be laid out."""
    sections: tuple[str, ...] = ()
    enabled: Callable[[RunConfig], bool] = lambda config: True
    outputs: Callable[[RunPlan], list[OutputArray]] = lambda plan: []
    work_files: Callable[[RunPlan], list[Path]] = lambda plan: []
    """Files in the work dir that its finished blocks leave, and later stages or the user read."""
    reads: tuple[str, ...] = ()
    """Roles of the run's input arrays (``raw``, ``affinities``, ``ground_truth``) its output
    depends on: when one changes, its done blocks are redone."""
    check_inputs: Callable[[RunPlan], None] = lambda plan: None
    """Raises ``InputError`` for an input the stage cannot read, before any block runs."""
    steps: Callable[[RunPlan], list[Step]] | None = None
    """A stage that runs as several daisy tasks: them, in order; else one task of ``layout``."""
    uses_upstream: bool = True
    """Its output depends on what the stages before it write. False for one that reads only the
    run's inputs (the ground truth's skeletons): its task id leaves their fingerprints out, so it
    is kept whatever they change, while the stages after it carry its fingerprint too."""
    version: int = 1
    """The format of what its blocks write: raised when a change makes what an earlier version
    wrote unfit for the stages after it, so a resumed run redoes those blocks instead of trusting
    their done records (version 1 leaves the task id as it was before versions existed)."""


def require_multiple(name: str, value: Coordinate, unit: Coordinate, unit_name: str = "the voxel size") -> None:
    if value % unit != Coordinate((0,) * len(unit)):
        raise InputError(f"{name} {tuple(value)} nm is not a multiple of {unit_name} {tuple(unit)} nm")


def check_input(plan: RunPlan, path: str, role: str, dtypes: tuple):
    """An input array: of one of ``dtypes``, on the run's voxel grid, covering the run's ROI."""
    array = open_array(path)
    if array.dtype not in dtypes:
        raise InputError(f"{role} {path}: dtype {array.dtype}, expected one of {[str(d) for d in dtypes]}")
    if array.voxel_size != plan.voxel_size:
        raise InputError(
            f"{role} {path}: voxel size {tuple(array.voxel_size)} nm does not match the run's {tuple(plan.voxel_size)} nm"
        )
    if not array.roi.contains(plan.volume_roi):
        raise InputError(f"{role} {path}: its ROI {array.roi} does not cover the run's ROI {plan.volume_roi}")
    return array


def blocks_with_context(block_size: Coordinate, context: Coordinate, volume_roi: Roi) -> Layout:
    """Blocks on a grid anchored at the volume's origin, each read with ``context`` around it."""
    return (
        volume_roi.grow(context, context),
        Roi((0,) * len(block_size), block_size + context * 2),
        Roi(context, block_size),
    )


def plain_blocks(plan: RunPlan) -> Layout:
    return blocks_with_context(plan.block_size, Coordinate((0,) * len(plan.block_size)), plan.volume_roi)


def whole_volume(plan: RunPlan) -> Layout:
    """One block over everything: for stages that run after every block upstream of them."""
    whole = Roi((0,) * len(plan.block_size), plan.volume_roi.shape)
    return plan.volume_roi, whole, whole
