"""Skeletons: kimimaro (TEASAR) on each block of one segmentation, sampled at the section's
resolution (see ``pieces``), joined into one connected skeleton per segment.

Each block is skeletonised with the first layer of samples of its upper neighbours; kimimaro's
``fix_borders`` puts an end point of every segment that crosses a block face at the centre of
its cross-section there, which both blocks compute alike, so the pieces share those vertices.
The join merges shared vertices and lets kimimaro connect what is still apart, drop dust and
trim ticks. Vertices are in nm, x y z, as neuroglancer's precomputed skeletons have them.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate

from neurosam.config import TeasarConfig
from neurosam.layout import RunPlan, StoredArray, WorkerSetup, neurons_dir, pieces_dir, segmentation_role
from neurosam.stages.pieces import Piece, group_count, join_all, join_layout, sample_around, sample_step, sampled, save_pieces
from neurosam.stages.stage import Stage

SKELETON_INFO = {
    "@type": "neuroglancer_skeletons",
    "transform": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0],
    "vertex_attributes": [
        {"id": "radius", "data_type": "float32", "num_components": 1},
        {"id": "vertex_types", "data_type": "uint8", "num_components": 1},
    ],
}


def skeletonise(labels: np.ndarray, origin: Coordinate, voxel_size: Coordinate, params: TeasarConfig, dust: int = 0) -> dict[int, Piece]:
    """Pieces of every segment of ``labels`` (z y x, samples ``voxel_size`` nm apart, the first at
    ``origin`` nm), but for connected pieces of fewer than ``dust`` samples."""
    import kimimaro

    skeletons = kimimaro.skeletonize(
        np.asfortranarray(labels.T),
        teasar_params={"scale": params.scale, "const": params.const},
        anisotropy=tuple(voxel_size[::-1]),
        dust_threshold=dust,
        fix_borders=True,
        progress=False,
        parallel=1,
    )
    shift = np.array(origin[::-1], dtype=np.float32)
    return {
        int(segment): {
            "vertices": skeleton.vertices.astype(np.float32) + shift,
            "edges": skeleton.edges.astype(np.uint32),
            "radii": skeleton.radii.astype(np.float32),
        }
        for segment, skeleton in skeletons.items()
    }


def cable_length(piece: Piece) -> float:
    vertices, edges = piece["vertices"].astype(np.float64), piece["edges"]
    return float(np.linalg.norm(vertices[edges[:, 0]] - vertices[edges[:, 1]], axis=1).sum())


def join_skeleton(segment: int, pieces: list[Piece], params: TeasarConfig):
    """One connected ``osteoid.Skeleton`` of a segment's pieces."""
    import kimimaro
    from osteoid import Skeleton

    parts = [Skeleton(piece["vertices"], piece["edges"], radii=piece["radii"], segid=segment, space="physical") for piece in pieces]
    joined = Skeleton.simple_merge(parts).consolidate()
    joined = kimimaro.postprocess(joined, dust_threshold=params.dust_threshold, tick_threshold=params.tick_threshold)
    joined.id = segment
    return joined


def skeleton_threshold(plan: RunPlan) -> float:
    return plan.config.neuron_threshold(plan.config.skeletons)


def skeletonised_blocks(plan: RunPlan, task_id: str, labels: StoredArray, step: Coordinate, params: TeasarConfig, dust: int = 0):
    """``process(block)``: the pieces of every segment of ``labels`` in the block, sampled every
    ``step`` nm (see ``skeletonise`` for ``dust``), saved for the join; shared with the ground
    truth's skeletons."""
    out, groups = pieces_dir(plan.work_dir, task_id), group_count(plan)
    out.mkdir(parents=True, exist_ok=True)

    def process(block) -> None:
        samples, origin = sampled(labels, block.write_roi, plan.volume_roi, step)
        save_pieces(out, block.block_id[1], skeletonise(samples, origin, step, params, dust), groups)

    return process


def joined_skeletons(pieces: Path, out_dir: Path, params: TeasarConfig):
    """``process(block)`` of a join: every segment's pieces under ``pieces`` joined into one
    precomputed skeleton file in ``out_dir`` (segments left empty by the clean-up dropped). A
    segment whose pieces hold no more cable than ``dust_threshold`` in all is dropped unjoined:
    the clean-up would drop each of its components (most segments of a noisy segmentation)."""

    def join(segment: int, parts: list[Piece]):
        if params.dust_threshold > 0 and sum(cable_length(part) for part in parts) <= params.dust_threshold:
            return
        skeleton = join_skeleton(segment, parts, params)
        if len(skeleton.vertices):
            yield str(segment), skeleton.to_precomputed()

    return lambda block: join_all(pieces, out_dir, join, SKELETON_INFO)


@contextmanager
def skeleton_blocks(setup: WorkerSetup):
    plan = setup.plan
    segmentation = plan.arrays[segmentation_role(skeleton_threshold(plan))]
    settings = setup.settings
    yield skeletonised_blocks(
        plan, setup.task.task_id, segmentation, sample_step(plan, settings.resolution), settings, settings.block_dust_threshold
    )


@contextmanager
def join_skeleton_blocks(setup: WorkerSetup):
    plan = setup.plan
    pieces = pieces_dir(plan.work_dir, plan.task_of_stage("skeletons").task_id)
    yield joined_skeletons(pieces, skeletons_dir(plan), plan.config.skeletons)


def skeletons_dir(plan: RunPlan):
    return neurons_dir(plan.config, skeleton_threshold(plan)) / "skeletons"


def _enabled(config) -> bool:
    return config.skeletons is not None


STAGE = Stage(
    "skeletons", "neurosam.stages.skeletons:skeleton_blocks", sample_around("skeletons"), sections=("skeletons",), enabled=_enabled,
    work_files=lambda plan: [pieces_dir(plan.work_dir, plan.task_of_stage("skeletons").task_id)],
)
JOIN_STAGE = Stage(
    "skeletons_join", "neurosam.stages.skeletons:join_skeleton_blocks", join_layout, sections=("skeletons",),
    enabled=_enabled, work_files=lambda plan: [skeletons_dir(plan) / "info"],
)
