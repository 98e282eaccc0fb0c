"""A run killed with SIGKILL at any point, then started again, ends with exactly the output of a
run that was never interrupted (every voxel, RAG row, done record and the report), redoes no
finished block, and duplicates nothing in the RAG."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from neurosam.config import load_config
from neurosam.io.volumes import open_array
from neurosam.layout import claims_path, evaluation_path, segmentation_path, summary_path
from neurosam.pipeline.plan import plan_run, task_ids
from neurosam.pipeline.run import run_pipeline, start_graph_afresh
from neurosam.pipeline.tasks import block_count
from neurosam.rag import open_rag
from pipeline_support import read_edges, write_config

BLOCKS = {"block_size": (250, 250, 500), "context": (50, 50, 50)}
SEGMENT = {"thresholds": [0.5, 0.7]}


@pytest.fixture(scope="module")
def reference(gala, tmp_path_factory):
    path = write_config(tmp_path_factory.mktemp("reference"), gala, **BLOCKS, segment=SEGMENT)
    run_pipeline(path, echo_progress=False)
    return load_config(path)


def start_run(config_path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "neurosam.cli", "run", str(config_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def wait_for_done_blocks(config, task: str, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        if (config.work_dir / "rag.db").exists():
            with open_rag(config.rag.url) as rag:
                if len(rag.done_blocks(task)) >= count:
                    return
        time.sleep(0.05)
    raise TimeoutError(f"{task} did not reach {count} done blocks")


def assert_same_results(config, reference) -> None:
    """Every voxel of the fragments, claims and segmentations, every node and edge row, every
    done record by stage, and the scores."""
    for path, expected in [(config.datasets.fragments, reference.datasets.fragments)] + [
        (claims_path(config, axis), claims_path(reference, axis)) for axis in range(3)
    ] + [(segmentation_path(config, t), segmentation_path(reference, t)) for t in SEGMENT["thresholds"]]:
        ours, theirs = open_array(path), open_array(expected)
        np.testing.assert_array_equal(ours[ours.roi], theirs[theirs.roi])
    with open_rag(config.rag.url) as ours, open_rag(reference.rag.url) as theirs:
        for key, values in ours.read_nodes().items():
            np.testing.assert_array_equal(values, theirs.read_nodes()[key])
        np.testing.assert_equal(read_edges(ours), read_edges(theirs))
        # The reference's own task ids: a stage registered for one test changes the ids after it.
        reference_tasks = json.loads(summary_path(reference.work_dir).read_text())["tasks"]
        for theirs_id in reference_tasks:
            stage, _, *step = theirs_id.split("-")
            ours_id = "-".join([task_ids(config)[stage], *step])
            assert ours.done_blocks(ours_id) == theirs.done_blocks(theirs_id), theirs_id
    scores = [json.loads(evaluation_path(c.work_dir).read_text())["thresholds"] for c in (config, reference)]
    assert scores[0] == scores[1]


#: Where a run is killed: after a few blocks of a block-wise stage or of a level of segment (up:
#: the first of four super-blocks; down: the last level), or as soon as the stage before a
#: whole-volume one has finished (evaluate is one block).
KILLS = {"fragments": ("fragments", "", 3), "contacts": ("contacts", "", 3), "segment up": ("segment", "-up0", 1),
         "segment down": ("segment", "-down0", 1), "relabel": ("relabel", "", 3), "evaluate": ("relabel", "", None)}


@pytest.mark.parametrize("stage", list(KILLS))
def test_whole_run_killed_mid_stage_resumes_exactly(gala, reference, tmp_path, stage):
    path = write_config(tmp_path / "run", gala, **BLOCKS, segment=SEGMENT)
    config = load_config(path)
    plan = plan_run(config, check_database=False)
    watched, step, count = KILLS[stage]
    task = task_ids(config)[watched] + step
    process = start_run(path)
    wait_for_done_blocks(config, task, count or block_count(plan.tasks[task]), process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    with open_rag(config.rag.url) as rag:
        finished_before = {task_id: len(rag.done_blocks(task_id)) for task_id in plan.tasks}

    summary = run_pipeline(path, echo_progress=False)
    for task_id, done in finished_before.items():
        assert summary["tasks"][task_id]["skipped_as_done"] == done, task_id
    assert finished_before[task] > 0
    assert_same_results(config, reference)


def test_blocks_run_twice_leave_the_same_arrays_and_rows(gala, reference, tmp_path):
    """Block idempotence: a finished run whose done records are dropped does every block again,
    over its own output, and ends as it was."""
    path = write_config(tmp_path / "run", gala, **BLOCKS, segment=SEGMENT)
    run_pipeline(path, echo_progress=False)
    config = load_config(path)
    with open_rag(config.rag.url) as rag:
        for task_id in plan_run(config, check_database=False).tasks:
            rag.forget_blocks(task_id)
    summary = run_pipeline(path, echo_progress=False)
    assert all(counts["skipped_as_done"] == 0 and counts["completed"] == counts["blocks"] for counts in summary["tasks"].values())
    assert_same_results(config, reference)


def test_worker_killed_mid_block_is_replaced_and_its_block_redone(gala, reference, tmp_path, register_stage):
    """A slow stage registered after fragments leaves a record of every attempt at a block; a
    worker is killed while one of its blocks is started and not finished, and that block must
    be done again by another process, with the run's output exact."""
    register_stage("slow_census", "slow_census_blocks")
    path = write_config(tmp_path / "run", gala, **BLOCKS, segment=SEGMENT)
    config = load_config(path)
    outcome = []
    run = threading.Thread(target=lambda: outcome.append(run_pipeline(path, echo_progress=False)))
    run.start()
    attempts = config.work_dir / "attempts"
    deadline = time.monotonic() + 120
    victim = None
    while victim is None and time.monotonic() < deadline:
        started = {p.name.removeprefix("started-") for p in attempts.glob("started-*")} if attempts.exists() else set()
        finished = {p.name.removeprefix("finished-") for p in attempts.glob("finished-*")}
        in_progress = sorted(started - finished)
        if in_progress:
            victim = in_progress[0]
        time.sleep(0.05)
    assert victim is not None, "no block was ever in progress"
    block, pid = victim.split("-")
    os.kill(int(pid), signal.SIGKILL)
    run.join(timeout=300)
    assert outcome, "the run did not finish"
    assert not (attempts / f"finished-{victim}").exists()
    redone = [p for p in attempts.glob(f"finished-{block}-*")]
    assert len(redone) == 1 and redone[0].name != f"finished-{victim}"
    assert_same_results(config, reference)


