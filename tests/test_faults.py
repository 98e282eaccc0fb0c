"""Fault injection: each way a run was seen to go wrong, tried on a finished run. Every case
asserts the exit status, how much the user has to read, and that what the run had written is
unchanged (checksummed before and after) or, once the cause is repaired, equal to an
uninterrupted run. The README's "What a run guarantees" lists the cases."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from neurosam.config import HIST_QUANT_50, load_config
from neurosam.pipeline.lock import WorkDirLock
from neurosam.pipeline.plan import task_ids
from neurosam.pipeline.run import RunFailed, run_pipeline
from neurosam.rag import open_rag
from pipeline_support import checksum, data_file, WITH_ERL, write_config

BLOCKS = {"block_size": (250, 250, 500), "context": (50, 50, 50)}
SEGMENT = {"thresholds": [0.5, 0.7]}
MAX_MESSAGE_LINES = 20
SOAK_KILLS = 12


def neurosam(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neurosam.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def finished(gala, tmp_path_factory):
    """A run to the end, and the checksum of what it wrote."""
    path = write_config(tmp_path_factory.mktemp("finished"), gala, **BLOCKS, segment=SEGMENT)
    assert neurosam("run", path).returncode == 0
    config = load_config(path)
    return path, config, checksum(config)


def edited(path: Path, name: str, change) -> Path:
    """A copy of the config at ``path`` with ``change`` applied, writing into the same datasets."""
    config = yaml.safe_load(path.read_text())
    change(config)
    copy = path.parent / f"{name}.yaml"
    copy.write_text(yaml.safe_dump(config))
    return copy


def set_in(section: str, key: str, value):
    return lambda config: config.setdefault(section, {}).update({key: value})


USER_ERRORS = {
    # 3: a negative context was accepted, rewrote outputs and hung.
    "negative context": (set_in("blocks", "context", [-100, 100, 100]), "blocks.context.0"),
    # 6: a work dir that is a file gave FileExistsError after the database was touched.
    "work dir that is a file": (lambda c: c.update(work_dir=str(Path(c["work_dir"]) / "config.yaml")), "is a file, not a directory"),
    # 7: scoring functions went verbatim into C++ that waterz compiles.
    "code in a scoring function": (
        lambda c: c.update(segment={
            "scoring_functions": {"evil": 'OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>; system("id");'},
            "scoring_function": "evil",
        }),
        "segment.scoring_functions",
    ),
    # Issue 17 renamed the contact-statistics stage and moved its settings: old keys name the new ones.
    "the agglomerate section": (set_in("agglomerate", "scoring_functions", {"hist_quant_50": HIST_QUANT_50}), "segment.scoring_functions"),
    "the agglomerate stage's workers": (set_in("workers", "stages", {"agglomerate": {"count": 1}}), "workers.stages.contacts"),
    # Issue 18: the hierarchical agglomeration is exact only for some scoring functions.
    "a scoring function the hierarchy cannot keep exact": (
        lambda c: c.update(segment={
            "scoring_functions": {"by_area": "OneMinus<Multiply<MeanAffinity<RegionGraphType, ScoreValue>, ContactArea<RegionGraphType>>>"},
            "scoring_function": "by_area",
        }),
        "segment.scoring_function by_area: the hierarchical agglomeration is exact only",
    ),
    # 8: a password in the URL's query string was printed in clear.
    "password in the query string": (
        lambda c: c.update(rag={"url": f"postgresql://neurosam@127.0.0.1:{closed_port()}/neurosam?password=secret"}), "***",
    ),
    # 9: an unreachable MongoDB gave one huge line with pymongo's topology dump.
    "unreachable MongoDB": (
        lambda c: c.update(rag={"url": f"mongodb://127.0.0.1:{closed_port()}/neurosam?serverSelectionTimeoutMS=300"}), "cannot open MongoDB database",
    ),
}


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_user_errors_are_one_line_exit_2_and_touch_nothing(finished, case):
    path, config, written = finished
    change, expected = USER_ERRORS[case]
    result = neurosam("run", edited(path, case.replace(" ", "_"), change))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1 and expected in result.stderr, result.stderr
    assert "secret" not in result.stderr and len(result.stderr) < 400
    assert checksum(config) == written


@pytest.mark.parametrize("voxel_size, expected", [((0, 10, 10), "voxel size"), ((-10, 10, 10), "voxel size")])
def test_convert_refuses_voxel_sizes_that_are_not_positive(tmp_path, voxel_size, expected):
    """6: --voxel-size 0 gave ZeroDivisionError, and a negative one was written."""
    result = neurosam("convert", data_file("gala_fib_train.h5"), tmp_path / "out.zarr/raw", "--dataset", "raw", "--voxel-size", *voxel_size)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and expected in result.stderr, result.stderr
    assert not (tmp_path / "out.zarr").exists()


def test_a_changed_database_address_redoes_nothing(finished, tmp_path):
    """2: the fingerprint must not depend on how the database is reached (here the same SQLite
    file by another path): every block is skipped and nothing is rewritten."""
    path, config, written = finished
    link = tmp_path / "elsewhere"
    link.symlink_to(config.work_dir)
    result = neurosam("run", edited(path, "other_address", set_in("rag", "url", f"sqlite:///{link / 'rag.db'}")))
    assert result.returncode == 0, result.stderr
    tasks = json.loads((config.work_dir / "summary.json").read_text())["tasks"]
    assert all(counts["skipped_as_done"] == counts["blocks"] and counts["failed"] == 0 for counts in tasks.values()), tasks
    assert checksum(config) == written


def test_failed_blocks_give_a_short_error_and_a_repaired_rerun_finishes(gala, finished, tmp_path):
    """4: a truncated affinity chunk ends the run with exit 1 and, on the console, a short
    message naming the task, the failed blocks with their ROIs, the error and the logs;
    summary.json has the failures; once the chunk is repaired the same command finishes, equal
    to the uninterrupted run."""

    written = finished[2]
    path = write_config(tmp_path / "run", gala, **BLOCKS, segment=SEGMENT, workers={"count": 1, "max_retries": 0})
    chunk = next(p for p in sorted((Path(gala["affinities"]) / "c").rglob("*")) if p.is_file())
    intact = chunk.read_bytes()
    chunk.write_bytes(intact[:10])
    try:
        failed = neurosam("run", path)
    finally:
        chunk.write_bytes(intact)
    assert failed.returncode == 1
    assert len(failed.stderr.splitlines()) <= MAX_MESSAGE_LINES, failed.stderr
    assert "Traceback" not in failed.stderr
    assert "task fragments-" in failed.stderr and "write ROI" in failed.stderr and "worker_*.err" in failed.stderr
    assert "Zstd" in failed.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert any(failure["blocks"] for failure in summary["failures"].values())

    assert neurosam("run", path).returncode == 0
    assert checksum(load_config(path)) == written


def finished_copy(gala, tmp_path) -> tuple[Path, object]:
    """A run of the finished run's config in a work dir of its own, which a test may damage."""
    path = write_config(tmp_path / "run", gala, **BLOCKS, segment=SEGMENT)
    assert neurosam("run", path).returncode == 0
    return path, load_config(path)


