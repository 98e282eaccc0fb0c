"""What a rerun's trust checks cost (``neurosam.pipeline.stamps``): the input digests and, for
every task, its stamp, the chunks of up to 64 sampled done blocks and its work-dir files.

A finished run of N^3 voxels is laid out without running it: affinities, ground truth and raw
(64^3-voxel chunks of random values) and every output chunk exist as hard links to one stored
chunk, every block of every task is recorded done and every task stamped. The script then times
what a rerun does before its first block: ``input_digests`` and ``forget_untrusted``, which must
forget nothing. Figures: seconds, chunk reads, and file tests, at each size.

    python benchmarks/trust_checks.py --sizes 256 512
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
import zarr
from funlib.geometry import Roi

from neurosam.affinities import NEAREST_OFFSETS
from neurosam.config import load_config
from neurosam.io.volumes import create_array, open_storage
from neurosam.pipeline.plan import plan_run, prepare_outputs
from neurosam.pipeline.registry import stages_for
from neurosam.pipeline.stamps import SAMPLED_BLOCKS, forget_untrusted, input_digests, sampled_chunks, stamp_fresh_tasks
from neurosam.pipeline.tasks import block_ids
from neurosam.rag import open_rag

VOXEL_SIZE = (8, 8, 8)
CHUNK = 64
BLOCK = 128


def fill_with_links(path: Path) -> None:
    """Every chunk of the array a hard link to its first, which is written first."""
    array = zarr.open_array(str(path), mode="r+").with_config({"write_empty_chunks": True})
    first = tuple(slice(0, c) for c in array.chunks)
    array[first] = np.random.default_rng(0).integers(0, 255, [c for c in array.chunks]).astype(array.dtype)
    source = path / array.metadata.encode_chunk_key((0,) * array.ndim)
    grid = [-(-s // c) for s, c in zip(array.shape, array.chunks)]
    for index in np.ndindex(*grid):
        target = path / array.metadata.encode_chunk_key(index)
        if target != source:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, target)


def lay_out_finished_run(directory: Path, size: int) -> Path:
    roi = Roi((0, 0, 0), tuple(size * v for v in VOXEL_SIZE))
    inputs = directory / "inputs.zarr"
    create_array(inputs / "affinities", roi, VOXEL_SIZE, np.uint8, channels=3, chunk_voxels=(CHUNK,) * 3,
                 attrs={"offsets": [list(o) for o in NEAREST_OFFSETS]})
    create_array(inputs / "ground_truth", roi, VOXEL_SIZE, np.uint64, chunk_voxels=(CHUNK,) * 3)
    create_array(inputs / "raw", roi, VOXEL_SIZE, np.uint8, chunk_voxels=(CHUNK,) * 3)
    for name in ("affinities", "ground_truth", "raw"):
        fill_with_links(inputs / name)
    config = {
        "work_dir": str(directory / "run"),
        "datasets": {name: str(inputs / name) for name in ("affinities", "ground_truth", "raw")}
        | {"fragments": str(directory / "run/out.zarr/fragments"), "segmentation": str(directory / "run/out.zarr/segmentation")},
        "blocks": {"block_size": [BLOCK * v for v in VOXEL_SIZE]},
        "rag": {"url": f"sqlite:///{directory / 'run/rag.db'}"},
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    plan = plan_run(load_config(path))
    prepare_outputs(plan)
    with open_rag(plan.config.rag.url) as rag:
        stamp_fresh_tasks(plan, rag, input_digests(plan))
        for stage in stages_for(plan.config):
            task = plan.task_of_stage(stage.name)
            for output in stage.outputs(plan):
                fill_with_links(Path(output.path))
            for work_file in stage.work_files(plan):
                work_file.parent.mkdir(parents=True, exist_ok=True)
                work_file.touch()
            for block in block_ids(task).ravel().tolist():
                rag.mark_block_done(task.task_id, block)
    return path


def measure(config_path: Path) -> dict:
    plan = plan_run(load_config(config_path))
    started = time.perf_counter()
    digests = input_digests(plan)
    digest_seconds = time.perf_counter() - started
    with open_rag(plan.config.rag.url) as rag:
        before = {task_id: len(rag.done_blocks(task_id)) for task_id in plan.tasks}
        forget_untrusted(plan, rag, digests)
        seconds = time.perf_counter() - started
        after = {task_id: len(rag.done_blocks(task_id)) for task_id in plan.tasks}
    assert after == before, "the checks forgot done blocks of an intact run"
    file_tests = sum(
        min(SAMPLED_BLOCKS, before[plan.task_of_stage(stage.name).task_id])
        for stage in stages_for(plan.config) for output in stage.outputs(plan) if output.whole_blocks
    )
    chunk_reads = sum(
        len(sampled_chunks(storage.shape, storage.chunks)) for storage in (open_storage(plan.arrays[role].path) for role in digests)
    )
    return {"seconds": seconds, "digest_seconds": digest_seconds, "chunk_reads": chunk_reads,
            "inputs": len(digests), "file_tests": file_tests, "blocks": sum(before.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="volume edges in voxels")
    args = parser.parse_args()
    print(f"trust checks before a rerun's first block ({BLOCK}^3-voxel blocks, {CHUNK}^3-voxel chunks)")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as scratch:
            figures = measure(lay_out_finished_run(Path(scratch), size))
        print(
            f"  {size}^3 voxels, {figures['blocks']} done blocks: {figures['seconds']:.3f} s in all; input digests "
            f"{figures['digest_seconds']:.3f} s ({figures['chunk_reads']} chunk reads over {figures['inputs']} inputs); "
            f"{figures['file_tests']} chunk-presence file tests"
        )


if __name__ == "__main__":
    main()
