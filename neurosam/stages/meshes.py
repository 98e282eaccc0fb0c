"""Meshes: zmesh's marching cubes on each block of one segmentation, simplified, joined into one
mesh per segment.

Marching cubes works on the cells between voxel centres. Each block meshes its own voxels and
the first voxel layer of its upper neighbours, so every cell belongs to exactly one block and
neighbours put identical vertices on their common face; zmesh's simplification never moves a
piece's open boundary, so those vertices survive it and the join, which merges equal vertices,
gives a closed surface. Outside the volume reads as background, so a neuron cut by the
volume's face is closed there too. Vertices are in nm, x y z, as neuroglancer's precomputed
meshes have them.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
from funlib.geometry import Coordinate, Roi

from neurosam.config import MeshesConfig
from neurosam.layout import RunPlan, WorkerSetup, neurons_dir, pieces_dir, segmentation_role
from neurosam.stages.pieces import Piece, group_count, join_all, join_layout, one_voxel_around, save_pieces, upper_overlap
from neurosam.stages.stage import Stage

MESH_INFO = {"@type": "neuroglancer_legacy_mesh"}


def mesh_roi(write_roi: Roi, volume_roi: Roi, voxel_size: Coordinate) -> Roi:
    """The voxels whose cells a block meshes: its own, its upper neighbours' first layer, and on
    the volume's lower faces the background layer outside them."""
    roi = upper_overlap(write_roi, voxel_size)
    at_lower_face = Coordinate(voxel if begin == start else 0 for voxel, begin, start in zip(voxel_size, write_roi.begin, volume_roi.begin))
    return Roi(roi.offset - at_lower_face, roi.shape + at_lower_face)


def mesh_pieces(labels: np.ndarray, origin: Coordinate, voxel_size: Coordinate, settings: MeshesConfig) -> dict[int, Piece]:
    """Pieces of every segment of ``labels`` (z y x, first voxel at ``origin`` nm)."""
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
    """One ``zmesh.Mesh`` of a segment's pieces, their shared vertices merged."""
    import zmesh

    parts = [zmesh.Mesh(piece["vertices"], piece["faces"], None, id=segment) for piece in pieces]
    return zmesh.Mesh.concatenate(*parts, id=segment).consolidate()


def mesh_threshold(plan: RunPlan) -> float:
    return plan.config.neuron_threshold(plan.config.meshes)


@contextmanager
def mesh_blocks(setup: WorkerSetup):
    plan, settings = setup.plan, setup.settings
    segmentation = plan.arrays[segmentation_role(mesh_threshold(plan))]
    out, groups = pieces_dir(plan.work_dir, setup.task.task_id), group_count(plan)

    def process(block) -> None:
        roi = mesh_roi(block.write_roi, plan.volume_roi, plan.voxel_size)
        save_pieces(out, block.block_id[1], mesh_pieces(segmentation.read(roi), roi.offset, plan.voxel_size, settings), groups)

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


STAGE = Stage("meshes", "neurosam.stages.meshes:mesh_blocks", one_voxel_around, sections=("meshes",), enabled=_enabled)
JOIN_STAGE = Stage(
    "meshes_join", "neurosam.stages.meshes:join_mesh_blocks", join_layout, sections=("meshes",),
    enabled=_enabled, work_files=lambda plan: [meshes_dir(plan) / "info"],
)
