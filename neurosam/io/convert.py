"""Turn HDF5 datasets and TIFF stacks into the zarr arrays a run reads, with voxel size and offset.

Data moves through dask one output chunk (or, for TIFF, one slab of sections) at a time, so a
volume larger than memory converts on a laptop.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path

import dask
import dask.array as da
import h5py
import numpy as np
import tifffile
import zarr
from funlib.geometry import Coordinate, Roi

from neurosam.io.volumes import HDF5_SUFFIXES, VolumeError, create_array, describe, open_array, split_dataset_path

TIFF_SUFFIXES = (".tif", ".tiff")
SPATIAL_DIMS = 3


class ConvertError(VolumeError):
    """An input that cannot be converted: the message names the file or dataset at fault."""


class TiffStack:
    """Sections of a multi-page TIFF or of a directory of 2D TIFFs, decoded only when sliced."""

    def __init__(self, path: Path):
        self.path = path
        if path.is_dir():
            self.files = sorted((f for f in path.iterdir() if f.suffix.lower() in TIFF_SUFFIXES), key=_natural_key)
            if not self.files:
                raise ConvertError(f"{path}: directory holds no .tif / .tiff files")
            self._tiff = None
            with tifffile.TiffFile(self.files[0]) as first:
                page = first.pages[0]
            depth = len(self.files)
        else:
            self.files = None
            self._tiff = tifffile.TiffFile(path)
            page = self._tiff.pages[0]
            depth = len(self._tiff.pages)
        if len(page.shape) != 2:
            self.close()
            raise ConvertError(f"{path}: sections must be 2D greyscale images, found shape {page.shape}")
        self.shape = (depth, *page.shape)
        self.dtype = page.dtype
        self.ndim = 3
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._tiff is not None:
            self._tiff.close()

    def __enter__(self) -> TiffStack:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _section(self, z: int) -> np.ndarray:
        if self.files is None:
            with self._lock:
                section = self._tiff.pages[z].asarray()
            where = f"{self.path} page {z}"
        else:
            section = tifffile.imread(self.files[z])
            where = str(self.files[z])
        if section.shape != self.shape[1:] or section.dtype != self.dtype:
            raise ConvertError(
                f"{where}: section {section.dtype} {section.shape} differs from the first, "
                f"{self.dtype} {self.shape[1:]}"
            )
        return section

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        z_slice, y_slice, x_slice = key
        return np.stack([self._section(z)[y_slice, x_slice] for z in range(*z_slice.indices(self.shape[0]))])


def _natural_key(path: Path) -> list:
    """slice_2.tif before slice_10.tif."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _hdf5_dataset(file: h5py.File, input_path: Path, input_dataset: str | None) -> h5py.Dataset:
    names: list[str] = []
    file.visititems(lambda name, node: names.append(name) if isinstance(node, h5py.Dataset) else None)
    if input_dataset is None or input_dataset.strip("/") not in names:
        wanted = "no dataset was named" if input_dataset is None else f"no dataset {input_dataset!r}"
        raise ConvertError(f"{input_path}: {wanted}; it holds {', '.join(names) or 'no datasets'}")
    return file[input_dataset]


def _whole_nm(values, name: str, where: str) -> Coordinate:
    values = [float(v) for v in np.asarray(values).reshape(-1)]
    if len(values) != SPATIAL_DIMS or any(v != int(v) for v in values):
        raise ConvertError(f"{where}: {name} {values} must be {SPATIAL_DIMS} whole numbers of nm (z, y, x)")
    return Coordinate(int(v) for v in values)


def _world_metadata(
    attrs, voxel_size: Sequence[int] | None, offset: Sequence[int] | None, where: str
) -> tuple[Coordinate, Coordinate]:
    """Explicit arguments win over the file's ``resolution`` / ``offset``; offset defaults to 0."""
    if voxel_size is None:
        if "resolution" not in attrs:
            raise ConvertError(f"{where}: no 'resolution' attribute; give the voxel size (nm, z y x)")
        voxel_size = attrs["resolution"]
    if offset is None:
        offset = attrs.get("offset", (0,) * SPATIAL_DIMS)
    voxel_size = _whole_nm(voxel_size, "voxel size", where)
    if min(voxel_size) <= 0:
        raise ConvertError(f"{where}: voxel size {tuple(voxel_size)} nm must be positive along every axis")
    return voxel_size, _whole_nm(offset, "offset", where)


