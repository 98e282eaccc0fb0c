"""Where a block-wise run still departs from one block (the fidelity benchmark's misses): which
forced edges of the block-wise RAG (the pieces of a basin cut by block faces) join fragments
that the one-block run keeps apart, and what one process over the block-wise RAG gives at a
threshold with and without them, against the one-block segmentation.

    python benchmarks/forced_edges.py [--volume network] [--block 32] [--threshold 0.6]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

import numpy as np

from neurosam.config import HIST_QUANT_50, load_config
from neurosam.graph.merging import Graph, merge
from neurosam.graph.metrics import evaluate
from neurosam.graph.scoring import Program
from neurosam.io.volumes import open_array
from neurosam.rag import open_rag

REPO = Path(__file__).resolve().parents[1]


def _fidelity_benchmark():
    spec = importlib.util.spec_from_file_location("agglomeration_fidelity", REPO / "benchmarks" / "agglomeration_fidelity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fragments_and_edges(work_dir: Path):
    config = load_config(work_dir / "config.yaml")
    array = open_array(config.datasets.fragments)
    with open_rag(config.rag.url) as rag:
        pages = list(rag.iter_edges(10**9))
    u = np.concatenate([page.u for page in pages])
    v = np.concatenate([page.v for page in pages])
    statistics = {name: np.concatenate([page.statistics[name] for page in pages]) for name in pages[0].statistics}
    return array[array.roi], u, v, statistics


def majority(labels: np.ndarray, ids: np.ndarray, other: np.ndarray) -> np.ndarray:
    """For each of ``ids`` (sorted, no 0), the label of ``other`` covering most of its voxels."""
    inside = labels.ravel() != 0
    index = np.searchsorted(ids, labels.ravel()[inside])
    pairs, counts = np.unique(np.stack([index, other.ravel()[inside].astype(np.int64)]), axis=1, return_counts=True)
    order = np.lexsort((counts, pairs[0]))
    last = np.flatnonzero(np.append(pairs[0][order][1:] != pairs[0][order][:-1], True))
    result = np.zeros(len(ids), dtype=np.int64)
    result[pairs[0][order][last]] = pairs[1][order][last]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volume", default="network", choices=["gala", "medulla", "network"])
    parser.add_argument("--block", type=int, default=32, help="block edge in voxels")
    parser.add_argument("--threshold", type=float, default=0.6)
    args = parser.parse_args()
    fidelity = _fidelity_benchmark()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        inputs = fidelity.VOLUMES[args.volume](scratch / args.volume)
        one_block, _ = fidelity.run(scratch / "one_block", inputs, None)
        fidelity.run(scratch / "blockwise", inputs, args.block)
        one_fragments = fragments_and_edges(scratch / "one_block")[0]
        fragments, u, v, statistics = fragments_and_edges(scratch / "blockwise")
    ids = np.unique(np.concatenate([np.unique(fragments), u, v]))
    ids = ids[ids != 0]
    a, b = np.searchsorted(ids, u), np.searchsorted(ids, v)
    claimed, area = statistics["claimed_area"], statistics["contact_area"]
    forced = (claimed > 0) & (2 * claimed >= area)
    one_fragment = majority(fragments, ids, one_fragments)
    wrong = forced & (one_fragment[a] != one_fragment[b])
    print(f"{args.volume}, {args.block}^3 blocks: {forced.sum():,} forced edges, {wrong.sum()} of them join fragments the one-block run keeps apart")
    reference = one_block[args.threshold]
    for name, chosen in (("all forced edges", forced), ("without those", forced & ~wrong)):
        graph = Graph(
            len(ids), a, b, statistics["affinity_max"], statistics["affinity_min"], statistics["affinity_sum"], area, chosen,
            key=statistics["contact_last"],
        )
        merged = merge(graph, Program(HIST_QUANT_50), args.threshold)
        segments = np.where(fragments != 0, merged.smallest[merged.root][np.searchsorted(ids, fragments)].astype(np.uint64) + 1, 0)
        between = evaluate(segments, reference, ignore_background=False)["voi"]
        print(f"one process over the block-wise RAG, {name}, at {args.threshold:g}: VOI {between:.3f} against the one-block run")


if __name__ == "__main__":
    main()
