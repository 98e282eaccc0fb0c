"""The run as daisy tasks: which blocks each stage has, what each block reads, what it waits for.

A task's id carries a fingerprint of everything its output depends on (its own config section,
its inputs, and its upstream task's fingerprint). Done markers are kept per task id, so changing
a parameter starts that task and everything downstream afresh, while an unchanged rerun skips
every finished block.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import daisy.v2 as daisy
import numpy as np
from funlib.geometry import Coordinate, Roi

from neurosam.config import RunConfig
from neurosam.pipeline.blocks import STAGES
from neurosam.pipeline.plan import RunPlan

STAGE_SECTIONS = {
    "fragments": ("datasets", "roi", "blocks", "rag", "fragments"),
    "agglomerate": ("agglomerate",),
    "segment": ("segment",),
    "relabel": (),
    "evaluate": ("evaluate",),
}


@dataclass(frozen=True)
class StageBlocks:
    """One stage's block layout in nm: the ROI it tiles, and one block's read and write ROIs."""

    total_roi: Roi
    read_roi: Roi
    write_roi: Roi

    @property
    def grid_shape(self) -> tuple[int, ...]:
        shape = self.total_roi.shape - (self.read_roi.shape - self.write_roi.shape)
        return tuple(-(-s // b) for s, b in zip(shape, self.write_roi.shape))

    @property
    def block_count(self) -> int:
        return int(np.prod(self.grid_shape))

    def skip_mask(self, done_blocks: set[int]) -> np.ndarray:
        """daisy skips the blocks the RAG records as finished, even where a run was killed after
        a worker recorded its block and before daisy wrote its own marker."""
        mask = np.zeros(self.block_count, dtype=bool)
        mask[sorted(done_blocks)] = True
        return mask.reshape(self.grid_shape)


def stages_for(config: RunConfig) -> list[str]:
    """Evaluation runs only where there is ground truth to compare with."""
    return [s for s in STAGES if s != "evaluate" or config.datasets.ground_truth is not None]


def task_ids(config: RunConfig) -> dict[str, str]:
    ids, upstream = {}, ""
    for stage in stages_for(config):
        upstream = hashlib.sha256((upstream + config.fingerprint(*STAGE_SECTIONS[stage])).encode()).hexdigest()[:10]
        ids[stage] = f"{stage}-{upstream}"
    return ids


def stage_blocks(stage: str, plan: RunPlan) -> StageBlocks:
    """fragments and agglomerate read a context around each block; segment and evaluate are one
    block over the whole volume (they run after every block upstream of them)."""
    if stage in ("segment", "evaluate"):
        whole = Roi((0, 0, 0), plan.volume_roi.shape)
        return StageBlocks(plan.volume_roi, whole, whole)
    context = plan.context if stage in ("fragments", "agglomerate") else Coordinate((0, 0, 0))
    read_roi = Roi((0, 0, 0), plan.block_size + context * 2)
    return StageBlocks(plan.volume_roi.grow(context, context), read_roi, Roi(context, plan.block_size))


def stages_until(config: RunConfig, until: str | None) -> list[str]:
    stages = stages_for(config)
    return stages if until is None else stages[: stages.index(until) + 1]


def build_pipeline(
    config: RunConfig, config_path: str, plan: RunPlan, done_blocks: dict[str, set[int]], until: str | None = None
) -> daisy.Pipeline | None:
    """The daisy pipeline of the stages with blocks left to do (None when there are none): a
    finished task is left out, as daisy would still start its workers only to skip every block."""
    from neurosam.pipeline.launchers import make_process_function

    ids = task_ids(config)
    pipeline = None
    for stage in stages_until(config, until):
        task_id = ids[stage]
        blocks = stage_blocks(stage, plan)
        skip_mask = blocks.skip_mask(done_blocks.get(task_id, set()))
        if skip_mask.all():
            continue
        task = daisy.Task(
            task_id,
            total_roi=blocks.total_roi,
            read_roi=blocks.read_roi,
            write_roi=blocks.write_roi,
            process_function=make_process_function(config_path, config, task_id, plan),
            read_write_conflict=False,
            fit="shrink",
            max_workers=config.workers.count,
            max_retries=config.workers.max_retries,
            skip_mask=skip_mask,
        )
        pipeline = daisy.Pipeline.from_task(task) if pipeline is None else pipeline + task
    return pipeline
