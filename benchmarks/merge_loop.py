"""The compiled merge loop's cost per edge (issue 18, goal 3: at most 3 CPU us and 200 bytes).

A synthetic RAG shaped like the pipeline's: fragments on a 3D grid touching their six neighbours
and, to about 4.9 edges per fragment, some diagonal ones; random contact statistics, scored by
hist_quant_50 and merged up to the default's highest threshold, then up to 1.0 (every merge there
is). The loop is compiled first on a small graph; CPU time is the process's, memory the growth
of its peak resident set over the graph held before the merge (``/proc/self/clear_refs`` resets
the peak).

    python benchmarks/merge_loop.py [--side 64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from neurosam.config import HIST_QUANT_50, SegmentConfig
from neurosam.graph.merging import Graph, merge
from neurosam.graph.scoring import Program

MAX_CPU_US = 3.0
MAX_BYTES = 200


def grid_graph(side: int, rng: np.random.Generator) -> Graph:
    index = np.arange(side**3).reshape((side,) * 3)
    u, v = [], []
    for offset in [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1), (1, 1, 0)]:
        here = index[tuple(slice(0, side - o) for o in offset)]
        there = index[tuple(slice(o, side) for o in offset)]
        keep = rng.random(here.size) < (1.0 if sum(offset) == 1 else 0.95)
        u.append(here.ravel()[keep])
        v.append(there.ravel()[keep])
    u, v = np.concatenate(u), np.concatenate(v)
    count = len(u)
    area = rng.integers(1, 200, count).astype(np.float64)
    maximum = rng.random(count)
    minimum = maximum * rng.random(count)
    total = area * (minimum + (maximum - minimum) * rng.random(count))
    return Graph(side**3, u, v, maximum, minimum, total, area, np.zeros(count, dtype=bool))


def resident() -> tuple[int, int]:
    """(current, peak) resident bytes."""
    with open("/proc/self/status") as status:
        values = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in status if line.startswith(("VmRSS", "VmHWM"))}
    return values["VmRSS"], values["VmHWM"]


def measure(graph: Graph, program: Program, threshold: float) -> tuple[int, float, float]:
    """(merges, CPU us per edge, bytes per edge the peak resident set grew by)."""
    edges = len(graph.u)
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    before, _ = resident()
    started = time.process_time()
    merged = merge(graph, program, threshold)
    seconds = time.process_time() - started
    _, peak = resident()
    return len(merged.kept), 1e6 * seconds / edges, (peak - before) / edges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=64, help="fragments per axis of the grid (default 64: 1.3 million edges)")
    args = parser.parse_args()
    program = Program(HIST_QUANT_50)
    merge(grid_graph(8, np.random.default_rng(1)), program, 1.0)
    graph = grid_graph(args.side, np.random.default_rng(0))
    edges = len(graph.u)
    own = sum(a.nbytes for a in (graph.u, graph.v, graph.maximum, graph.minimum, graph.total, graph.area)) / edges
    print(f"graph: {graph.nodes:,} fragments, {edges:,} edges ({edges / graph.nodes:.1f} per fragment, {own:.0f} bytes each), hist_quant_50")
    for threshold, what in ((max(SegmentConfig().thresholds), "the default's highest threshold"), (1.0, "every merge there is")):
        merges, us, grown = measure(graph, program, threshold)
        verdict = "met" if us <= MAX_CPU_US and grown <= MAX_BYTES else "NOT met"
        print(
            f"up to {threshold:g} ({what}): {merges:,} merges, {us:.2f} CPU us and {grown:.0f} bytes per edge "
            f"(peak resident growth over the graph) -> goal of at most {MAX_CPU_US:g} us and {MAX_BYTES} bytes on at least "
            f"1 million edges: {verdict if edges >= 1_000_000 else 'not measured (fewer than 1 million edges)'}"
        )


if __name__ == "__main__":
    main()
