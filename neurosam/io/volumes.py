"""Open and create the arrays a run reads and writes, always in world units (nm).

Every dataset is addressed by one string, ``container/dataset`` (``data.zarr/raw``), so a
config names an array the same way everywhere. Arrays come back as funlib.persistence
``Array`` objects: index them with ROIs in nm, never with voxel slices.

funlib.persistence is imported where an ``Array`` is opened or created: it brings dask, xarray
and pandas, over half a second that block workers, which read through ``open_storage``, do not
pay.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import zarr
from funlib.geometry import Coordinate, Roi

from neurosam.io import VolumeError
from neurosam.io.n5 import N5Dataset, world_metadata

if TYPE_CHECKING:
    from funlib.persistence import Array

AXES = ("z", "y", "x")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
UNITS = ("nm", "nm", "nm")


def split_dataset_path(path: str | os.PathLike) -> tuple[Path, str]:
    """``a/b.zarr/raw`` -> (``a/b.zarr``, ``raw``): the container is the part ending in .zarr or .n5."""
    parts = Path(path).parts
    for i, part in enumerate(parts):
        if part.endswith((".zarr", ".n5")):
            return Path(*parts[: i + 1]), "/".join(parts[i + 1 :])
    raise VolumeError(f"{path}: expected 'container.zarr/dataset' or 'container.n5/dataset'")


def dataset_exists(path: str | os.PathLike) -> bool:
    container, dataset = split_dataset_path(path)
    if container.suffix == ".n5":
        return (container / dataset / "attributes.json").exists()
    try:
        zarr.open_array(str(Path(container) / dataset), mode="r")
    except (FileNotFoundError, zarr.errors.ArrayNotFoundError, zarr.errors.NodeTypeValidationError, KeyError):
        return False
    return True


def open_storage(path: str | os.PathLike, mode: str = "r") -> zarr.Array | N5Dataset:
    """The dataset's own array, indexed in voxels: zarr's, or an ``N5Dataset``. Block workers
    read through this alone, without funlib.persistence and the dask, xarray and pandas it
    imports (over half a second of every worker's start).

    Opened for writing, it stores every chunk a write touches, all-zero ones too: a done block's
    chunks then exist, which is what ``neurosam.pipeline.stamps`` checks."""
    container, dataset = split_dataset_path(path)
    if not container.exists():
        raise VolumeError(f"{path}: container {container} does not exist")
    if not dataset_exists(path):
        raise VolumeError(f"{path}: no dataset '{dataset}' in {container}")
    if container.suffix == ".n5":
        return N5Dataset(container / dataset)
    array = zarr.open_array(str(container / dataset), mode=mode)
    return array if mode == "r" else array.with_config({"write_empty_chunks": True})


def open_array(path: str | os.PathLike, mode: str = "r") -> Array:
    """Open a zarr (v2 or v3) or N5 dataset with its voxel size and offset."""
    storage = open_storage(path, mode)
    if isinstance(storage, N5Dataset):
        return _n5_array(storage)
    from funlib.persistence import open_ds

    return open_ds(str(Path(path)), mode=mode)


def _n5_array(source: N5Dataset) -> Array:
    """Read-only; leading axes beyond z, y, x are channels."""
    from funlib.persistence import Array

    spatial_dims = min(source.ndim, len(AXES))
    channel_dims = source.ndim - spatial_dims
    voxel_size, offset = world_metadata(source.attrs, spatial_dims, source.path)
    array = Array(
        source,
        offset=offset,
        voxel_size=voxel_size,
        axis_names=source.attrs.get("axis_names", [f"c{i}^" for i in range(channel_dims)] + list(AXES[-spatial_dims:])),
        units=source.attrs.get("units", ["nm"] * spatial_dims),
        types=["channel"] * channel_dims + ["space"] * spatial_dims,
        chunks=source.chunks,
    )
    array.attrs.update(source.attrs)
    return array


def _split_hdf5_path(path: str) -> tuple[Path, str] | None:
    parts = Path(path).parts
    for i, part in enumerate(parts):
        if part.endswith(HDF5_SUFFIXES):
            return Path(*parts[: i + 1]), "/".join(parts[i + 1 :])
    return None


@contextmanager
def open_dataset(path: str) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
    """A dataset that numpy-style slicing reads, with its voxel size and offset (nm, z y x): a
    zarr or N5 dataset, or one in an HDF5 file (``file.h5/dataset``), as training data often is."""
    hdf5 = _split_hdf5_path(path)
    if hdf5 is None:
        array = open_array(path)
        yield array.data, np.array(array.voxel_size), np.array(array.offset)
        return
    file_path, dataset_name = hdf5
    if not file_path.exists():
        raise VolumeError(f"{path}: file {file_path} does not exist")
    import h5py

    with h5py.File(file_path, "r") as file:
        if dataset_name not in file:
            raise VolumeError(f"{path}: no dataset '{dataset_name}' in {file_path} (has {sorted(file)})")
        dataset = file[dataset_name]
        voxel_size = np.array(dataset.attrs.get("resolution", (1, 1, 1)), dtype=np.int64)
        offset = np.array(dataset.attrs.get("offset", (0, 0, 0)), dtype=np.int64)
        yield dataset, voxel_size, offset


def create_array(
    path: str | os.PathLike,
    roi: Roi,
    voxel_size: Sequence[int],
    dtype: Any,
    channels: int | None = None,
    chunk_voxels: Sequence[int] | None = None,
    attrs: dict | None = None,
    zarr_format: int = 3,
) -> Array:
    """Create (or reopen, if compatible) a zarr dataset covering ``roi``: v3 by default, v2 for
    tools that read only v2.

    Reopening an existing compatible dataset never erases what it holds, so a resumed run
    keeps every finished block.
    """
    voxel_size = Coordinate(voxel_size)
    if roi.shape % voxel_size != Coordinate((0,) * len(voxel_size)):
        raise VolumeError(f"{path}: ROI {roi} is not a multiple of the voxel size {voxel_size}")
    shape = tuple(roi.shape / voxel_size)
    chunks = tuple(chunk_voxels) if chunk_voxels is not None else tuple(min(s, 64) for s in shape)
    axis_names = list(AXES)
    types = ["space"] * 3
    if channels is not None:
        shape = (channels, *shape)
        chunks = (channels, *chunks)
        axis_names = ["c^", *axis_names]
        types = ["channel", *types]
    container, dataset = split_dataset_path(path)
    if container.suffix == ".n5":
        raise VolumeError(f"{path}: N5 is read-only here; write outputs to a .zarr container")
    from funlib.persistence import prepare_ds

    array = prepare_ds(
        str(Path(container) / dataset),
        shape=shape,
        offset=roi.offset,
        voxel_size=voxel_size,
        axis_names=axis_names,
        units=list(UNITS),
        types=types,
        chunk_shape=chunks,
        dtype=np.dtype(dtype),
        mode="a",
        zarr_format=zarr_format,
    )
    if attrs:
        array.attrs.update(attrs)
    return array


def require_same_voxel_size(first: Array, first_path, second: Array, second_path) -> None:
    """Arrays compared voxel by voxel must share a grid."""
    if first.voxel_size != second.voxel_size:
        raise VolumeError(
            f"{first_path} has voxel size {tuple(first.voxel_size)} nm but {second_path} has {tuple(second.voxel_size)} nm"
        )


def array_attrs(array: Array) -> dict:
    return dict(array.attrs)


def describe(array: Array) -> str:
    return f"{array.dtype} {tuple(array.shape)} voxel {tuple(array.voxel_size)} nm, ROI {array.roi}"
