"""A stand-in run for testing the SLURM launcher on its own: its blocks append the id of the SLURM
job that ran them to a file named after the block, so a test sees which blocks ran, how often,
and where.

    python slurm_blocks.py worker OUT_DIR SECONDS          the body of each SLURM job
    python slurm_blocks.py schedule CONFIG OUT_DIR SECONDS  a scheduler, as the orchestrator runs it
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

import daisy.v2 as daisy
from funlib.geometry import Roi

from neurosam.config import RunConfig, load_config
from neurosam.pipeline.launchers import cancel_submitted_jobs, run_slurm_worker

TASK_NAME = "slurm-test"
JOB_NAME = f"neurosam-{TASK_NAME}"
BLOCK_COUNT = 8


def record_block(out_dir: str, seconds: float, block: daisy.Block) -> None:
    print(f"block {block.block_id[1]} started", flush=True)
    time.sleep(seconds)
    with open(Path(out_dir) / f"block-{block.block_id[1]}", "a") as record:
        record.write(os.environ["SLURM_JOB_ID"] + "\n")
    print(f"block {block.block_id[1]} done", flush=True)


def make_task(config: RunConfig, out_dir: str, seconds: float) -> daisy.Task:
    """Eight blocks served by two SLURM workers."""
    command = [sys.executable, str(Path(__file__).resolve()), "worker", out_dir, str(seconds)]
    block = Roi((0, 0, 0), (10, 10, 10))
    return daisy.Task(
        TASK_NAME,
        total_roi=Roi((0, 0, 0), (20, 20, 20)),
        read_roi=block,
        write_roi=block,
        process_function=functools.partial(run_slurm_worker, command, JOB_NAME, config.workers.slurm, config.work_dir),
        max_workers=2,
        max_retries=0,
        tracking_path=False,
    )


def schedule(config: RunConfig, out_dir: str, seconds: float) -> bool:
    """Like the orchestrator: whatever ends the run, the jobs it submitted end with it."""
    try:
        return daisy.run_blockwise(make_task(config, out_dir, seconds), progress=False)
    finally:
        cancel_submitted_jobs(config.work_dir)


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        client = daisy.Client()
        while True:
            with client.acquire_block() as block:
                if block is None:
                    break
                record_block(sys.argv[2], float(sys.argv[3]), block)
    else:
        succeeded = schedule(load_config(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
        sys.exit(0 if succeeded else 1)
