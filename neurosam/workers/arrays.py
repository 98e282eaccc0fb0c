"""Array access for block functions, which run thousands of times in one worker process.

The planner reads each dataset's metadata once, through funlib.persistence, and hands workers a
``StoredArray``: where the dataset's voxels lie in the world. Workers open the zarr or N5 storage
straight from that, so they start without funlib.persistence and the dask, xarray and pandas it
imports, and their reads skip funlib's dask graph, whose scheduling of one task per chunk costs
more than decoding the chunk.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from funlib.geometry import Coordinate, Roi

from neurosam.volumes import split_dataset_path


@functools.cache
def open_storage(path: str, mode: str = "r"):
    """The dataset's zarr array (or N5 reader), opened once per process: opening reads metadata
    from disk."""
    container, dataset = split_dataset_path(path)
    if container.suffix == ".n5":
        from neurosam.n5 import N5Dataset

        return N5Dataset(container / dataset)
    return zarr.open_array(str(Path(container) / dataset), mode=mode)


@dataclass(frozen=True)
class StoredArray:
    """A dataset's path and where its voxels lie in the world (nm)."""

    path: str
    roi: Roi
    voxel_size: Coordinate
    channels: tuple[int, ...] = ()

    @classmethod
    def of(cls, path: str, array) -> StoredArray:
        """From the funlib.persistence ``Array`` the planner opened at ``path``."""
        return cls(str(path), array.roi, array.voxel_size, tuple(array.shape[: array.channel_dims]))

    def read(self, roi: Roi, fill_value=0) -> np.ndarray:
        """The voxels of ``roi`` (channels first), ``fill_value`` where ``roi`` leaves the array."""
        storage = open_storage(self.path)
        data = np.full((*self.channels, *(roi.shape / self.voxel_size)), fill_value, dtype=storage.dtype)
        shared = self.roi.intersect(roi)
        if not shared.empty:
            data[self._slices(shared, roi.offset)] = storage[self._slices(shared, self.roi.offset)]
        return data

    def write(self, roi: Roi, data: np.ndarray) -> None:
        if not self.roi.contains(roi):
            raise ValueError(f"{self.path}: cannot write {roi}, outside the array's ROI {self.roi}")
        open_storage(self.path, mode="r+")[self._slices(roi, self.roi.offset)] = data

    def _slices(self, roi: Roi, origin: Coordinate) -> tuple[slice, ...]:
        """Index of ``roi`` in an array of this one's channels whose first voxel lies at ``origin``."""
        spatial = ((roi - origin) / self.voxel_size).to_slices()
        return (slice(None),) * len(self.channels) + spatial
