"""Array access for block functions, which run thousands of times in one worker process.

Arrays are opened once per process, since opening one reads its metadata from disk. Reads go
straight to the stored array rather than through funlib's dask graph, whose scheduling of one
task per chunk costs more than decoding the chunk.
"""

from __future__ import annotations

import functools

import numpy as np
from funlib.geometry import Roi
from funlib.persistence import Array

from neurosam.volumes import open_array


@functools.cache
def cached_array(path: str, mode: str = "r") -> Array:
    return open_array(path, mode=mode)


def read_roi(path: str, roi: Roi, fill_value=0) -> np.ndarray:
    """The voxels of ``roi`` (channels first), ``fill_value`` where ``roi`` leaves the array."""
    array = cached_array(path)
    channels = array.shape[: array.channel_dims]
    data = np.full((*channels, *(roi.shape / array.voxel_size)), fill_value, dtype=array.dtype)
    shared = array.roi.intersect(roi)
    if not shared.empty:
        all_channels = (slice(None),) * len(channels)
        source = ((shared - array.offset) / array.voxel_size).to_slices()
        target = ((shared - roi.offset) / array.voxel_size).to_slices()
        data[all_channels + target] = array._source_data[all_channels + source]
    return data
