"""Evaluate: score the segmentation of every threshold against the ground truth, then draw it.

Scores come from contingency tables summed chunk by chunk, so a whole-brain ground truth is never
loaded at once; the picture is one section of the raw with the best threshold's segments over it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from itertools import product
from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate, Roi

from neurosam.config import RunConfig
from neurosam.graph.metrics import Contingency, contingency, scores_from_contingency, sum_contingencies
from neurosam.io.volumes import VolumeError, open_array, require_same_voxel_size
from neurosam.layout import RunPlan, StoredArray, WorkerSetup, evaluation_path, evaluation_pictures, segmentation_path
from neurosam.stages.stage import Stage, check_input, whole_volume
from neurosam.view import plot_scores_vs_threshold, plot_segmentation_slice

DEFAULT_CHUNK_SHAPE = (128, 128, 128)
CHUNKS_PER_MERGE = 32
LABEL_DTYPES = tuple(np.dtype(t) for t in ("uint8", "uint16", "uint32", "uint64", "int32", "int64"))


def check_ground_truth(plan: RunPlan) -> None:
    """Checked, and kept among the plan's arrays: a change to it redoes the evaluation."""
    path = plan.config.datasets.ground_truth
    plan.arrays["ground_truth"] = StoredArray.of(path, check_input(plan, path, "ground truth", LABEL_DTYPES))


def _chunks(roi: Roi, chunk_world: Coordinate) -> Iterable[Roi]:
    counts = [-(-size // step) for size, step in zip(roi.shape, chunk_world)]
    for index in product(*(range(count) for count in counts)):
        yield Roi(roi.offset + Coordinate(index) * chunk_world, chunk_world).intersect(roi)


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




def middle_section(roi: Roi, voxel_size: Coordinate) -> Roi:
    z = roi.offset[0] + (roi.shape[0] // voxel_size[0] // 2) * voxel_size[0]
    return Roi((z, *roi.offset[1:]), (voxel_size[0], *roi.shape[1:]))


def evaluate_run(config: RunConfig, volume_roi: Roi) -> dict:
    scores = evaluate_many(
        [segmentation_path(config, threshold) for threshold in config.segment.thresholds],
        config.datasets.ground_truth,
        roi=volume_roi,
        ignore_background=config.evaluate.ignore_background,
    )
    per_threshold = {f"{threshold:.4f}": score for threshold, score in zip(config.segment.thresholds, scores)}
    best = min(per_threshold, key=lambda t: per_threshold[t]["voi"])
    report = {
        "scoring_function": config.segment.scoring_function,
        "ground_truth": config.datasets.ground_truth,
        "best_threshold": best,
        "chosen_threshold": None if config.evaluate.chosen_threshold is None else f"{config.evaluate.chosen_threshold:.4f}",
        "thresholds": per_threshold,
    }
    segmentation_picture, scores_picture = evaluation_pictures(config.work_dir)
    write_report(report, evaluation_path(config.work_dir))
    plot_scores_vs_threshold({float(t): s for t, s in per_threshold.items()}, scores_picture)
    if config.datasets.raw is not None:
        segmentation = open_array(segmentation_path(config, float(best)))
        section = middle_section(volume_roi, segmentation.voxel_size)
        plot_segmentation_slice(
            open_array(config.datasets.raw)[section],
            segmentation[section],
            segmentation_picture,
            title=f"threshold {best}: VOI {per_threshold[best]['voi']:.3f}",
        )
    return report


@contextmanager
def evaluate_blocks(setup: WorkerSetup):
    """Evaluation reads whole arrays through funlib.persistence (imported here only), chunk by chunk."""
    yield lambda block: evaluate_run(setup.plan.config, setup.plan.volume_roi)


STAGE = Stage(
    "evaluate", "neurosam.stages.evaluate:evaluate_blocks", whole_volume,
    sections=("evaluate",), enabled=lambda config: config.datasets.ground_truth is not None,
    check_inputs=check_ground_truth, work_files=lambda plan: [evaluation_path(plan.work_dir)], reads=("ground_truth", "raw"),
)
