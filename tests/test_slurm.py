"""The SLURM launcher against a real one-node cluster, started on this machine by
scripts/start_slurm.sh: workers are batch jobs that connect back to the scheduler."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import daisy.v2 as daisy
import numpy as np
import pytest
import yaml

import slurm_blocks
from neurosam.config import load_config
from neurosam.io.volumes import open_array
from neurosam.layout import slurm_logs_dir, submitted_jobs_file
from neurosam.pipeline.launchers import SCHEDULER_CHECK_SECONDS, cancel_submitted_jobs, run_slurm_worker
from neurosam.pipeline.run import run_pipeline
from pipeline_support import gala_inputs, read_segmentation, WITH_ERL, write_config

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slurm


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    subprocess.run(["bash", str(REPO / "scripts" / "start_slurm.sh")], check=True)


@pytest.fixture
def config_path(slurm_cluster, tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    settings = {
        "work_dir": str(tmp_path / "work"),
        "datasets": {"affinities": "in.zarr/affs", "fragments": "out.zarr/frags", "segmentation": "out.zarr/seg"},
        "blocks": {"block_size": [10, 10, 10]},
        "workers": {
            "launcher": "slurm",
            "slurm": {"partition": "debug", "cpus_per_worker": 1, "memory": "256M", "time": "00:10:00"},
        },
    }
    path.write_text(yaml.safe_dump(settings))
    return path


def queued_jobs(*states: str) -> list[str]:
    """Ids of neurosam's jobs that SLURM still holds, in the given states (default: any)."""
    command = ["squeue", "-h", "-o", "%i %j"]
    if states:
        command += ["-t", ",".join(states)]
    listing = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return sorted(job_id for job_id, name in map(str.split, listing.splitlines()) if name.startswith("neurosam-"))


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.5)


def workers_busy(config_path: Path) -> bool:
    """Both workers hold a block: their jobs are connected to the scheduler."""
    logs = slurm_logs_dir(load_config(config_path).work_dir).glob(f"{slurm_blocks.JOB_NAME}-*.out")
    return sum("started" in log.read_text() for log in logs) == 2


def start_scheduler(config_path: Path, out_dir: Path, seconds_per_block: float) -> subprocess.Popen:
    """A scheduler in its own process, so the test can interrupt or kill it."""
    return subprocess.Popen(
        [sys.executable, slurm_blocks.__file__, "schedule", str(config_path), str(out_dir), str(seconds_per_block)],
        cwd=config_path.parent,
        start_new_session=True,
    )


