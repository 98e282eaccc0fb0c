"""Helpers for label volumes, where sorting every voxel is the slow part of a block."""

from __future__ import annotations

import numpy as np


def runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat index of the first voxel and length of every run of equal labels along the last
    axis (a run never wraps into the next row)."""
    change = np.empty(labels.shape, dtype=bool)
    change[..., 0] = True
    np.not_equal(labels[..., 1:], labels[..., :-1], out=change[..., 1:])
    starts = np.flatnonzero(change)
    return starts, np.diff(np.append(starts, labels.size))


def unique_labels(labels: np.ndarray) -> np.ndarray:
    """``np.unique(labels)``, from the first voxel of each run: a super-block's fragments hold
    16M voxels, and hashing each of them took most of the time its graph took to read."""
    starts, _ = runs(labels)
    return np.unique(labels.ravel()[starts])


def unique_inverse(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(labels, return_inverse=True)`` with the inverse in the labels' shape, as int32
    where it fits (half the memory traffic of what follows). Labels come in runs of equal
    voxels, so only the first voxel of each run is sorted and looked up."""
    starts, lengths = runs(labels)
    run_values = labels.ravel()[starts]
    ids = np.unique(run_values)
    index_type = np.int32 if len(ids) <= np.iinfo(np.int32).max else np.int64
    inverse = np.searchsorted(ids, run_values).astype(index_type)
    return ids, np.repeat(inverse, lengths).reshape(labels.shape)
