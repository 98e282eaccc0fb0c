"""End-to-end correctness of the block-wise pipeline on real EM volumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import waterz
from funlib.geometry import Coordinate

from neurosam.config import load_config
from neurosam.evaluate import evaluate
from neurosam.layout import load_plan, plan_path
from neurosam.pipeline.run import run_pipeline, run_status
from neurosam.rag import open_rag
from neurosam.volumes import open_array
from pipeline_support import gala_inputs, medulla_gt_inputs, read_segmentation, write_config

GALA_BLOCKS = {"block_size": (250, 500, 500), "context": (100, 100, 100)}
GALA_ONE_BLOCK = {"block_size": (500, 1000, 2000), "context": (0, 0, 0)}
THRESHOLDS = {"thresholds": [0.5, 0.6, 0.7, 0.8]}


@pytest.fixture(scope="module")
def gala(tmp_path_factory):
    return gala_inputs(tmp_path_factory.mktemp("gala"))


@pytest.fixture(scope="module")
def gala_blockwise(gala, tmp_path_factory):
    path = write_config(tmp_path_factory.mktemp("blockwise"), gala, **GALA_BLOCKS, segment=THRESHOLDS)
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


def test_gala_blockwise_matches_one_block(gala_blockwise, gala_one_block):
    blockwise_path, blockwise = gala_blockwise
    one_block_path, one_block = gala_one_block

    fragments_task = next(t for t in blockwise["tasks"] if t.startswith("fragments"))
    assert blockwise["tasks"][fragments_task]["blocks"] >= 8
    assert abs(best_threshold(blockwise)[1] - best_threshold(one_block)[1]) <= 0.05
    threshold, _ = best_threshold(one_block)
    a = read_segmentation(load_config(blockwise_path), threshold)
    b = read_segmentation(load_config(one_block_path), threshold)
    assert evaluate(a, b, ignore_background=False)["voi"] <= 0.1


def test_outputs_are_well_formed(gala_blockwise):
    path, summary = gala_blockwise
    config = load_config(path)
    segmentation = read_segmentation(config, 0.7)
    fragments = open_array(config.datasets.fragments)
    assert segmentation.dtype == np.uint64
    np.testing.assert_array_equal(segmentation == 0, fragments[fragments.roi] == 0)
    report = json.loads((config.work_dir / "evaluation.json").read_text())
    assert set(report["thresholds"]) == {"0.5000", "0.6000", "0.7000", "0.8000"}
    for picture in ("evaluation.png", "segmentation.png"):
        assert (config.work_dir / picture).stat().st_size > 10_000
    assert (config.work_dir / "summary.json").exists()
    assert (config.work_dir / "logs" / "progress.log").read_text().count("/") > 0
    with open_rag(config.rag.url) as rag:
        nodes = rag.read_nodes()
        assert len(np.unique(nodes["ids"])) == len(nodes["ids"]) == rag.count_nodes()


def test_rerun_skips_every_finished_block(gala_blockwise):
    path, _ = gala_blockwise
    config = load_config(path)
    before = read_segmentation(config, 0.5)
    summary = run_pipeline(path, echo_progress=False)
    for counts in summary["tasks"].values():
        assert counts["skipped_as_done"] == counts["blocks"]
    np.testing.assert_array_equal(read_segmentation(config, 0.5), before)
    assert all(done == total for _, done, total in run_status(path))


def test_changed_parameters_invalidate_done_markers(gala, gala_blockwise, tmp_path):
    path, first = gala_blockwise
    config = load_config(path)
    changed = write_config(
        config.work_dir, gala, **GALA_BLOCKS, segment=THRESHOLDS, fragments={"epsilon_agglomerate": 0.2}
    )
    summary = run_pipeline(changed, echo_progress=False)
    assert set(summary["tasks"]).isdisjoint(first["tasks"])
    for counts in summary["tasks"].values():
        assert counts["skipped_as_done"] == 0 and counts["completed"] == counts["blocks"]
    with open_rag(config.rag.url) as rag:
        assert rag.count_nodes() == len(np.unique(rag.read_nodes()["ids"]))
        fragments = read_fragments_ids(config)
        assert set(rag.read_nodes()["ids"].tolist()) == fragments


def read_fragments_ids(config) -> set[int]:
    fragments = open_array(config.datasets.fragments)
    return set(np.unique(fragments[fragments.roi]).tolist()) - {0}


def test_medulla_ground_truth_affinities_match_monolithic_waterz(tmp_path):
    inputs = medulla_gt_inputs(tmp_path)
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
    the result scores like one block (context 0 here gave no cross-block edge and VOI 2.45)."""
    path = write_config(tmp_path / "defaults", gala, (250, 500, 1000), None, segment=THRESHOLDS)
    summary = run_pipeline(path, echo_progress=False)
    config = load_config(path)
    plan = load_plan(str(plan_path(config.work_dir)))
    assert plan.context == Coordinate(40, 60, 120)
    with open_rag(config.rag.url) as rag:
        edges = rag.read_edges()
    crossing = plan.owner_block(edges["u"]) != plan.owner_block(edges["v"])
    assert crossing.sum() > 0.05 * len(crossing)
    assert abs(best_threshold(summary)[1] - best_threshold(gala_one_block[1])[1]) <= 0.1
