"""Run a config from start (or from wherever a killed run stopped) to the end, and report."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import daisy.v2 as daisy
from daisy import logging as daisy_logging

from neurosam.config import load_config
from neurosam.layout import RunPlan, segmentation_path
from neurosam.pipeline.plan import overwritten_outputs, plan_run, prepare_outputs
from neurosam.pipeline.progress import ProgressLog
from neurosam.pipeline.stages import stages_for
from neurosam.pipeline.tasks import block_count, build_pipeline
from neurosam.pipeline.worker import FAILED_BLOCKS
from neurosam.rag import open_rag

logger = logging.getLogger(__name__)


class RunFailed(RuntimeError):
    """Some blocks failed for good; the summary and the worker logs say which and why."""


@contextmanager
def stderr_to(path: Path):
    """The scheduler's own messages (daisy's server logs every failed block with its traceback)
    go to the run's log, not the console: the console gets progress and one final message."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def forget_overwritten(plan: RunPlan) -> None:
    """A task whose output another task overwrote since redoes its blocks, and so does every
    task after it (they read it, or their records depend on its RAG rows)."""
    overwritten = overwritten_outputs(plan)
    if not overwritten:
        return
    order = list(plan.tasks)
    first = min(order.index(task_id) for task_id in overwritten)
    with open_rag(plan.config.rag.url) as rag:
        for task_id in order[first:]:
            rag.forget_blocks(task_id)
    for task_id, why in overwritten.items():
        logger.warning("%s: the blocks of %s and of the tasks after it are done again", why, task_id)


def tasks_until(plan: RunPlan, until: str | None) -> list[str]:
    """Task ids in pipeline order, up to and including the stage ``until`` (all by default)."""
    names = [stage.name for stage in stages_for(plan.config)]
    if until is not None and until not in names:
        raise ValueError(f"no stage {until!r} in this run; stages are {names}")
    stop = len(names) if until is None else names.index(until) + 1
    by_stage = {task.stage: task_id for task_id, task in plan.tasks.items()}
    return [by_stage[name] for name in names[:stop]]


def run_pipeline(config_path: str | Path, until: str | None = None, echo_progress: bool = True) -> dict:
    """Run every stage up to ``until`` (all by default); finished blocks are skipped.

    SLURM jobs left by a run that was killed outright are cancelled first, before planning. A run stopped by a
    signal needs no handler here: daisy's loop holds the main thread, and the jobs the SLURM
    launcher submitted cancel themselves once the scheduler stops answering.
    """
    from neurosam.pipeline.launchers import cancel_submitted_jobs

    config_path = str(Path(config_path).resolve())
    config = load_config(config_path)
    cancel_submitted_jobs(config.work_dir)
    plan = plan_run(config)
    task_order = tasks_until(plan, until)
    forget_overwritten(plan)
    prepare_outputs(plan)
    plan_file = str(plan.save())
    log_dir = config.work_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    daisy_logging.set_log_basedir(log_dir)

    with open_rag(config.rag.url) as rag:
        done_blocks = {task_id: rag.done_blocks(task_id) for task_id in task_order}
    pipeline = build_pipeline(plan, plan_file, done_blocks, task_order)
    for task_id in task_order:
        for stale in (log_dir / task_id).glob(FAILED_BLOCKS):
            stale.unlink()
    # zarr decodes chunks in threads, and glibc gives each thread a malloc arena of its own where
    # freed block buffers pile up; with one arena they are reused, and a worker's peak memory
    # stops growing after its first blocks. Local workers and SLURM jobs inherit the variable.
    os.environ.setdefault("MALLOC_ARENA_MAX", "1")
    started = time.time()
    states = {}
    try:
        if pipeline is not None:
            with stderr_to(log_dir / "scheduler.log"):
                states = daisy.run_blockwise(
                    pipeline,
                    progress=ProgressLog(task_order, log_dir / "progress.log", echo=echo_progress),
                    return_states=True,
                    host="127.0.0.1" if config.workers.launcher == "local" else None,
                    summary=False,
                )
    finally:
        cancel_submitted_jobs(config.work_dir)
    unfinished = [t for t in task_order if t in states and states[t].completed_count < states[t].total_block_count]
    with open_rag(config.rag.url) as rag:
        failures = {task_id: _failure(states[task_id], rag.done_blocks(task_id), log_dir / task_id) for task_id in unfinished}
    summary = _write_summary(plan, config_path, task_order, states, time.time() - started, failures)
    if failures:
        raise RunFailed(_failure_message(failures, plan.work_dir / "summary.json"))
    return summary


