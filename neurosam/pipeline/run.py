"""Run a config from start (or from wherever a killed run stopped) to the end, and report."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import daisy.v2 as daisy
from daisy import logging as daisy_logging

from neurosam.config import RunConfig, load_config
from neurosam.pipeline.plan import RunPlan, plan_run, prepare_outputs
from neurosam.pipeline.progress import ProgressLog
from neurosam.pipeline.tasks import build_pipeline, stage_blocks, stages_for, stages_until, task_ids
from neurosam.rag import open_rag

logger = logging.getLogger(__name__)


class RunFailed(RuntimeError):
    """Some blocks failed for good; the summary and the worker logs say which and why."""


def run_pipeline(config_path: str | Path, until: str | None = None, echo_progress: bool = True) -> dict:
    """Run every stage up to ``until`` (all by default); finished blocks are skipped.

    SLURM jobs left by a run that was killed outright are cancelled first. A run stopped by a
    signal needs no handler here: daisy's loop holds the main thread, and the jobs the SLURM
    launcher submitted cancel themselves once the scheduler stops answering.
    """
    from neurosam.pipeline.launchers import cancel_submitted_jobs

    config_path = str(Path(config_path).resolve())
    config = load_config(config_path)
    if until is not None and until not in stages_for(config):
        raise ValueError(f"no stage {until!r} in this run; stages are {stages_for(config)}")
    plan = plan_run(config)
    prepare_outputs(config, plan)
    log_dir = config.work_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    daisy_logging.set_log_basedir(log_dir)
    daisy.set_tracking_basedir(config.work_dir / "tracking")

    with open_rag(config.rag.url) as rag:
        done_blocks = {task_id: rag.done_blocks(task_id) for task_id in task_ids(config).values()}
    pipeline = build_pipeline(config, config_path, plan, done_blocks, until)
    cancel_submitted_jobs(config)
    # zarr decodes chunks in threads, and glibc gives each thread a malloc arena of its own where
    # freed block buffers pile up; with one arena they are reused, and a worker's peak memory
    # stops growing after its first blocks. Local workers and SLURM jobs inherit the variable.
    os.environ.setdefault("MALLOC_ARENA_MAX", "1")
    started = time.time()
    states = {}
    try:
        if pipeline is not None:
            states = daisy.run_blockwise(
                pipeline,
                progress=ProgressLog(list(task_ids(config).values()), log_dir / "progress.log", echo=echo_progress),
                return_states=True,
                host="127.0.0.1" if config.workers.launcher == "local" else None,
                summary=False,
            )
    finally:
        cancel_submitted_jobs(config)
    summary = _write_summary(config, config_path, plan, until, states, time.time() - started)
    failed = {task: s.last_worker_error for task, s in states.items() if s.completed_count < s.total_block_count}
    if failed:
        details = "\n".join(f"  {task}: {error}" for task, error in failed.items())
        raise RunFailed(f"blocks failed (logs in {log_dir}):\n{details}")
    return summary


def _write_summary(config: RunConfig, config_path: str, plan: RunPlan, until: str | None, states, seconds: float) -> dict:
    """Per task, daisy's counts; a task left out of the run as finished counts as all skipped."""
    ids = task_ids(config)
    tasks = {}
    for stage in stages_until(config, until):
        state = states.get(ids[stage])
        if state is None:
            blocks = stage_blocks(stage, plan).block_count
            tasks[ids[stage]] = {"blocks": blocks, "completed": blocks, "skipped_as_done": blocks, "failed": 0, "orphaned": 0}
        else:
            tasks[ids[stage]] = {
                "blocks": state.total_block_count,
                "completed": state.completed_count,
                "skipped_as_done": state.skipped_count,
                "failed": state.failed_count,
                "orphaned": state.orphaned_count,
            }
    summary = {"config": config_path, "seconds": round(seconds, 2), "tasks": tasks}
    evaluation = config.work_dir / "evaluation.json"
    if evaluation.exists():
        summary["evaluation"] = json.loads(evaluation.read_text())
    (config.work_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_status(config_path: str | Path) -> list[tuple[str, int, int]]:
    """(task id, blocks done, blocks total) per stage, from the RAG's record of finished blocks."""
    config = load_config(config_path)
    plan = plan_run(config, check_database=False)
    with open_rag(config.rag.url) as rag:
        return [
            (task_id, len(rag.done_blocks(task_id)), stage_blocks(stage, plan).block_count)
            for stage, task_id in task_ids(config).items()
        ]


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
    return "\n".join(lines)
