"""Helpers for label volumes, where sorting every voxel is the slow part of a block."""

from __future__ import annotations

import numpy as np


def unique_inverse(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(labels, return_inverse=True)`` with the inverse in the labels' shape. Labels
    come in runs of equal voxels, so only the first voxel of each run is sorted and looked up."""
    flat = labels.ravel()
    run_starts = np.flatnonzero(np.concatenate([[True], flat[1:] != flat[:-1]]))
    run_values = flat[run_starts]
    ids = np.unique(run_values)
    run_lengths = np.diff(np.append(run_starts, flat.size))
    return ids, np.repeat(np.searchsorted(ids, run_values), run_lengths).reshape(labels.shape)
