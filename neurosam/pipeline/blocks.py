"""What a worker process does with a block it was handed: call the stage's block function, then
record in the RAG that the block finished, by its index in the volume's block grid (the one-block
stages cover the whole volume and are index 0).

Every worker, local or on a SLURM node, gets the config file's path and the run's plan; the
opened config and database connection are kept for the process's life.
"""

from __future__ import annotations

import functools

from neurosam.config import RunConfig, load_config
from neurosam.pipeline.plan import RunPlan
from neurosam.rag import RagStore, open_rag
from neurosam.workers.agglomerate import agglomerate_block
from neurosam.workers.fragments import extract_fragments
from neurosam.workers.relabel import relabel_block
from neurosam.workers.segment import find_segments

STAGES = ("fragments", "agglomerate", "segment", "relabel", "evaluate")


def stage_of(task_id: str) -> str:
    return task_id.rsplit("-", 1)[0]


@functools.cache
def worker_context(config_path: str) -> tuple[RunConfig, RagStore]:
    config = load_config(config_path)
    return config, open_rag(config.rag.url)


def run_block(config_path: str, task_id: str, plan: RunPlan, block) -> None:
    config, rag = worker_context(config_path)
    stage = stage_of(task_id)
    if stage == "fragments":
        extract_fragments(config, rag, plan, block)
    elif stage == "agglomerate":
        agglomerate_block(config, rag, plan, block)
    elif stage == "segment":
        find_segments(config, rag)
    elif stage == "relabel":
        relabel_block(config, plan, block)
    elif stage == "evaluate":
        # imported here: evaluation reads whole arrays through funlib.persistence, which the
        # block stages' workers start without
        from neurosam.workers.evaluation import evaluate_run

        evaluate_run(config, plan.volume_roi)
    else:
        raise ValueError(f"unknown task {task_id!r}; stages are {STAGES}")
    rag.mark_block_done(task_id, plan.grid.index(block.write_roi))
