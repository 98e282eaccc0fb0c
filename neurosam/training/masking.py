"""Masks for masked image modelling: which patches of a training patch the network must
reconstruct from the rest.

A mask covers whole patches of ``patch`` voxels (z, y, x); slice patches, (1, p, p), are what
SAM2's Hiera sees. Three strategies:

- random: patches drawn uniformly;
- intensity: patches drawn with a probability that grows with how dark (or bright) they are, so
  that membranes and other dark structure, where segmentation is decided, are masked more
  often; ``strength`` 0 is random;
- channel: each channel of a multi-channel volume gets its own random mask, so a channel is
  reconstructed from the others where they are visible.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from neurosam.config import PositiveVector3


class MaskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    strategy: Literal["random", "intensity", "channel"] = "random"
    ratio: float = Field(0.6, gt=0.0, lt=1.0)
    """Fraction of the patches masked (exactly, rounded to whole patches)."""
    patch: PositiveVector3 = (4, 8, 8)
    prefer: Literal["dark", "bright"] = "dark"
    """intensity: the structure masked more often."""
    strength: float = Field(3.0, ge=0.0)
    """intensity: a patch's weight is exp(strength * z-score of its darkness, or brightness)."""


def patch_grid(shape: tuple[int, ...], patch: tuple[int, int, int]) -> tuple[int, int, int]:
    if any(size % step for size, step in zip(shape, patch)):
        raise ValueError(f"a patch of shape {tuple(shape)} does not divide into mask patches of {tuple(patch)} voxels")
    return tuple(size // step for size, step in zip(shape, patch))


def _choose(count: int, ratio: float, rng: np.random.Generator, weights: np.ndarray | None = None) -> np.ndarray:
    chosen = np.zeros(count, dtype=bool)
    probabilities = None if weights is None else weights / weights.sum()
    chosen[rng.choice(count, size=round(ratio * count), replace=False, p=probabilities)] = True
    return chosen


def patch_means(raw: np.ndarray, patch: tuple[int, int, int]) -> np.ndarray:
    """Mean intensity (over channels) of every mask patch, flat in grid order."""
    grid = patch_grid(raw.shape[1:], patch)
    blocks = raw.mean(axis=0).reshape(grid[0], patch[0], grid[1], patch[1], grid[2], patch[2])
    return blocks.mean(axis=(1, 3, 5)).ravel()


def make_mask(raw: np.ndarray, config: MaskConfig, rng: np.random.Generator) -> np.ndarray:
    """Boolean (C, Z, Y, X) mask for a raw patch (C, Z, Y, X): True where it is hidden."""
    channels, shape = raw.shape[0], raw.shape[1:]
    grid = patch_grid(shape, config.patch)
    count = int(np.prod(grid))
    if config.strategy == "channel":
        chosen = np.stack([_choose(count, config.ratio, rng) for _ in range(channels)])
    else:
        weights = None
        if config.strategy == "intensity":
            means = patch_means(raw, config.patch)
            score = -means if config.prefer == "dark" else means
            weights = np.exp(config.strength * (score - score.mean()) / (score.std() + 1e-6))
        chosen = np.broadcast_to(_choose(count, config.ratio, rng, weights), (channels, count))
    mask = chosen.reshape(channels, *grid)
    for axis, step in enumerate(config.patch, start=1):
        mask = np.repeat(mask, step, axis=axis)
    return np.ascontiguousarray(mask)
