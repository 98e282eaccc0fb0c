"""Agglomeration: waterz merges the fragments of each block (plus context) and every pair of
touching fragments gets the score at which waterz first joined them.

With these scores, keeping the edges below a threshold reproduces waterz's own segmentation at
that threshold, which is what lets the segment stage stitch blocks into neurons. An edge (u, v)
is written only by the block that owns ``u = min(u, v)``, so each edge has exactly one writer
and a resumed run writes the same scores as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import waterz

from neurosam.config import RunConfig
from neurosam.rag import RagStore
from neurosam.workers.arrays import read_roi
from neurosam.workers.blockgrid import BlockGrid
from neurosam.workers.fragments import read_nearest_affinities
from neurosam.workers.labels import unique_inverse

UNMERGED_SCORE = 1.0


def touching_pairs(labels: np.ndarray) -> np.ndarray:
    """Unique (u, v), u < v, of non-zero labels that touch along an axis: (N, 2), sorted.

    Each pair is coded as the one number ``u * (max + 1) + v``, which sorts much faster than
    rows do; labels are a block's local ids, far too small for that to overflow."""
    base = labels.max(initial=0) + 1
    codes = []
    for axis in range(labels.ndim):
        here = np.moveaxis(labels, axis, 0)[1:].ravel()
        there = np.moveaxis(labels, axis, 0)[:-1].ravel()
        touching = (here != there) & (here != 0) & (there != 0)
        here, there = here[touching], there[touching]
        codes.append(np.minimum(here, there) * base + np.maximum(here, there))
    codes = np.unique(np.concatenate(codes))
    return np.stack([codes // base, codes % base], axis=1)


def merge_scores(pairs: np.ndarray, merge_history: list[dict], region_graph: list[dict]) -> np.ndarray:
    """For each pair of local labels, the score of the merge that first put both in one region.

    The merges are replayed on a graph of regions whose edges carry the original pairs between
    them; pairs never merged take the score of their regions' final edge.
    """
    scores = np.full(len(pairs), UNMERGED_SCORE, dtype=np.float64)
    between: dict[tuple[int, int], list[int]] = {}
    neighbours: dict[int, set[int]] = {}
    for index, (u, v) in enumerate(pairs.tolist()):
        between.setdefault((u, v), []).append(index)
        neighbours.setdefault(u, set()).add(v)
        neighbours.setdefault(v, set()).add(u)

    def key(a: int, b: int) -> tuple[int, int]:
        return (a, b) if a < b else (b, a)

    for merge in merge_history:
        a, b, into, score = merge["a"], merge["b"], merge["c"], merge["score"]
        for index in between.pop(key(a, b), []):
            scores[index] = score
        gone = b if into == a else a
        neighbours.get(into, set()).discard(gone)
        for other in neighbours.pop(gone, set()):
            if other == into:
                continue
            moved = between.pop(key(gone, other))
            between.setdefault(key(into, other), []).extend(moved)
            neighbours[other].discard(gone)
            neighbours[other].add(into)
            neighbours.setdefault(into, set()).add(other)

    for edge in region_graph:
        for index in between.get(key(edge["u"], edge["v"]), []):
            scores[index] = edge["score"]
    return scores


def agglomerate_block(config: RunConfig, rag: RagStore, grid: BlockGrid, block) -> None:
    fragments = read_roi(config.datasets.fragments, block.read_roi, fill_value=0)
    ids, local = unique_inverse(fragments)
    local = local.astype(np.uint64)
    if ids[0] != 0:
        local += np.uint64(1)
        ids = np.concatenate([[0], ids])
    pairs = touching_pairs(local)
    owned = grid.owner_index(ids[pairs[:, 0]]) == grid.index(block.write_roi)
    pairs = pairs[owned]
    if len(pairs) == 0:
        return

    affinities = read_nearest_affinities(config, block.read_roi)
    scores = {}
    for name, scoring_function in config.agglomerate.scoring_functions.items():
        _, merge_history, region_graph = next(
            waterz.agglomerate(
                affinities,
                [config.agglomerate.max_threshold],
                fragments=local.copy(),
                scoring_function=scoring_function,
                return_merge_history=True,
                return_region_graph=True,
            )
        )
        scores[name] = merge_scores(pairs, merge_history, region_graph)
    rag.write_edges(ids[pairs[:, 0]], ids[pairs[:, 1]], scores)

