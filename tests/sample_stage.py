"""A stage that lives outside the package, registered by a test: each block writes the sum of
its fragments' sizes (its voxel count with a fragment) to a file named after its block id."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

import numpy as np

from neurosam.layout import WorkerSetup


@contextmanager
def census_blocks(setup: WorkerSetup):
    out_dir = setup.plan.work_dir / "census"
    out_dir.mkdir(exist_ok=True)

    def count(block) -> None:
        fragments = setup.plan.arrays["fragments"].read(block.write_roi)
        (out_dir / f"block-{block.block_id[1]}").write_text(str(int(np.count_nonzero(fragments))))

    yield count


@contextmanager
def slow_census_blocks(setup: WorkerSetup):
    """Like ``census_blocks``, slowly, leaving a record of every attempt at a block (which
    process started it, and whether it finished), so a test can kill a worker mid-block."""
    attempts = setup.plan.work_dir / "attempts"
    attempts.mkdir(exist_ok=True)

    def count(block) -> None:
        name = f"{block.block_id[1]}-{os.getpid()}"
        (attempts / f"started-{name}").touch()
        time.sleep(1.0)
        (attempts / f"finished-{name}").touch()

    yield count


@contextmanager
def stuck_blocks(setup: WorkerSetup):
    """A block that never ends, as on a hung file system."""

    def hang(block) -> None:
        time.sleep(10**6)

    yield hang


@contextmanager
def workers_that_die_at_start(setup: WorkerSetup):
    raise RuntimeError("the block function cannot start here")
    yield


@contextmanager
def fails_once_blocks(setup: WorkerSetup):
    """Every block fails at its first attempt and succeeds at its second, as on a flaky file
    system; a file per block records the failure."""
    failures = setup.plan.work_dir / "failures"
    failures.mkdir(exist_ok=True)

    def fail_once(block) -> None:
        marker = failures / f"block-{block.block_id[1]}"
        if not marker.exists():
            marker.touch()
            raise RuntimeError("this block fails once")

    yield fail_once