def test_every_block_runs_once_and_each_worker_logs(config_path: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(config_path)
    out_dir = tmp_path / "blocks"
    out_dir.mkdir()

    assert slurm_blocks.schedule(config, str(out_dir), 0.2)

    jobs_by_block = {path.name: path.read_text().split() for path in out_dir.iterdir()}
    assert len(jobs_by_block) == slurm_blocks.BLOCK_COUNT
    assert all(len(jobs) == 1 for jobs in jobs_by_block.values())
    for job_id in {jobs[0] for jobs in jobs_by_block.values()}:
        log = slurm_logs_dir(config.work_dir) / f"{slurm_blocks.JOB_NAME}-{job_id}.out"
        logged = {line.split()[1] for line in log.read_text().splitlines() if line.endswith(" done")}
        assert logged == {name.split("-")[1] for name, jobs in jobs_by_block.items() if jobs == [job_id]}
    assert not submitted_jobs_file(config.work_dir).exists()
    assert queued_jobs() == []


def test_failed_job_fails_its_worker(config_path: Path) -> None:
    config = load_config(config_path)
    command = [sys.executable, "-c", "raise SystemExit(3)"]

    with socket.create_server(("127.0.0.1", 0)) as scheduler:
        context = daisy.Context(hostname="127.0.0.1", port=scheduler.getsockname()[1], task_id="failing", worker_id=0)
        with pytest.raises(RuntimeError, match="exit code 3"):
            run_slurm_worker(command, "neurosam-failing", config.workers.slurm, config.work_dir, context=context)

    submitted = submitted_jobs_file(config.work_dir).read_text().split()
    assert len(submitted) == 1
    assert (slurm_logs_dir(config.work_dir) / f"neurosam-failing-{submitted[0]}.out").exists()


@pytest.mark.parametrize(
    ("whom", "signal_number"),
    [("scheduler", signal.SIGINT), ("group", signal.SIGINT), ("group", signal.SIGTERM)],
    ids=["sigint-to-scheduler", "ctrl-c", "sigterm-to-all"],
)
def test_interrupted_run_leaves_no_job(config_path: Path, tmp_path: Path, whom: str, signal_number: int) -> None:
    """Whether the signal reaches the scheduler alone or every process of the run (as Ctrl-C
    and SLURM's own time limit do), the run's jobs end with it."""
    scheduler = start_scheduler(config_path, tmp_path, seconds_per_block=600)
    try:
        wait_for(lambda: workers_busy(config_path), 60, "both workers to hold a block")
        if whom == "scheduler":
            scheduler.send_signal(signal_number)
        else:
            os.killpg(scheduler.pid, signal_number)
        wait_for(lambda: queued_jobs() == [], 30, "the jobs to be cancelled")
        scheduler.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(scheduler.pid, signal.SIGKILL)
        cancel_submitted_jobs(load_config(config_path).work_dir)


def test_jobs_of_a_killed_run_are_cancelled_by_the_next(config_path: Path, tmp_path: Path) -> None:
    config = load_config(config_path)
    scheduler = start_scheduler(config_path, tmp_path, seconds_per_block=600)
    try:
        wait_for(lambda: workers_busy(config_path), 60, "both workers to hold a block")
        running = queued_jobs("RUNNING")
        os.killpg(scheduler.pid, signal.SIGKILL)
        scheduler.wait(timeout=10)
        assert queued_jobs("RUNNING") == running
    finally:
        cancelled = cancel_submitted_jobs(config.work_dir)
    assert cancelled == running
    wait_for(lambda: queued_jobs() == [], 30, "the jobs to be cancelled")


def test_jobs_cancel_themselves_when_the_scheduler_dies_alone(config_path: Path, tmp_path: Path) -> None:
    """SIGKILL to the scheduler process only: its launchers live on, find it refusing
    connections, and cancel their jobs within a few check periods."""
    scheduler = start_scheduler(config_path, tmp_path, seconds_per_block=600)
    try:
        wait_for(lambda: workers_busy(config_path), 60, "both workers to hold a block")
        os.kill(scheduler.pid, signal.SIGKILL)
        scheduler.wait(timeout=10)
        wait_for(lambda: queued_jobs() == [], 6 * SCHEDULER_CHECK_SECONDS, "the jobs to cancel themselves")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(scheduler.pid, signal.SIGKILL)
        cancel_submitted_jobs(load_config(config_path).work_dir)


def test_next_run_cancels_the_jobs_of_a_killed_run(config_path: Path, tmp_path: Path) -> None:
    """The whole run killed outright (launchers too): the next `run_pipeline` in the same work
    dir cancels the jobs left behind, before it plans anything."""
    config = load_config(config_path)
    scheduler = start_scheduler(config_path, tmp_path, seconds_per_block=600)
    try:
        wait_for(lambda: workers_busy(config_path), 60, "both workers to hold a block")
        os.killpg(scheduler.pid, signal.SIGKILL)
        scheduler.wait(timeout=10)
        assert queued_jobs("RUNNING")
        inputs = {"affinities": gala_inputs(tmp_path / "inputs")["affinities"]}
        next_run = write_config(config.work_dir, inputs, (500, 1000, 2000), (50, 50, 50), segment={"thresholds": [0.5]})
        run_pipeline(next_run, echo_progress=False)
        wait_for(lambda: queued_jobs() == [], 30, "the jobs to be cancelled")
    finally:
        cancel_submitted_jobs(config.work_dir)


def test_pipeline_on_slurm_equals_local(slurm_cluster, tmp_path: Path) -> None:
    without_ground_truth = {"affinities": gala_inputs(tmp_path)["affinities"]}
    run = {"block_size": (250, 500, 1000), "context": (50, 50, 50), "segment": {"thresholds": [0.5, 0.7]}}
    local_path = write_config(tmp_path / "local", without_ground_truth, **run)
    slurm_workers = {"count": 2, "launcher": "slurm", "slurm": {"partition": "debug", "memory": "2G"}}
    slurm_path = write_config(tmp_path / "slurm", without_ground_truth, **run, workers=slurm_workers)

    run_pipeline(local_path, echo_progress=False)
    summary = run_pipeline(slurm_path, echo_progress=False)

    local, slurm = load_config(local_path), load_config(slurm_path)

    fragments = [open_array(config.datasets.fragments) for config in (local, slurm)]
    np.testing.assert_array_equal(fragments[0][fragments[0].roi], fragments[1][fragments[1].roi])
    for threshold in run["segment"]["thresholds"]:
        np.testing.assert_array_equal(read_segmentation(local, threshold), read_segmentation(slurm, threshold))
    job_logs = {log.name.rsplit("-", 1)[0] for log in slurm_logs_dir(slurm.work_dir).glob("*.out")}
    assert job_logs == {f"neurosam-{task}" for task in summary["tasks"]}
    assert queued_jobs() == []


def test_meshes_skeletons_and_ground_truth_skeletons_on_slurm_equal_local(slurm_cluster, tmp_path: Path) -> None:
    """The neurons stages (blocks and joins) and the ground truth's skeletons as SLURM jobs write
    the same files as local workers, byte for byte, and evaluate scores the same ERL."""
    from neurosam.affinities import NEAREST_OFFSETS, labels_to_affinities
    from pipeline_support import write_inputs
    from test_neurons import SHAPE, VOXEL_SIZE, tubes

    labels = tubes()
    inputs = write_inputs(tmp_path / "inputs", labels_to_affinities(labels, NEAREST_OFFSETS)[0], labels, VOXEL_SIZE)
    block = tuple(s * v // 2 for s, v in zip(SHAPE, VOXEL_SIZE))
    sections = {"segment": {"thresholds": [0.5]}, "meshes": {}, "skeletons": {"dust_threshold": 0, "const": 50}, "evaluate": WITH_ERL}
    slurm_workers = {"count": 2, "launcher": "slurm", "slurm": {"partition": "debug", "memory": "2G"}}
    local_path = write_config(tmp_path / "local", inputs, block, None, **sections)
    slurm_path = write_config(tmp_path / "slurm", inputs, block, None, **sections, workers=slurm_workers)

    run_pipeline(local_path, echo_progress=False)
    summary = run_pipeline(slurm_path, echo_progress=False)

    local, slurm = load_config(local_path), load_config(slurm_path)
    job_logs = {log.name.rsplit("-", 1)[0] for log in slurm_logs_dir(slurm.work_dir).glob("*.out")}
    assert job_logs == {f"neurosam-{task}" for task in summary["tasks"]}
    written = [
        {path.relative_to(config.work_dir): path.read_bytes() for folder in ("neurons", "ground_truth_skeletons")
         for path in sorted((config.work_dir / folder).rglob("*")) if path.is_file()}
        for config in (local, slurm)
    ]
    assert any(path.parts[0] == "ground_truth_skeletons" for path in written[0])
    assert any(path.name == "info" and "skeletons" in path.parts for path in written[0])
    assert written[0] == written[1]
    scores = [json.loads((config.work_dir / "evaluation.json").read_text())["thresholds"] for config in (local, slurm)]
    assert scores[0] == scores[1] and scores[0]["0.5000"]["erl"] > 0
    assert queued_jobs() == []


@pytest.fixture(scope="module")
def gala_affinities(tmp_path_factory) -> dict:
    return {"affinities": gala_inputs(tmp_path_factory.mktemp("gala"))["affinities"]}


SLURM_RUN = {"block_size": (250, 250, 500), "context": (50, 50, 50), "segment": {"thresholds": [0.5, 0.7]}}
SLURM_WORKERS = {"count": 2, "launcher": "slurm", "max_restarts": 10, "slurm": {"partition": "debug", "memory": "2G"}}


@pytest.fixture(scope="module")
def local_reference(gala_affinities, tmp_path_factory):
    path = write_config(tmp_path_factory.mktemp("local"), gala_affinities, **SLURM_RUN)
    run_pipeline(path, echo_progress=False)
    return load_config(path)


def assert_equals_reference(path: Path, reference) -> None:
    config = load_config(path)
    for threshold in SLURM_RUN["segment"]["thresholds"]:
        np.testing.assert_array_equal(read_segmentation(config, threshold), read_segmentation(reference, threshold))


def start_run(path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "neurosam.cli", "run", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def test_sigterm_to_a_slurm_run_cancels_its_jobs_and_the_same_command_resumes(slurm_cluster, gala_affinities, local_reference, tmp_path):
    """Goal 3 of issue 21 on SLURM: the run's jobs are cancelled, one line says so, status 143."""
    path = write_config(tmp_path / "slurm", gala_affinities, **SLURM_RUN, workers=SLURM_WORKERS)
    run = start_run(path)
    try:
        wait_for(lambda: queued_jobs("RUNNING") != [], 120, "a job to run")
        run.send_signal(signal.SIGTERM)
        stderr = run.communicate(timeout=30)[1]
        assert run.returncode == 143, stderr
        assert len(stderr.splitlines()) == 1 and "SLURM jobs cancelled" in stderr, stderr
        wait_for(lambda: queued_jobs() == [], 30, "the jobs to be cancelled")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
        cancel_submitted_jobs(load_config(path).work_dir)
    run_pipeline(path, echo_progress=False)
    assert_equals_reference(path, local_reference)


def test_a_job_cancelled_with_scancel_is_retried_like_a_lost_worker(slurm_cluster, gala_affinities, local_reference, tmp_path):
    path = write_config(tmp_path / "slurm", gala_affinities, **SLURM_RUN, workers=SLURM_WORKERS)
    run = start_run(path)
    try:
        wait_for(lambda: queued_jobs("RUNNING") != [], 120, "a job to run")
        subprocess.run(["scancel", queued_jobs("RUNNING")[0]], check=True)
        stderr = run.communicate(timeout=300)[1]
        assert run.returncode == 0, stderr
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
        cancel_submitted_jobs(load_config(path).work_dir)
    assert_equals_reference(path, local_reference)


def test_a_queue_that_never_starts_the_jobs_ends_the_run(slurm_cluster, gala_affinities, tmp_path):
    """Goal 5 of issue 21: jobs the queue holds (here: not to begin for an hour) end the run
    after workers.slurm.max_pending, with the usual short message, and no job is left."""
    slurm = {**SLURM_WORKERS["slurm"], "max_pending": 5, "extra_args": ["--begin=now+1hour"]}
    path = write_config(tmp_path / "slurm", gala_affinities, **SLURM_RUN, workers={**SLURM_WORKERS, "slurm": slurm})
    try:
        result = subprocess.run([sys.executable, "-m", "neurosam.cli", "run", str(path)], capture_output=True, text=True, timeout=300)
        assert result.returncode == 1, result.stderr
        assert "was still pending after 5 s (workers.slurm.max_pending)" in result.stderr, result.stderr
        assert len(result.stderr.splitlines()) <= 20 and "Traceback" not in result.stderr, result.stderr
        wait_for(lambda: queued_jobs() == [], 30, "the jobs to be cancelled")
    finally:
        cancel_submitted_jobs(load_config(path).work_dir)
