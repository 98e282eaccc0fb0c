"""A done record is trusted only with its data.

The RAG records which blocks of a task are done, but what those blocks wrote lives elsewhere:
output arrays on scratch storage that clusters purge, files in the work dir, and it was computed
from input arrays that a lab may regenerate in place. So before a run skips a task's done
blocks it checks, per task:

- its stamp: a task that starts afresh writes a new stamp (its task id and a random run id) into
  the metadata of every output array (attribute ``neurosam_stamp``) and records it in the RAG.
  An output deleted and recreated, or written since by another run, carries another stamp or
  none;
- chunk presence: of up to ``SAMPLED_BLOCKS`` done blocks drawn at random, the first chunk in
  every output that each block writes whole (writes store all-zero chunks too, see
  ``neurosam.io.volumes.open_storage``);
- the files its blocks leave in the work dir (segment's lookup tables, evaluate's report);
- its inputs (raw, affinities the run does not predict, ground truth): their metadata and
  ``SAMPLED_CHUNKS`` chunks at fixed positions, digested when the task started, digested again.

A task that fails a check has its done records dropped, with those of every task after it (they
read its output), and its blocks are redone. The cost does not grow with the volume: metadata
reads, a file test per sampled block and output, and ``SAMPLED_CHUNKS`` chunk reads per input
(``benchmarks/trust_checks.py`` prints it). This is the one place the scheduler reads voxels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import uuid
from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate

from neurosam.io.volumes import dataset_exists, open_storage
from neurosam.layout import RunPlan, TaskLayout
from neurosam.pipeline.registry import stages_for
from neurosam.pipeline.tasks import block_count, block_ids
from neurosam.rag import RagStore
from neurosam.stages.stage import OutputArray, Stage

logger = logging.getLogger(__name__)

STAMP_ATTRIBUTE = "neurosam_stamp"
SAMPLED_BLOCKS = 64
SAMPLED_CHUNKS = 32


def sampled_chunks(shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """Up to ``SAMPLED_CHUNKS`` chunks of an array, at positions fixed by its chunk grid, so that
    every run reads the same ones."""
    grid = [math.ceil(size / chunk) for size, chunk in zip(shape, chunks)]
    picks = np.unique(np.random.default_rng(0).integers(0, math.prod(grid), SAMPLED_CHUNKS))
    return [
        tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, chunks, shape))
        for index in zip(*np.unravel_index(picks, grid))
    ]


def input_digest(path: str) -> str:
    """The array's metadata and its sampled chunks, decoded (so any storage format will do). A
    chunk that cannot be read digests as its error: the blocks that read it fail, and say why."""
    storage = open_storage(path)
    metadata = {"shape": list(storage.shape), "chunks": list(storage.chunks), "dtype": str(storage.dtype), "attrs": dict(storage.attrs)}
    digest = hashlib.sha256(json.dumps(metadata, sort_keys=True, default=str).encode())
    for chunk in sampled_chunks(storage.shape, storage.chunks):
        try:
            digest.update(np.ascontiguousarray(storage[chunk]).tobytes())
        except Exception as error:  # noqa: BLE001 - whatever the codec raises
            digest.update(repr(error).encode())
    return digest.hexdigest()


def input_digests(plan: RunPlan) -> dict[str, str]:
    """Role -> digest of every array the run reads and no stage of it writes."""
    written = {output.role for stage in stages_for(plan.config) for output in stage.outputs(plan)}
    return {role: input_digest(array.path) for role, array in plan.arrays.items() if role not in written}


def _missing_chunk(task: TaskLayout, output: OutputArray, plan: RunPlan, done: set[int]) -> int | None:
    """A sampled done block whose first chunk is absent from ``output``; None if there is none."""
    storage = open_storage(output.path)
    sample = np.random.default_rng().choice(sorted(done), min(SAMPLED_BLOCKS, len(done)), replace=False)
    grid = block_ids(task)
    spatial_chunks = np.array(storage.chunks[len(output.channels):])
    for position in np.argwhere(np.isin(grid, sample)):
        begin = task.total_roi.offset + task.write_roi.offset + task.write_roi.shape * Coordinate(position)
        chunk = (np.array((begin - plan.volume_roi.offset) / plan.voxel_size) // spatial_chunks).tolist()
        key = storage.metadata.encode_chunk_key((0,) * len(output.channels) + tuple(chunk))
        if not (Path(output.path) / key).exists():
            return int(grid[tuple(position)])
    return None


def _distrust(plan: RunPlan, stage: Stage, task: TaskLayout, done: set[int], stamp: str | None, digests: dict[str, str]) -> str | None:
    """Why the task's done records cannot be trusted; None when they can. A stage that runs as
    several tasks has left its work files once its last task is finished."""
    if stamp is None:
        return "its done blocks have no stamp recorded (written by an older neurosam)"
    recorded = json.loads(stamp)
    for output in stage.outputs(plan):
        if not dataset_exists(output.path):
            return f"{output.role} {output.path} is missing"
        if open_storage(output.path).attrs.get(STAMP_ATTRIBUTE) != recorded["writer"]:
            return f"{output.role} {output.path} was recreated or written by another run since"
        if output.whole_blocks:
            block = _missing_chunk(task, output, plan, done)
            if block is not None:
                return f"{output.role} {output.path} has lost the chunks of done block {block}"
    tasks = plan.tasks_of_stage(stage.name)
    left_files = len(tasks) == 1 or (task == tasks[-1] and len(done) == block_count(task))
    for path in stage.work_files(plan) if left_files else []:
        if not path.exists():
            return f"{path} is missing"
    for role in stage.reads:
        if role in digests and recorded["inputs"].get(role) != digests[role]:
            return f"{role} {plan.arrays[role].path} has changed since its blocks were done"
    return None


def forget_untrusted(plan: RunPlan, rag: RagStore, digests: dict[str, str]) -> None:
    """Drop the done records of the first task that fails a check and of every task after it,
    with a warning that says why."""
    order = list(plan.tasks)
    for stage in stages_for(plan.config):
        tasks = plan.tasks_of_stage(stage.name)
        for task in tasks:
            done = rag.done_blocks(task.task_id)
            if not done:
                continue
            why = _distrust(plan, stage, task, done, rag.task_stamp(task.task_id), digests)
            if why is not None:
                for later in order[order.index(tasks[0].task_id):]:
                    rag.forget_blocks(later)
                logger.warning("%s: %s; its blocks and those of the tasks after it are done again", task.task_id, why)
                return


def stamp_fresh_tasks(plan: RunPlan, rag: RagStore, digests: dict[str, str]) -> None:
    """A task without done blocks gets a new stamp, in its outputs and then in the RAG, with the
    digests of its inputs; the outputs exist (``prepare_outputs``)."""
    for stage in stages_for(plan.config):
        for task in plan.tasks_of_stage(stage.name):
            if rag.done_blocks(task.task_id):
                continue
            writer = f"{task.task_id}/{uuid.uuid4().hex}"
            for output in stage.outputs(plan):
                open_storage(output.path, mode="r+").attrs[STAMP_ATTRIBUTE] = writer
            inputs = {role: digests[role] for role in stage.reads if role in digests}
            rag.record_stamp(task.task_id, json.dumps({"writer": writer, "inputs": inputs}))
