"""Contacts: the affinity statistics of every pair of touching fragments, over their whole
contact surface, written to the RAG for the global agglomeration of the segment stage
(``neurosam.graph.agglomeration`` says why that is faithful).

A fragment lies inside its block's write ROI, so every voxel pair of its contacts lies in the
write ROI grown by one voxel, which is all a block reads. Across a block face, the fragments
stage's claims say which voxel pairs its watershed saw inside one basin: the pair's
``claimed_area``, by which the segment stage rejoins the pieces of a basin that a face cut. An edge (u, v) is written only by the
block that owns ``u = min(u, v)``, so each edge has exactly one writer and a resumed run writes
the same rows as an uninterrupted one; a block writes its edges (none, too) as one row.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
from funlib.geometry import Roi

from neurosam.graph.agglomeration import claimed_pairs, contact_statistics
from neurosam.graph.labels import unique_inverse
from neurosam.layout import RunPlan, WorkerSetup, claims_role
from neurosam.stages.fragments import fragments_block_id, nearest_affinities, owner_block
from neurosam.stages.stage import Layout, Stage, blocks_with_context


def contacts_layout(plan: RunPlan) -> Layout:
    """Blocks read one voxel beyond their write ROI: all the contacts of their fragments."""
    return blocks_with_context(plan.block_size, plan.voxel_size, plan.volume_roi)


def contacts_block(setup: WorkerSetup, block) -> None:
    plan = setup.plan
    fragments = read_faces(plan, plan.arrays["fragments"], block, lower=True)
    ids, local = unique_inverse(fragments)
    if ids[0] != 0:
        local += 1
        ids = np.concatenate([[0], ids])
    affinities = nearest_affinities(plan, read_faces(plan, plan.arrays["affinities"], block, lower=False))
    volume = plan.volume_roi
    pairs, statistics = contact_statistics(
        affinities, local, claimed_by_neighbour(plan, block, fragments),
        tuple((block.read_roi.begin - volume.begin) / plan.voxel_size), tuple(volume.shape / plan.voxel_size),
    )
    block_id = fragments_block_id(plan, block.write_roi)
    owned = owner_block(plan, ids[pairs[:, 0]]) == block_id
    owned_statistics = {name: values[owned] for name, values in statistics.items()}
    setup.rag.write_edges(block_id, ids[pairs[owned, 0]], ids[pairs[owned, 1]], owned_statistics)


def read_faces(plan: RunPlan, array, block, lower: bool) -> np.ndarray:
    """``array`` over the block's read ROI as far as a contact of the block's own fragments
    touches it: the write ROI, and the layer beyond each upper face (and each lower face, if
    ``lower``) across the write ROI; the read ROI's edges and corners stay 0. A contact pairs a
    voxel of the write ROI with its neighbour along one axis, and its affinity lies on the upper
    voxel of the pair. Read whole, the grown box would decode every chunk around the block: 27
    where block and chunk are one size, against 7 here."""
    read_roi, write_roi, voxel_size = block.read_roi, block.write_roi, plan.voxel_size
    inner = array.read(write_roi, fill_value=0)
    data = np.zeros((*array.channels, *(read_roi.shape / voxel_size)), dtype=inner.dtype)

    def place(roi: Roi, values: np.ndarray) -> None:
        data[(slice(None),) * len(array.channels) + ((roi - read_roi.offset) / voxel_size).to_slices()] = values

    place(write_roi, inner)
    for axis in range(3):
        for layer in (write_roi.end[axis], write_roi.begin[axis] - voxel_size[axis])[: 2 if lower else 1]:
            offset, shape = list(write_roi.offset), list(write_roi.shape)
            offset[axis], shape[axis] = layer, voxel_size[axis]
            face = Roi(offset, shape)
            place(face, array.read(face, fill_value=0))
    return data


def claimed_by_neighbour(plan, block, fragments: np.ndarray) -> list[np.ndarray]:
    """Per axis d, at each voxel q: whether the block below q along d extended the basin of
    the fragment at q - d into q, i.e. the pair (q - d, q) lies inside one watershed basin
    (where that claim counts: ``claimed_pairs``). Claims lie only on the first layer of a block,
    so of each array just the two layers of this block's faces are read; a fragment above a
    face lies in one block, so the layer holds its whole face."""
    roi, voxel_size = block.read_roi, plan.voxel_size
    claimed = []
    for axis in range(3):
        inside = np.zeros(fragments.shape, dtype=bool)
        for face in (block.write_roi.begin[axis], block.write_roi.end[axis]):
            index = (face - roi.begin[axis]) // voxel_size[axis]
            if not 0 < index < fragments.shape[axis]:
                continue
            offset, shape = list(roi.offset), list(roi.shape)
            offset[axis], shape[axis] = face, voxel_size[axis]
            claims = plan.arrays[claims_role(axis)].read(Roi(offset, shape), fill_value=0)
            layer = (slice(None),) * axis + (slice(index, index + 1),)
            below = (slice(None),) * axis + (slice(index - 1, index),)
            inside[layer] = claimed_pairs(claims, fragments[layer], fragments[below])
        claimed.append(inside)
    return claimed


@contextmanager
def contacts_blocks(setup: WorkerSetup):
    yield lambda block: contacts_block(setup, block)


STAGE = Stage(
    "contacts", "neurosam.stages.contacts:contacts_blocks", contacts_layout, reads=("affinities",),
    version=2,  # 2: the edges carry contact_last, which segment's merge order needs
)
