"""The tile grid of prediction, without torch: the config checks it, and inference tiles by it."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def tile_core(tile_shape: Sequence[int], tile_context: Sequence[int]) -> np.ndarray:
    """Voxels of a tile kept after its context is discarded on each side."""
    core = np.asarray(tile_shape) - 2 * np.asarray(tile_context)
    if (core <= 0).any():
        raise ValueError(f"tile_context {tuple(tile_context)} leaves no core in tile_shape {tuple(tile_shape)}")
    return core


def tile_counts(shape: Sequence[int], core: Sequence[int]) -> np.ndarray:
    return -(-np.asarray(shape) // np.asarray(core))