def purge_chunks(config) -> None:
    """What a scratch purge of old files does: the chunks go, the arrays' metadata stays."""
    for chunk in (Path(config.datasets.fragments) / "c").rglob("*"):
        if chunk.is_file():
            chunk.unlink()


LOST_DATA = {
    # The output container deleted, the RAG kept: every block was "skipped as done" over
    # arrays recreated empty, and evaluation.json was missing.
    "output container deleted": (lambda config: shutil.rmtree(config.work_dir / "out.zarr"), "is missing", "fragments"),
    "output chunks purged": (purge_chunks, "has lost the chunks of done block", "fragments"),
    "segment tables deleted": (lambda config: shutil.rmtree(config.work_dir / "hierarchy"), "is missing", "segment"),
    "report deleted": (lambda config: (config.work_dir / "evaluation.json").unlink(), "evaluation.json is missing", "evaluate"),
}


@pytest.mark.parametrize("case", list(LOST_DATA))
def test_done_records_whose_data_is_lost_are_redone(gala, finished, tmp_path, case):
    """Goal 1 of issue 21: a done record counts only while its output holds what the block
    wrote. The task that lost its data, and every task after it, are redone; the others skipped;
    the result equals the uninterrupted run's."""
    written = finished[2]
    path, config = finished_copy(gala, tmp_path)
    lose, expected, first_redone = LOST_DATA[case]
    lose(config)
    rerun = neurosam("run", path)
    assert rerun.returncode == 0, rerun.stderr
    assert expected in rerun.stderr and "Traceback" not in rerun.stderr, rerun.stderr
    assert_redone_from(config, first_redone)
    assert checksum(config) == written


