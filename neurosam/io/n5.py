"""Read-only N5, because zarr-python 3 no longer reads it and many EM volumes are still N5.

N5 lists everything x-fastest (dimensions, block sizes, block paths, voxel sizes); this module
turns it all around once, so callers only ever see z, y, x like every other array of a run.
"""

from __future__ import annotations

import bz2
import json
import lzma
import os
import zlib
from itertools import product
from pathlib import Path

import numpy as np

from neurosam.io import VolumeError

N5_DTYPES = {
    "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float32", "float64",
}
DEFAULT_MODE = 0
VARLENGTH_MODE = 1


def _decompressor(compression: dict, where: Path):
    kind = compression.get("type", "raw")
    if kind == "raw":
        return lambda payload: payload
    if kind == "gzip":
        # wbits 47 accepts both the gzip framing and the plain zlib one ("useZlib": true).
        return lambda payload: zlib.decompress(payload, 47)
    if kind == "bzip2":
        return bz2.decompress
    if kind == "xz":
        return lzma.decompress
    if kind == "blosc":
        from numcodecs import blosc

        return blosc.decompress
    raise VolumeError(f"{where}: N5 compression {kind!r} is not supported (raw, gzip, bzip2, xz, blosc are)")


class N5Dataset:
    """An N5 dataset seen as a numpy-like z, y, x array that loads only the blocks a slice touches."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        attributes_file = self.path / "attributes.json"
        self.attrs = json.loads(attributes_file.read_text())
        try:
            dimensions = self.attrs["dimensions"]
            block_size = self.attrs["blockSize"]
            data_type = self.attrs["dataType"]
        except KeyError as missing:
            raise VolumeError(f"{attributes_file}: no {missing} attribute, so not an N5 dataset") from None
        if data_type not in N5_DTYPES:
            raise VolumeError(f"{attributes_file}: N5 dataType {data_type!r} is not supported")
        compression = self.attrs.get("compression", {"type": self.attrs.get("compressionType", "raw")})
        self.shape = tuple(int(d) for d in reversed(dimensions))
        self.chunks = tuple(int(b) for b in reversed(block_size))
        self.dtype = np.dtype(data_type)
        self.ndim = len(self.shape)
        self._decompress = _decompressor(compression, attributes_file)

    def _read_block(self, block_index: tuple[int, ...]) -> np.ndarray | None:
        """The block at this (z, y, x) block index, as stored (edge blocks may be smaller); None if absent."""
        block_file = self.path.joinpath(*(str(i) for i in reversed(block_index)))
        if not block_file.exists():
            return None
        content = block_file.read_bytes()
        mode, ndim = np.frombuffer(content, dtype=">u2", count=2)
        if mode not in (DEFAULT_MODE, VARLENGTH_MODE) or ndim != self.ndim:
            raise VolumeError(f"{block_file}: unsupported N5 block (mode {mode}, {ndim} dimensions)")
        header_end = 4 + 4 * ndim
        block_shape = tuple(int(d) for d in reversed(np.frombuffer(content, dtype=">u4", count=ndim, offset=4)))
        if mode == VARLENGTH_MODE:
            header_end += 4
        data = np.frombuffer(self._decompress(content[header_end:]), dtype=self.dtype.newbyteorder(">"))
        return data[: int(np.prod(block_shape))].reshape(block_shape).astype(self.dtype)

    def __getitem__(self, key) -> np.ndarray:
        slices = _normalise(key, self.shape)
        out = np.zeros([s.stop - s.start for s in slices], dtype=self.dtype)
        block_ranges = [
            range(s.start // b, -(-s.stop // b)) for s, b in zip(slices, self.chunks)
        ]
        for block_index in product(*block_ranges):
            block = self._read_block(block_index)
            if block is None:
                continue
            block_start = [i * b for i, b in zip(block_index, self.chunks)]
            lows = [max(s.start, start) for s, start in zip(slices, block_start)]
            highs = [min(s.stop, start + n) for s, start, n in zip(slices, block_start, block.shape)]
            if any(low >= high for low, high in zip(lows, highs)):
                continue
            source = tuple(slice(lo - start, hi - start) for lo, hi, start in zip(lows, highs, block_start))
            target = tuple(slice(lo - s.start, hi - s.start) for lo, hi, s in zip(lows, highs, slices))
            out[target] = block[source]
        return out


def _normalise(key, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Unit-step slices covering every axis; dask hands over nothing else."""
    if not isinstance(key, tuple):
        key = (key,)
    key = key + (slice(None),) * (len(shape) - len(key))
    slices = []
    for item, size in zip(key, shape):
        if not isinstance(item, slice):
            raise TypeError(f"N5 datasets are read with slices, got {item!r}")
        start, stop, step = item.indices(size)
        if step != 1:
            raise TypeError(f"N5 datasets are read with unit steps, got {item!r}")
        slices.append(slice(start, max(start, stop)))
    return tuple(slices)


def world_metadata(attrs: dict, spatial_dims: int, where: Path) -> tuple[list[int], list[int]]:
    """Voxel size and offset in nm, z, y, x.

    ``resolution`` (and the ``offset`` beside it) follow the N5 x-fastest convention of
    BigDataViewer and older funlib; ``voxel_size`` is what current funlib writes, already z, y, x.
    """
    if "voxel_size" in attrs:
        voxel_size = list(attrs["voxel_size"])
        offset = list(attrs.get("offset", [0] * spatial_dims))
    elif "resolution" in attrs:
        voxel_size = list(reversed(attrs["resolution"]))
        offset = list(reversed(attrs.get("offset", [0] * spatial_dims)))
    else:
        voxel_size = [1] * spatial_dims
        offset = list(reversed(attrs.get("offset", [0] * spatial_dims)))
    for name, values in (("voxel size", voxel_size), ("offset", offset)):
        if len(values) != spatial_dims or any(float(v) != int(v) for v in values):
            raise VolumeError(f"{where}: {name} {values} is not {spatial_dims} whole numbers of nm")
    return [int(v) for v in voxel_size], [int(v) for v in offset]
