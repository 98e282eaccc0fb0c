"""Fragments: a watershed of each block's affinities, cut to the block and given volume-wide ids.

The watershed sees the block plus its context, so a fragment's shape near the block border does
not depend on where the border is; only the part inside the write ROI is kept, which makes every
fragment belong to exactly one block.

Fragment ids are ``block id * voxels per block + local id`` (local ids from 1): unique
volume-wide without coordination, never 0, and the owning block reads back from the id.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from contextlib import contextmanager

import daisy.v2 as daisy
import numpy as np
import waterz
from funlib.geometry import Coordinate, Roi

from neurosam.affinities import to_float
from neurosam.graph.agglomeration import OPEN_BASIN
from neurosam.graph.labels import runs
from neurosam.io.volumes import AXES
from neurosam.layout import RunPlan, WorkerSetup, claims_path, claims_role
from neurosam.stages.stage import InputError, Layout, OutputArray, Stage, blocks_with_context, require_multiple

MIN_CONTEXT_VOXELS = 2
#: What the fidelity benchmark needs for block-wise to equal one block at every threshold, from
#: 16^3 to 128^3 voxel blocks: a watershed basin is seen whole enough this far beyond a face.
DEFAULT_CONTEXT_VOXELS = 8


def default_context(plan: RunPlan) -> Coordinate:
    return Coordinate((DEFAULT_CONTEXT_VOXELS,) * len(plan.block_size)) * plan.voxel_size


def stitching_context(plan: RunPlan) -> Coordinate:
    """Where a volume has several blocks along an axis, the watershed must see beyond the faces
    between them, to tell a basin the face cut from two basins."""
    if plan.config.blocks.context is None:
        return default_context(plan)
    context = Coordinate(plan.config.blocks.context)
    require_multiple("blocks.context", context, plan.voxel_size)
    for axis, (c, v, b, s) in enumerate(zip(context, plan.voxel_size, plan.block_size, plan.volume_roi.shape)):
        if s > b and c < MIN_CONTEXT_VOXELS * v:
            raise InputError(
                f"blocks.context {tuple(context)} nm: along axis {AXES[axis]} the volume has several blocks, and "
                f"stitching them needs at least {MIN_CONTEXT_VOXELS} voxels ({MIN_CONTEXT_VOXELS * v} nm) of context; "
                f"leave blocks.context out for the default ({tuple(default_context(plan))} nm here)"
            )
    return context


def fragments_layout(plan: RunPlan) -> Layout:
    return blocks_with_context(plan.block_size, stitching_context(plan), plan.volume_roi)


def fragments_outputs(plan: RunPlan) -> list[OutputArray]:
    claims = [
        OutputArray(claims_role(axis), claims_path(plan.config, axis), np.uint64, plan.block_size, whole_blocks=False, layer_axis=axis)
        for axis in range(3)
    ]
    return [OutputArray("fragments", plan.config.datasets.fragments, np.uint64, plan.block_size), *claims]


def voxels_per_block(plan: RunPlan) -> int:
    return int(np.prod(plan.block_size / plan.voxel_size))


def first_fragment_id(plan: RunPlan, block_id: int) -> int:
    return block_id * voxels_per_block(plan)


def owner_block(plan: RunPlan, fragment_ids: np.ndarray) -> np.ndarray:
    return (fragment_ids.astype(np.uint64) - 1) // np.uint64(voxels_per_block(plan))


def fragments_block_id(plan: RunPlan, write_roi: Roi) -> int:
    """daisy's id of the fragments block that writes ``write_roi``: the id its fragments carry.
    daisy numbers a block by its place in its task's total ROI, which the fragments' context
    widens, so another stage's block over the same ROI has another id once the context reaches
    a block's size."""
    task = plan.task_of_stage("fragments")
    shift = write_roi.offset - task.write_roi.offset
    return daisy.Block(task.total_roi, task.read_roi.shift(shift), task.write_roi.shift(shift)).block_id[1]


def read_nearest_affinities(plan: RunPlan, roi: Roi) -> np.ndarray:
    """Float (3, Z, Y, X) affinities of ``roi``; outside the volume they read as 0 (a boundary)."""
    return nearest_affinities(plan, plan.arrays["affinities"].read(roi, fill_value=0))


def nearest_affinities(plan: RunPlan, data: np.ndarray) -> np.ndarray:
    """Float (3, Z, Y, X) nearest-neighbour affinities of the stored channels ``data``."""
    return np.ascontiguousarray(to_float(data[list(plan.nearest_affinity_channels)]))


def watershed(affinities: np.ndarray, epsilon_agglomerate: float) -> np.ndarray:
    return next(waterz.agglomerate(affinities, [epsilon_agglomerate])).astype(np.uint64)


