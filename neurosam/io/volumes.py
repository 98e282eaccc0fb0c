"""Open and create the arrays a run reads and writes, always in world units (nm).

Every dataset is addressed by one string, ``container/dataset`` (``data.zarr/raw``), so a
config names an array the same way everywhere. Arrays come back as funlib.persistence
``Array`` objects: index them with ROIs in nm, never with voxel slices.

funlib.persistence is imported where an array is opened or created: it brings dask, xarray and
pandas, over half a second that block workers, which never call these functions, do not pay.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import zarr
from funlib.geometry import Coordinate, Roi

if TYPE_CHECKING:
    from funlib.persistence import Array

SPATIAL_AXES = ("z", "y", "x")
UNITS = ("nm", "nm", "nm")


class VolumeError(ValueError):
    """A dataset that is missing or does not fit the run: the message names it."""


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


def open_array(path: str | os.PathLike, mode: str = "r") -> Array:
    """Open a zarr (v2 or v3) or N5 dataset with its voxel size and offset."""
    container, dataset = split_dataset_path(path)
    if not container.exists():
        raise VolumeError(f"{path}: container {container} does not exist")
    if not dataset_exists(path):
        raise VolumeError(f"{path}: no dataset '{dataset}' in {container}")
    if container.suffix == ".n5":
        from neurosam.io.n5 import open_n5

        return open_n5(container, dataset)
    from funlib.persistence import open_ds

    return open_ds(str(Path(container) / dataset), mode=mode)


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
    axis_names = list(SPATIAL_AXES)
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
        array._source_data.attrs.update(attrs)
    return array


def require_same_voxel_size(first: Array, first_path, second: Array, second_path) -> None:
    """Arrays compared voxel by voxel must share a grid."""
    if first.voxel_size != second.voxel_size:
        raise VolumeError(
            f"{first_path} has voxel size {tuple(first.voxel_size)} nm but {second_path} has {tuple(second.voxel_size)} nm"
        )


def array_attrs(array: Array) -> dict:
    return dict(array._source_data.attrs)


def describe(array: Array) -> str:
    return f"{array.dtype} {tuple(array.shape)} voxel {tuple(array.voxel_size)} nm, ROI {array.roi}"
