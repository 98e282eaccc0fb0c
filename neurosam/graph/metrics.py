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

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate, Roi

from neurosam.io.volumes import VolumeError, open_array, require_same_voxel_size

DEFAULT_CHUNK_SHAPE = (128, 128, 128)
CHUNKS_PER_MERGE = 32


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
    segment_ids = _as_labels(segmentation)
    ground_truth_ids = _as_labels(ground_truth)
    if ignore_background:
        labelled = ground_truth_ids != 0
        segment_ids = segment_ids[labelled]
        ground_truth_ids = ground_truth_ids[labelled]
    # Labels come in runs of equal voxels: only the first pair of each run is sorted, weighted
    # by the run's length.
    changes = np.ones(len(segment_ids), dtype=bool)
    changes[1:] = (segment_ids[1:] != segment_ids[:-1]) | (ground_truth_ids[1:] != ground_truth_ids[:-1])
    starts = np.flatnonzero(changes)
    lengths = np.diff(np.append(starts, len(segment_ids)))
    return _count_pairs(segment_ids[starts], ground_truth_ids[starts], weights=lengths)


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


def _chunks(roi: Roi, chunk_world: Coordinate) -> Iterable[Roi]:
    counts = [-(-size // step) for size, step in zip(roi.shape, chunk_world)]
    for index in product(*(range(count) for count in counts)):
        yield Roi(roi.offset + Coordinate(index) * chunk_world, chunk_world).intersect(roi)


def evaluate_arrays(
    segmentation_path: str | os.PathLike,
    ground_truth_path: str | os.PathLike,
    roi: Roi | None = None,
    chunk_shape: Sequence[int] = DEFAULT_CHUNK_SHAPE,
    ignore_background: bool = True,
) -> dict[str, float]:
    """Score two stored datasets over ``roi`` (default: where both exist), one chunk in memory at a time.

    ``chunk_shape`` is in voxels.
    """
    return evaluate_many([segmentation_path], ground_truth_path, roi, chunk_shape, ignore_background)[0]


def evaluate_many(
    segmentation_paths: Sequence[str | os.PathLike],
    ground_truth_path: str | os.PathLike,
    roi: Roi | None = None,
    chunk_shape: Sequence[int] = DEFAULT_CHUNK_SHAPE,
    ignore_background: bool = True,
) -> list[dict[str, float]]:
    """Scores of several segmentations of one volume (a run's thresholds), with the ground truth
    read once, a chunk at a time."""
    segmentations = [open_array(path) for path in segmentation_paths]
    ground_truth = open_array(ground_truth_path)
    shared = ground_truth.roi
    for segmentation, path in zip(segmentations, segmentation_paths):
        require_same_voxel_size(segmentation, path, ground_truth, ground_truth_path)
        shared = shared.intersect(segmentation.roi)
    voxel_size = ground_truth.voxel_size
    if roi is None:
        roi = shared
    if roi.empty or not shared.contains(roi):
        raise VolumeError(
            f"evaluation ROI {roi} is not inside both {', '.join(map(str, segmentation_paths))} ({shared}) "
            f"and {ground_truth_path} ({ground_truth.roi})"
        )
    if roi.offset % voxel_size != voxel_size * 0 or roi.shape % voxel_size != voxel_size * 0:
        raise VolumeError(f"evaluation ROI {roi} is not aligned to the voxel size {voxel_size} nm")

    totals: list[Contingency | None] = [None] * len(segmentations)
    pending: list[list[Contingency]] = [[] for _ in segmentations]
    for chunk in _chunks(roi, Coordinate(chunk_shape) * voxel_size):
        truth = ground_truth[chunk]
        for index, segmentation in enumerate(segmentations):
            pending[index].append(contingency(segmentation[chunk], truth, ignore_background))
            if len(pending[index]) == CHUNKS_PER_MERGE:
                totals[index] = _merge(totals[index], pending[index])
                pending[index] = []
    return [scores_from_contingency(_merge(total, tables)) for total, tables in zip(totals, pending)]


def _merge(total: Contingency | None, tables: list[Contingency]) -> Contingency:
    return sum_contingencies(tables if total is None else [total, *tables])


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, Roi, Coordinate)):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to a JSON report")


