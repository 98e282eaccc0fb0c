"""A stage that lives outside the package, registered by a test: each block writes the sum of
its fragments' sizes (its voxel count with a fragment) to a file named after its block id."""

from __future__ import annotations

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
