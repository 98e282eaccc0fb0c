"""The body of every worker, local process or SLURM job: read the plan, set the task's block
function up once, then serve blocks until the scheduler has none left, recording each finished
block in the RAG by its daisy block id.

A block function may read blocks ahead: if what it yields has a ``prefetch(block)`` method, the
worker takes the next ``plan.config.predict.prefetch_blocks`` blocks from the scheduler early and
hands each to ``prefetch`` (which starts its read in the background) before processing the one
before it.
"""

from __future__ import annotations

import importlib
import sys
from collections import deque
from typing import Callable

import daisy.v2 as daisy

from neurosam.layout import WorkerSetup, load_plan
from neurosam.rag import open_rag


def import_block_function(reference: str) -> Callable:
    module, name = reference.split(":")
    return getattr(importlib.import_module(module), name)


def serve_task(plan_file: str, task_id: str) -> None:
    plan = load_plan(plan_file)
    task = plan.tasks[task_id]
    block_function = import_block_function(task.block_function)
    client = daisy.Client()
    with open_rag(plan.config.rag.url) as rag:
        with block_function(WorkerSetup(plan, task, rag, client.worker_id)) as process:
            prefetch = getattr(process, "prefetch", None)
            lookahead = plan.config.predict.prefetch_blocks if prefetch is not None and plan.config.predict else 0
            _serve(client, process, prefetch, lookahead, lambda block: rag.mark_block_done(task_id, block.block_id[1]))


def _serve(client: daisy.Client, process: Callable, prefetch: Callable | None, lookahead: int, record: Callable) -> None:
    """Blocks are held as daisy's acquire contexts, entered when taken and left, in order, when
    done: a block that raises is reported failed (daisy retries it elsewhere), and so are the
    blocks taken ahead of it, as this worker then ends with the error."""
    held: deque = deque()
    exhausted = False
    while True:
        while not exhausted and len(held) <= lookahead:
            acquisition = client.acquire_block()
            block = acquisition.__enter__()
            if block is None:
                acquisition.__exit__(None, None, None)
                exhausted = True
                break
            held.append((acquisition, block))
            if prefetch is not None:
                prefetch(block)
        if not held:
            return
        acquisition, block = held.popleft()
        try:
            process(block)
            record(block)
        except BaseException:
            error = sys.exc_info()
            for pending, _ in [(acquisition, block), *held]:
                try:
                    pending.__exit__(*error)
                except BaseException:
                    pass
            raise
        acquisition.__exit__(None, None, None)
