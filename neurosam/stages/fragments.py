"""Fragments: a watershed of each block's affinities, cut to the block and given volume-wide ids.

The watershed sees the block plus its context, so a fragment's shape near the block border does
not depend on where the border is; only the part inside the write ROI is kept, which makes every
fragment belong to exactly one block.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import waterz
from funlib.geometry import Roi

from neurosam.affinities import to_float
from neurosam.layout import RunPlan, WorkerSetup, claims_role
from neurosam.graph.labels import runs


def read_nearest_affinities(plan: RunPlan, roi: Roi) -> np.ndarray:
    """Float (3, Z, Y, X) affinities of ``roi``; outside the volume they read as 0 (a boundary)."""
    data = plan.arrays["affinities"].read(roi, fill_value=0)
    return np.ascontiguousarray(to_float(data[list(plan.nearest_affinity_channels)]))


def watershed(affinities: np.ndarray, epsilon_agglomerate: float) -> np.ndarray:
    return next(waterz.agglomerate(affinities, [epsilon_agglomerate])).astype(np.uint64)


def local_ids(labels: np.ndarray, min_size: int, label_count: int | None = None) -> np.ndarray:
    """Label -> consecutive id 1..n for the labels present, in label order; labels smaller than
    ``min_size``, and those absent, map to 0. Watershed labels are below the voxel count, so
    counting them is cheaper than sorting."""
    counts = np.bincount(labels.ravel().astype(np.intp), minlength=label_count or 0)
    keep = counts >= max(min_size, 1)
    keep[0] = False
    new_ids = np.zeros(len(counts), dtype=np.uint64)
    new_ids[keep] = np.arange(1, keep.sum() + 1, dtype=np.uint64)
    return new_ids


def relabel_local(labels: np.ndarray, min_size: int) -> np.ndarray:
    return local_ids(labels, min_size)[labels]


def fragment_nodes(local: np.ndarray, first_id: int, roi: Roi, voxel_size) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, centres in nm, sizes) of the fragments of an array covering ``roi``, given with
    local ids 1..n (``first_id + local`` is the fragment id).

    Coordinates are summed a run of equal voxels along x at a time: a run's voxels share z and
    y, and its x coordinates are consecutive, which sums in closed form."""
    starts, lengths = runs(local)
    labels = local.ravel()[starts].astype(np.intp)
    z, y, x = np.unravel_index(starts, local.shape)
    sizes = np.bincount(labels, weights=lengths)[1:]
    sums = (z * lengths, y * lengths, x * lengths + lengths * (lengths - 1) / 2)
    centres = np.stack([np.bincount(labels, weights=weights)[1:] for weights in sums], axis=1) / sizes[:, None]
    positions = np.asarray(roi.offset) + (centres + 0.5) * np.asarray(voxel_size)
    ids = np.arange(1, len(sizes) + 1, dtype=np.uint64) + np.uint64(first_id)
    return ids, positions, sizes.astype(np.int64)


def extract_fragments(setup: WorkerSetup, block) -> None:
    plan, rag = setup.plan, setup.rag
    settings = plan.config.fragments
    write_roi = block.write_roi
    affinities = read_nearest_affinities(plan, block.read_roi)
    labels = watershed(affinities, settings.epsilon_agglomerate)
    inner = (write_roi - block.read_roi.offset) / plan.voxel_size
    new_ids = local_ids(labels[inner.to_slices()], settings.min_size, int(labels.max()) + 1)
    local = new_ids[labels[inner.to_slices()]]
    first_id = plan.first_fragment_id(block.block_id[1])
    global_ids = np.where(new_ids > 0, new_ids + np.uint64(first_id), np.uint64(0))

    plan.arrays["fragments"].write(write_roi, global_ids[labels[inner.to_slices()]])
    write_claims(plan, block, labels, inner, global_ids)
    ids, positions, sizes = fragment_nodes(local, first_id, write_roi, plan.voxel_size)
    rag.delete_in_roi(write_roi)
    rag.write_nodes(ids, positions, sizes)


def write_claims(plan: RunPlan, block, labels: np.ndarray, inner: Roi, global_ids: np.ndarray) -> None:
    """The slab of voxels just beyond the block's upper face along each axis, labelled with the
    fragment whose watershed basin covers them here: the agglomerate stage knows by it which
    fragments are one basin cut by the face (``neurosam.graph.agglomeration``)."""
    for axis in range(3):
        offset, shape = list(inner.offset), list(inner.shape)
        offset[axis], shape[axis] = inner.end[axis], 1
        beyond = Roi(offset, shape)
        slab = beyond * plan.voxel_size + block.read_roi.offset
        if inner.end[axis] >= labels.shape[axis] or not plan.volume_roi.contains(slab):
            continue
        plan.arrays[claims_role(axis)].write(slab, global_ids[labels[beyond.to_slices()]])


@contextmanager
def fragments_blocks(setup: WorkerSetup):
    yield lambda block: extract_fragments(setup, block)