def mutex_watershed(affinities: np.ndarray, offsets: list[list[int]], bias: tuple[float, float]) -> np.ndarray:
    """Labels 1..n of mwatershed's clustering of every offset's affinities (float, C x Z x Y x X),
    less the (nearest-neighbour, long-range) bias."""
    import mwatershed

    nearest = [sum(map(abs, offset)) == 1 for offset in offsets]
    biased = affinities.astype(np.float64) - np.where(nearest, bias[0], bias[1])[:, None, None, None]
    labels = mwatershed.agglom(biased, offsets)
    _, consecutive = np.unique(labels, return_inverse=True)
    return consecutive.reshape(labels.shape).astype(np.uint64) + np.uint64(1)


def block_labels(plan: RunPlan, settings, roi: Roi) -> np.ndarray:
    """The configured method's labels of ``roi`` (the block with its context)."""
    if settings.method == "mutex_watershed":
        affinities = to_float(plan.arrays["affinities"].read(roi, fill_value=0))
        return mutex_watershed(affinities, plan.affinity_offsets, settings.mutex_bias)
    return watershed(read_nearest_affinities(plan, roi), settings.epsilon_agglomerate)


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
    plan, rag, settings = setup.plan, setup.rag, setup.settings
    write_roi = block.write_roi
    labels = block_labels(plan, settings, block.read_roi)
    inner = (write_roi - block.read_roi.offset) / plan.voxel_size
    new_ids = local_ids(labels[inner.to_slices()], settings.min_size, int(labels.max()) + 1)
    local = new_ids[labels[inner.to_slices()]]
    first_id = first_fragment_id(plan, block.block_id[1])
    global_ids = np.where(new_ids > 0, new_ids + np.uint64(first_id), np.uint64(0))

    plan.arrays["fragments"].write(write_roi, global_ids[labels[inner.to_slices()]])
    open_basins = open_labels(plan, block.read_roi, labels) & (global_ids != 0)
    write_claims(plan, block, labels, inner, np.where(open_basins, global_ids | OPEN_BASIN, global_ids))
    ids, positions, sizes = fragment_nodes(local, first_id, write_roi, plan.voxel_size)
    rag.write_nodes(block.block_id[1], ids, positions, sizes)


def open_labels(plan: RunPlan, read_roi: Roi, labels: np.ndarray) -> np.ndarray:
    """Per label of the block's view (``read_roi``), whether it reaches a face of the view that
    lies inside the volume: beyond it the watershed saw nothing, so the basin may be larger."""
    reaches = np.zeros(int(labels.max()) + 1, dtype=bool)
    volume = plan.volume_roi
    for axis in range(3):
        for index, inside in ((0, read_roi.begin[axis] > volume.begin[axis]), (-1, read_roi.end[axis] < volume.end[axis])):
            if inside:
                reaches[labels[(slice(None),) * axis + (index,)]] = True
    return reaches


def write_claims(plan: RunPlan, block, labels: np.ndarray, inner: Roi, claim_ids: np.ndarray) -> None:
    """The slab of voxels just beyond the block's upper face along each axis, labelled with the
    fragment whose watershed basin covers them here (``claim_ids``: per label, the fragment, with
    ``OPEN_BASIN`` set where the view did not hold the basin whole): the contacts stage knows by
    it which fragments are one basin cut by the face (``neurosam.graph.agglomeration``)."""
    for axis in range(3):
        offset, shape = list(inner.offset), list(inner.shape)
        offset[axis], shape[axis] = inner.end[axis], 1
        beyond = Roi(offset, shape)
        slab = beyond * plan.voxel_size + block.read_roi.offset
        if inner.end[axis] >= labels.shape[axis] or not plan.volume_roi.contains(slab):
            continue
        plan.arrays[claims_role(axis)].write(slab, claim_ids[labels[beyond.to_slices()]])


@contextmanager
def fragments_blocks(setup: WorkerSetup):
    keep_block_arrays_out_of_the_heap()
    yield lambda block: extract_fragments(setup, block)


GLIBC_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20


def keep_block_arrays_out_of_the_heap() -> None:
    """glibc raises its mmap threshold to the size of each large buffer freed, after which
    block-sized arrays come from the heap, between waterz's own allocations, and the heap grows
    block after block (at 128^3 a fragments worker peaked at 263 MiB after 27 blocks; 195 MiB
    with a fixed threshold, which maps each array of 1 MiB or more apart and unmaps it on free).
    Only here: mapping afresh costs system time (about 0.1 s a 128^3 block), and the other
    stages' workers stay flat without it. Other C libraries are left as they are."""
    library = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(library), "mallopt", None) if library else None
    if mallopt is not None:
        mallopt(GLIBC_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


STAGE = Stage(
    "fragments", "neurosam.stages.fragments:fragments_blocks", fragments_layout,
    sections=("datasets", "roi", "blocks", "fragments"), outputs=fragments_outputs, reads=("affinities",),
    version=2,  # 2: a claim carries OPEN_BASIN where the block did not see the basin whole (contacts, segment redo after it)
)
