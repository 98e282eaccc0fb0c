"""Segment: the global agglomeration of the whole RAG (``neurosam.graph.agglomeration``) by the
configured scoring function, cut at each threshold.

One pass merges up to the highest threshold, and a merge belongs to every threshold above its
level; the segments at a threshold are the connected components of its merges, found by
union-find over memory-mapped files. Each component is named after its smallest fragment id,
so segment ids are never 0 and do not depend on the order of the merges.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np

from neurosam.config import RunConfig
from neurosam.graph.agglomeration import EDGE_STATISTICS, agglomerate_graph, join_cut_basins
from neurosam.graph.union_find import find_roots, join
from neurosam.layout import RunPlan, WorkerSetup, fragment_ids_path, lookup_dir, lookup_path, union_find_path
from neurosam.rag import RagStore
from neurosam.stages.stage import Stage, whole_volume


def _write_fragment_ids(ids: np.ndarray, path: Path) -> None:
    """Atomically: relabel reads it while a later run may rewrite it."""
    partial = path.with_suffix(".tmp.npy")
    np.save(partial, ids)
    partial.replace(path)


def read_graph(rag: RagStore, page_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(ids, sizes, u, v, statistics): nodes in id order, u and v as positions in ``ids``, the
    statistics at float64 as the agglomeration computes with them; edges in one pass."""
    nodes = rag.read_nodes()
    order = np.argsort(nodes["ids"])
    ids = nodes["ids"][order].astype(np.uint64)
    pages = list(rag.iter_edges(page_size))
    missing = [name for name in EDGE_STATISTICS if any(name not in page.statistics for page in pages)]
    if missing:
        raise RuntimeError(f"the RAG's edges lack {missing}: were contacts computed by another version?")
    u = np.concatenate([np.zeros(0, dtype=np.uint64)] + [page.u for page in pages])
    v = np.concatenate([np.zeros(0, dtype=np.uint64)] + [page.v for page in pages])
    statistics = {
        name: np.concatenate([np.zeros(0)] + [page.statistics[name] for page in pages]).astype(np.float64) for name in EDGE_STATISTICS
    }
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
    scoring_function = config.segment.scoring_functions[config.segment.scoring_function]
    kept, merged, levels = agglomerate_graph(*basin_graph, scoring_function, max(thresholds))
    # Merges are of basins; each basin stands for one of its fragments, and its own pieces
    # join at every threshold.
    representative = np.zeros(len(basin_graph[0]), dtype=np.int64)
    representative[basin[::-1]] = np.arange(len(basin))[::-1]
    pieces = np.flatnonzero(representative[basin] != np.arange(len(basin)))
    kept = np.concatenate([representative[basin[pieces]], representative[kept]])
    merged = np.concatenate([pieces, representative[merged]])
    levels = np.concatenate([np.full(len(pieces), -np.inf), levels])
    forests = np.lib.format.open_memmap(union_find_path(config), mode="w+", dtype=np.int64, shape=(len(thresholds), len(ids)))
    for start in range(0, len(ids), page_size):
        forests[:, start : start + page_size] = np.arange(start, min(start + page_size, len(ids)), dtype=np.int64)
    for parent, threshold in zip(forests, thresholds):
        below = levels < threshold
        join(parent, kept[below], merged[below])
    for parent, threshold in zip(forests, thresholds):
        final = lookup_path(config, threshold)
        table = np.lib.format.open_memmap(final.with_suffix(".tmp.npy"), mode="w+", dtype=np.uint64, shape=(len(ids),))
        for start in range(0, len(ids), page_size):
            stop = min(start + page_size, len(ids))
            table[start:stop] = ids[find_roots(parent, np.arange(start, stop))]
        table.flush()
        del table
        final.with_suffix(".tmp.npy").replace(final)
    del forests
    union_find_path(config).unlink()


@contextmanager
def segment_blocks(setup: WorkerSetup):
    yield lambda block: find_segments(setup.plan.config, setup.rag)


def lookup_files(plan: RunPlan) -> list[Path]:
    """What relabel reads."""
    config = plan.config
    return [fragment_ids_path(config), *(lookup_path(config, threshold) for threshold in config.segment.thresholds)]


STAGE = Stage("segment", "neurosam.stages.segment:segment_blocks", whole_volume, sections=("segment",), work_files=lookup_files)
