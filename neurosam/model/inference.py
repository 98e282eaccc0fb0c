"""Prediction with a trained network: affinities of a volume, tile by tile.

One tiling serves validation during training and the pipeline's predict stage. Tiles lie on a
grid of cores (``tile_shape - 2 * tile_context``) anchored at the input's first voxel; each tile
keeps only its core, where the network saw enough context. A block of the pipeline that starts
on that grid and is read with mirrored borders therefore gets exactly the values a prediction of
the whole volume gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Sequence

import numpy as np
import torch

from neurosam.model.tiles import tile_core, tile_counts


def normalise(raw: np.ndarray, raw_range: tuple[float, float] = (0.0, 255.0)) -> np.ndarray:
    """Raw intensities to the network's input range: ``raw_range`` maps linearly to [0, 1]."""
    low, high = raw_range
    return ((raw.astype(np.float32) - low) / (high - low)).astype(np.float32)


@dataclass(frozen=True)
class TileTransform:
    """A symmetry of the tiles: flips along some spatial axes (0, 1, 2 = z, y, x), then y and x
    swapped. Its inverse maps the network's affinities back, offsets included."""

    flips: tuple[int, ...] = ()
    transpose: bool = False

    def apply(self, tiles: torch.Tensor) -> torch.Tensor:
        """(B, 1, Z, Y, X) raw as the network sees it under this transform."""
        if self.flips:
            tiles = torch.flip(tiles, [2 + axis for axis in self.flips])
        return tiles.transpose(-1, -2) if self.transpose else tiles

    def invert(self, affinities: torch.Tensor, offsets: Sequence[Sequence[int]]) -> torch.Tensor:
        """(B, C, Z, Y, X) affinities of the transformed tiles, back in the tiles' frame. Under a
        flip along its axis, the affinity of offset o at r is the flipped one at r + o (each
        offset lies along one axis); values rolled in across the tile's edge land in its context."""
        if self.transpose:
            swapped = [offsets.index([o[0], o[2], o[1]]) for o in offsets]
            affinities = affinities.transpose(-1, -2)[:, swapped]
        if not self.flips:
            return affinities
        affinities = torch.flip(affinities, [2 + axis for axis in self.flips])
        channels = []
        for channel, offset in enumerate(offsets):
            along = [axis for axis in self.flips if offset[axis]]
            shifted = torch.roll(affinities[:, channel], [-offset[axis] for axis in along], [1 + axis for axis in along]) if along else affinities[:, channel]
            channels.append(shifted)
        return torch.stack(channels, dim=1)


def tile_transforms(offsets: Sequence[Sequence[int]], tile_context: Sequence[int]) -> list[TileTransform]:
    """Every flip and y-x swap whose inverse is exact for these offsets and this context: a flip
    along an axis needs every offset with a component there to lie along it, no longer than the
    context; the swap needs the offsets to be symmetric in y and x. The identity comes first."""
    offsets = [list(offset) for offset in offsets]
    axes = [
        axis for axis in range(3)
        if all(sum(1 for c in offset if c) == 1 and abs(offset[axis]) <= tile_context[axis] for offset in offsets if offset[axis])
    ]
    transposes = [False, True] if all([o[0], o[2], o[1]] in offsets for o in offsets) else [False]
    flip_sets = [tuple(axis for axis, flipped in zip(axes, chosen) if flipped) for chosen in product([False, True], repeat=len(axes))]
    return [TileTransform(flips, transpose) for transpose in transposes for flips in flip_sets]


@torch.no_grad()
def predict_tiles(
    model: torch.nn.Module,
    padded: np.ndarray,
    tile_shape: Sequence[int],
    tile_context: Sequence[int],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    tile_batch: int = 1,
    transforms: Sequence[TileTransform] = (TileTransform(),),
    offsets: Sequence[Sequence[int]] = (),
) -> np.ndarray:
    """Affinities in [0, 1] (C, *counts * core) of the refined head, from an input (Z, Y, X) that
    already holds ``tile_context`` voxels around a whole number of cores on each axis.

    ``tile_batch`` tiles go through the model at once, which keeps a GPU (and CPU convolutions)
    busier than single tiles; ``autocast_dtype`` (bfloat16 or float16) runs it in mixed precision.
    With several ``transforms`` (test-time augmentation; ``offsets`` are the model's), each
    tile's affinities are the mean over them.
    """
    tile, context = np.asarray(tile_shape), np.asarray(tile_context)
    core = tile_core(tile, context)
    counts, remainder = np.divmod(np.asarray(padded.shape) - 2 * context, core)
    if remainder.any() or (counts <= 0).any():
        raise ValueError(f"input {padded.shape} is not {tuple(context)} of context around whole tile cores {tuple(core)}")
    offsets = [list(offset) for offset in offsets]
    source = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))
    starts = [np.array(index) * core for index in np.ndindex(*counts)]
    inner = (slice(None), *(slice(c, c + k) for c, k in zip(context, core)))
    result = None
    was_training = model.training
    model.eval()
    for first in range(0, len(starts), tile_batch):
        batch_starts = starts[first : first + tile_batch]
        tiles = torch.stack([source[tuple(slice(a, a + t) for a, t in zip(start, tile))] for start in batch_starts])[:, None].to(device)
        probabilities = 0
        for transform in transforms:
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                logits = model(transform.apply(tiles))["refined"]
            probabilities = probabilities + transform.invert(torch.sigmoid(logits.float()), offsets)
        probabilities = (probabilities / len(transforms)).cpu().numpy()
        if result is None:
            result = np.empty((probabilities.shape[1], *(counts * core)), dtype=np.float32)
        for start, tile_probabilities in zip(batch_starts, probabilities):
            result[(slice(None), *(slice(a, a + k) for a, k in zip(start, core)))] = tile_probabilities[inner]
    model.train(was_training)
    return result


def predict_volume(
    model: torch.nn.Module,
    raw: np.ndarray,
    tile_shape: Sequence[int],
    tile_context: Sequence[int],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    tile_batch: int = 1,
) -> np.ndarray:
    """Affinities in [0, 1] (C, Z, Y, X) of a whole volume (Z, Y, X, float in [0, 1]), padded
    by reflection so that every voxel gets a prediction with full context."""
    context = np.asarray(tile_context)
    core = tile_core(tile_shape, context)
    counts = tile_counts(raw.shape, core)
    padding = [(c, n * k - s + c) for c, n, k, s in zip(context, counts, core, raw.shape)]
    padded = np.pad(raw, padding, mode="reflect")
    result = predict_tiles(model, padded, tile_shape, context, device, autocast_dtype, tile_batch)
    return result[(slice(None), *(slice(0, s) for s in raw.shape))]
