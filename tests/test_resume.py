"""A run killed with SIGKILL at any point, then started again, ends with exactly the output of a
run that was never interrupted, redoes no finished block, and duplicates nothing in the RAG."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from neurosam.config import load_config
from neurosam.pipeline.run import run_pipeline
from neurosam.pipeline.plan import task_ids
from neurosam.rag import open_rag
from neurosam.volumes import open_array
from pipeline_support import gala_inputs, write_config

BLOCKS = {"block_size": (250, 250, 500), "context": (50, 50, 50)}
SEGMENT = {"thresholds": [0.5, 0.7]}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return gala_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    path = write_config(tmp_path_factory.mktemp("reference"), inputs, **BLOCKS, segment=SEGMENT)
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


def worker_pids(parent: int) -> list[int]:
    """daisy's worker subprocesses of a run (its direct children)."""
    children = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in children]


def assert_same_results(config, reference) -> None:
    for path, expected in [(config.datasets.fragments, reference.datasets.fragments)] + [
        (f"{config.datasets.segmentation}/hist_quant_50/threshold_{t:.4f}", f"{reference.datasets.segmentation}/hist_quant_50/threshold_{t:.4f}")
        for t in SEGMENT["thresholds"]
    ]:
        ours, theirs = open_array(path), open_array(expected)
        np.testing.assert_array_equal(ours[ours.roi], theirs[theirs.roi])
    with open_rag(config.rag.url) as ours, open_rag(reference.rag.url) as theirs:
        assert ours.count_nodes() == theirs.count_nodes()
        assert ours.count_edges() == theirs.count_edges()
        a, b = ours.read_edges(), theirs.read_edges()
        order_a, order_b = np.lexsort((a["u"], a["v"])), np.lexsort((b["u"], b["v"]))
        for key in ("u", "v", "hist_quant_50", "hist_quant_75"):
            np.testing.assert_array_equal(a[key][order_a], b[key][order_b])


@pytest.mark.parametrize("stage", ["fragments", "agglomerate"])
def test_whole_run_killed_mid_stage_resumes_exactly(inputs, reference, tmp_path, stage):
    path = write_config(tmp_path / "run", inputs, **BLOCKS, segment=SEGMENT)
    config = load_config(path)
    task = task_ids(config)[stage]
    process = start_run(path)
    wait_for_done_blocks(config, task, 3, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    with open_rag(config.rag.url) as rag:
        finished_before = len(rag.done_blocks(task))

    summary = run_pipeline(path, echo_progress=False)
    assert summary["tasks"][task]["skipped_as_done"] >= finished_before > 0
    assert_same_results(config, reference)


def test_killed_worker_is_replaced_and_output_is_exact(inputs, reference, tmp_path):
    path = write_config(tmp_path / "run", inputs, **BLOCKS, segment=SEGMENT)
    config = load_config(path)
    process = start_run(path)
    wait_for_done_blocks(config, task_ids(config)["fragments"], 2, process)
    victims = worker_pids(process.pid)
    assert victims, "no worker process found"
    os.kill(victims[0], signal.SIGKILL)
    assert process.wait(timeout=300) == 0
    assert_same_results(config, reference)
