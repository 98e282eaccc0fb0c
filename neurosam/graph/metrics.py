"""Segmentation metrics that scale to volumes far larger than memory.

Every score here is a function of one sparse contingency table: how many voxels carry each
(segment id, ground-truth id) pair. Tables of disjoint blocks add up to the table of their union,
so a huge volume is scored by summing per-block tables, never by holding the volume.

Conventions (those of waterz / funlib.evaluate, the CREMI and SNEMI3D challenges, skimage):
- ground-truth id 0 is background and its voxels are dropped; segment id 0 is one segment;
- VOI in bits (log base 2): split = H(segmentation | ground truth), merge = H(ground truth |
  segmentation), voi = split + merge;
- adapted Rand error = 1 - F-score of Rand precision and recall over pairs of distinct voxels,
  as skimage.metrics.adapted_rand_error with alpha = 0.5.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numba
import numpy as np


@dataclass(frozen=True)
class Contingency:
    """Voxel counts per (segment id, ground-truth id) pair, one entry per pair present."""

    segment_ids: np.ndarray
    ground_truth_ids: np.ndarray
    counts: np.ndarray

    def __add__(self, other: Contingency) -> Contingency:
        return sum_contingencies([self, other])

    def __radd__(self, other: int) -> Contingency:
        """Lets ``sum(tables)`` start from its default 0."""
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented

    @property
    def voxels(self) -> int:
        return int(self.counts.sum())


def _count_pairs(segment_ids: np.ndarray, ground_truth_ids: np.ndarray, weights: np.ndarray | None) -> Contingency:
    """Sum ``weights`` (1 per entry if None) per distinct pair.

    Ids are first replaced by their rank among the distinct ids, so that a pair becomes one int64
    key even when the ids themselves use all 64 bits.
    """
    unique_segments, segment_rank = np.unique(segment_ids, return_inverse=True)
    unique_truths, truth_rank = np.unique(ground_truth_ids, return_inverse=True)
    keys = segment_rank.astype(np.int64) * len(unique_truths) + truth_rank
    unique_keys, key_index = np.unique(keys, return_inverse=True)
    counts = np.bincount(key_index, weights=weights, minlength=len(unique_keys)).astype(np.int64)
    return Contingency(
        segment_ids=unique_segments[unique_keys // len(unique_truths)],
        ground_truth_ids=unique_truths[unique_keys % len(unique_truths)],
        counts=counts,
    )


def _as_labels(labels: np.ndarray) -> np.ndarray:
    """Ids as uint64, so tables of int32 and uint64 volumes can be added without float rounding."""
    return np.asarray(labels).reshape(-1).astype(np.uint64, copy=False)


def contingency(segmentation: np.ndarray, ground_truth: np.ndarray, ignore_background: bool = True) -> Contingency:
    """The table of one block; voxels with ground-truth 0 are dropped if ``ignore_background``."""
    segmentation = np.asarray(segmentation)
    ground_truth = np.asarray(ground_truth)
    if segmentation.shape != ground_truth.shape:
        raise ValueError(
            f"segmentation shape {segmentation.shape} differs from ground truth shape {ground_truth.shape}"
        )
    segment_ids, ground_truth_ids, counts = _count_voxel_pairs(_as_labels(segmentation), _as_labels(ground_truth), ignore_background)
    order = np.lexsort((ground_truth_ids, segment_ids))
    return Contingency(segment_ids[order], ground_truth_ids[order], counts[order])


@numba.njit(cache=True, nogil=True)
def _count_voxel_pairs(segments, truths, ignore_background):
    """Voxels per distinct (segment, truth) pair, in one pass over the voxels: an
    open-addressing hash table of the pairs, each run of equal pairs added at once (labels come
    in runs along x). A sort of every voxel's pair cost ten times as much."""
    capacity = 1024
    table_segments = np.zeros(capacity, np.uint64)
    table_truths = np.zeros(capacity, np.uint64)
    table_counts = np.zeros(capacity, np.int64)
    size = 0
    start = 0
    while start < len(segments):
        segment, truth = segments[start], truths[start]
        stop = start + 1
        while stop < len(segments) and segments[stop] == segment and truths[stop] == truth:
            stop += 1
        if not (ignore_background and truth == 0):
            if 2 * (size + 1) > capacity:
                table_segments, table_truths, table_counts = _grown(table_segments, table_truths, table_counts)
                capacity = len(table_counts)
            if _add(table_segments, table_truths, table_counts, segment, truth, stop - start):
                size += 1
        start = stop
    used = table_counts > 0
    return table_segments[used], table_truths[used], table_counts[used]