def assert_redone_from(config, first_redone: str) -> None:
    """summary.json: the tasks before ``first_redone`` skipped every block, it and those after none."""
    tasks = json.loads((config.work_dir / "summary.json").read_text())["tasks"]
    stages = [task.split("-")[0] for task in tasks]
    for stage, counts in zip(stages, tasks.values()):
        redone = stages.index(stage) >= stages.index(first_redone)
        assert counts["skipped_as_done"] == (0 if redone else counts["blocks"]), (stage, counts)


def test_changed_inputs_are_noticed(gala, tmp_path):
    """Goal 2 of issue 21: affinities (an input the run does not predict) rewritten in place
    with other values, same path and shape: the rerun redoes every task that read them and ends
    equal to a fresh run on the new affinities; the ground truth rewritten redoes its skeletons and evaluate."""
    inputs = {role: str(tmp_path / "inputs.zarr" / role) for role in ("affinities", "ground_truth", "raw")}
    for role, source in gala.items():
        shutil.copytree(source, inputs[role])
    path = write_config(tmp_path / "run", inputs, **BLOCKS, segment=SEGMENT, evaluate=WITH_ERL)
    assert neurosam("run", path).returncode == 0
    affinities = zarr.open_array(inputs["affinities"], mode="r+")
    affinities[:] = 255 - affinities[:]
    rerun = neurosam("run", path)
    assert rerun.returncode == 0, rerun.stderr
    assert f"affinities {inputs['affinities']} has changed" in rerun.stderr, rerun.stderr
    config = load_config(path)
    assert_redone_from(config, "fragments")
    fresh = write_config(tmp_path / "fresh", inputs, **BLOCKS, segment=SEGMENT, evaluate=WITH_ERL)
    assert neurosam("run", fresh).returncode == 0
    assert checksum(config) == checksum(load_config(fresh))

    truth = zarr.open_array(inputs["ground_truth"], mode="r+")
    truth[:] = np.where(truth[:] > 0, truth[:] + 1, 0)
    rerun = neurosam("run", path)
    assert rerun.returncode == 0 and "ground_truth" in rerun.stderr, rerun.stderr
    assert_redone_from(config, "ground_truth_skeletons")


def test_a_work_dir_held_by_a_live_run_is_refused(finished):
    """Goal 4 of issue 21: two runs of one config on one work dir both redid every block into
    the same outputs. Here this process holds the work dir's lock, as a live run does: the
    run is refused at once, one line naming the holder, exit 2, nothing touched."""
    path, config, written = finished
    with WorkDirLock(config.work_dir):
        started = time.monotonic()
        refused = neurosam("run", path)
    assert refused.returncode == 2, refused.stderr
    assert len(refused.stderr.splitlines()) == 1, refused.stderr
    assert f"{socket.gethostname()}, pid {os.getpid()}, since" in refused.stderr, refused.stderr
    assert time.monotonic() - started < 30
    assert checksum(config) == written


def test_a_lock_left_by_a_dead_run_is_taken_over(finished):
    """A run killed outright leaves its name in the lock: the next run says so and goes on."""
    path, config, written = finished
    dead = subprocess.Popen(["true"])
    dead.wait()
    (config.work_dir / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "since": "yesterday"}))
    rerun = neurosam("run", path)
    assert rerun.returncode == 0, rerun.stderr
    assert f"pid {dead.pid}, since yesterday, which ended without releasing it" in rerun.stderr, rerun.stderr
    assert (config.work_dir / "run.lock").read_text() == ""
    assert checksum(config) == written


def test_a_second_config_writing_the_same_outputs_is_refused(finished):
    """Two configs whose outputs overlap, both run in one work dir, overwrote each other's
    results; the second is refused before any block, naming the first."""
    path, config, written = finished
    other = edited(path, "other_parameters", set_in("fragments", "epsilon_agglomerate", 0.2))
    refused = neurosam("run", other)
    assert refused.returncode == 2, refused.stderr
    assert len(refused.stderr.splitlines()) == 1 and f"which {path} (run in this work dir before)" in refused.stderr, refused.stderr
    assert checksum(config) == written


