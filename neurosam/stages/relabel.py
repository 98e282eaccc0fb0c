"""Relabel: turn each block of fragments into segments through the lookup table of each threshold."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from neurosam.graph.labels import unique_inverse
from neurosam.layout import RunPlan, WorkerSetup, fragment_ids_path, lookup_path, segmentation_path, segmentation_role
from neurosam.stages.stage import OutputArray, Stage, plain_blocks


def segmentation_outputs(plan: RunPlan) -> list[OutputArray]:
    return [
        OutputArray(segmentation_role(threshold), segmentation_path(plan.config, threshold), np.uint64, plan.block_size)
        for threshold in plan.config.segment.thresholds
    ]


def relabel_block(setup: WorkerSetup, block) -> None:
    """The block's fragment ids are found once and looked up in every threshold's table."""
    plan, config = setup.plan, setup.plan.config
    fragments = plan.arrays["fragments"].read(block.write_roi)
    present, inverse = unique_inverse(fragments)
    for threshold in config.segment.thresholds:
        segmentation = plan.arrays[segmentation_role(threshold)]
        segmentation.write(block.write_roi, segment_ids(config, present, threshold)[inverse])


def segment_ids(config, fragments: np.ndarray, threshold: float) -> np.ndarray:
    """The segment of each fragment at ``threshold``, as segment wrote it: relabel writes these
    ids into the segmentation, and evaluate scores through them without reading it."""
    ids = np.load(fragment_ids_path(config), mmap_mode="r")
    return apply_lookup(fragments, ids, np.load(lookup_path(config, threshold), mmap_mode="r"))


def apply_lookup(fragments: np.ndarray, ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Map fragment ids to segment ids; 0 stays 0. Tables may be memory-mapped."""
    flat_ids, inverse = unique_inverse(fragments)
    segments = np.zeros(len(flat_ids), dtype=np.uint64)
    nonzero = flat_ids != 0
    positions = np.searchsorted(ids, flat_ids[nonzero])
    positions = np.minimum(positions, len(ids) - 1)
    unknown = ids[positions] != flat_ids[nonzero] if len(ids) else np.ones(nonzero.sum(), dtype=bool)
    if unknown.any():
        raise ValueError(
            f"fragments {flat_ids[nonzero][unknown][:5].tolist()} are not in the RAG: "
            "the fragments task and the RAG disagree (was the RAG changed or the run mixed with another?)"
        )
    segments[nonzero] = table[positions]
    return segments[inverse]


@contextmanager
def relabel_blocks(setup: WorkerSetup):
    yield lambda block: relabel_block(setup, block)


STAGE = Stage("relabel", "neurosam.stages.relabel:relabel_blocks", plain_blocks, outputs=segmentation_outputs)
