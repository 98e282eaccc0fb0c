"""Run a config from start (or from wherever a killed run stopped) to the end, and report."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import daisy.v2 as daisy
from daisy import logging as daisy_logging

from neurosam.config import load_config
from neurosam.layout import (
    FAILED_BLOCKS,
    RunPlan,
    evaluation_path,
    evaluation_pictures,
    logs_dir,
    progress_log_path,
    scheduler_log_path,
    segmentation_path,
    slurm_pending_file,
    summary_path,
    task_logs_dir,
)
from neurosam.pipeline.lock import WorkDirLock, claim_outputs
from neurosam.pipeline.plan import check_free_space, check_work_dir, plan_run, prepare_outputs
from neurosam.pipeline.progress import ProgressLog
from neurosam.pipeline.stamps import forget_untrusted, input_digests, stamp_fresh_tasks
from neurosam.pipeline.stop import StopOnSignal
from neurosam.pipeline.tasks import block_count, build_pipeline
from neurosam.rag import RagStore, open_rag

logger = logging.getLogger(__name__)


class RunFailed(RuntimeError):
    """Some blocks failed for good; the summary and the worker logs say which and why."""


#: What a full disk or quota says, through zarr, SQLite and the C library.
DISK_FULL_MARKERS = ("No space left on device", "database or disk is full", "Disk quota exceeded")


class SchedulerLog:
    """Where the scheduler's own messages go (daisy's server logs every failed block with its
    traceback): the run's log, not the console, which gets progress and one final message.

    daisy writes them from Rust and aborts the run when a write fails, as on a full disk; so
    they pass through a pipe, and a thread copies them to the log, drops what the disk refuses,
    and remembers whether any message, or the log itself, told of a full disk."""

    #: How long to wait for the copy to drain once the run is over: a straggler process that
    #: inherited the pipe must not hold the run's end.
    DRAIN_SECONDS = 5.0

    def __init__(self, path: Path):
        self.path = path
        self.disk_full = False

    def __enter__(self) -> "SchedulerLog":
        sys.stderr.flush()
        read_end, write_end = os.pipe()
        self._saved_stderr = os.dup(2)
        os.dup2(write_end, 2)
        os.close(write_end)
        self._copier = threading.Thread(target=self._copy, args=(read_end,), daemon=True)
        self._copier.start()
        return self

    def __exit__(self, *exc_info) -> None:
        sys.stderr.flush()
        os.dup2(self._saved_stderr, 2)
        os.close(self._saved_stderr)
        self._copier.join(self.DRAIN_SECONDS)

    def _copy(self, read_end: int) -> None:
        log = None
        try:
            log = open(self.path, "ab", buffering=0)
        except OSError as error:
            self._note(error)
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if any(marker.encode() in line for marker in DISK_FULL_MARKERS):
                    self.disk_full = True
                if log is not None:
                    try:
                        log.write(line)
                    except OSError as error:
                        self._note(error)
        if log is not None:
            log.close()

    def _note(self, error: OSError) -> None:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            self.disk_full = True


def start_graph_afresh(plan: RunPlan, rag: RagStore, done_blocks: dict[str, set[int]]) -> None:
    """A fragments task about to start from its first block replaces the whole graph: the RAG
    keeps a row per block, and rows of another block grid or ROI would otherwise stay."""
    fragments = next((task_id for task_id, task in plan.tasks.items() if task.stage == "fragments"), None)
    if fragments in done_blocks and not done_blocks[fragments]:
        rag.delete_graph()


def tasks_until(plan: RunPlan, until: str | None) -> list[str]:
    """Task ids in pipeline order, up to and including the stage ``until`` (all by default)."""
    names = [task.stage for task in plan.tasks.values()]
    if until is not None and until not in names:
        raise ValueError(f"no stage {until!r} in this run; stages are {names}")
    stop = len(names) if until is None else len(names) - names[::-1].index(until)
    return list(plan.tasks)[:stop]


def run_pipeline(config_path: str | Path, until: str | None = None, echo_progress: bool = True) -> dict:
    """Run every stage up to ``until`` (all by default); finished blocks are skipped. The run
    holds its work dir's lock throughout: nothing is touched before it has it."""
    config_path = str(Path(config_path).resolve())
    config = load_config(config_path)
    check_work_dir(config)
    with WorkDirLock(config.work_dir) as lock, StopOnSignal(config.work_dir, lock) as stopper:
        return _run_locked(config_path, config, until, echo_progress, stopper)


