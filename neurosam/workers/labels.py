"""Helpers for label volumes, where sorting every voxel is the slow part of a block."""

from __future__ import annotations

import numpy as np


def unique_inverse(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(labels, return_inverse=True)`` with the inverse in the labels' shape. Labels
    come in runs of equal voxels, so only the first voxel of each run is sorted."""
    flat = labels.ravel()
    run_starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    ids = np.unique(np.concatenate([flat[:1], flat[run_starts]]))
    return ids, np.searchsorted(ids, labels)
