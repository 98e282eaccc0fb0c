"""Where segment's super-blocks lie and the tables of final segments they leave: what relabel
and evaluate read, here apart from the merge loop so that their workers do not import its
compiled code (numba and scipy: half a second and tens of MiB a process)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate, Roi

from neurosam.layout import RunPlan, segment_table_path


def super_block_shape(plan: RunPlan, level: int) -> Coordinate:
    return plan.block_size * plan.config.segment.super_block_factor ** (level + 1)


def position(plan: RunPlan, roi: Roi, level: int) -> tuple[int, ...]:
    """The grid position of the level's super-block that holds ``roi``."""
    return tuple(int(p) for p in (roi.offset - plan.volume_roi.offset) / super_block_shape(plan, level))


def save_table(path: Path, ids: np.ndarray, table: np.ndarray) -> None:
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, ids=ids, segments=table)
    partial.replace(path)


def load_table(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, thresholds x ids): the final segment of each input of a super-block."""
    with np.load(path) as data:
        return data["ids"], data["segments"]


def level_zero_positions(plan: RunPlan) -> list[tuple[int, ...]]:
    shape = super_block_shape(plan, 0)
    return list(itertools.product(*(range(-(-s // b)) for s, b in zip(plan.volume_roi.shape, shape))))


def table_files(plan: RunPlan) -> list[Path]:
    """What relabel reads."""
    return [segment_table_path(plan.config, 0, where) for where in level_zero_positions(plan)]
