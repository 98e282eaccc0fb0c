"""Evaluate: score the segmentation of every threshold against the ground truth, then draw it.

Every threshold's segmentation is its fragments under a lookup, so the table of (fragment,
ground-truth) voxel counts, summed block by block, gives every threshold's contingency table
through segment's lookup: the fragments and the ground truth are read once, whatever the number
of thresholds, and a whole-brain ground truth is never held at once. The picture is one section
of the raw with the best threshold's segments over it.

Expected run length is scored on skeletons of the ground truth, which evaluate only reads: the
user's, or those the ground_truth_skeletons stage made and keeps. Each skeleton node's fragment,
read once, gives its segment at every threshold through the same lookup.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate, Roi

from neurosam.graph.erl import SkeletonGraph, run_length_scores
from neurosam.graph.metrics import Contingency, contingency, scores_from_contingency, sum_contingencies
from neurosam.layout import (
    RunPlan, StoredArray, WorkerSetup, evaluation_path, evaluation_pictures, ground_truth_skeletons_dir, segmentation_role,
)
from neurosam.stages.relabel import segment_ids
from neurosam.stages.stage import InputError, Stage, check_input, whole_volume
from neurosam.view import plot_scores_vs_threshold, plot_segmentation_slice

TABLES_PER_MERGE = 32
LABEL_DTYPES = tuple(np.dtype(t) for t in ("uint8", "uint16", "uint32", "uint64", "int32", "int64"))


def check_ground_truth(plan: RunPlan) -> None:
    """Checked, and kept among the plan's arrays: a change to it redoes the evaluation."""
    path = plan.config.datasets.ground_truth
    plan.arrays["ground_truth"] = StoredArray.of(path, check_input(plan, path, "ground truth", LABEL_DTYPES))


def check_evaluate_inputs(plan: RunPlan) -> None:
    check_ground_truth(plan)
    given = plan.config.datasets.ground_truth_skeletons
    if plan.config.evaluate.erl and given is not None and not (Path(given) / "info").is_file():
        raise InputError(f"ground truth skeletons {given}: no precomputed skeletons there (no info file)")


def stored_contingency(labels: StoredArray, ground_truth: StoredArray, roi: Roi, chunk: Coordinate, ignore_background: bool = True) -> Contingency:
    """The contingency table of two stored label arrays over ``roi``, read ``chunk`` (nm) at a
    time and summed every few chunks, so memory follows the table, not the volume."""
    total: list[Contingency] = []
    pending: list[Contingency] = []
    for block in _chunks(roi, chunk):
        pending.append(contingency(labels.read(block), ground_truth.read(block), ignore_background))
        if len(pending) == TABLES_PER_MERGE:
            total = [sum_contingencies(total + pending)]
            pending = []
    return sum_contingencies(total + pending)


