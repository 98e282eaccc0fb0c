"""The body of every worker, local process or SLURM job: read the plan, set the task's block
function up once, then serve blocks until the scheduler has none left, recording each finished
block in the RAG by its daisy block id.
"""

from __future__ import annotations

import importlib
import json
import traceback
from pathlib import Path
from typing import Callable

import daisy.v2 as daisy

from neurosam.layout import WorkerSetup, failed_blocks_file, load_plan
from neurosam.rag import open_rag


def import_block_function(reference: str) -> Callable:
    module, name = reference.split(":")
    return getattr(importlib.import_module(module), name)


def serve_task(plan_file: str, task_id: str) -> None:
    """A block that raises is reported to the scheduler as failed, with its traceback in this
    worker's log (daisy retries it up to ``workers.max_retries`` times), and the worker goes on
    with the next block: one bad chunk must not end a task's workers."""
    plan = load_plan(plan_file)
    task = plan.tasks[task_id]
    block_function = import_block_function(task.block_function)
    client = daisy.Client()
    with open_rag(plan.config.rag.url) as rag, block_function(WorkerSetup(plan, task, rag, client.worker_id)) as process:
        while True:
            block = None
            try:
                with client.acquire_block() as block:
                    if block is None:
                        return
                    process(block)
                    rag.mark_block_done(task_id, block.block_id[1])
            except Exception as error:
                if block is None:
                    raise
                record_failure(plan.work_dir, task_id, block, error)


def record_failure(work_dir: Path, task_id: str, block, error: Exception) -> None:
    """Best effort: on a full disk the record cannot be written, and the worker must still go
    on (the scheduler counts the block failed, and its log has the traceback)."""
    path = failed_blocks_file(work_dir, task_id)
    message = traceback.format_exception_only(type(error), error)[-1].strip()
    record = {"block": block.block_id[1], "write_roi": str(block.write_roi), "error": message}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as file:
            file.write(json.dumps(record) + "\n")
    except OSError:
        pass
