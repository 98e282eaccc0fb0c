"""Check a run's inputs before any work starts, and work out the volume and block grid it covers.

Everything here reads metadata only. A problem gets one error that names the dataset, key or
database at fault, raised before a single block runs, so nothing already written is touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from funlib.geometry import Coordinate, Roi

from neurosam.config import RunConfig
from neurosam.rag import open_rag
from neurosam.volumes import array_attrs, create_array, dataset_exists, describe, open_array
from neurosam.workers.arrays import StoredArray
from neurosam.workers.blockgrid import BlockGrid
from neurosam.workers.fragments import nearest_neighbour_channels
from neurosam.workers.relabel import segmentation_path


MAX_CHUNK_VOXELS = 64


class InputError(ValueError):
    """Input that cannot run: the message says which and why."""


@dataclass(frozen=True)
class RunPlan:
    """The run's geometry, worked out from the config and the datasets' metadata. Local workers
    get it from the scheduler ready-made; SLURM jobs plan again from the same config."""

    volume_roi: Roi
    voxel_size: Coordinate
    block_size: Coordinate
    context: Coordinate
    affinities: StoredArray
    nearest_affinity_channels: tuple[int, ...]

    @property
    def grid(self) -> BlockGrid:
        return BlockGrid(self.volume_roi, self.block_size, self.voxel_size)

    def output(self, path: str) -> StoredArray:
        """Outputs cover the run's ROI: ``prepare_outputs`` creates them so, ``plan_run`` checks."""
        return StoredArray(path, self.volume_roi, self.voxel_size)

    @property
    def chunk_voxels(self) -> tuple[int, ...]:
        return output_chunk_voxels(self.block_size, self.voxel_size)


def output_chunk_voxels(block_size: Coordinate, voxel_size: Coordinate) -> tuple[int, ...]:
    """Output chunks tile every block, so no two workers ever write the same chunk; each is the
    largest divisor of the block at most ``MAX_CHUNK_VOXELS`` along its axis, so a read with
    context decodes little beyond the voxels it asked for."""
    return tuple(max(d for d in range(1, min(b, MAX_CHUNK_VOXELS) + 1) if b % d == 0) for b in block_size / voxel_size)


def _require_multiple(name: str, value: Coordinate, voxel_size: Coordinate) -> None:
    if value % voxel_size != Coordinate((0,) * len(voxel_size)):
        raise InputError(f"{name} {tuple(value)} nm is not a multiple of the voxel size {tuple(voxel_size)} nm")


LABEL_DTYPES = tuple(np.dtype(t) for t in ("uint8", "uint16", "uint32", "uint64", "int32", "int64"))


def _check_input(path: str, role: str, dtypes: tuple, voxel_size: Coordinate, volume_roi: Roi) -> None:
    array = open_array(path)
    if array.dtype not in dtypes:
        raise InputError(f"{role} {path}: dtype {array.dtype}, expected one of {[str(d) for d in dtypes]}")
    if array.voxel_size != voxel_size:
        raise InputError(
            f"{role} {path}: voxel size {tuple(array.voxel_size)} nm does not match the affinities' {tuple(voxel_size)} nm"
        )
    if not array.roi.contains(volume_roi):
        raise InputError(f"{role} {path}: its ROI {array.roi} does not cover the run's ROI {volume_roi}")


def _check_output(path: str, role: str, voxel_size: Coordinate, volume_roi: Roi, block_size: Coordinate) -> None:
    """An existing output is reused (that is how a run resumes) only if it is the same array,
    chunked so that blocks never share a chunk."""
    if not dataset_exists(path):
        return
    array = open_array(path)
    block_voxels = block_size / voxel_size
    chunks_tile_blocks = all(b % c == 0 for b, c in zip(block_voxels, array._source_data.chunks))
    if array.dtype != np.uint64 or array.voxel_size != voxel_size or array.roi != volume_roi or not chunks_tile_blocks:
        raise InputError(
            f"{role} {path} already exists as {describe(array)}, chunks {array._source_data.chunks}, which does not fit "
            f"this run (uint64, voxel {tuple(voxel_size)} nm, ROI {volume_roi}, chunks that divide the block of "
            f"{tuple(block_voxels)} voxels); it is left untouched: point the config at a new dataset or remove the old one"
        )


def plan_run(config: RunConfig, check_database: bool = True) -> RunPlan:
    affinities = open_array(config.datasets.affinities)
    if affinities.dtype != np.uint8:
        raise InputError(f"affinities {config.datasets.affinities}: dtype {affinities.dtype}, expected uint8 (0..255 = 0..1)")
    if len(affinities.shape) != 4:
        raise InputError(f"affinities {config.datasets.affinities}: expected (channels, z, y, x), got shape {affinities.shape}")
    offsets = array_attrs(affinities).get("offsets")
    if offsets is None:
        raise InputError(f"affinities {config.datasets.affinities}: no 'offsets' attribute naming the neighbourhood of each channel")
    try:
        nearest_channels = tuple(nearest_neighbour_channels(offsets))
    except ValueError as error:
        raise InputError(f"affinities {config.datasets.affinities}: {error}") from None

    voxel_size = affinities.voxel_size
    volume_roi = affinities.roi
    if config.roi is not None:
        volume_roi = Roi(config.roi.offset, config.roi.shape)
        _require_multiple("roi.offset", volume_roi.offset, voxel_size)
        _require_multiple("roi.shape", volume_roi.shape, voxel_size)
        if not affinities.roi.contains(volume_roi):
            raise InputError(f"roi {volume_roi} lies outside the affinities' ROI {affinities.roi}")
    block_size = Coordinate(config.blocks.block_size)
    context = Coordinate(config.blocks.context)
    _require_multiple("blocks.block_size", block_size, voxel_size)
    _require_multiple("blocks.context", context, voxel_size)

    if config.datasets.raw is not None:
        _check_input(config.datasets.raw, "raw", (np.dtype(np.uint8),), voxel_size, volume_roi)
    if config.datasets.ground_truth is not None:
        _check_input(config.datasets.ground_truth, "ground truth", LABEL_DTYPES, voxel_size, volume_roi)
    _check_output(config.datasets.fragments, "fragments", voxel_size, volume_roi, block_size)
    for threshold in config.segment.thresholds:
        _check_output(segmentation_path(config, threshold), "segmentation", voxel_size, volume_roi, block_size)

    if check_database:
        with open_rag(config.rag.url) as rag:
            rag.check_writable()
    stored_affinities = StoredArray.of(config.datasets.affinities, affinities)
    return RunPlan(volume_roi, voxel_size, block_size, context, stored_affinities, nearest_channels)


def prepare_outputs(config: RunConfig, plan: RunPlan) -> None:
    """Create the missing output arrays; existing ones (a resumed run) were checked by
    ``plan_run`` and are kept as they are."""
    config.work_dir.mkdir(parents=True, exist_ok=True)
    paths = [config.datasets.fragments] + [segmentation_path(config, t) for t in config.segment.thresholds]
    for path in paths:
        if not dataset_exists(path):
            create_array(path, plan.volume_roi, plan.voxel_size, np.uint64, chunk_voxels=plan.chunk_voxels)

