"""The registry of stages: the one place a stage is named.

A stage is data: its name, the config sections its output depends on (its fingerprint), whether
a run has it, its block layout, the arrays it writes, and the ``module:function`` of its block
function. The scheduler builds every daisy task from these objects; the worker imports the block
function by name, so the scheduler never imports a stage's code (nor torch, for predict).

A block function is a context manager ``function(plan, task, rag)`` that sets a worker up once
(loads the model, opens arrays) and yields ``process(block)``, called for every block the worker
gets. Adding a stage is one worker module and one ``register`` call (plus a config section if it
has parameters).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from funlib.geometry import Coordinate, Roi

from neurosam.config import RunConfig
from neurosam.layout import RunPlan, claims_path, claims_role, segmentation_path, segmentation_role

Layout = tuple[Roi, Roi, Roi]
"""The ROI a task's blocks tile, one block's read ROI and its write ROI (nm)."""


@dataclass(frozen=True)
class OutputArray:
    """An array a stage writes, created before any block runs (kept when it exists and fits)."""

    role: str
    path: str
    dtype: type
    block_size: Coordinate
    channels: tuple[int, ...] = ()
    attrs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    name: str
    block_function: str
    layout: Callable[[RunPlan], Layout]
    sections: tuple[str, ...] = ()
    enabled: Callable[[RunConfig], bool] = lambda config: True
    outputs: Callable[[RunPlan], list[OutputArray]] = lambda plan: []
    uses_gpu: bool = False


def blocks_with_context(block_size: Coordinate, context: Coordinate, volume_roi: Roi) -> Layout:
    """Blocks on a grid anchored at the volume's origin, each read with ``context`` around it."""
    return (
        volume_roi.grow(context, context),
        Roi((0,) * len(block_size), block_size + context * 2),
        Roi(context, block_size),
    )


def post_processing_blocks(plan: RunPlan) -> Layout:
    return blocks_with_context(plan.block_size, plan.context, plan.volume_roi)


def contact_blocks(plan: RunPlan) -> Layout:
    """Blocks read one voxel beyond their write ROI: all the contacts of their fragments."""
    return blocks_with_context(plan.block_size, plan.voxel_size, plan.volume_roi)


def plain_blocks(plan: RunPlan) -> Layout:
    return blocks_with_context(plan.block_size, Coordinate((0,) * len(plan.block_size)), plan.volume_roi)


def whole_volume(plan: RunPlan) -> Layout:
    """One block over everything: for stages that run after every block upstream of them."""
    whole = Roi((0,) * len(plan.block_size), plan.volume_roi.shape)
    return plan.volume_roi, whole, whole


def predict_blocks(plan: RunPlan) -> Layout:
    return blocks_with_context(plan.predict_block_size, plan.predict_context, plan.volume_roi)


def _affinities_output(plan: RunPlan) -> list[OutputArray]:
    affinities = plan.arrays["affinities"]
    return [
        OutputArray(
            "affinities", affinities.path, np.uint8, plan.predict_block_size, affinities.channels,
            {"offsets": plan.affinity_offsets},
        )
    ]


def _fragments_output(plan: RunPlan) -> list[OutputArray]:
    claims = [OutputArray(claims_role(axis), claims_path(plan.config, axis), np.uint64, plan.block_size) for axis in range(3)]
    return [OutputArray("fragments", plan.config.datasets.fragments, np.uint64, plan.block_size), *claims]


def _segmentation_outputs(plan: RunPlan) -> list[OutputArray]:
    return [
        OutputArray(segmentation_role(threshold), segmentation_path(plan.config, threshold), np.uint64, plan.block_size)
        for threshold in plan.config.segment.thresholds
    ]


STAGES: list[Stage] = [
    Stage(
        "predict", "neurosam.stages.predict:predict_blocks", predict_blocks,
        sections=("datasets", "roi", "predict"),
        enabled=lambda config: config.predict is not None,
        outputs=_affinities_output, uses_gpu=True,
    ),
    Stage(
        "fragments", "neurosam.stages.fragments:fragments_blocks", post_processing_blocks,
        sections=("datasets", "roi", "blocks", "fragments"), outputs=_fragments_output,
    ),
    Stage("agglomerate", "neurosam.stages.contacts:agglomerate_blocks", contact_blocks),
    Stage("segment", "neurosam.stages.segment:segment_blocks", whole_volume, sections=("agglomerate", "segment")),
    Stage("relabel", "neurosam.stages.relabel:relabel_blocks", plain_blocks, outputs=_segmentation_outputs),
    Stage(
        "evaluate", "neurosam.stages.evaluate:evaluate_blocks", whole_volume,
        sections=("evaluate",), enabled=lambda config: config.datasets.ground_truth is not None,
    ),
]


def register(stage: Stage, after: str | None = None) -> None:
    """Add a stage to the registry, after the stage named ``after`` (default: at the end)."""
    if any(existing.name == stage.name for existing in STAGES):
        raise ValueError(f"a stage named {stage.name!r} is registered already")
    position = len(STAGES) if after is None else [s.name for s in STAGES].index(after) + 1
    STAGES.insert(position, stage)


def stage_names() -> list[str]:
    return [stage.name for stage in STAGES]


def stages_for(config: RunConfig) -> list[Stage]:
    return [stage for stage in STAGES if stage.enabled(config)]
