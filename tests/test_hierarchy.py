"""The compiled merge loop against waterz, and the hierarchy of super-blocks against one process."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import waterz
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from neurosam.affinities import boundary_to_affinities
from neurosam.config import HIST_QUANT_50, HIST_QUANT_75
from neurosam.graph.agglomeration import contact_statistics
from neurosam.graph.hierarchy import FACES, Edges, agglomerate_super_block, parent_inputs, segment_table
from neurosam.graph.merging import Graph, below, merge, score_edges
from neurosam.graph.scoring import Program, ScoringFunctionError, inexact_reason
from neurosam.stages.fragments import watershed
from pipeline_support import read_h5

MEAN = "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>"
QUANTILE = "OneMinus<QuantileAffinity<RegionGraphType, 50, ScoreValue>>"


def _fragments_graph(affinities: np.ndarray):
    fragments = watershed(affinities, 0.0)
    pairs, statistics = contact_statistics(affinities, fragments)
    graph = Graph(
        int(fragments.max()) + 1, pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64), statistics["affinity_max"],
        statistics["affinity_min"], statistics["affinity_sum"], statistics["contact_area"], np.zeros(len(pairs), dtype=bool),
    )
    return fragments, graph


def _waterz_history(affinities, fragments, scoring: str, nodes: int) -> list[tuple[int, int, float]]:
    """waterz's merges as (smallest fragment of either region, score)."""
    _, history = next(waterz.agglomerate(affinities, [1.0], fragments=fragments.copy(), scoring_function=scoring, return_merge_history=True))
    parent, smallest = {}, {}

    def find(x):
        while x in parent:
            x = parent[x]
        return x

    merges = []
    for merge_ in history:
        a, b, c = find(int(merge_["a"])), find(int(merge_["b"])), int(merge_["c"])
        low, high = sorted((smallest.get(a, a), smallest.get(b, b)))
        merges.append((low, high, float(merge_["score"])))
        for region in {a, b} - {c}:
            parent[region] = c
        smallest[c] = low
    return merges


def _gala_affinities(noise: bool) -> np.ndarray:
    boundary, _ = read_h5("gala_fib_train.h5", "boundary_prob", (slice(0, 30), slice(0, 80), slice(0, 80)))
    affinities = boundary_to_affinities(boundary).astype(np.float32)
    if noise:
        return np.clip(affinities + np.random.default_rng(0).random(affinities.shape, dtype=np.float32) * 0.01, 0, 1)
    return np.round(affinities * 255).astype(np.float32) / 255


def test_one_process_equals_waterz_merge_history_without_ties():
    """Float affinities without ties: the same merges at the same scores (waterz scores in float32,
    so merges within its rounding of each other may come in either order)."""
    affinities = _gala_affinities(noise=True)
    fragments, graph = _fragments_graph(affinities)
    merged = merge(graph, Program(MEAN), 1.0)
    theirs = _waterz_history(affinities, fragments, MEAN, graph.nodes)
    ours = [(min(a, b), max(a, b), s) for a, b, s in zip(merged.kept.tolist(), merged.merged.tolist(), merged.scores.tolist())]
    assert len(ours) == len(theirs) > 5000
    assert sorted((round(s, 4), a, b) for a, b, s in ours) == sorted((round(s, 4), a, b) for a, b, s in theirs)


def _replay(graph: Graph, program: Program, history: list[tuple[int, int, float]]) -> None:
    """Each merge of ``history``, replayed on our statistics, is one the merge loop could make:
    its edge scores what the history says, and no edge left scores lower."""
    label = np.arange(graph.nodes)
    for a, b, score in history:
        u, v = label[graph.u], label[graph.v]
        between = u != v
        codes = np.minimum(u, v)[between] * graph.nodes + np.maximum(u, v)[between]
        pairs, group = np.unique(codes, return_inverse=True)
        order = np.argsort(group, kind="stable")
        starts = np.searchsorted(group[order], np.arange(len(pairs)))
        maxima = graph.maximum[between][order]
        current = Graph(
            graph.nodes, pairs // graph.nodes, pairs % graph.nodes, np.maximum.reduceat(maxima, starts),
            np.minimum.reduceat(graph.minimum[between][order], starts), np.bincount(group, weights=graph.total[between]),
            np.bincount(group, weights=graph.area[between]), np.zeros(len(pairs), dtype=bool), maxima,
            np.concatenate([[0], np.cumsum(np.bincount(group))]),
        )
        scores = score_edges(current, program)
        edge = np.searchsorted(pairs, min(label[a], label[b]) * graph.nodes + max(label[a], label[b]))
        assert scores[edge] == pytest.approx(score, abs=1e-5)  # waterz sums in float32
        assert scores.min() >= score - 1e-5
        label[label == label[b]] = label[a]