MAX_BLOCKS_NAMED = 5


def _last_line(traceback: str | None) -> str:
    lines = [line.strip() for line in (traceback or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error recorded"


def _failure(state, done: set[int], task_log_dir: Path) -> dict:
    """What failed in one task: its failed blocks as its workers recorded them (daisy id, write
    ROI in nm, the first error of each), and where the full tracebacks are."""
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
        "first_error": first_error,
        "logs": str(task_log_dir),
    }


def _failure_message(failures: dict[str, dict], summary_path: Path) -> str:
    lines = []
    waiting = [task_id for task_id, failure in failures.items() if not failure["failed"]]
    for task_id, failure in failures.items():
        if not failure["failed"]:
            continue
        lines.append(f"task {task_id}: {failure['failed']} blocks failed, {failure['not_run']} not run")
        for block in failure["blocks"][:MAX_BLOCKS_NAMED]:
            lines.append(f"  block {block['block']}, write ROI {block['write_roi']} nm: {block['error'][:120]}")
        if len(failure["blocks"]) > MAX_BLOCKS_NAMED:
            lines.append(f"  and {len(failure['blocks']) - MAX_BLOCKS_NAMED} more blocks (all in {summary_path})")
        if not failure["blocks"]:
            lines.append(f"  error: {failure['first_error']}")
        lines.append(f"  tracebacks: {failure['logs']}/worker_*.err (the scheduler's log: {summary_path.parent / 'logs' / 'scheduler.log'})")
    if waiting:
        lines.append(f"not run, as they wait on the failed blocks: {', '.join(waiting)}")
    lines.append("fix the cause and run the same command again: finished blocks are kept")
    return "\n".join(lines)


def _write_summary(plan: RunPlan, config_path: str, task_order: list[str], states, seconds: float, failures: dict) -> dict:
    """Per task, daisy's counts; a task left out of the run as finished counts as all skipped."""
    tasks = {}
    for task_id in task_order:
        state = states.get(task_id)
        if state is None:
            blocks = block_count(plan.tasks[task_id])
            tasks[task_id] = {"blocks": blocks, "completed": blocks, "skipped_as_done": blocks, "failed": 0, "orphaned": 0}
        else:
            tasks[task_id] = {
                "blocks": state.total_block_count,
                "completed": state.completed_count,
                "skipped_as_done": state.skipped_count,
                "failed": state.failed_count,
                "orphaned": state.orphaned_count,
            }
    summary = {
        "config": config_path,
        "seconds": round(seconds, 2),
        "tasks": tasks,
        "segmentations": {f"{t:.4f}": segmentation_path(plan.config, t) for t in plan.config.segment.thresholds},
    }
    if failures:
        summary["failures"] = failures
    evaluation = plan.work_dir / "evaluation.json"
    if evaluation.exists():
        summary["evaluation"] = json.loads(evaluation.read_text())
        summary["report"] = {"scores": str(evaluation), "pictures": [str(plan.work_dir / n) for n in ("segmentation.png", "evaluation.png")]}
    (plan.work_dir / "summary.json").write_text(json.dumps(summary, indent=2))
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
            f" ({counts['skipped_as_done']} skipped as already done, {counts['failed']} failed)"
        )
    for threshold, scores in summary.get("evaluation", {}).get("thresholds", {}).items():
        lines.append(
            f"  threshold {threshold}: VOI {scores['voi']:.3f} (split {scores['voi_split']:.3f}, "
            f"merge {scores['voi_merge']:.3f}), adapted Rand error {scores['adapted_rand_error']:.3f}"
        )
    if "evaluation" in summary:
        best = summary["evaluation"]["best_threshold"]
        scores = summary["evaluation"]["thresholds"][best]
        lines.append(f"best threshold {best}: VOI {scores['voi']:.3f}, adapted Rand error {scores['adapted_rand_error']:.3f}")
        lines.append(f"  segmentation: {summary['segmentations'][best]}")
        lines.append(f"  report: {summary['report']['scores']}; pictures: {', '.join(summary['report']['pictures'])}")
    return "\n".join(lines)
