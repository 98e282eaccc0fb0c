"""Agglomeration: waterz merges the fragments of each block (plus context) and every pair of
touching fragments gets the score at which waterz first joined them.

With these scores, keeping the edges below a threshold reproduces waterz's own segmentation at
that threshold, which is what lets the segment stage stitch blocks into neurons. An edge (u, v)
is written only by the block that owns ``u = min(u, v)``, so each edge has exactly one writer
and a resumed run writes the same scores as an uninterrupted one.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import waterz

from neurosam.layout import WorkerSetup
from neurosam.workers.fragments import read_nearest_affinities
from neurosam.workers.labels import unique_inverse

UNMERGED_SCORE = 1.0


def touching_pairs(labels: np.ndarray) -> np.ndarray:
    """Unique (u, v), u < v, of non-zero labels that touch along an axis: (N, 2), sorted.

    Each pair is coded as the one int64 ``u * (max + 1) + v``, which sorts much faster than
    rows do; labels are a block's local ids, far too small for that to overflow."""
    base = np.int64(labels.max(initial=0)) + 1
    codes = []
    for axis in range(labels.ndim):
        here = labels[(slice(None),) * axis + (slice(1, None),)]
        there = labels[(slice(None),) * axis + (slice(None, -1),)]
        touching = (here != there) & (here != 0) & (there != 0)
        here, there = here[touching].astype(np.int64), there[touching].astype(np.int64)
        codes.append(np.minimum(here, there) * base + np.maximum(here, there))
    codes = np.unique(np.concatenate(codes))
    return np.stack([codes // base, codes % base], axis=1)


def merge_scores(pairs: np.ndarray, merge_history: list[dict], region_graph: list[dict]) -> np.ndarray:
    """For each pair of local labels, the score of the merge that first put both in one region.

    The merges form a tree: the labels are its leaves and merge k is node ``labels + k``, above
    the two regions it joined. The merge that first joined two labels is their lowest common
    ancestor. Pairs never merged take the score of their regions' edge in the final region graph,
    which waterz only needs to give when it stopped below 1: at 1, every edge left scores 1.
    """
    labels = 1 + max([int(pairs.max(initial=0))] + [max(merge["a"], merge["b"]) for merge in merge_history])
    node_of_region = list(range(labels))
    parent = list(range(labels + len(merge_history)))
    for node, merge in enumerate(merge_history, start=labels):
        parent[node_of_region[merge["a"]]] = node
        parent[node_of_region[merge["b"]]] = node
        node_of_region[merge["c"]] = node
    parent = np.array(parent)
    u, v = _below_common_ancestor(parent, pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64))

    scores = np.full(len(pairs), UNMERGED_SCORE, dtype=np.float64)
    joined = parent[u] == parent[v]
    merge_score = np.array([merge["score"] for merge in merge_history], dtype=np.float64)
    scores[joined] = merge_score[parent[u[joined]] - labels]
    region_of_node = np.array(list(range(labels)) + [merge["c"] for merge in merge_history])
    final_edges = {(min(edge["u"], edge["v"]), max(edge["u"], edge["v"])): edge["score"] for edge in region_graph}
    apart = np.flatnonzero(~joined)
    for index, a, b in zip(apart.tolist(), region_of_node[u[apart]].tolist(), region_of_node[v[apart]].tolist()):
        scores[index] = final_edges.get((min(a, b), max(a, b)), UNMERGED_SCORE)
    return scores


def _below_common_ancestor(parent: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leaves u and v lifted to the two children of their lowest common ancestor, or to their
    roots where they are in different trees: all pairs at once, by jumps of powers of two."""
    # ancestors[k] is each node's ancestor 2**k levels up (or its root); depth is found on the way
    depth = (parent != np.arange(len(parent))).astype(np.int64)
    ancestors = [parent]
    while not np.array_equal(ancestors[-1][ancestors[-1]], ancestors[-1]):
        depth = depth + depth[ancestors[-1]]
        ancestors.append(ancestors[-1][ancestors[-1]])

    deeper = depth[u] >= depth[v]
    u, v = np.where(deeper, u, v), np.where(deeper, v, u)
    steps = depth[u] - depth[v]
    for level, above in enumerate(ancestors):
        u = np.where((steps >> level) & 1 == 1, above[u], u)
    for above in reversed(ancestors):
        apart = above[u] != above[v]
        u, v = np.where(apart, above[u], u), np.where(apart, above[v], v)
    return u, v


def agglomerate_block(setup: WorkerSetup, block) -> None:
    plan, settings = setup.plan, setup.plan.config.agglomerate
    fragments = plan.arrays["fragments"].read(block.read_roi, fill_value=0)
    ids, local = unique_inverse(fragments)
    if ids[0] != 0:
        local += 1
        ids = np.concatenate([[0], ids])
    pairs = touching_pairs(local)
    owned = plan.owner_block(ids[pairs[:, 0]]) == block.block_id[1]
    pairs = pairs[owned]
    if len(pairs) == 0:
        return

    affinities = read_nearest_affinities(plan, block.read_roi)
    scores = {
        name: pair_scores(affinities, local, pairs, scoring_function, settings.max_threshold)
        for name, scoring_function in settings.scoring_functions.items()
    }
    setup.rag.write_edges(ids[pairs[:, 0]], ids[pairs[:, 1]], scores)


@contextmanager
def agglomerate_blocks(setup: WorkerSetup):
    yield lambda block: agglomerate_block(setup, block)


def pair_scores(affinities: np.ndarray, fragments: np.ndarray, pairs: np.ndarray, scoring_function: str, max_threshold: float) -> np.ndarray:
    """The merge score of each pair of touching fragments, from one waterz agglomeration up to
    ``max_threshold``."""
    stopped_below_one = max_threshold < UNMERGED_SCORE
    result = next(
        waterz.agglomerate(
            affinities,
            [max_threshold],
            fragments=fragments.astype(np.uint64),
            scoring_function=scoring_function,
            return_merge_history=True,
            return_region_graph=stopped_below_one,
        )
    )
    merge_history, region_graph = result[1], result[2] if stopped_below_one else []
    return merge_scores(pairs, merge_history, region_graph)

