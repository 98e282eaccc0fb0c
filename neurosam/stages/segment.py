"""Segment: the global agglomeration of the RAG by the configured scoring function, cut at each
threshold, as a hierarchy of super-blocks (``neurosam.graph.hierarchy`` says why it equals one
process over the whole graph).

A level-0 super-block groups ``super_block_factor``^3 blocks, and each level above groups as many
of the level below, up to one super-block over the volume. The stage runs as one daisy task per
level upwards (``merge_blocks``: a super-block's graph, from the RAG at level 0 and from its
children's files above, merged up to the highest threshold), then one per level downwards
(``name_blocks``: each super-block's table of final segments, from its parent's), so relabel
reads the one table of its level-0 super-block. Every worker holds one super-block's graph.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager

import numpy as np
from funlib.geometry import Coordinate, Roi

from neurosam.graph.agglomeration import EDGE_STATISTICS
from neurosam.graph.hierarchy import FACES, Edges, SuperBlock, agglomerate_super_block, parent_inputs, segment_table
from neurosam.graph.labels import unique_labels
from neurosam.graph.scoring import Program, inexact_reason
from neurosam.layout import RunPlan, WorkerSetup, segment_table_path, super_block_path
from neurosam.rag import RagStore
from neurosam.stages.fragments import owner_block
from neurosam.stages.segment_tables import load_table, position, save_table, super_block_shape, table_files
from neurosam.stages.stage import InputError, Stage, Step


def level_count(plan: RunPlan) -> int:
    """Levels up to the first whose one super-block covers the volume."""
    level = 0
    while any(s > b for s, b in zip(plan.volume_roi.shape, super_block_shape(plan, level))):
        level += 1
    return level + 1


def segment_steps(plan: RunPlan) -> list[Step]:
    """Upwards level by level, then down again; the top level's table is written on the way up."""
    levels = level_count(plan)

    def layout(level: int):
        shape = super_block_shape(plan, level)
        return plan.volume_roi, Roi((0,) * len(shape), shape), Roi((0,) * len(shape), shape)

    up = [Step(f"up{level}", layout(level), level, "neurosam.stages.segment:merge_blocks") for level in range(levels)]
    down = [Step(f"down{level}", layout(level), level, "neurosam.stages.segment:name_blocks") for level in reversed(range(levels - 1))]
    return up + down


def check_scoring_function(plan: RunPlan) -> None:
    """The hierarchy is exact only for some scoring functions; others are refused before any work."""
    name = plan.config.segment.scoring_function
    why = inexact_reason(plan.config.segment.scoring_functions[name])
    if why is not None:
        raise InputError(f"segment.scoring_function {name}: {why}")


def _faces_inside(plan: RunPlan, roi: Roi) -> list[bool]:
    """Which faces of ``roi`` (in ``FACES`` order) lie inside the volume, with voxels beyond them."""
    volume = plan.volume_roi
    return [roi.begin[f // 2] > volume.begin[f // 2] if f % 2 == 0 else roi.end[f // 2] < volume.end[f // 2] for f in range(FACES)]


def level_zero_inputs(plan: RunPlan, rag: RagStore, roi: Roi, with_maxima: bool):
    """A level-0 super-block's graph: its fragments, the RAG's edges their blocks own (those
    leaving the super-block pass on), and the fragments on its faces inside the volume."""
    fragments = plan.arrays["fragments"].read(roi)
    nodes = unique_labels(fragments)
    nodes = nodes[nodes != 0]
    pieces = []
    for block_id in np.unique(owner_block(plan, nodes)).tolist():
        u, v, statistics = rag.read_edges(block_id)
        if len(u) == 0:
            continue
        missing = set(EDGE_STATISTICS) - set(statistics)
        if missing:
            raise RuntimeError(f"the RAG's edges lack {sorted(missing)}: were contacts computed by another version?")
        claimed, area = statistics["claimed_area"], statistics["contact_area"]
        # The pieces of one watershed basin that block faces cut: merged before anything else.
        forced = (claimed > 0) & (2 * claimed >= area)
        pieces.append(Edges.of(
            u, v, statistics["affinity_max"], statistics["affinity_min"], statistics["affinity_sum"], area, forced,
            statistics["contact_last"], with_maxima,
        ))
    raw = Edges.concatenate(pieces) if pieces else Edges.of(*([np.zeros(0)] * 6), np.zeros(0, dtype=bool), np.zeros(0), with_maxima)
    inside = np.isin(raw.v, nodes)
    faces = []
    for face, beyond in enumerate(_faces_inside(plan, roi)):
        axis, side = divmod(face, 2)
        layer = np.take(fragments, -side, axis=axis) if beyond else np.zeros(0, dtype=np.uint64)
        ids = np.unique(layer)
        faces.append(ids[ids != 0])
    return nodes, raw.take(inside), raw.take(~inside), faces, faces


def children_inputs(plan: RunPlan, roi: Roi, level: int):
    """A higher super-block's graph, from the files of its children, which lie inside ``roi``."""
    child_shape = super_block_shape(plan, level - 1)
    counts = [-(-s // c) for s, c in zip(roi.shape, child_shape)]
    children, on_face = [], []
    for offset in itertools.product(*(range(count) for count in counts)):
        child = Roi(roi.offset + child_shape * Coordinate(offset), child_shape).intersect(plan.volume_roi)
        if child.empty:
            continue
        children.append(SuperBlock.load(super_block_path(plan.config, level - 1, position(plan, child, level - 1))))
        on_face.append([child.begin[f // 2] == roi.begin[f // 2] if f % 2 == 0 else child.end[f // 2] == roi.end[f // 2] for f in range(FACES)])
    return parent_inputs(children, on_face)


@contextmanager
def merge_blocks(setup: WorkerSetup):
    plan, level = setup.plan, setup.task.level
    config = plan.config.segment
    program = Program(config.scoring_functions[config.scoring_function])
    top = level == level_count(plan) - 1

    def process(block) -> None:
        roi = block.write_roi
        if level == 0:
            inputs = level_zero_inputs(plan, setup.rag, roi, program.uses_maxima)
        else:
            inputs = children_inputs(plan, roi, level)
        result = agglomerate_super_block(*inputs, program, max(config.thresholds))
        where = position(plan, roi, level)
        result.save(super_block_path(plan.config, level, where))
        if top:
            save_table(segment_table_path(plan.config, level, where), result.nodes, segment_table(result, config.thresholds, None))

    yield process


@contextmanager
def name_blocks(setup: WorkerSetup):
    plan, level = setup.plan, setup.task.level
    factor = plan.config.segment.super_block_factor

    def process(block) -> None:
        where = position(plan, block.write_roi, level)
        result = SuperBlock.load(super_block_path(plan.config, level, where))
        parent = load_table(segment_table_path(plan.config, level + 1, tuple(p // factor for p in where)))
        save_table(segment_table_path(plan.config, level, where), result.nodes, segment_table(result, plan.config.segment.thresholds, parent))

    yield process


STAGE = Stage(
    "segment", "neurosam.stages.segment:merge_blocks", lambda plan: segment_steps(plan)[0].layout, sections=("segment",),
    work_files=table_files, check_inputs=check_scoring_function, steps=segment_steps,
)
