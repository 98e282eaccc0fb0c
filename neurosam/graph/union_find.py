"""Union-find over arrays of parent links, one step for many edges at once: the forests can be
memory-mapped files, so no process holds more of a graph than its pages."""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def find_roots(parent: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """Follow the parent links of all ``nodes`` at once, up to their roots."""
    roots = parent[nodes]
    while True:
        above = parent[roots]
        if np.array_equal(above, roots):
            return roots
        roots = above


def join(parent: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Union-find step for the edges between nodes ``a`` and ``b``: the roots they connect are
    joined by connected components of these edges alone, each group under its smallest root. So
    every root is the smallest node of its component, whatever order the edges come in."""
    ends = find_roots(parent, np.concatenate([a, b]))
    roots, local = np.unique(ends, return_inverse=True)
    graph = coo_matrix((np.ones(len(a)), (local[: len(a)], local[len(a) :])), shape=(len(roots), len(roots)))
    _, component = connected_components(graph, directed=False)
    _, smallest = np.unique(component, return_index=True)
    parent[roots] = roots[smallest][component]