@pytest.mark.parametrize("scoring", [HIST_QUANT_50, HIST_QUANT_75, MEAN])
def test_waterz_merge_history_on_uint8_affinities_differs_only_between_equal_scores(scoring):
    """With uint8 affinities scores tie, and waterz's heap breaks ties its own way. Replayed on
    our statistics, each of waterz's merges is one we could have made, and so is each of ours
    (merged to the end: the edges of the largest regions keep their maxima as histograms)."""
    affinities = _gala_affinities(noise=False)
    fragments, graph = _fragments_graph(affinities)
    program = Program(scoring)
    history = _waterz_history(affinities, fragments, scoring, graph.nodes)
    merged = merge(graph, program, 1.0)
    assert len(history) == len(merged.kept)
    _replay(graph, program, history)
    _replay(graph, program, list(zip(merged.kept.tolist(), merged.merged.tolist(), merged.scores.tolist())))


def _grid_graph(shape, rng, forced_fraction=0.02, steps=((1, 0, 0), (0, 1, 0), (0, 0, 1))):
    """Fragments on a grid of cells (id = 1 + the cell's index) touching their neighbours one of
    ``steps`` away (a step of at most one cell along each axis, so that a contact across a face
    joins two cells on it), each contact with random statistics (no two alike) and a distinct
    random tie-break key (as ``contact_last``), a few of them forced."""
    index = np.arange(np.prod(shape)).reshape(shape)
    u, v = [], []
    for step in steps:
        low = index[tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(step, shape))]
        high = index[tuple(slice(max(0, s), n - max(0, -s)) for s, n in zip(step, shape))]
        u.append(low.ravel())
        v.append(high.ravel())
    u, v = np.concatenate(u) + 1, np.concatenate(v) + 1
    count = len(u)
    area = rng.integers(1, 20, count).astype(np.float64)
    maximum = rng.random(count)
    minimum = maximum * rng.random(count)
    total = area * (minimum + (maximum - minimum) * rng.random(count))
    forced = rng.random(count) < forced_fraction
    key = rng.permutation(count).astype(np.uint64)
    return u.astype(np.uint64), v.astype(np.uint64), maximum, minimum, total, area, forced, key


