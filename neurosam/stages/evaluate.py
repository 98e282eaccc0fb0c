"""Evaluate: score the segmentation of every threshold against the ground truth, then draw it.

Scores come from contingency tables summed chunk by chunk, so a whole-brain ground truth is never
loaded at once; the picture is one section of the raw with the best threshold's segments over it.
"""

from __future__ import annotations

from contextlib import contextmanager

from funlib.geometry import Coordinate, Roi

from neurosam.config import RunConfig
from neurosam.graph.metrics import evaluate_many, plot_scores_vs_threshold, plot_segmentation_slice, write_report
from neurosam.layout import WorkerSetup, segmentation_path
from neurosam.io.volumes import open_array


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
        "thresholds": per_threshold,
    }
    write_report(report, config.work_dir / "evaluation.json")
    plot_scores_vs_threshold({float(t): s for t, s in per_threshold.items()}, config.work_dir / "evaluation.png")
    if config.datasets.raw is not None:
        segmentation = open_array(segmentation_path(config, float(best)))
        section = middle_section(volume_roi, segmentation.voxel_size)
        plot_segmentation_slice(
            open_array(config.datasets.raw)[section],
            segmentation[section],
            config.work_dir / "segmentation.png",
            title=f"threshold {best}: VOI {per_threshold[best]['voi']:.3f}",
        )
    return report


@contextmanager
def evaluate_blocks(setup: WorkerSetup):
    """Evaluation reads whole arrays through funlib.persistence (imported here only), chunk by chunk."""
    yield lambda block: evaluate_run(setup.plan.config, setup.plan.volume_roi)