def done_blocks(config, stage: str) -> int:
    if not (config.work_dir / "rag.db").exists():
        return 0
    with open_rag(config.rag.url) as rag:
        return len(rag.done_blocks(task_ids(config)[stage]))


def session_processes(session: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == session:
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_stops_the_run_cleanly_and_the_same_command_resumes(gala, finished, tmp_path, signal_number):
    """Goal 3 of issue 21: SIGTERM killed the run at once, status -15 and no message. Sent to
    the run alone, mid-fragments: its workers are stopped, it says in one line what it did and
    how to resume, exits 128 + the signal within 30 s, and leaves no process; the same command
    then ends with the uninterrupted run's result, voxel for voxel and row for row."""
    written = finished[2]
    path = write_config(tmp_path / "run", gala, **BLOCKS, segment=SEGMENT)
    config = load_config(path)
    run = subprocess.Popen(
        [sys.executable, "-m", "neurosam.cli", "run", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while done_blocks(config, "fragments") < 3:
        assert run.poll() is None and time.monotonic() < deadline, "the run ended before it could be stopped"
        time.sleep(0.05)
    run.send_signal(signal_number)
    started = time.monotonic()
    stderr = run.communicate(timeout=60)[1]
    assert time.monotonic() - started < 30
    assert run.returncode == 128 + signal_number, stderr
    assert len(stderr.splitlines()) == 1 and f"stopped by {signal_number.name}" in stderr, stderr
    assert "run the same command to resume" in stderr
    assert session_processes(run.pid) == []
    assert (config.work_dir / "run.lock").read_text() == ""

    assert neurosam("run", path).returncode == 0
    assert checksum(config) == written


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB file system, or a skip where this process may not mount one."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)]).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_outputs_that_cannot_fit_are_refused_up_front(gala, finished, small_disk, tmp_path):
    """Goal 5 of issue 21: the outputs' size is estimated (a lower estimate) before any block;
    a disk that cannot hold them is refused in one line, exit 2, nothing written there."""
    written = finished[2]
    subprocess.run(["mount", "-o", "remount,size=100k", str(small_disk)], check=True)
    path = write_config(tmp_path / "run", gala, **BLOCKS, segment=SEGMENT)
    config = yaml.safe_load(path.read_text())
    config["datasets"].update(fragments=str(small_disk / "out.zarr/fragments"), segmentation=str(small_disk / "out.zarr/segmentation"))
    path.write_text(yaml.safe_dump(config))
    refused = neurosam("run", path)
    assert refused.returncode == 2, refused.stderr
    assert len(refused.stderr.splitlines()) == 1 and "the outputs still to write need at least" in refused.stderr, refused.stderr
    assert list(small_disk.iterdir()) == []

    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)
    assert neurosam("run", path).returncode == 0
    assert checksum(load_config(path)) == written


def test_a_full_disk_is_named_and_a_larger_disk_resumes(gala, finished, small_disk):
    """5: the scheduler died of SIGBUS with no message and no summary. Here the work dir, the
    outputs and the SQLite RAG are on a disk that fills up mid-run."""
    written = finished[2]
    path = write_config(small_disk / "run", gala, **BLOCKS, segment=SEGMENT)
    full = neurosam("run", path)
    assert full.returncode == 1, full.stderr
    assert "the disk is full" in full.stderr and len(full.stderr.splitlines()) <= MAX_MESSAGE_LINES, full.stderr
    assert "Traceback" not in full.stderr and "panicked" not in full.stderr

    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)
    resumed = neurosam("run", path)
    assert resumed.returncode == 0, resumed.stderr
    assert checksum(load_config(path)) == written


def test_a_block_that_never_ends_is_bounded_by_the_block_timeout(gala, tmp_path, register_stage):
    """3: the scheduler must never wait for ever. A block stuck for good has its worker killed
    after workers.block_timeout, and the run ends with an error that says so."""
    register_stage("faulty", "stuck_blocks")
    path = write_config(tmp_path / "run", gala, **BLOCKS, segment=SEGMENT, workers={"count": 2, "max_retries": 0, "block_timeout": 2})
    started = time.monotonic()
    with pytest.raises(RunFailed) as failure:
        run_pipeline(path, echo_progress=False)
    assert time.monotonic() - started < 120
    message = str(failure.value)
    assert "task faulty-" in message and "workers.block_timeout (2 s)" in message
    assert len(message.splitlines()) <= MAX_MESSAGE_LINES


def test_a_block_that_fails_once_is_retried(gala, tmp_path, register_stage):
    """workers.max_retries: every block of a stage fails at its first attempt; with one retry
    the run finishes, each block done once, none counted failed; without, it fails."""
    register_stage("flaky", "fails_once_blocks")
    path = write_config(tmp_path / "retried", gala, **BLOCKS, segment=SEGMENT, workers={"count": 2, "max_retries": 1})
    summary = run_pipeline(path, echo_progress=False)
    flaky = next(counts for task, counts in summary["tasks"].items() if task.startswith("flaky-"))
    assert flaky["completed"] == flaky["blocks"] and flaky["failed"] == 0
    assert len(list((tmp_path / "retried" / "failures").iterdir())) == flaky["blocks"]

    path = write_config(tmp_path / "not_retried", gala, **BLOCKS, segment=SEGMENT, workers={"count": 2, "max_retries": 0})
    with pytest.raises(RunFailed, match="this block fails once"):
        run_pipeline(path, echo_progress=False)


def test_workers_that_die_as_they_start_end_the_run_with_their_error(gala, tmp_path, register_stage):
    """Workers that cannot start would be replaced for ever; after workers.max_restarts the
    task is given up, named with its error."""
    register_stage("faulty", "workers_that_die_at_start")
    path = write_config(tmp_path / "run", gala, **BLOCKS, segment=SEGMENT, workers={"count": 2, "max_restarts": 3})
    started = time.monotonic()
    with pytest.raises(RunFailed) as failure:
        run_pipeline(path, echo_progress=False)
    assert time.monotonic() - started < 120
    message = str(failure.value)
    assert "task faulty-" in message and "given up" in message and "cannot start here" in message, message
    assert len(message.splitlines()) <= MAX_MESSAGE_LINES


def test_help_is_plain_text_and_every_argument_has_some(capsys):
    """11: the top-level help showed RST markup; subcommands and their arguments had none."""
    from neurosam.cli import build_parser

    parser = build_parser()
    assert "``" not in parser.format_help() and "::" not in parser.format_help()
    commands = next(action for action in parser._actions if action.dest == "command")
    for name, command in commands.choices.items():
        for action in command._actions:
            assert action.help, f"{name} {action.dest} has no help"


def worker_processes(scheduler_pid: int) -> list[int]:
    """daisy's worker processes of a scheduler: its children running daisy's worker module."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == scheduler_pid and b"_subprocess_worker" in command:
            pids.append(int(entry.name))
    return sorted(pids)


def test_soak_workers_killed_at_random_moments_change_nothing(gala, tmp_path):
    """A seeded soak: workers are killed (SIGKILL) at random moments, 12 times over one run,
    which must end identical, voxel for voxel and row for row, to an uninterrupted run of the
    same config. The kills stop there so that the run can end: killing every worker for ever
    fails any block past its retries."""
    sections = {"segment": SEGMENT, "workers": {"count": 2, "max_retries": 20}}
    soak_blocks = {"block_size": (100, 200, 200), "context": (50, 50, 50)}
    reference = write_config(tmp_path / "reference", gala, **soak_blocks, **sections)
    assert neurosam("run", reference).returncode == 0
    path = write_config(tmp_path / "soak", gala, **soak_blocks, **sections)
    chance = random.Random(20261202)
    run = subprocess.Popen([sys.executable, "-m", "neurosam.cli", "run", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kills = 0
    while run.poll() is None and kills < SOAK_KILLS:
        time.sleep(chance.uniform(0.2, 1.5))
        workers = worker_processes(run.pid)
        if workers:
            try:
                os.kill(chance.choice(workers), signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
    assert run.wait() == 0, run.stderr.read()
    assert kills == SOAK_KILLS, f"only {kills} workers were killed; the run ended too soon"
    assert checksum(load_config(path)) == checksum(load_config(reference))
