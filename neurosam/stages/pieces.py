"""What meshes and skeletons share: the segmentation sampled on a coarser grid, blocks read with
one sample around them, each block's pieces of every segment stored by group of segments, and a
join that reads one group at a time.

The grid samples every k-th voxel from the volume's origin (``sample_step``); k divides the block,
so every block's samples lie on the one grid, and neighbouring blocks share the samples of their
common face, where meshes and skeletons meet exactly.

A block's pieces go to one file per group (``segment id % groups``, one group per
``BLOCKS_PER_GROUP`` blocks of the grid), so the join holds one group's pieces at a time, whatever
the volume: its memory follows the largest group's meshes or skeletons, not the whole volume's.
A group spans several blocks' worth because every block writes a file into each group its
segments fall in, and the join opens them all: files, not voxels, set that cost.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from funlib.geometry import Coordinate, Roi

from neurosam.layout import RunPlan, StoredArray
from neurosam.stages.stage import Layout, blocks_with_context, whole_volume

BLOCKS_PER_GROUP = 8

Piece = dict[str, np.ndarray]
"""One segment's piece from one block: named arrays (``vertices``, ``faces`` or ``edges``, ...)."""


def sample_step(plan: RunPlan, resolution: tuple[int, int, int]) -> Coordinate:
    """nm between samples: per axis the voxel size times the largest k at most ``resolution`` /
    voxel size that divides the block."""
    block_voxels = plan.block_size / plan.voxel_size
    factors = [
        max(k for k in range(1, max(1, wanted // voxel) + 1) if blocks % k == 0)
        for wanted, voxel, blocks in zip(resolution, plan.voxel_size, block_voxels)
    ]
    return Coordinate(factors) * plan.voxel_size


def sample_around(section: str):
    """The layout of blocks read with one sample of context, the step set by ``section``'s resolution."""

    def layout(plan: RunPlan) -> Layout:
        step = sample_step(plan, getattr(plan.config, section).resolution)
        return blocks_with_context(plan.block_size, step, plan.volume_roi)

    return layout


join_layout = whole_volume


def group_count(plan: RunPlan) -> int:
    blocks = int(np.prod([-(-size // block) for size, block in zip(plan.volume_roi.shape, plan.block_size)]))
    return -(-blocks // BLOCKS_PER_GROUP)


def sampled(segmentation: StoredArray, write_roi: Roi, volume_roi: Roi, step: Coordinate) -> tuple[np.ndarray, Coordinate]:
    """The block's samples and the first voxel layer of samples of its upper neighbours, and on the
    volume's lower faces a layer of background outside them (so surfaces close there); with the
    position (nm) of the first sample. Outside the volume reads as background."""
    lower = Coordinate(s if begin == start else 0 for s, begin, start in zip(step, write_roi.begin, volume_roi.begin))
    shape = Coordinate(-(-size // s) * s for size, s in zip(write_roi.shape, step))
    roi = Roi(write_roi.offset - lower, shape + step + lower)
    voxels = step / segmentation.voxel_size
    return np.ascontiguousarray(segmentation.read(roi)[:: voxels[0], :: voxels[1], :: voxels[2]]), roi.offset


def save_pieces(directory: Path, block_id: int, pieces: dict[int, Piece], groups: int) -> None:
    """Each group's pieces of the block to ``directory/<group>/<block id>.npz``, written whole
    or not at all (rewriting a block replaces its files)."""
    by_group: dict[int, dict[int, Piece]] = {}
    for segment, piece in pieces.items():
        by_group.setdefault(segment % groups, {})[segment] = piece
    for group, members in by_group.items():
        path = directory / str(group) / f"{block_id}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        ids = np.fromiter(members, dtype=np.uint64, count=len(members))
        arrays = {"ids": ids}
        for name in next(iter(members.values())):
            parts = [members[int(i)][name] for i in ids]
            arrays[name] = np.concatenate(parts)
            arrays[f"{name}_counts"] = np.array([len(part) for part in parts], dtype=np.int64)
        partial = path.with_name(f"{block_id}.partial.npz")
        np.savez(partial, **arrays)
        os.replace(partial, path)


def group_pieces(group_dir: Path) -> dict[int, list[Piece]]:
    """Every segment's pieces in one group, by segment id."""
    segments: dict[int, list[Piece]] = {}
    for path in sorted(group_dir.glob("*.npz")):
        if path.name.endswith(".partial.npz"):
            continue
        with np.load(path) as stored:
            names = [name for name in stored.files if name != "ids" and not name.endswith("_counts")]
            split = {name: np.split(stored[name], np.cumsum(stored[f"{name}_counts"])[:-1]) for name in names}
            for index, segment in enumerate(stored["ids"].tolist()):
                segments.setdefault(segment, []).append({name: split[name][index] for name in names})
    return segments


def join_all(directory: Path, out_dir: Path, join: Callable[[int, list[Piece]], Iterator[tuple[str, bytes]]], info: dict) -> None:
    """Join every segment's pieces, group by group, into files of ``out_dir`` (``join`` yields
    name and bytes), written beside it and swapped in whole, so a rerun leaves no stale segment."""
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (partial / "info").write_text(json.dumps(info))
    for group_dir in sorted(directory.iterdir()) if directory.exists() else []:
        for segment, pieces in group_pieces(group_dir).items():
            for name, data in join(segment, pieces):
                (partial / name).write_bytes(data)
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.replace(out_dir)