def _store(
    source,
    attrs,
    where: str,
    output_path: str | os.PathLike,
    voxel_size: Sequence[int] | None,
    offset: Sequence[int] | None,
    chunk_shape: Sequence[int] | None,
    whole_sections: bool,
    lock: bool,
    zarr_format: int,
) -> None:
    """Copy ``source`` chunk by chunk; ``whole_sections`` reads it in slabs of full sections, as
    TIFF pages can only be decoded whole."""
    if source.ndim not in (SPATIAL_DIMS, SPATIAL_DIMS + 1):
        raise ConvertError(
            f"{where}: expected a 3D (z, y, x) or 4D (c, z, y, x) volume, found {source.ndim}D {source.shape}"
        )
    voxel_size, offset = _world_metadata(attrs, voxel_size, offset, where)
    channels = source.shape[0] if source.ndim == SPATIAL_DIMS + 1 else None
    spatial_shape = Coordinate(source.shape[-SPATIAL_DIMS:])
    if offset % voxel_size != voxel_size * 0:
        raise ConvertError(f"{where}: offset {offset} nm is not a multiple of the voxel size {voxel_size} nm")
    dtype = source.dtype.newbyteorder("=")
    try:
        create_array(
            output_path,
            Roi(offset, spatial_shape * voxel_size),
            voxel_size,
            dtype,
            channels=channels,
            chunk_voxels=chunk_shape,
            zarr_format=zarr_format,
        )
    except PermissionError:
        existing = open_array(output_path)
        raise ConvertError(
            f"{output_path} already exists as {describe(existing)}, which does not fit {where} "
            f"({dtype} {tuple(source.shape)}); it was left as it is"
        ) from None
    container, dataset = split_dataset_path(output_path)
    store = zarr.open_array(str(Path(container) / dataset), mode="r+")
    source_chunks = (store.chunks[0], -1, -1) if whole_sections else store.chunks
    empty = np.empty((0,) * source.ndim, dtype=source.dtype)
    volume = da.from_array(source, chunks=source_chunks, lock=lock, meta=empty).rechunk(store.chunks)
    with dask.config.set(scheduler="threads"):
        da.store(volume.astype(dtype), store, lock=False)


def convert(
    input_path: str | os.PathLike,
    input_dataset: str | None,
    output_path: str | os.PathLike,
    voxel_size: Sequence[int] | None = None,
    offset: Sequence[int] | None = None,
    chunk_shape: Sequence[int] | None = None,
    zarr_format: int = 3,
) -> None:
    """Write an HDF5 dataset or a TIFF stack to ``output_path`` (``container.zarr/dataset``).

    For HDF5 the voxel size and offset (nm, z y x) come from the dataset's ``resolution`` and
    ``offset`` attributes unless given; a TIFF stack carries none, so its voxel size must be given.
    ``input_dataset`` names the HDF5 dataset and must be None for TIFF. ``chunk_shape`` is the
    output chunk in voxels (z, y, x).
    """
    input_path = Path(input_path)
    if not input_path.exists():
        raise ConvertError(f"{input_path}: no such file or directory")
    if input_path.is_dir() or input_path.suffix.lower() in TIFF_SUFFIXES:
        if input_dataset is not None:
            raise ConvertError(f"{input_path}: a TIFF stack has no datasets, but {input_dataset!r} was named")
        if voxel_size is None:
            raise ConvertError(f"{input_path}: a TIFF stack carries no voxel size; give it (nm, z y x)")
        with TiffStack(input_path) as stack:
            _store(
                stack, {}, str(input_path), output_path, voxel_size, offset, chunk_shape,
                whole_sections=True, lock=False, zarr_format=zarr_format,
            )
    elif input_path.suffix.lower() in HDF5_SUFFIXES:
        with h5py.File(input_path, "r") as file:
            source = _hdf5_dataset(file, input_path, input_dataset)
            where = f"{input_path}/{input_dataset.strip('/')}"
            # h5py is not thread-safe: dask reads one chunk at a time under a lock.
            _store(
                source, source.attrs, where, output_path, voxel_size, offset, chunk_shape,
                whole_sections=False, lock=True, zarr_format=zarr_format,
            )
    else:
        raise ConvertError(
            f"{input_path}: unknown input format; expected HDF5 ({', '.join(HDF5_SUFFIXES)}), "
            f"TIFF ({', '.join(TIFF_SUFFIXES)}) or a directory of TIFF sections"
        )
