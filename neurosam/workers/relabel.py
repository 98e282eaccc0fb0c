"""Relabel: turn each block of fragments into segments through the lookup table of each threshold."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from neurosam.config import RunConfig
from neurosam.workers.labels import unique_inverse
from neurosam.workers.segment import apply_lookup, fragment_ids_path, lookup_path

if TYPE_CHECKING:
    from neurosam.pipeline.plan import RunPlan


def segmentation_path(config: RunConfig, threshold: float) -> str:
    return f"{config.datasets.segmentation}/{config.segment.scoring_function}/threshold_{threshold:.4f}"


def relabel_block(config: RunConfig, plan: RunPlan, block) -> None:
    """The block's fragment ids are found once and looked up in every threshold's table."""
    fragments = plan.output(config.datasets.fragments).read(block.write_roi)
    present, inverse = unique_inverse(fragments)
    ids = np.load(fragment_ids_path(config), mmap_mode="r")
    for threshold in config.segment.thresholds:
        table = np.load(lookup_path(config, threshold), mmap_mode="r")
        segmentation = plan.output(segmentation_path(config, threshold))
        segmentation.write(block.write_roi, apply_lookup(present, ids, table)[inverse])