@numba.njit(cache=True, nogil=True, inline="always")
def _add(table_segments, table_truths, table_counts, segment, truth, count):
    """Add ``count`` to the pair's slot; True if the pair is new. Slots with a count are used."""
    mask = np.uint64(len(table_counts) - 1)
    slot = ((segment * np.uint64(0x9E3779B97F4A7C15)) ^ (truth * np.uint64(0xC2B2AE3D27D4EB4F))) >> np.uint64(17)
    slot &= mask
    while table_counts[slot] > 0:
        if table_segments[slot] == segment and table_truths[slot] == truth:
            table_counts[slot] += count
            return False
        slot = (slot + np.uint64(1)) & mask
    table_segments[slot], table_truths[slot], table_counts[slot] = segment, truth, count
    return True


@numba.njit(cache=True, nogil=True)
def _grown(table_segments, table_truths, table_counts):
    capacity = 2 * len(table_counts)
    segments = np.zeros(capacity, np.uint64)
    truths = np.zeros(capacity, np.uint64)
    counts = np.zeros(capacity, np.int64)
    for slot in range(len(table_counts)):
        if table_counts[slot] > 0:
            _add(segments, truths, counts, table_segments[slot], table_truths[slot], table_counts[slot])
    return segments, truths, counts


def sum_contingencies(tables: Iterable[Contingency]) -> Contingency:
    """Add many tables in one pass (cheaper than adding them two at a time)."""
    tables = list(tables)
    return _count_pairs(
        np.concatenate([table.segment_ids for table in tables]),
        np.concatenate([table.ground_truth_ids for table in tables]),
        weights=np.concatenate([table.counts for table in tables]),
    )


def _sizes(ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Voxels per id, aligned with ``counts``: each entry gets the total of its id."""
    _, index = np.unique(ids, return_inverse=True)
    return np.bincount(index, weights=counts)[index]


def _pairs(sizes: np.ndarray) -> float:
    """Twice the number of pairs of distinct voxels within sets of these sizes."""
    return float(np.sum(sizes * (sizes - 1.0)))


def scores_from_contingency(table: Contingency) -> dict[str, float]:
    """VOI split / merge / total (bits) and adapted Rand error of a whole table."""
    if table.voxels == 0:
        raise ValueError("no ground-truth voxels to evaluate: the table is empty (all background?)")
    counts = table.counts.astype(np.float64)
    total = counts.sum()
    segment_sizes = _sizes(table.segment_ids, counts)
    truth_sizes = _sizes(table.ground_truth_ids, counts)
    voi_split = float(np.sum(counts / total * np.log2(truth_sizes / counts)))
    voi_merge = float(np.sum(counts / total * np.log2(segment_sizes / counts)))

    _, first_of_segment = np.unique(table.segment_ids, return_index=True)
    _, first_of_truth = np.unique(table.ground_truth_ids, return_index=True)
    segment_pairs = _pairs(segment_sizes[first_of_segment])
    truth_pairs = _pairs(truth_sizes[first_of_truth])
    joint_pairs = _pairs(counts)
    both = segment_pairs + truth_pairs
    adapted_rand_error = 1.0 - 2.0 * joint_pairs / both if both > 0 else 0.0
    return {
        "voi_split": voi_split,
        "voi_merge": voi_merge,
        "voi": voi_split + voi_merge,
        "adapted_rand_error": adapted_rand_error,
    }


def evaluate(segmentation: np.ndarray, ground_truth: np.ndarray, ignore_background: bool = True) -> dict[str, float]:
    """Scores of two in-memory volumes."""
    return scores_from_contingency(contingency(segmentation, ground_truth, ignore_background))