def write_report(results: dict, path: str | os.PathLike) -> None:
    """Write JSON atomically, so a reader never sees half a report from an interrupted run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(results, indent=2, default=_jsonable) + "\n")
    partial.replace(path)


def _segment_colours(segmentation: np.ndarray) -> np.ndarray:
    """RGBA per voxel, a colour fixed by the id alone so a segment looks the same in every picture."""
    import matplotlib.colors

    ids = segmentation.astype(np.uint64)
    hue = (ids * np.uint64(0x9E3779B97F4A7C15) >> np.uint64(40)).astype(np.float64) / 2.0**24
    saturation = 0.55 + 0.45 * ((ids * np.uint64(0xC2B2AE3D27D4EB4F) >> np.uint64(60)).astype(np.float64) / 16.0)
    hsv = np.stack([hue, saturation, np.ones_like(hue)], axis=-1)
    rgba = np.concatenate([matplotlib.colors.hsv_to_rgb(hsv), np.ones((*ids.shape, 1))], axis=-1)
    rgba[ids == 0] = 0.0
    return rgba


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour carries another label."""
    edges = np.zeros(labels.shape, dtype=bool)
    edges[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edges[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edges


def plot_segmentation_slice(
    raw: np.ndarray,
    segmentation: np.ndarray,
    path: str | os.PathLike,
    z: int | None = None,
    colour_alpha: float = 0.35,
    boundary_colour: str = "yellow",
    title: str | None = None,
) -> None:
    """Draw section ``z`` (default: the middle one) of the raw with segments over it.

    Segments are tinted in translucent colours (``colour_alpha`` 0 turns that off) and outlined
    (``boundary_colour`` None turns that off). Segment 0 is left untinted.
    """
    import matplotlib.colors
    from matplotlib.figure import Figure

    if raw.shape != segmentation.shape or raw.ndim != 3:
        raise ValueError(f"raw {raw.shape} and segmentation {segmentation.shape} must be 3D volumes of one shape")
    z = raw.shape[0] // 2 if z is None else z
    if not 0 <= z < raw.shape[0]:
        raise ValueError(f"section z={z} is outside the volume's {raw.shape[0]} sections")
    section = segmentation[z]

    height, width = section.shape
    figure = Figure(figsize=(8, 8 * height / width), dpi=100)
    axis = figure.subplots()
    axis.imshow(raw[z], cmap="gray", interpolation="nearest")
    if colour_alpha > 0:
        colours = _segment_colours(section)
        colours[..., 3] *= colour_alpha
        axis.imshow(colours, interpolation="nearest")
    if boundary_colour is not None:
        outline = np.zeros((height, width, 4))
        outline[_boundaries(section)] = matplotlib.colors.to_rgba(boundary_colour)
        axis.imshow(outline, interpolation="nearest")
    axis.set_title(title if title is not None else f"section z={z}, {len(np.unique(section))} segments")
    axis.set_axis_off()
    figure.tight_layout()
    figure.savefig(path)


def plot_scores_vs_threshold(per_threshold: dict[float, dict], path: str | os.PathLike):
    """VOI split / merge / total and adapted Rand error against the agglomeration threshold;
    returns the figure, so what it shows can be checked."""
    from matplotlib.figure import Figure

    if not per_threshold:
        raise ValueError("no thresholds to plot")
    thresholds = sorted(per_threshold, key=float)
    x = [float(t) for t in thresholds]
    figure = Figure(figsize=(11, 4.5))
    voi_axis, rand_axis = figure.subplots(1, 2)
    for key, style in (("voi_split", "--"), ("voi_merge", ":"), ("voi", "-")):
        voi_axis.plot(x, [per_threshold[t][key] for t in thresholds], style, marker="o", label=key)
    best = min(thresholds, key=lambda t: per_threshold[t]["voi"])
    voi_axis.axvline(float(best), color="grey", linewidth=0.8)
    voi_axis.set_title(f"VOI (bits), best {per_threshold[best]['voi']:.3f} at {float(best):g}")
    voi_axis.set_xlabel("threshold")
    voi_axis.legend()
    rand_axis.plot(x, [per_threshold[t]["adapted_rand_error"] for t in thresholds], marker="o", color="C3")
    rand_axis.set_title("adapted Rand error")
    rand_axis.set_xlabel("threshold")
    rand_axis.set_ylim(bottom=0)
    figure.tight_layout()
    figure.savefig(path)
    return figure
