"""The run as daisy tasks, built from the plan's task layouts, with done blocks skipped.

A block is done when the RAG records it, under its task id (see ``plan.task_ids``), so a changed
parameter starts its task afresh. That record, by daisy block id, becomes daisy's ``skip_mask``:
one query per task at start. daisy keeps no markers of its own, so the record of a run's
progress lives with its data: another database means blocks not done.
"""

from __future__ import annotations

import daisy.v2 as daisy
import numpy as np

from neurosam.layout import RunPlan, TaskLayout


def task_blocks(task: TaskLayout) -> list[daisy.Block]:
    """Every block of the task as daisy makes them: daisy numbers blocks itself, and this asks
    it rather than repeating its numbering."""
    graph = daisy.BlockwiseDependencyGraph(
        task.task_id, task.read_roi, task.write_roi, False, "shrink", total_read_roi=task.total_roi
    )
    return [block for block, _ in graph.enumerate_all_dependencies()]


def block_ids(task: TaskLayout) -> np.ndarray:
    """daisy's block id of every block of the task, by grid position."""
    blocks = task_blocks(task)
    origin = task.total_roi.offset + task.write_roi.offset
    positions = np.array([(block.write_roi.offset - origin) / task.write_roi.shape for block in blocks])
    ids = np.empty(tuple(positions.max(axis=0) + 1), dtype=np.int64)
    ids[tuple(positions.T)] = [block.block_id[1] for block in blocks]
    return ids


def block_count(task: TaskLayout) -> int:
    return int(np.prod(daisy_task(task).block_grid_shape))


def skip_mask(task: TaskLayout, done_blocks: set[int]) -> np.ndarray | None:
    """The task's finished blocks by grid position; None when none is finished."""
    if not done_blocks:
        return None
    return np.isin(block_ids(task), sorted(done_blocks))


def daisy_task(task: TaskLayout, process_function=None, workers=None, mask=None) -> daisy.Task:
    """The one place a task's daisy view is built. ``workers`` (the config's) None: a task only
    asked for its block grid."""
    limits = {} if workers is None else {
        "max_workers": workers.count_for(task.stage),
        "max_retries": workers.max_retries,
        "timeout": workers.block_timeout,
        "max_worker_restarts": workers.max_restarts,
    }
    return daisy.Task(
        task.task_id,
        total_roi=task.total_roi,
        read_roi=task.read_roi,
        write_roi=task.write_roi,
        process_function=process_function,
        read_write_conflict=False,
        fit="shrink",
        skip_mask=mask,
        tracking_path=False,
        **limits,
    )


def build_pipeline(plan: RunPlan, plan_file: str, done_blocks: dict[str, set[int]], task_order: list[str]) -> daisy.Pipeline | None:
    """The daisy pipeline of the tasks with blocks left to do (None when there are none): a
    finished task is left out, as daisy would still start its workers only to skip every block."""
    from neurosam.pipeline.launchers import make_process_function

    workers = plan.config.workers
    pipeline = None
    for task_id in task_order:
        task = plan.tasks[task_id]
        mask = skip_mask(task, done_blocks.get(task_id, set()))
        if mask is not None and mask.all():
            continue
        process_function = make_process_function(plan, plan_file, task)
        daisy_view = daisy_task(task, process_function, workers, mask)
        pipeline = daisy.Pipeline.from_task(daisy_view) if pipeline is None else pipeline + daisy_view
    return pipeline
