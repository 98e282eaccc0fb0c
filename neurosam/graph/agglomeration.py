"""Agglomeration over the whole region adjacency graph, merge for merge as waterz agglomerates
one volume, from statistics that blocks compute apart and that add up exactly.

Why this is faithful: waterz scores an edge from statistics of the affinities on the contact
surface of two regions (their maximum, minimum, sum and count, region sizes), and when regions
merge it combines those statistics by max, min and sums. Each fragment pair's statistics are
computed once, over its whole contact, by the block that owns the pair; so the graph here
holds exactly what waterz would hold for the same fragments in one volume, and the merging
below repeats waterz's loop (IterativeRegionMerging): pop the lowest-scored edge, rescore it
if its statistics changed since it was scored, else merge its regions, folding parallel edges
into one. Blocks therefore change only where they cut fragments, and those pieces touch across
strong affinities and merge first.

waterz keeps, for its quantile functions, only each fragment pair's maximum affinity when it
builds the graph (``InitWithMax``, its default), and a quantile of a merged edge is taken over
those maxima; so four numbers per pair carry every function below.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from neurosam.graph.scoring import ScoringFunctionError, parse_scoring_function

#: What each RAG edge carries: the contact surface's affinity statistics.
EDGE_STATISTICS = ("affinity_max", "affinity_min", "affinity_sum", "contact_area", "claimed_area")
#: The dtype each is stored in: the extremes are affinities, float32 as waterz reads them; the
#: sum adds up to millions of them, beyond float32's exact integers of 1/255; areas count voxels.
STATISTIC_DTYPES = {
    "affinity_max": np.float32, "affinity_min": np.float32, "affinity_sum": np.float64,
    "contact_area": np.uint32, "claimed_area": np.uint32,
}
#: What waterz's scoring functions are computed from, in the order _Edge takes them.
MERGED_STATISTICS = EDGE_STATISTICS[:4]


def contact_statistics(
    affinities: np.ndarray, labels: np.ndarray, claimed: list[np.ndarray] | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every pair (u, v), u < v, of non-zero labels touching along an axis, with the statistics
    of the affinities between their touching voxels, as waterz reads them: channel d at voxel p
    is the affinity between p and p minus one step along axis d. ``claimed[d]`` at p, where
    given, marks the pair (p - d, p) as inside one watershed basin (``claimed_area`` counts them).

    Returns pairs (N, 2), sorted, and EDGE_STATISTICS arrays of N each, in STATISTIC_DTYPES."""
    base = np.uint64(labels.max(initial=0)) + np.uint64(1)
    codes, values, inside = [], [], []
    for axis in range(3):
        here = labels[(slice(None),) * axis + (slice(1, None),)]
        there = labels[(slice(None),) * axis + (slice(None, -1),)]
        touching = (here != there) & (here != 0) & (there != 0)
        a, b = here[touching].astype(np.uint64), there[touching].astype(np.uint64)
        codes.append(np.minimum(a, b) * base + np.maximum(a, b))
        values.append(affinities[axis][(slice(None),) * axis + (slice(1, None),)][touching])
        inside.append(claimed[axis][(slice(None),) * axis + (slice(1, None),)][touching] if claimed else np.zeros(touching.sum(), dtype=bool))
    codes, values, inside = np.concatenate(codes), np.concatenate(values).astype(np.float32), np.concatenate(inside)
    order = np.argsort(codes, kind="stable")
    codes, values, inside = codes[order], values[order], inside[order]
    starts = np.flatnonzero(np.concatenate([[True], codes[1:] != codes[:-1]])) if len(codes) else np.zeros(0, dtype=np.intp)
    unique = codes[starts]
    pairs = np.stack([unique // base, unique % base], axis=1)
    if len(codes) == 0:
        return pairs.astype(np.uint64), {name: np.zeros(0, dtype=dtype) for name, dtype in STATISTIC_DTYPES.items()}
    statistics = {
        "affinity_max": np.maximum.reduceat(values, starts),
        "affinity_min": np.minimum.reduceat(values, starts),
        "affinity_sum": np.add.reduceat(values.astype(np.float64), starts),
        "contact_area": np.diff(np.append(starts, len(codes))),
        "claimed_area": np.add.reduceat(inside.astype(np.int64), starts),
    }
    return pairs, {name: values.astype(STATISTIC_DTYPES[name]) for name, values in statistics.items()}


def join_cut_basins(
    sizes: np.ndarray, u: np.ndarray, v: np.ndarray, statistics: dict[str, np.ndarray]
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
    """Rejoin the fragments that are pieces of one watershed basin cut by block faces (most of
    their contact claimed as inside one basin), before any merging: one volume's watershed
    would have made them one fragment, so their edges to a neighbour fold into one as waterz
    builds its graph (maximum of the maxima, sums of the rest), not as it merges.

    Returns each node's basin, and the graph of the basins (sizes, u, v, statistics)."""
    cut = 2 * statistics["claimed_area"] >= statistics["contact_area"]
    cut &= statistics["claimed_area"] > 0
    count = len(sizes)
    _, basin = connected_components(coo_matrix((np.ones(cut.sum()), (u[cut], v[cut])), shape=(count, count)), directed=False)
    basins = int(basin.max(initial=-1)) + 1
    basin_sizes = np.bincount(basin, weights=sizes, minlength=basins)
    a, b = basin[u], basin[v]
    between = a != b
    low, high = np.minimum(a, b)[between], np.maximum(a, b)[between]
    codes = low.astype(np.int64) * basins + high
    order = np.argsort(codes, kind="stable")
    codes = codes[order]
    starts = np.flatnonzero(np.concatenate([[True], codes[1:] != codes[:-1]])) if len(codes) else np.zeros(0, dtype=np.intp)
    folded = {}
    for name in EDGE_STATISTICS:
        values = statistics[name][between][order]
        reduce = {"affinity_max": np.maximum, "affinity_min": np.minimum}.get(name, np.add)
        folded[name] = reduce.reduceat(values, starts) if len(values) else values
    unique = codes[starts] if len(codes) else codes
    return basin, (basin_sizes, unique // basins, unique % basins, folded)


class _Edge:
    """A region graph edge's statistics; ``maxima`` (sorted) only where a quantile is scored."""

    __slots__ = ("maximum", "minimum", "total", "area", "maxima")

    def __init__(self, maximum: float, minimum: float, total: float, area: float, keep_maxima: bool):
        self.maximum, self.minimum, self.total, self.area = maximum, minimum, total, area
        self.maxima = [maximum] if keep_maxima else None

    def absorb(self, other: "_Edge") -> None:
        self.maximum = max(self.maximum, other.maximum)
        self.minimum = min(self.minimum, other.minimum)
        self.total += other.total
        self.area += other.area
        if self.maxima is not None:
            self.maxima = sorted(self.maxima + other.maxima)


def _discretize(value: float, levels: int) -> int:
    if not value > 0:
        return 0
    if value >= 1:
        return levels - 1
    return min(int(value * levels), levels - 1)


def _safe_divide(a: float, b: float) -> float:
    if abs(b) <= np.finfo(np.float32).tiny:
        return -np.finfo(np.float32).max if a * b < 0 else np.finfo(np.float32).max
    return a / b


UNARY = {"OneMinus": lambda x: 1.0 - x, "Invert": lambda x: 1.0 / x, "Square": lambda x: x * x}
BINARY = {
    "Add": lambda a, b: a + b,
    "Subtract": lambda a, b: a - b,
    "Multiply": lambda a, b: a * b,
    "Divide": _safe_divide,
    "Step": lambda a, b: 0.0 if a < b else 1.0,
}


class Scorer:
    """A waterz scoring function as a Python function of one edge and its regions' sizes."""

    def __init__(self, text: str):
        self.tree = parse_scoring_function(text)
        self.uses_sizes = False
        self.uses_maxima = False
        self.score = self._compile(self.tree)

    def _compile(self, node):
        name, arguments = node
        if name in UNARY:
            inner, operation = self._compile(arguments[0]), UNARY[name]
            return lambda edge, su, sv: operation(inner(edge, su, sv))
        if name in BINARY:
            left, right, operation = self._compile(arguments[0]), self._compile(arguments[1]), BINARY[name]
            return lambda edge, su, sv: operation(left(edge, su, sv), right(edge, su, sv))
        if name in ("MinSize", "MaxSize"):
            self.uses_sizes = True
            return (lambda edge, su, sv: float(min(su, sv))) if name == "MinSize" else (lambda edge, su, sv: float(max(su, sv)))
        if name == "ContactArea":
            return lambda edge, su, sv: edge.area
        if name == "MinAffinity":
            return lambda edge, su, sv: edge.minimum
        if name == "MaxAffinity":
            return lambda edge, su, sv: edge.maximum
        if name == "MeanAffinity":
            return lambda edge, su, sv: edge.total / edge.area
        if name == "Constant":
            value = float(arguments[1])
            return lambda edge, su, sv: value
        if name in ("HistogramQuantileAffinity", "QuantileAffinity"):
            return self._quantile(name, arguments)
        raise ScoringFunctionError(
            f"{name} cannot be scored from the RAG's edge statistics (max, min, mean, contact area, sizes, "
            "and quantiles of the pairs' maxima); use one of those"
        )

    def _quantile(self, name: str, arguments: list[str]):
        init_with_max = arguments[-1] if arguments[-1] in ("true", "false") else "true"
        if init_with_max != "true":
            raise ScoringFunctionError(
                f"{name} with InitWithMax false needs every affinity of a contact, which the RAG does not keep; "
                "leave InitWithMax at its default (true)"
            )
        self.uses_maxima = True
        q = int(arguments[1])
        if name == "QuantileAffinity":
            def vector_quantile(edge, su, sv):
                count = len(edge.maxima)
                return edge.maxima[min(q * count // 100, count - 1)]
            return vector_quantile
        bins = int(arguments[3])

        def histogram_quantile(edge, su, sv):
            rank = q * len(edge.maxima) // 100
            level = _discretize(edge.maxima[rank], bins) if rank < len(edge.maxima) else bins
            return (level + 0.5) / bins
        return histogram_quantile


def agglomerate_graph(
    sizes: np.ndarray, u: np.ndarray, v: np.ndarray, statistics: dict[str, np.ndarray], scoring_function: str, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge regions 0..len(sizes)-1 joined by edges (u[i], v[i]) until the lowest score left
    reaches ``threshold``, as waterz's region merging does.

    Returns the merges in order as (kept region, merged region, level): a merge's level is the
    highest score merged up to it, so the segmentation at threshold t, which waterz gives by
    stopping at the first score >= t, is every merge of level < t."""
    scorer = Scorer(scoring_function)
    sizes = [int(size) for size in sizes]
    edges = [
        _Edge(*values, scorer.uses_maxima)
        for values in zip(*(statistics[name].tolist() for name in MERGED_STATISTICS))
    ]
    ends = [[int(a), int(b)] for a, b in zip(u.tolist(), v.tolist())]
    neighbours: list[dict[int, int]] = [dict() for _ in sizes]
    for edge, (a, b) in enumerate(ends):
        neighbours[a][b] = edge
        neighbours[b][a] = edge
    scores = [scorer.score(edges[e], sizes[a], sizes[b]) for e, (a, b) in enumerate(ends)]
    queue = [(score, e) for e, score in enumerate(scores)]
    heapq.heapify(queue)
    stale = [False] * len(edges)
    deleted = [False] * len(edges)
    merges, level = [], -math.inf

    while queue and queue[0][0] < threshold:
        score, e = heapq.heappop(queue)
        if deleted[e]:
            continue
        a, b = ends[e]
        if stale[e]:
            stale[e] = False
            scores[e] = scorer.score(edges[e], sizes[a], sizes[b])
            heapq.heappush(queue, (scores[e], e))
            continue
        level = max(level, score)
        merges.append((a, b, level))
        sizes[a] += sizes[b]
        if scorer.uses_sizes:
            for neighbour_edge in neighbours[a].values():
                stale[neighbour_edge] = True
        del neighbours[a][b]
        for neighbour, moving in neighbours[b].items():
            if moving == e:
                continue
            del neighbours[neighbour][b]
            kept = neighbours[a].get(neighbour)
            if kept is None:
                ends[moving] = [a, neighbour]
                neighbours[a][neighbour] = neighbours[neighbour][a] = moving
                stale[moving] = stale[moving] or scorer.uses_sizes
                continue
            # Parallel edges become one, as in waterz: the lower-scored one lives on.
            if scores[moving] > scores[kept]:
                edges[kept].absorb(edges[moving])
                deleted[moving], stale[kept] = True, True
            else:
                edges[moving].absorb(edges[kept])
                deleted[kept], stale[moving] = True, True
                ends[moving] = [a, neighbour]
                neighbours[a][neighbour] = neighbours[neighbour][a] = moving
        neighbours[b] = {}

    if not merges:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
    kept, merged, levels = zip(*merges)
    return np.array(kept, dtype=np.int64), np.array(merged, dtype=np.int64), np.array(levels)