def test_output_overwritten_by_another_config_is_redone(gala, reference, tmp_path):
    """Config A runs; config B (another context) writes into A's output datasets from its own
    work dir; A run again must not count its blocks as done, and ends with A's results."""
    path_a = write_config(tmp_path / "a", gala, **BLOCKS, segment=SEGMENT)
    run_pipeline(path_a, echo_progress=False)
    config_a = load_config(path_a)
    path_b = write_config(tmp_path / "b", gala, BLOCKS["block_size"], (100, 100, 100), segment=SEGMENT)
    edit = yaml.safe_load(path_b.read_text())
    edit["datasets"].update(fragments=config_a.datasets.fragments, segmentation=config_a.datasets.segmentation)
    path_b.write_text(yaml.safe_dump(edit))
    run_pipeline(path_b, echo_progress=False)

    summary = run_pipeline(path_a, echo_progress=False)
    for task, counts in summary["tasks"].items():
        assert counts["skipped_as_done"] == 0, task
    assert_same_results(config_a, reference)


def test_a_fragments_task_starting_afresh_replaces_the_whole_graph(tmp_path):
    """The RAG keeps a row per block: a new fragments task (another block grid, ROI or
    parameter) must not leave the old grid's rows; a resumed one keeps its own."""
    plan = SimpleNamespace(tasks={"fragments-new": SimpleNamespace(stage="fragments"), "contacts-new": SimpleNamespace(stage="contacts")})
    with open_rag(f"sqlite:///{tmp_path / 'rag.db'}") as rag:
        for block_id in (0, 1):
            rag.write_nodes(block_id, np.array([block_id + 1]), np.zeros((1, 3)), np.ones(1))
            rag.write_edges(block_id, np.array([1]), np.array([2 + block_id]), {"contact_area": np.ones(1)})
        start_graph_afresh(plan, rag, {"fragments-new": {0}, "contacts-new": set()})
        assert len(rag.read_nodes()["ids"]) == 2 and rag.edge_count() == 2
        start_graph_afresh(plan, rag, {"contacts-new": set()})
        assert len(rag.read_nodes()["ids"]) == 2, "a run without its fragments task keeps the graph"
        start_graph_afresh(plan, rag, {"fragments-new": set(), "contacts-new": set()})
        assert len(rag.read_nodes()["ids"]) == 0 and rag.edge_count() == 0