def _run_locked(config_path: str, config, until: str | None, echo_progress: bool, stopper: StopOnSignal) -> dict:
    """SLURM jobs left by a run that was killed outright are cancelled first, before planning."""
    from neurosam.pipeline.launchers import cancel_submitted_jobs

    cancel_submitted_jobs(config.work_dir)
    plan = plan_run(config)
    stopper.plan = plan
    claim_outputs(plan, config_path)
    task_order = tasks_until(plan, until)
    digests = input_digests(plan)
    with open_rag(config.rag.url) as rag:
        forget_untrusted(plan, rag, digests)
        done_blocks = {task_id: rag.done_blocks(task_id) for task_id in task_order}
        check_free_space(plan, done_blocks, {task_id: block_count(plan.tasks[task_id]) for task_id in task_order})
        prepare_outputs(plan)
        stamp_fresh_tasks(plan, rag, digests)
        start_graph_afresh(plan, rag, done_blocks)
    plan_file = str(plan.save())
    log_dir = logs_dir(config.work_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    daisy_logging.set_log_basedir(log_dir)

    pipeline = build_pipeline(plan, plan_file, done_blocks, task_order)
    for task_id in task_order:
        for stale in task_logs_dir(config.work_dir, task_id).glob(FAILED_BLOCKS):
            stale.unlink()
    slurm_pending_file(config.work_dir).unlink(missing_ok=True)
    # zarr decodes chunks in threads, and glibc gives each thread a malloc arena of its own where
    # freed block buffers pile up; with one arena they are reused, and a worker's peak memory
    # stops growing after its first blocks. Local workers and SLURM jobs inherit the variable.
    os.environ.setdefault("MALLOC_ARENA_MAX", "1")
    started = time.time()
    states = {}
    scheduler_log = SchedulerLog(scheduler_log_path(config.work_dir))
    progress = ProgressLog(task_order, progress_log_path(config.work_dir), echo=echo_progress, already_done=done_blocks)
    try:
        if pipeline is not None:
            with scheduler_log:
                # Server, not run_blockwise: a task whose workers keep dying is abandoned
                # and reported with the others, rather than raised without the states.
                states = daisy.Server().run_blockwise(
                    pipeline,
                    progress=progress,
                    host="127.0.0.1" if config.workers.launcher == "local" else None,
                    summary=False,
                )
    except KeyboardInterrupt:
        stopper.stop(signal.SIGINT)
    finally:
        stopper.hold_if_stopping()
        cancel_submitted_jobs(config.work_dir)
    unfinished = [t for t in task_order if t in states and states[t].completed_count < states[t].total_block_count]
    failures = {}
    if unfinished:
        with open_rag(config.rag.url) as rag:
            failures = {
                task_id: _failure(states[task_id], rag.done_blocks(task_id), task_logs_dir(config.work_dir, task_id))
                for task_id in unfinished
            }
    disk_full = scheduler_log.disk_full or any(
        marker in block["error"] for failure in failures.values() for block in failure["blocks"] for marker in DISK_FULL_MARKERS
    )
    try:
        summary = _write_summary(plan, config_path, task_order, states, time.time() - started, failures, progress.task_seconds())
    except OSError as error:
        if not (failures or disk_full) or error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        disk_full = True
    if failures or disk_full:
        raise RunFailed(_failure_message(failures, plan.work_dir, config.workers, disk_full))
    return summary


MAX_BLOCKS_NAMED = 5


def _last_line(traceback: str | None) -> str:
    lines = [line.strip() for line in (traceback or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error recorded"


def _failure(state, done: set[int], task_log_dir: Path) -> dict:
    """What failed in one task: its failed blocks as its workers recorded them (daisy id, write
    ROI in nm, the first error of each), blocks whose workers were killed for running past the
    block timeout, whether daisy gave the task up, and where the full tracebacks are."""
    blocks: dict[int, dict] = {}
    for record_file in sorted(task_log_dir.glob(FAILED_BLOCKS)):
        for line in record_file.read_text().splitlines():
            record = json.loads(line)
            if record["block"] not in done:
                blocks.setdefault(record["block"], record)
    first_error = next(iter(blocks.values()))["error"] if blocks else _last_line(state.first_worker_error or state.abandon_reason)
    return {
        "failed": state.failed_count,
        "not_run": state.total_block_count - state.completed_count - state.failed_count,
        "blocks": list(blocks.values()),
        "timed_out": state.timeout_reclaim_count,
        # A task downstream of a given-up one is abandoned too, but only waited on it.
        "gave_up": _last_line(state.abandon_reason.split(". Last worker error")[0]) if state.abandoned and state.worker_failure_count else None,
        "first_error": first_error,
        "logs": str(task_log_dir),
    }


def _failure_message(failures: dict[str, dict], work_dir: Path, workers, disk_full: bool) -> str:
    lines = []
    if disk_full:
        lines.append(
            f"the disk is full (No space left on device): free space where the work dir ({work_dir}), "
            "the output datasets or the database lie, or move the run to a larger disk"
        )
    failed = {task_id: failure for task_id, failure in failures.items() if failure["failed"] or failure["gave_up"]}
    for task_id, failure in failed.items():
        lines.append(f"task {task_id}: {failure['failed']} blocks failed, {failure['not_run']} not run")
        for block in failure["blocks"][:MAX_BLOCKS_NAMED]:
            lines.append(f"  block {block['block']}, write ROI {block['write_roi']} nm: {block['error'][:120]}")
        if len(failure["blocks"]) > MAX_BLOCKS_NAMED:
            lines.append(f"  and {len(failure['blocks']) - MAX_BLOCKS_NAMED} more blocks (all in {summary_path(work_dir)})")
        if failure["timed_out"]:
            lines.append(
                f"  {failure['timed_out']} block attempts ran past workers.block_timeout ({workers.block_timeout:g} s) "
                "and their workers were killed"
            )
        if failure["gave_up"]:
            lines.append(f"  given up: {failure['gave_up'][:200]} (workers.max_restarts is {workers.max_restarts})")
        if not failure["blocks"]:
            lines.append(f"  error: {failure['first_error'][:200]}")
        lines.append(f"  tracebacks: {failure['logs']}/worker_*.err (the scheduler's log: {scheduler_log_path(work_dir)})")
    waiting = [task_id for task_id in failures if task_id not in failed]
    if waiting:
        lines.append(f"not run, as they wait on the failed blocks: {', '.join(waiting)}")
    lines.append("fix the cause and run the same command again: finished blocks are kept")
    return "\n".join(lines)


def _write_summary(
    plan: RunPlan, config_path: str, task_order: list[str], states, seconds: float, failures: dict, task_seconds: dict[str, float]
) -> dict:
    """Per task, daisy's counts and its wall time in this run (from its first block to its last:
    tasks overlap); a task left out of the run as finished counts as all skipped."""
    tasks = {}
    for task_id in task_order:
        state = states.get(task_id)
        if state is None:
            blocks = block_count(plan.tasks[task_id])
            tasks[task_id] = {"blocks": blocks, "completed": blocks, "skipped_as_done": blocks, "failed": 0, "orphaned": 0, "seconds": 0.0}
        else:
            tasks[task_id] = {
                "blocks": state.total_block_count,
                "completed": state.completed_count,
                "skipped_as_done": state.skipped_count,
                "failed": state.failed_count,
                "orphaned": state.orphaned_count,
                "seconds": task_seconds.get(task_id, 0.0),
            }
    summary = {
        "config": config_path,
        "seconds": round(seconds, 2),
        "tasks": tasks,
        "segmentations": {f"{t:.4f}": segmentation_path(plan.config, t) for t in plan.config.segment.thresholds},
    }
    if failures:
        summary["failures"] = failures
    evaluation = evaluation_path(plan.work_dir)
    if evaluation.exists():
        summary["evaluation"] = json.loads(evaluation.read_text())
        summary["report"] = {"scores": str(evaluation), "pictures": [str(picture) for picture in evaluation_pictures(plan.work_dir)]}
    summary_path(plan.work_dir).write_text(json.dumps(summary, indent=2))
    return summary


def run_status(config_path: str | Path) -> list[tuple[str, int, int]]:
    """(task id, blocks done, blocks total) per stage, from the RAG's record of finished blocks."""
    plan = plan_run(load_config(config_path), check_database=False)
    with open_rag(plan.config.rag.url) as rag:
        return [(task_id, len(rag.done_blocks(task_id)), block_count(task)) for task_id, task in plan.tasks.items()]


def format_summary(summary: dict) -> str:
    lines = [f"run finished in {summary['seconds']:.1f} s"]
    for task, counts in summary["tasks"].items():
        lines.append(
            f"  {task:<24} {counts['completed']:>6}/{counts['blocks']:<6} done"
            f" ({counts['skipped_as_done']} skipped as already done, {counts['failed']} failed) in {counts['seconds']:.1f} s"
        )
    for threshold, scores in summary.get("evaluation", {}).get("thresholds", {}).items():
        lines.append(
            f"  threshold {threshold}: VOI {scores['voi']:.3f} (split {scores['voi_split']:.3f}, "
            f"merge {scores['voi_merge']:.3f}), adapted Rand error {scores['adapted_rand_error']:.3f}"
        )
    if "evaluation" in summary:
        best = summary["evaluation"]["best_threshold"]
        scores = summary["evaluation"]["thresholds"][best]
        chosen = summary["evaluation"].get("chosen_threshold")
        if chosen is not None:
            at_chosen = summary["evaluation"]["thresholds"][chosen]
            lines.append(
                f"at the chosen threshold {chosen} (chosen on a validation crop): VOI {at_chosen['voi']:.3f} "
                f"(split {at_chosen['voi_split']:.3f}, merge {at_chosen['voi_merge']:.3f}), "
                f"adapted Rand error {at_chosen['adapted_rand_error']:.3f}"
            )
        lines.append(f"best threshold {best}: VOI {scores['voi']:.3f}, adapted Rand error {scores['adapted_rand_error']:.3f}"
                     + (" (picked on this crop itself)" if chosen is not None else ""))
        lines.append(f"  segmentation: {summary['segmentations'][best]}")
        lines.append(f"  report: {summary['report']['scores']}; pictures: {', '.join(summary['report']['pictures'])}")
    return "\n".join(lines)
