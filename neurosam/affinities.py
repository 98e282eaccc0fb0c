"""Affinities: the interface between the network and the post-processing.

Channel ``c`` of an affinity array holds, at voxel ``p``, how likely ``p`` and ``p + offset[c]``
belong to the same neuron. Offsets point backwards (negative), as waterz expects for the three
nearest neighbours. On disk affinities are uint8 (0..255 = 0..1) with the offsets stored in the
dataset's ``offsets`` attribute.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

NEAREST_OFFSETS: list[list[int]] = [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
LONG_RANGE_OFFSETS: list[list[int]] = [[-3, 0, 0], [0, -9, 0], [0, 0, -9], [-9, 0, 0], [0, -27, 0], [0, 0, -27]]


def nearest_neighbour_channels(offsets: list[list[int]]) -> list[int]:
    """waterz reads the three nearest-neighbour affinities; find them among the stored offsets."""
    try:
        return [offsets.index(offset) for offset in NEAREST_OFFSETS]
    except ValueError:
        raise ValueError(f"affinity offsets {offsets} lack the nearest neighbours {NEAREST_OFFSETS}") from None


def _shifted_pair(shape: Sequence[int], offset: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices (here, there) such that ``there`` is ``here`` moved by ``offset``."""
    here, there = [], []
    for size, o in zip(shape, offset):
        if o >= 0:
            here.append(slice(0, size - o))
            there.append(slice(o, size))
        else:
            here.append(slice(-o, size))
            there.append(slice(0, size + o))
    return tuple(here), tuple(there)


def labels_to_affinities(
    labels: np.ndarray,
    offsets: Sequence[Sequence[int]] = NEAREST_OFFSETS,
    background: int = 0,
    known: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth affinities and their mask, both (C, Z, Y, X) float32.

    An affinity is 1 where both voxels carry the same non-background id and 0 otherwise. The
    mask is 0 where the neighbour lies outside the array (unknown), so a loss on a patch never
    learns a false boundary at the patch border. ``known`` (boolean, the labels' shape) marks
    voxels whose label is unknown, such as padding or content moved in by an augmentation: the
    mask is 0 where either voxel of a pair is not known.
    """
    affinities = np.zeros((len(offsets), *labels.shape), dtype=np.float32)
    mask = np.zeros_like(affinities)
    for channel, offset in enumerate(offsets):
        here, there = _shifted_pair(labels.shape, offset)
        a, b = labels[here], labels[there]
        affinities[channel][here] = (a == b) & (a != background)
        mask[channel][here] = 1.0 if known is None else known[here] & known[there]
    return affinities, mask


def boundary_to_affinities(boundary: np.ndarray, offsets: Sequence[Sequence[int]] = NEAREST_OFFSETS) -> np.ndarray:
    """Affinities 1 - max(p_here, p_there) from a boundary probability map in [0, 1]."""
    affinities = np.zeros((len(offsets), *boundary.shape), dtype=np.float32)
    for channel, offset in enumerate(offsets):
        here, there = _shifted_pair(boundary.shape, offset)
        affinities[channel][here] = 1.0 - np.maximum(boundary[here], boundary[there])
    return affinities


def to_uint8(affinities: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(affinities * 255.0), 0, 255).astype(np.uint8)


def to_float(affinities: np.ndarray) -> np.ndarray:
    """float32 affinities / 255, divided as they are cast: one pass, without a float32 copy to
    divide afterwards (6x faster on a block, the same values)."""
    return np.divide(affinities, np.float32(255.0), dtype=np.float32)


def store_affinities(path: str, affinities: np.ndarray, roi, voxel_size, offsets: Sequence[Sequence[int]], chunk_voxels=None):
    """Write float affinities in [0, 1] as the uint8 dataset the post-processing reads."""
    from neurosam.io.volumes import create_array

    array = create_array(
        path, roi, voxel_size, np.uint8, channels=len(offsets), chunk_voxels=chunk_voxels,
        attrs={"offsets": [list(map(int, o)) for o in offsets]},
    )
    array[roi] = to_uint8(affinities)
    return array
