"""End-to-end correctness of the block-wise pipeline on real EM volumes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import matplotlib.image

import numpy as np
import pytest
import waterz
import yaml
from funlib.geometry import Coordinate

from neurosam.config import HIST_QUANT_50, load_config
from neurosam.graph.metrics import evaluate
from neurosam.io.volumes import open_array
from neurosam.layout import load_plan, plan_path
from neurosam.pipeline.run import run_pipeline, run_status
from neurosam.rag import open_rag
from neurosam.stages.evaluate import middle_section
from neurosam.stages.fragments import owner_block, stitching_context
from pipeline_support import gala_inputs, medulla_gt_inputs, read_edges, read_segmentation, WITH_ERL, write_config

REPO = Path(__file__).resolve().parents[1]
GALA_BLOCKS = {"block_size": (250, 500, 500), "context": (100, 100, 100)}
GALA_ONE_BLOCK = {"block_size": (500, 1000, 2000), "context": (0, 0, 0)}
THRESHOLDS = {"thresholds": [0.5, 0.6, 0.7, 0.8]}


@pytest.fixture(scope="module")
def gala_blockwise(gala, tmp_path_factory):
    path = write_config(tmp_path_factory.mktemp("blockwise"), gala, **GALA_BLOCKS, segment=THRESHOLDS, evaluate=WITH_ERL)
    return path, run_pipeline(path, echo_progress=False)


def best_threshold(summary: dict) -> tuple[float, float]:
    """(threshold, VOI) of the threshold that scores best against the ground truth."""
    scores = summary["evaluation"]["thresholds"]
    best = min(scores, key=lambda t: scores[t]["voi"])
    return float(best), scores[best]["voi"]


@pytest.fixture(scope="module")
def gala_one_block(gala, tmp_path_factory):
    path = write_config(tmp_path_factory.mktemp("one"), gala, **GALA_ONE_BLOCK, segment=THRESHOLDS)
    return path, run_pipeline(path, echo_progress=False)


EVERY_THRESHOLD = {"thresholds": [round(0.1 * step, 1) for step in range(1, 10)]}
FIDELITY_BOUNDS = {
    ("gala", 16): (0.0053, [0.0076, 0.0075, 0.0028, 0.0028, 0.0015, 0, 0, 0, 0]),
    ("medulla", 64): (1e-12, [0, 0, 0, 0, 0, 0, 0, 0, 0]),
    ("network", 32): (1e-12, [0, 0, 0, 0, 0, 0, 0, 0, 0]),
}
"""Per case (volume, block edge in voxels): the largest |VOI gap| against the ground truth
(block-wise - one block) over the thresholds, and per threshold 0.1-0.9 the largest VOI between
the two segmentations: about 1.5x what these runs measured with the hierarchy, equal scores
merging in the order of their contacts' places (0: identical partitions; a gap of 1e-12:
rounding). Ordered by score alone, the network crop's uint8 scores tied and the run measured
0.94 at 0.8 (0.38 with the model shipped before); with every claim of a cut basin counted, 0.35
at 0.6, one large merge of the block-wise run (the README's "Block-wise against one block")."""


def fidelity_inputs(volume: str, directory):
    """gala: its boundary map; medulla: affinities of its ground truth with seeded noise (std
    0.3), whose fragments are many; network: the demo crop's affinities by the shipped model."""
    if volume == "gala":
        return gala_inputs(directory)
    if volume == "medulla":
        return medulla_gt_inputs(directory, noise=0.3)
    spec = importlib.util.spec_from_file_location("agglomeration_fidelity", REPO / "benchmarks" / "agglomeration_fidelity.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    return benchmark.network_inputs(directory)


@pytest.mark.parametrize("volume, block_voxels", list(FIDELITY_BOUNDS))
def test_blockwise_equals_one_block_at_every_threshold(tmp_path, volume, block_voxels):
    """At every threshold from 0.1 to 0.9, the block-wise run at the default context against the
    one-block run of the same config, within the case's bounds."""
    inputs = fidelity_inputs(volume, tmp_path)
    affinities = open_array(inputs["affinities"])
    voxel_size = affinities.voxel_size
    whole = affinities.roi.shape
    defaults = {"segment": EVERY_THRESHOLD, "fragments": {}}
    blockwise = write_config(tmp_path / "blockwise", inputs, Coordinate((block_voxels,) * 3) * voxel_size, None, **defaults)
    one_block = write_config(tmp_path / "one_block", inputs, whole, None, **defaults)
    scores = {name: run_pipeline(path, echo_progress=False)["evaluation"]["thresholds"] for name, path in (("blockwise", blockwise), ("one_block", one_block))}
    largest_gap, between_bounds = FIDELITY_BOUNDS[volume, block_voxels]
    for threshold, bound in zip(EVERY_THRESHOLD["thresholds"], between_bounds):
        key = f"{threshold:.4f}"
        assert abs(scores["blockwise"][key]["voi"] - scores["one_block"][key]["voi"]) <= largest_gap, threshold
        between = evaluate(
            read_segmentation(load_config(blockwise), threshold), read_segmentation(load_config(one_block), threshold), ignore_background=False
        )
        assert between["voi"] <= bound, (threshold, between)


def test_outputs_are_well_formed(gala_blockwise):
    path, summary = gala_blockwise
    config = load_config(path)
    segmentation = read_segmentation(config, 0.7)
    fragments = open_array(config.datasets.fragments)
    assert segmentation.dtype == np.uint64
    np.testing.assert_array_equal(segmentation == 0, fragments[fragments.roi] == 0)
    report = json.loads((config.work_dir / "evaluation.json").read_text())
    assert set(report["thresholds"]) == {"0.5000", "0.6000", "0.7000", "0.8000"}
    ground_truth = open_array(config.datasets.ground_truth)
    for threshold in (0.5, 0.8):
        written = evaluate(read_segmentation(config, threshold), ground_truth[ground_truth.roi])
        reported = {name: report["thresholds"][f"{threshold:.4f}"][name] for name in written}
        assert reported == pytest.approx(written, rel=1e-9), "the report does not score the written segmentation"
    for picture in ("evaluation.png", "segmentation.png"):
        assert (config.work_dir / picture).stat().st_size > 10_000
    picture = matplotlib.image.imread(config.work_dir / "segmentation.png")[..., :3]
    saturation = picture.max(axis=-1) - picture.min(axis=-1)
    assert (saturation > 0.3).mean() > 0.01, "no segment outlines drawn"
    assert (saturation < 0.05).mean() > 0.2, "no raw section drawn"
    plan = load_plan(str(plan_path(config.work_dir)))
    section = middle_section(plan.volume_roi, plan.voxel_size)
    assert plan.volume_roi.contains(section) and section.shape[0] == plan.voxel_size[0]
    assert (config.work_dir / "summary.json").exists()
    progress = (config.work_dir / "logs" / "progress.log").read_text()
    for task, counts in summary["tasks"].items():
        assert f"{counts['blocks']}/{counts['blocks']}" in progress.split(task)[-1].splitlines()[0]
        assert list((config.work_dir / "logs" / task).glob("worker_*.out")), f"no worker log for {task}"
    with open_rag(config.rag.url) as rag:
        nodes = rag.read_nodes()
        assert len(np.unique(nodes["ids"])) == len(nodes["ids"])


def test_rerun_skips_every_finished_block(gala_blockwise):
    path, _ = gala_blockwise
    config = load_config(path)
    before = read_segmentation(config, 0.5)
    summary = run_pipeline(path, echo_progress=False)
    for counts in summary["tasks"].values():
        assert counts["skipped_as_done"] == counts["blocks"]
    np.testing.assert_array_equal(read_segmentation(config, 0.5), before)
    assert all(done == total for _, done, total in run_status(path))


def read_fragments_ids(config) -> set[int]:
    fragments = open_array(config.datasets.fragments)
    return set(np.unique(fragments[fragments.roi]).tolist()) - {0}


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_medulla_ground_truth_affinities_match_monolithic_waterz(tmp_path, noise):
    inputs = medulla_gt_inputs(tmp_path, noise)
    thresholds = [0.1, 0.3, 0.5]
    path = write_config(
        tmp_path / "run", inputs, block_size=(400, 1250, 1250), context=(50, 50, 50), segment={"thresholds": thresholds}
    )
    summary = run_pipeline(path, echo_progress=False)

    affinities = open_array(inputs["affinities"])
    ground_truth = open_array(inputs["ground_truth"])
    monolithic = waterz.agglomerate(
        np.ascontiguousarray(affinities[affinities.roi].astype(np.float32) / 255.0), thresholds
    )
    monolithic_voi = min(evaluate(segmentation, ground_truth[ground_truth.roi])["voi"] for segmentation in monolithic)
    assert best_threshold(summary)[1] <= monolithic_voi + 0.02


def test_default_context_stitches_blocks(gala, gala_one_block, tmp_path):
    """A config that leaves blocks.context out, over 8 blocks: edges cross the block faces and
    the result scores like one block."""
    path = write_config(tmp_path / "defaults", gala, (250, 500, 1000), None, segment=THRESHOLDS)
    summary = run_pipeline(path, echo_progress=False)
    config = load_config(path)
    plan = load_plan(str(plan_path(config.work_dir)))
    assert stitching_context(plan) == Coordinate(80, 80, 80)
    with open_rag(config.rag.url) as rag:
        edges = read_edges(rag)
    crossing = owner_block(plan, edges["u"]) != owner_block(plan, edges["v"])
    assert crossing.sum() > 0.05 * len(crossing)
    assert abs(best_threshold(summary)[1] - best_threshold(gala_one_block[1])[1]) <= 0.1


@pytest.mark.postgres
def test_pipeline_on_postgresql_equals_sqlite(gala, gala_blockwise, postgres_schema_url, tmp_path):
    sqlite_path, _ = gala_blockwise
    path = write_config(tmp_path / "postgres", gala, **GALA_BLOCKS, segment=THRESHOLDS, rag={"url": postgres_schema_url})
    run_pipeline(path, echo_progress=False)
    ours, theirs = load_config(path), load_config(sqlite_path)
    for threshold in THRESHOLDS["thresholds"]:
        np.testing.assert_array_equal(read_segmentation(ours, threshold), read_segmentation(theirs, threshold))
    with open_rag(ours.rag.url) as postgres, open_rag(theirs.rag.url) as sqlite:
        assert len(read_edges(postgres)["u"]) == len(read_edges(sqlite)["u"]) > 0


@pytest.mark.parametrize("section, change, kept", [
    # The ground truth's skeletons depend on the ground truth alone: they are kept too.
    ("segment", {"segment": {"thresholds": [0.55, 0.75]}}, ("fragments", "contacts", "ground_truth_skeletons")),
    # The edges' statistics do not depend on the scoring function: only segment is redone.
    ("scoring functions", {"segment": {"scoring_functions": {"hist_quant_50": HIST_QUANT_50}, **THRESHOLDS}},
     ("fragments", "contacts", "ground_truth_skeletons")),
])
def test_changed_downstream_section_keeps_upstream_blocks(gala, gala_blockwise, tmp_path, section, change, kept):
    """A rerun with a changed downstream section skips the finished upstream tasks, redoes the
    rest, and ends with the output of a fresh run of the changed config. The config is edited in
    place: another config file would be refused, as it writes the same outputs otherwise."""
    path, first = gala_blockwise
    config = load_config(path)
    original = path.read_text()
    edit = yaml.safe_load(original)
    edit.update(change)
    path.write_text(yaml.safe_dump(edit))
    try:
        summary = run_pipeline(path, echo_progress=False)
        changed = load_config(path)
    finally:
        path.write_text(original)
    for task, counts in summary["tasks"].items():
        if task.split("-")[0] in kept:
            assert task in first["tasks"] and counts["skipped_as_done"] == counts["blocks"], task
        else:
            assert task not in first["tasks"] and counts["skipped_as_done"] == 0, task

    fresh_path = write_config(tmp_path / "fresh", gala, **GALA_BLOCKS, **{"segment": THRESHOLDS, **change})
    run_pipeline(fresh_path, echo_progress=False)
    fresh = load_config(fresh_path)
    for threshold in changed.segment.thresholds:
        np.testing.assert_array_equal(read_segmentation(changed, threshold), read_segmentation(fresh, threshold))
    assert config.work_dir == changed.work_dir


def test_changed_parameters_invalidate_done_markers(gala, gala_blockwise, tmp_path):
    """Last in this module: it rewrites the shared block-wise run's outputs in place."""
    path, first = gala_blockwise
    config = load_config(path)
    changed = write_config(
        config.work_dir, gala, **GALA_BLOCKS, segment=THRESHOLDS, fragments={"epsilon_agglomerate": 0.2}
    )
    summary = run_pipeline(changed, echo_progress=False)
    for task, counts in summary["tasks"].items():
        if task.startswith("ground_truth_skeletons"):
            # They depend on the ground truth alone: a fragments change keeps them.
            assert task in first["tasks"] and counts["skipped_as_done"] == counts["blocks"], task
        else:
            assert task not in first["tasks"], task
            assert counts["skipped_as_done"] == 0 and counts["completed"] == counts["blocks"], task
    with open_rag(config.rag.url) as rag:
        assert len(rag.read_nodes()["ids"]) == len(np.unique(rag.read_nodes()["ids"]))
        fragments = read_fragments_ids(config)
        assert set(rag.read_nodes()["ids"].tolist()) == fragments