def _hierarchy(shape, cells_per_block, edges, program, threshold, thresholds):
    """Super-blocks of cells_per_block^3 cells at level 0, 2^3 children each above, up to one
    super-block over the grid, then down again: every fragment's segment per threshold."""
    u, v, maximum, minimum, total, area, forced, key = edges
    cell = lambda ids: np.stack(np.unravel_index((ids - 1).astype(np.int64), shape), axis=1)  # noqa: E731
    levels, side = [], cells_per_block
    while True:
        levels.append(side)
        if all(side >= s for s in shape):
            break
        side *= 2
    blocks = {}
    for level, side in enumerate(levels):
        grid = [range(-(-s // side)) for s in shape]
        for position in itertools.product(*grid):
            begin = np.array(position) * side
            end = np.minimum(begin + side, shape)
            faces_inside = [(begin[f // 2] > 0) if f % 2 == 0 else (end[f // 2] < shape[f // 2]) for f in range(FACES)]
            if level == 0:
                ids = (np.ravel_multi_index(np.indices(end - begin).reshape(3, -1) + begin[:, None], shape) + 1).astype(np.uint64)
                nodes = np.sort(ids)
                mine = np.isin(u, nodes)
                raw = Edges.of(
                    u[mine], v[mine], maximum[mine], minimum[mine], total[mine], area[mine], forced[mine], key[mine], program.uses_maxima,
                )
                inside = np.isin(raw.v, nodes)
                where = cell(nodes)
                faces = [
                    nodes[where[:, f // 2] == (begin[f // 2] if f % 2 == 0 else end[f // 2] - 1)] if faces_inside[f] else nodes[:0]
                    for f in range(FACES)
                ]
                inputs = (nodes, raw.take(inside), raw.take(~inside), faces, faces)
            else:
                children, on_face = [], []
                for offset in itertools.product(range(2), repeat=3):
                    child = tuple(2 * np.array(position) + offset)
                    if (level - 1, child) in blocks:
                        children.append(blocks[level - 1, child])
                        child_begin = np.array(child) * levels[level - 1]
                        child_end = np.minimum(child_begin + levels[level - 1], shape)
                        on_face.append([
                            (child_begin[f // 2] == begin[f // 2]) if f % 2 == 0 else (child_end[f // 2] == end[f // 2])
                            for f in range(FACES)
                        ])
                inputs = parent_inputs(children, on_face)
            blocks[level, position] = agglomerate_super_block(*inputs, program, threshold)
    tables = {}
    for level in reversed(range(len(levels))):
        for (block_level, position), block in blocks.items():
            if block_level != level:
                continue
            parent = None
            if level + 1 < len(levels):
                parent_position = tuple(np.array(position) // 2)
                parent = (blocks[level + 1, parent_position].nodes, tables[level + 1, parent_position])
            tables[level, position] = segment_table(block, thresholds, parent)
    result = np.zeros((len(thresholds), int(np.prod(shape)) + 1), dtype=np.uint64)
    for (level, position), table in tables.items():
        if level == 0:
            result[:, blocks[0, position].nodes.astype(np.int64)] = table
    return result[:, 1:], len(levels), blocks


def _one_process(shape, edges, program, threshold, thresholds):
    u, v, maximum, minimum, total, area, forced, key = edges
    count = int(np.prod(shape)) + 1
    graph = Graph(count, u.astype(np.int64), v.astype(np.int64), maximum, minimum, total, area, forced, key=key)
    merged = merge(graph, program, threshold)
    result = np.zeros((len(thresholds), count - 1), dtype=np.uint64)
    for row, t in enumerate(thresholds):
        made = below(merged.scores, t)
        graph = coo_matrix((np.ones(made.sum()), (merged.kept[made], merged.merged[made])), shape=(count, count))
        _, component = connected_components(graph, directed=False)
        smallest = np.full(count, count)
        np.minimum.at(smallest, component, np.arange(count))
        result[row] = smallest[component][1:]
    return result, merged


@pytest.mark.parametrize("scoring", [MEAN, QUANTILE, "Add<Constant<RegionGraphType, 2>, OneMinus<MaxAffinity<RegionGraphType, ScoreValue>>>"])
@pytest.mark.parametrize("shape", [(16, 16, 16), (13, 11, 9)])
def test_hierarchy_equals_one_process_at_every_threshold(scoring, shape):
    """A tie-free graph over several super-blocks and three levels: identical partitions."""
    rng = np.random.default_rng(1)
    program = Program(scoring)
    edges = _grid_graph(shape, rng)
    offset = 2.0 if scoring.startswith("Add") else 0.0
    thresholds = [offset + t for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)]
    ours, levels, blocks = _hierarchy(shape, 4, edges, program, max(thresholds), thresholds)
    theirs, merged = _one_process(shape, edges, program, max(thresholds), thresholds)
    assert levels >= 3 and len(merged.kept) > 1000
    assert sum(len(block.kept) for (level, _), block in blocks.items() if level > 0) > 100
    for row, threshold in enumerate(thresholds):
        np.testing.assert_array_equal(ours[row], theirs[row], err_msg=f"threshold {threshold}")


#: Steps to the cells across an edge of a cell too: every contact has triangles around it.
TRIANGLES = ((1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, -1, 0), (1, 0, 1), (1, 0, -1), (0, 1, 1), (0, 1, -1))


@pytest.mark.parametrize("scoring", [QUANTILE, QUANTILE.replace("50", "75")])
def test_hierarchy_equals_one_process_where_cut_basins_meet_a_fragment_twice(scoring):
    """Forced edges (the pieces of a basin cut by block faces) on a graph with triangles: a
    fragment touching two pieces of one basin has one pair with the basin, whatever level joins
    the pieces, so its quantile scores are the same. The case that made the block-wise run of
    mutex-watershed fragments merge less than one block. (Exact quantiles: a histogram's ties
    would let equal scores merge in another order.)"""
    rng = np.random.default_rng(2)
    program = Program(scoring)
    shape = (12, 12, 12)
    edges = _grid_graph(shape, rng, forced_fraction=0.1, steps=TRIANGLES)
    thresholds = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    ours, levels, _ = _hierarchy(shape, 3, edges, program, max(thresholds), thresholds)
    theirs, merged = _one_process(shape, edges, program, max(thresholds), thresholds)
    assert levels >= 3 and len(merged.kept) > 1000
    for row, threshold in enumerate(thresholds):
        np.testing.assert_array_equal(ours[row], theirs[row], err_msg=f"threshold {threshold}")


@pytest.mark.parametrize("scoring", [HIST_QUANT_50, QUANTILE])
def test_hierarchy_equals_one_process_where_scores_tie(scoring):
    """Maxima on 16 levels, so that most scores tie: equal scores merge in one order, by the
    edges' keys (the larger of its parts' for a folded edge), whatever super-block holds the
    edge, and the partitions are identical (ordered by score alone, the super-blocks merged ties
    in an order of their own, and the partitions differed)."""
    rng = np.random.default_rng(3)
    program = Program(scoring)
    shape = (16, 16, 16)
    u, v, maximum, minimum, total, area, forced, key = _grid_graph(shape, rng, forced_fraction=0.02)
    maximum = np.ceil(maximum * 16) / 16
    edges = u, v, maximum, np.minimum(minimum, maximum), total, area, forced, key
    thresholds = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    ours, levels, _ = _hierarchy(shape, 4, edges, program, max(thresholds), thresholds)
    theirs, merged = _one_process(shape, edges, program, max(thresholds), thresholds)
    scores = merged.scores[~np.isinf(merged.scores)]
    assert levels >= 3 and len(merged.kept) > 1000 and len(np.unique(scores)) < len(scores) / 50
    for row, threshold in enumerate(thresholds):
        np.testing.assert_array_equal(ours[row], theirs[row], err_msg=f"threshold {threshold}")


def test_inexact_scoring_functions_are_named():
    for exact in (HIST_QUANT_50, HIST_QUANT_75, MEAN, QUANTILE, "OneMinus<MaxAffinity<RegionGraphType, ScoreValue>>",
                  "Multiply<Constant<RegionGraphType, 2>, MinAffinity<RegionGraphType, ScoreValue>>"):
        assert inexact_reason(exact) is None, exact
    for inexact in (
        "OneMinus<MinSize<RegionGraphType>>",
        "Add<MeanAffinity<RegionGraphType, ScoreValue>, MaxAffinity<RegionGraphType, ScoreValue>>",
        "Multiply<MeanAffinity<RegionGraphType, ScoreValue>, ContactArea<RegionGraphType>>",
        "OneMinus<ContactArea<RegionGraphType>>",
        "Square<Subtract<Multiply<Constant<RegionGraphType, 2>, MeanAffinity<RegionGraphType, ScoreValue>>, Constant<RegionGraphType, 1>>>",
    ):
        assert "exact only" in inexact_reason(inexact), inexact


def test_functions_the_statistics_cannot_score_are_refused():
    with pytest.raises(ScoringFunctionError, match="InitWithMax"):
        Program("OneMinus<HistogramQuantileAffinity<RegionGraphType, 50, ScoreValue, 256, false>>")
    with pytest.raises(ScoringFunctionError, match="cannot be scored"):
        Program("OneMinus<MeanMaxKAffinity<RegionGraphType, 3, ScoreValue>>")


def test_thresholds_compare_as_waterz_does_in_float32():
    """1 - 51/255 is 0.8 in float32, waterz's ScoreValue: at threshold 0.8 waterz does not merge
    two fragments whose contact has that affinity, although in float64 it scores below 0.8."""
    affinities = np.ones((3, 1, 1, 2), dtype=np.float32)
    affinities[2, 0, 0, 1] = np.float32(51 / 255)
    fragments = np.array([[[1, 2]]], dtype=np.uint64)
    scoring = "OneMinus<MinAffinity<RegionGraphType, ScoreValue>>"
    theirs = next(waterz.agglomerate(affinities, [0.8], fragments=fragments.copy(), scoring_function=scoring))
    pairs, statistics = contact_statistics(affinities, fragments)
    graph = Graph(
        3, pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64), statistics["affinity_max"], statistics["affinity_min"],
        statistics["affinity_sum"], statistics["contact_area"], np.zeros(1, dtype=bool),
    )
    assert len(np.unique(theirs)) == 2 and len(pairs) == 1
    assert len(merge(graph, Program(scoring), 0.8).kept) == 0
    assert not below(merge(graph, Program(scoring), 0.81).scores, 0.8).any()
