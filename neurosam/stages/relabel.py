"""Relabel: turn each block of fragments into segments through the table of its level-0
super-block (``neurosam.stages.segment``), which names each of its fragments' segment at every
threshold: no process reads more than one super-block's table."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from neurosam.graph.labels import unique_inverse
from neurosam.layout import RunPlan, WorkerSetup, segment_table_path, segmentation_path, segmentation_role
from neurosam.stages.segment_tables import load_table, position, table_files
from neurosam.stages.stage import OutputArray, Stage, plain_blocks


def segmentation_outputs(plan: RunPlan) -> list[OutputArray]:
    return [
        OutputArray(segmentation_role(threshold), segmentation_path(plan.config, threshold), np.uint64, plan.block_size)
        for threshold in plan.config.segment.thresholds
    ]


def relabel_block(setup: WorkerSetup, block) -> None:
    """The block's fragment ids are found once and looked up in every threshold's row."""
    plan, config = setup.plan, setup.plan.config
    fragments = plan.arrays["fragments"].read(block.write_roi)
    present, inverse = unique_inverse(fragments)
    ids, table = load_table(segment_table_path(config, 0, position(plan, block.write_roi, 0)))
    for row, threshold in enumerate(config.segment.thresholds):
        segmentation = plan.arrays[segmentation_role(threshold)]
        segmentation.write(block.write_roi, apply_lookup(present, ids, table[row])[inverse])


def segment_ids(plan: RunPlan, fragments: np.ndarray) -> np.ndarray:
    """The segment of each of ``fragments`` (from anywhere in the volume) at every threshold
    (thresholds x fragments), as relabel writes them: evaluate scores through them without
    reading the segmentation. One level-0 table at a time."""
    unique, inverse = np.unique(fragments, return_inverse=True)
    segments = np.zeros((len(plan.config.segment.thresholds), len(unique)), dtype=np.uint64)
    found = unique == 0
    for path in table_files(plan):
        ids, table = load_table(path)
        where = np.minimum(np.searchsorted(unique, ids), max(len(unique) - 1, 0))
        hit = unique[where] == ids if len(unique) else np.zeros(len(ids), dtype=bool)
        segments[:, where[hit]] = table[:, hit]
        found[where[hit]] = True
    if not found.all():
        raise ValueError(
            f"fragments {unique[~found][:5].tolist()} are in no super-block's table: "
            "the fragments task and the segment tables disagree (was the run mixed with another?)"
        )
    return segments[:, inverse.ravel()]


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
