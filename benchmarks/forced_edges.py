"""Which claims make forced edges (the pieces of a basin cut by block faces, joined before any
merge): the block-wise run's forced edges under three rules for the claims of its fragments
stage, how many of them join fragments that the one-block run keeps apart, and the VOI between
one process over the block-wise RAG with them and the one-block segmentation, at thresholds
0.1-0.9. The rules: every claim; only a basin's claims on a fragment above whose face it claims
at least as much as any other basin does (leading); leading or open (the pipeline's rule,
``neurosam.graph.agglomeration.claimed_pairs``, which the RAG's ``claimed_area`` counts).

    python benchmarks/forced_edges.py [--volume network] [--block 32]
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate

from neurosam.config import HIST_QUANT_50, load_config
from neurosam.graph.agglomeration import OPEN_BASIN, claimed_pairs
from neurosam.graph.merging import Graph, merge
from neurosam.graph.metrics import evaluate
from neurosam.graph.scoring import Program
from neurosam.io.volumes import open_array
from neurosam.layout import claims_path
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


def claimed_area_by_rule(work_dir: Path, fragments: np.ndarray, ids: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """Per rule, per edge (positions ``a`` < ``b`` in ``ids``), the voxel pairs across block
    faces whose claims count, from the fragments stage's claims arrays."""
    config = load_config(work_dir / "config.yaml")
    block = Coordinate(config.blocks.block_size) / open_array(config.datasets.fragments).voxel_size
    rules = {
        "every claim": lambda claims: np.where(claims != 0, claims | OPEN_BASIN, claims),
        "leading": lambda claims: claims & ~OPEN_BASIN,
        "leading or open": lambda claims: claims,
    }
    keys = a.astype(np.int64) * len(ids) + b
    order = np.argsort(keys)
    areas = {name: np.zeros(len(a), dtype=np.int64) for name in rules}
    for axis in range(3):
        array = open_array(claims_path(config, axis))
        every_claim = array[array.roi]
        for face in range(block[axis], fragments.shape[axis], block[axis]):
            layer = (slice(None),) * axis + (face,)
            below = (slice(None),) * axis + (face - 1,)
            claims = every_claim[layer]
            touching = (fragments[layer] != fragments[below]) & (fragments[layer] != 0) & (fragments[below] != 0)
            here, there = np.searchsorted(ids, fragments[layer][touching]), np.searchsorted(ids, fragments[below][touching])
            edge = order[np.searchsorted(keys[order], np.minimum(here, there).astype(np.int64) * len(ids) + np.maximum(here, there))]
            for name, rule in rules.items():
                np.add.at(areas[name], edge, claimed_pairs(rule(claims), fragments[layer], fragments[below])[touching])
    return areas


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
    args = parser.parse_args()
    fidelity = _fidelity_benchmark()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        inputs = fidelity.VOLUMES[args.volume](scratch / args.volume)
        one_block = dict(fidelity.run(scratch / "one_block", inputs, None)[0])
        fidelity.run(scratch / "blockwise", inputs, args.block)
        one_fragments = fragments_and_edges(scratch / "one_block")[0]
        fragments, u, v, statistics = fragments_and_edges(scratch / "blockwise")
        ids = np.unique(np.concatenate([np.unique(fragments), u, v]))
        ids = ids[ids != 0]
        a, b = np.searchsorted(ids, u), np.searchsorted(ids, v)
        claimed = claimed_area_by_rule(scratch / "blockwise", fragments, ids, a, b)
    area = statistics["contact_area"]
    assert (claimed["leading or open"] == statistics["claimed_area"]).all(), "the RAG's claimed_area is not the pipeline's rule"
    one_fragment = majority(fragments, ids, one_fragments)
    thresholds = sorted(one_block)
    print(f"{args.volume}, {args.block}^3 blocks; VOI between one process over the block-wise RAG and the one-block run at {' / '.join(f'{t:g}' for t in thresholds)}")
    for name, claimed_area in claimed.items():
        forced = (claimed_area > 0) & (2 * claimed_area >= area)
        wrong = forced & (one_fragment[a] != one_fragment[b])
        graph = Graph(
            len(ids), a, b, statistics["affinity_max"], statistics["affinity_min"], statistics["affinity_sum"], area, forced,
            key=statistics["contact_last"],
        )
        betweens = []
        for threshold in thresholds:
            merged = merge(graph, Program(HIST_QUANT_50), threshold)
            segments = np.where(fragments != 0, merged.smallest[merged.root][np.searchsorted(ids, fragments)].astype(np.uint64) + 1, 0)
            betweens.append(evaluate(segments, one_block[threshold], ignore_background=False)["voi"])
        print(f"{name}: {forced.sum():,} forced edges, {wrong.sum()} joining fragments the one-block run keeps apart; VOI {' / '.join(f'{x:.3f}' for x in betweens)}")


if __name__ == "__main__":
    main()
