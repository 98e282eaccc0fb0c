"""Export a run's segmentation, with its meshes and skeletons, to neuroglancer's precomputed
format (unsharded), which neuroglancer, CloudVolume, igneous and CAVE read.

The segmentation is written through CloudVolume block by block (memory follows the block); the
meshes and skeletons stages already wrote theirs in the precomputed format, so they are copied
beside it and named in its info.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate, Roi

from neurosam.config import RunConfig
from neurosam.io.volumes import VolumeError, dataset_exists, open_array, open_storage
from neurosam.layout import StoredArray, neurons_dir, segmentation_path


def export_precomputed(config: RunConfig, threshold: float, out: str | Path) -> list[str]:
    """Write the segmentation at ``threshold`` to ``out``; returns what was written beside it
    (``mesh``, ``skeletons``: those the run made for this threshold)."""
    from cloudvolume import CloudVolume

    path = segmentation_path(config, threshold)
    if not dataset_exists(path):
        raise VolumeError(f"{path} does not exist: run the pipeline up to relabel first")
    array = open_array(path)
    segmentation = StoredArray.of(path, array)
    voxel_size, roi = array.voxel_size, array.roi
    out = Path(out).resolve()
    neurons = neurons_dir(config, threshold)
    extras = [name for name in ("mesh", "skeletons") if (neurons / name / "info").exists()]
    info = CloudVolume.create_new_info(
        num_channels=1, layer_type="segmentation", data_type="uint64", encoding="compressed_segmentation",
        resolution=list(voxel_size[::-1]), voxel_offset=list((roi.offset / voxel_size)[::-1]),
        volume_size=list((roi.shape / voxel_size)[::-1]), chunk_size=list(open_storage(path).chunks[::-1]),
        mesh="mesh" if "mesh" in extras else None, skeletons="skeletons" if "skeletons" in extras else None,
    )
    # Chunks uncompressed on disk (compressed_segmentation is compact already), so that any static
    # web server serves them to neuroglancer as they are.
    volume = CloudVolume(f"file://{out}", info=info, progress=False, compress=False)
    volume.commit_info()
    block_size = Coordinate(config.blocks.block_size)
    for block in _blocks(roi, block_size):
        start = (block.offset / voxel_size)[::-1]
        stop = (block.end / voxel_size)[::-1]
        volume[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]] = np.ascontiguousarray(segmentation.read(block).T)
    for name in extras:
        shutil.rmtree(out / name, ignore_errors=True)
        shutil.copytree(neurons / name, out / name)
    return extras


def _blocks(roi: Roi, block_size: Coordinate):
    counts = [-(-size // step) for size, step in zip(roi.shape, block_size)]
    for index in np.ndindex(*counts):
        yield Roi(roi.offset + Coordinate(index) * block_size, block_size).intersect(roi)
