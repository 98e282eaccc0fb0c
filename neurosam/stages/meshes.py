"""Meshes: zmesh's marching cubes on each block of one segmentation, sampled at the section's
resolution (see ``pieces``), simplified, joined into one mesh per segment.

Marching cubes works on the cells between samples. Each block meshes its own samples and the
first layer of its upper neighbours', so every cell belongs to exactly one block and
neighbours put identical vertices on their common face; zmesh's simplification never moves a
piece's open boundary, so those vertices survive it and the join, which merges equal vertices,
gives a closed surface. Outside the volume reads as background, so a neuron cut by the
volume's face is closed there too. Vertices are in nm, x y z, as neuroglancer's precomputed
meshes have them.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
from funlib.geometry import Coordinate

from neurosam.config import MeshesConfig
from neurosam.layout import RunPlan, WorkerSetup, neurons_dir, pieces_dir, segmentation_role
from neurosam.stages.pieces import Piece, group_count, join_all, join_layout, sample_around, sample_step, sampled, save_pieces
from neurosam.stages.stage import Stage

MESH_INFO = {"@type": "neuroglancer_legacy_mesh"}


def mesh_pieces(labels: np.ndarray, origin: Coordinate, voxel_size: Coordinate, settings: MeshesConfig) -> dict[int, Piece]:
    """Pieces of every segment of ``labels`` (z y x, samples ``voxel_size`` nm apart, the first at
    ``origin`` nm)."""
    import zmesh

    mesher = zmesh.Mesher(tuple(voxel_size[::-1]))
    mesher.mesh(np.asfortranarray(labels.T))
    shift = np.array(origin[::-1], dtype=np.float32)
    pieces = {}
    for segment in mesher.ids():
        mesh = mesher.get(segment, normals=False, reduction_factor=settings.reduction_factor, max_error=settings.max_error)
        mesher.erase(segment)
        pieces[int(segment)] = {"vertices": mesh.vertices.astype(np.float32) + shift, "faces": mesh.faces.astype(np.uint32)}
    return pieces


def join_mesh(segment: int, pieces: list[Piece]):
    """One ``zmesh.Mesh`` of a segment's pieces, their shared vertices merged; a segment within
    one block (most segments) is its one piece as zmesh made it, with nothing to merge."""
    import zmesh

    parts = [zmesh.Mesh(piece["vertices"], piece["faces"], None, id=segment) for piece in pieces]
    if len(parts) == 1:
        return parts[0]
    return zmesh.Mesh.concatenate(*parts, id=segment).consolidate()


def mesh_threshold(plan: RunPlan) -> float:
    return plan.config.neuron_threshold(plan.config.meshes)


@contextmanager
def mesh_blocks(setup: WorkerSetup):
    plan, settings = setup.plan, setup.settings
    segmentation = plan.arrays[segmentation_role(mesh_threshold(plan))]
    out, groups = pieces_dir(plan.work_dir, setup.task.task_id), group_count(plan)
    out.mkdir(parents=True, exist_ok=True)
    step = sample_step(plan, settings.resolution)

    def process(block) -> None:
        labels, origin = sampled(segmentation, block.write_roi, plan.volume_roi, step)
        save_pieces(out, block.block_id[1], mesh_pieces(labels, origin, step, settings), groups)

    yield process


@contextmanager
def join_mesh_blocks(setup: WorkerSetup):
    """Neuroglancer's legacy mesh format: a manifest ``<id>:0`` naming the one fragment ``<id>``."""
    import json

    plan = setup.plan
    pieces = pieces_dir(plan.work_dir, plan.task_of_stage("meshes").task_id)

    def join(segment: int, parts: list[Piece]):
        yield str(segment), join_mesh(segment, parts).to_precomputed()
        yield f"{segment}:0", json.dumps({"fragments": [str(segment)]}).encode()

    yield lambda block: join_all(pieces, meshes_dir(plan), join, MESH_INFO)


def meshes_dir(plan: RunPlan):
    return neurons_dir(plan.config, mesh_threshold(plan)) / "mesh"


def _enabled(config) -> bool:
    return config.meshes is not None


STAGE = Stage(
    "meshes", "neurosam.stages.meshes:mesh_blocks", sample_around("meshes"), sections=("meshes",), enabled=_enabled,
    work_files=lambda plan: [pieces_dir(plan.work_dir, plan.task_of_stage("meshes").task_id)],
)
JOIN_STAGE = Stage(
    "meshes_join", "neurosam.stages.meshes:join_mesh_blocks", join_layout, sections=("meshes",),
    enabled=_enabled, work_files=lambda plan: [meshes_dir(plan) / "info"],
)