def _chunks(roi: Roi, chunk: Coordinate):
    counts = [-(-size // step) for size, step in zip(roi.shape, chunk)]
    for index in np.ndindex(*counts):
        yield Roi(roi.offset + Coordinate(index) * chunk, chunk).intersect(roi)


def threshold_scores(fragment_table: Contingency, segments: np.ndarray) -> dict[str, float]:
    """Scores of the segmentation that maps each fragment of the table to ``segments``."""
    return scores_from_contingency(sum_contingencies([Contingency(segments, fragment_table.ground_truth_ids, fragment_table.counts)]))


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


def read_skeletons(directory: Path) -> SkeletonGraph:
    """Every skeleton of a precomputed skeletons directory (unsharded), positions in nm (z y x)
    through its ``info``'s transform."""
    from osteoid import Skeleton

    info = json.loads((directory / "info").read_text())
    transform = np.array(info.get("transform", [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0]), dtype=np.float64).reshape(3, 4)
    skeletons = {}
    for path in directory.iterdir():
        if path.name.isdigit():
            skeleton = Skeleton.from_precomputed(path.read_bytes(), vertex_attributes=info.get("vertex_attributes", []))
            vertices = skeleton.vertices @ transform[:, :3].T + transform[:, 3]
            skeletons[int(path.name)] = (vertices[:, ::-1], skeleton.edges)
    return SkeletonGraph.join(skeletons)


def values_at(array: StoredArray, positions: np.ndarray, roi: Roi, chunk: Coordinate) -> np.ndarray:
    """The array's voxels at ``positions`` (nm, z y x, inside ``roi``), read ``chunk`` at a time."""
    voxel_size = np.array(array.voxel_size)
    voxels = np.floor((positions - np.array(roi.offset)) / voxel_size + 0.5).astype(np.int64)
    voxels = np.clip(voxels, 0, np.array(roi.shape) // voxel_size - 1)
    chunk_voxels = np.array(chunk) // voxel_size
    values = np.zeros(len(positions), dtype=np.uint64)
    owners, inverse = np.unique(voxels // chunk_voxels, axis=0, return_inverse=True)
    for index, owner in enumerate(owners):
        here = np.flatnonzero(inverse.ravel() == index)
        block = Roi(roi.offset + Coordinate(owner * chunk_voxels * voxel_size), chunk).intersect(roi)
        local = voxels[here] - owner * chunk_voxels
        values[here] = array.read(block)[tuple(local.T)]
    return values


def middle_section(roi: Roi, voxel_size: Coordinate) -> Roi:
    z = roi.offset[0] + (roi.shape[0] // voxel_size[0] // 2) * voxel_size[0]
    return Roi((z, *roi.offset[1:]), (voxel_size[0], *roi.shape[1:]))


def evaluate_run(plan: RunPlan) -> dict:
    config = plan.config
    thresholds = config.segment.thresholds
    table = stored_contingency(
        plan.arrays["fragments"], plan.arrays["ground_truth"], plan.volume_roi, plan.block_size, config.evaluate.ignore_background
    )
    segments = segment_ids(plan, table.segment_ids)
    per_threshold = {f"{threshold:.4f}": threshold_scores(table, segments[row]) for row, threshold in enumerate(thresholds)}
    best = min(per_threshold, key=lambda t: per_threshold[t]["voi"])
    run_length = {}
    if config.evaluate.erl:
        skeletons = read_skeletons(ground_truth_skeletons_dir(config))
        fragments = values_at(plan.arrays["fragments"], skeletons.positions, plan.volume_roi, plan.block_size)
        skeleton_segments = segment_ids(plan, fragments)
        for row, threshold in enumerate(thresholds):
            scores = run_length_scores(skeletons, skeleton_segments[row])
            per_threshold[f"{threshold:.4f}"].update(erl=scores["erl"], erl_merges=scores["merges"], erl_splits=scores["splits"])
        run_length = {"skeletons": int(len(np.unique(skeletons.skeleton_ids))), "length": scores["skeleton_length"], "erl_max": scores["erl_max"]}
    report = {
        "scoring_function": config.segment.scoring_function,
        "ground_truth": config.datasets.ground_truth,
        "best_threshold": best,
        "chosen_threshold": None if config.evaluate.chosen_threshold is None else f"{config.evaluate.chosen_threshold:.4f}",
        "thresholds": per_threshold,
    }
    if run_length:
        report["ground_truth_skeletons"] = run_length
    segmentation_picture, scores_picture = evaluation_pictures(config.work_dir)
    write_report(report, evaluation_path(config.work_dir))
    plot_scores_vs_threshold({float(t): s for t, s in per_threshold.items()}, scores_picture)
    if "raw" in plan.arrays:
        section = middle_section(plan.volume_roi, plan.voxel_size)
        plot_segmentation_slice(
            plan.arrays["raw"].read(section),
            plan.arrays[segmentation_role(float(best))].read(section),
            segmentation_picture,
            title=f"threshold {best}: VOI {per_threshold[best]['voi']:.3f}"
            + (f", ERL {per_threshold[best]['erl'] / 1000:.2f} um" if run_length else ""),
        )
    return report


@contextmanager
def evaluate_blocks(setup: WorkerSetup):
    yield lambda block: evaluate_run(setup.plan)


STAGE = Stage(
    "evaluate", "neurosam.stages.evaluate:evaluate_blocks", whole_volume,
    sections=("evaluate",), enabled=lambda config: config.datasets.ground_truth is not None,
    check_inputs=check_evaluate_inputs, work_files=lambda plan: [evaluation_path(plan.work_dir)], reads=("ground_truth", "raw"),
)
