"""Segments: the global agglomeration of the whole RAG (``neurosam.graph.agglomeration``), cut at
each threshold.

One pass merges up to the highest threshold, and a merge belongs to every threshold above its
level; the segments at a threshold are the connected components of its merges, found by
union-find over memory-mapped files. Each component is named after its smallest fragment id,
so segment ids are never 0 and do not depend on the order of the merges.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from neurosam.graph.agglomeration import EDGE_STATISTICS, agglomerate_graph, join_cut_basins
from neurosam.config import RunConfig
from neurosam.layout import WorkerSetup, fragment_ids_path, lookup_dir, lookup_path
from neurosam.rag import RagStore
from neurosam.graph.labels import unique_inverse


def _write_fragment_ids(ids: np.ndarray, path: Path) -> None:
    """Atomically: relabel reads it while a later run may rewrite it."""
    partial = path.with_suffix(".tmp.npy")
    np.save(partial, ids)
    partial.replace(path)


def _roots(parent: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """Follow the parent links of all ``nodes`` at once, up to their roots."""
    roots = parent[nodes]
    while True:
        above = parent[roots]
        if np.array_equal(above, roots):
            return roots
        roots = above


def _join(parent: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Union-find step for the edges between nodes ``a`` and ``b``: the roots they connect are
    joined by connected components of these edges alone, each group under its smallest root. So
    every root is the smallest node of its component, whatever order the edges come in."""
    ends = _roots(parent, np.concatenate([a, b]))
    roots, local = np.unique(ends, return_inverse=True)
    graph = coo_matrix((np.ones(len(a)), (local[: len(a)], local[len(a) :])), shape=(len(roots), len(roots)))
    _, component = connected_components(graph, directed=False)
    _, smallest = np.unique(component, return_index=True)
    parent[roots] = roots[smallest][component]


def read_graph(rag: RagStore, page_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(ids, sizes, u, v, statistics): nodes in id order, u and v as positions in ``ids``; every
    statistic is read in the store's key order, so the passes line up edge for edge."""
    nodes = rag.read_nodes()
    order = np.argsort(nodes["ids"])
    ids = nodes["ids"][order].astype(np.uint64)
    statistics, u, v = {}, None, None
    for name in EDGE_STATISTICS:
        pages = list(rag.iter_edges(name, page_size))
        here_u = np.concatenate([page[0] for page in pages]) if pages else np.zeros(0, dtype=np.uint64)
        here_v = np.concatenate([page[1] for page in pages]) if pages else np.zeros(0, dtype=np.uint64)
        if u is not None and not (np.array_equal(u, here_u) and np.array_equal(v, here_v)):
            raise RuntimeError(f"the RAG's edges lack {name!r} for some pairs: was agglomerate run by another version?")
        u, v = here_u, here_v
        statistics[name] = np.concatenate([page[2] for page in pages]) if pages else np.zeros(0)
    return ids, nodes["sizes"][order], np.searchsorted(ids, u), np.searchsorted(ids, v), statistics


def find_segments(config: RunConfig, rag: RagStore) -> None:
    """Write one lookup table per threshold: segment id for each fragment, in fragment id order."""
    directory = lookup_dir(config)
    directory.mkdir(parents=True, exist_ok=True)
    page_size = config.segment.edges_per_page
    thresholds = config.segment.thresholds
    ids, *graph = read_graph(rag, page_size)
    _write_fragment_ids(ids, fragment_ids_path(config))
    basin, basin_graph = join_cut_basins(*graph)
    scoring_function = config.agglomerate.scoring_functions[config.segment.scoring_function]
    kept, merged, levels = agglomerate_graph(*basin_graph, scoring_function, max(thresholds))
    # Merges are of basins; each basin stands for one of its fragments, and its own pieces
    # join at every threshold.
    representative = np.zeros(len(basin_graph[0]), dtype=np.int64)
    representative[basin[::-1]] = np.arange(len(basin))[::-1]
    pieces = np.flatnonzero(representative[basin] != np.arange(len(basin)))
    kept = np.concatenate([representative[basin[pieces]], representative[kept]])
    merged = np.concatenate([pieces, representative[merged]])
    levels = np.concatenate([np.full(len(pieces), -np.inf), levels])
    forests = np.lib.format.open_memmap(directory / "union_find.npy", mode="w+", dtype=np.int64, shape=(len(thresholds), len(ids)))
    for start in range(0, len(ids), page_size):
        forests[:, start : start + page_size] = np.arange(start, min(start + page_size, len(ids)), dtype=np.int64)
    for parent, threshold in zip(forests, thresholds):
        below = levels < threshold
        _join(parent, kept[below], merged[below])
    for parent, threshold in zip(forests, thresholds):
        final = lookup_path(config, threshold)
        table = np.lib.format.open_memmap(final.with_suffix(".tmp.npy"), mode="w+", dtype=np.uint64, shape=(len(ids),))
        for start in range(0, len(ids), page_size):
            stop = min(start + page_size, len(ids))
            table[start:stop] = ids[_roots(parent, np.arange(start, stop))]
        table.flush()
        del table
        final.with_suffix(".tmp.npy").replace(final)
    del forests
    (directory / "union_find.npy").unlink()


@contextmanager
def segment_blocks(setup: WorkerSetup):
    yield lambda block: find_segments(setup.plan.config, setup.rag)


def apply_lookup(fragments: np.ndarray, ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Map fragment ids to segment ids; 0 stays 0. Tables may be memory-mapped."""
    flat_ids, inverse = unique_inverse(fragments)
    segments = np.zeros(len(flat_ids), dtype=np.uint64)
    nonzero = flat_ids != 0
    positions = np.searchsorted(ids, flat_ids[nonzero])
    positions = np.minimum(positions, len(ids) - 1)
    unknown = ids[positions] != flat_ids[nonzero] if len(ids) else np.ones(nonzero.sum(), dtype=bool)
    if unknown.any():
        raise ValueError(
            f"fragments {flat_ids[nonzero][unknown][:5].tolist()} are not in the RAG: "
            "the fragments task and the RAG disagree (was the RAG changed or the run mixed with another?)"
        )
    segments[nonzero] = table[positions]
    return segments[inverse]
