"""Expected run length (ERL) on ground-truth skeletons, as Januszewski et al. (2018) define it and
funlib.evaluate computes it: the length of neurite one can expect to follow from a random point
of a skeleton before meeting an error.

Each skeleton edge is correct when both its nodes lie in one segment that touches no other
skeleton; a segment that touches two skeletons is a merge, and every edge in it counts as
wrong. The correct edges fall into runs (connected pieces of a skeleton); a run of length ``l``
is drawn with probability ``l / total`` and gives ``l``, so ERL = sum(l^2) / total length. A
node in background (segment 0) breaks its edges, as an omission does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


@dataclass(frozen=True)
class SkeletonGraph:
    """Every ground-truth skeleton as one graph: node positions (nm, z y x), the skeleton each
    node belongs to, and edges as pairs of node indices."""

    positions: np.ndarray
    skeleton_ids: np.ndarray
    edges: np.ndarray

    @classmethod
    def join(cls, skeletons: dict[int, tuple[np.ndarray, np.ndarray]]) -> SkeletonGraph:
        """From ``{skeleton id: (positions, edges)}``."""
        positions, ids, edges, start = [], [], [], 0
        for skeleton_id, (vertices, pairs) in sorted(skeletons.items()):
            positions.append(np.asarray(vertices, dtype=np.float64).reshape(-1, 3))
            ids.append(np.full(len(vertices), skeleton_id, dtype=np.uint64))
            edges.append(np.asarray(pairs, dtype=np.int64).reshape(-1, 2) + start)
            start += len(vertices)
        if not positions:
            return cls(np.zeros((0, 3)), np.zeros(0, dtype=np.uint64), np.zeros((0, 2), dtype=np.int64))
        return cls(np.concatenate(positions), np.concatenate(ids), np.concatenate(edges))

    @property
    def edge_lengths(self) -> np.ndarray:
        return np.linalg.norm(self.positions[self.edges[:, 0]] - self.positions[self.edges[:, 1]], axis=1)


def run_length_scores(skeletons: SkeletonGraph, node_segments: np.ndarray) -> dict[str, float]:
    """ERL (nm) of a segmentation that puts node ``i`` in segment ``node_segments[i]``, the ERL
    of a perfect one (``erl_max``), the total skeleton length, and the error counts: ``merges``,
    skeletons beyond the first that a segment touches, summed over segments; ``splits``, segments
    beyond the first on a skeleton, summed over skeletons (background not counted)."""
    node_segments = np.asarray(node_segments, dtype=np.uint64)
    u, v = skeletons.edges.T
    lengths = skeletons.edge_lengths
    total = float(lengths.sum())
    labelled = node_segments != 0
    pairs = np.unique(np.stack([node_segments[labelled], skeletons.skeleton_ids[labelled]], axis=1), axis=0)
    segments, skeletons_touched = np.unique(pairs[:, 0], return_counts=True)
    merging = segments[skeletons_touched > 1]
    _, segments_per_skeleton = np.unique(pairs[:, 1], return_counts=True)
    correct = (node_segments[u] == node_segments[v]) & (node_segments[u] != 0) & ~np.isin(node_segments[u], merging)
    return {
        "erl": _sum_of_squared_runs(len(node_segments), u[correct], v[correct], lengths[correct]) / total if total else 0.0,
        "erl_max": _sum_of_squared_runs(len(node_segments), u, v, lengths) / total if total else 0.0,
        "skeleton_length": total,
        "merges": int((skeletons_touched[skeletons_touched > 1] - 1).sum()),
        "splits": int((segments_per_skeleton - 1).sum()),
    }


def _sum_of_squared_runs(nodes: int, u: np.ndarray, v: np.ndarray, lengths: np.ndarray) -> float:
    """Sum over the connected pieces of the edges (u, v) of each piece's length squared."""
    graph = coo_matrix((np.ones(len(u)), (u, v)), shape=(nodes, nodes))
    _, piece = connected_components(graph, directed=False)
    run_lengths = np.bincount(piece[u], weights=lengths, minlength=1)
    return float((run_lengths**2).sum())
