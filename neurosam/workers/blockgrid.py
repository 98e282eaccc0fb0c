"""Where a block sits in the volume's grid, and the fragment ids it may hand out.

Fragment ids are ``block_index * voxels_per_block + local_id`` (local ids start at 1), so every
worker mints ids that are unique across the volume without talking to anyone, 0 is never a
fragment, and the block that owns a fragment can be read back from its id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from funlib.geometry import Coordinate, Roi


@dataclass(frozen=True)
class BlockGrid:
    volume_roi: Roi
    block_size: Coordinate
    voxel_size: Coordinate

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(-(-s // b) for s, b in zip(self.volume_roi.shape, self.block_size))

    @property
    def voxels_per_block(self) -> int:
        return int(np.prod(self.block_size / self.voxel_size))

    def index(self, write_roi: Roi) -> int:
        position = (write_roi.offset - self.volume_roi.offset) / self.block_size
        return int(np.ravel_multi_index(tuple(position), self.shape))

    def first_id(self, write_roi: Roi) -> int:
        """Local id 1 of this block maps to ``first_id + 1``."""
        return self.index(write_roi) * self.voxels_per_block

    def owner_index(self, fragment_ids: np.ndarray) -> np.ndarray:
        return (fragment_ids.astype(np.uint64) - 1) // np.uint64(self.voxels_per_block)
