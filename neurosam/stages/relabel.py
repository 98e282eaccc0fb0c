"""Relabel: turn each block of fragments into segments through the lookup table of each threshold."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from neurosam.layout import WorkerSetup, fragment_ids_path, lookup_path, segmentation_role
from neurosam.graph.labels import unique_inverse
from neurosam.stages.segment import apply_lookup


def relabel_block(setup: WorkerSetup, block) -> None:
    """The block's fragment ids are found once and looked up in every threshold's table."""
    plan, config = setup.plan, setup.plan.config
    fragments = plan.arrays["fragments"].read(block.write_roi)
    present, inverse = unique_inverse(fragments)
    ids = np.load(fragment_ids_path(config), mmap_mode="r")
    for threshold in config.segment.thresholds:
        table = np.load(lookup_path(config, threshold), mmap_mode="r")
        segmentation = plan.arrays[segmentation_role(threshold)]
        segmentation.write(block.write_roi, apply_lookup(present, ids, table)[inverse])


@contextmanager
def relabel_blocks(setup: WorkerSetup):
    yield lambda block: relabel_block(setup, block)
