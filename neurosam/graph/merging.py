"""The merge loop, compiled: waterz's region merging over a graph of statistics, with a heap of
lazily deleted entries and union-find, in a few flat arrays.

Pop the lowest-scored edge; merge its regions (the one with the shorter adjacency list into the
other), folding parallel edges into one. A folded edge is scored again only when it comes up
(until then the lower score of its parts stands for it, as a folded edge never scores below
both), so an edge folded many times is scored once. An edge's statistics
are its contact's maximum, minimum, sum of affinities and area, and for quantile scores the
multiset of its fragment pairs' maxima (waterz's ``InitWithMax``), kept as linked lists so that
folding two edges is a splice. A forced edge (the pieces of one watershed basin cut by block
faces) scores below everything and merges even frozen regions: joining the pieces is how one
volume's watershed would have built the graph, so their pairs with a fragment beyond fold into
one pair, of the larger maximum, before any merging. Parallel edges given in the graph are such
pairs too (a parent's edges between two children's pieces of basins), and fold the same way.

Frozen regions support the hierarchy (``neurosam.graph.hierarchy``): a region that may have edges
this graph does not hold never merges here. An edge with a frozen end is deferred when it is
popped, and its other end freezes from then on, because the merge the whole graph would make at
that score is not known here. Once the forced edges are merged, the regions next to a frozen
one freeze too: a frozen region may be a piece of a basin whose other pieces lie beyond the
graph, and a neighbour touching two pieces must still hold one pair with each when a parent
joins them, as it did here before any merging. For the scoring functions that
``neurosam.graph.scoring`` accepts as exact, a folded edge scores at least the lower of its
parts, so scores pop in increasing order and every merge made here is made, at the same score,
by one process over the whole graph.

Ties of equal score are broken by a key of the edge that depends neither on the super-blocks
nor on the blocks: where its contact surface ends in the volume's scan order (``contact_last``,
``neurosam.graph.agglomeration``), which folding keeps as the larger of its parts'. An edge's
order (score, key) then never falls by folding either, so one process and every super-block
merge equal scores in one shared order, and a block-wise run in the order of one block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from neurosam.graph.scoring import (
    ADD, AREA, CONSTANT, DIVIDE, HISTOGRAM_QUANTILE, INVERT, MAX, MEAN, MIN, MULTIPLY, ONE_MINUS, QUANTILE, SQUARE, STEP,
    SUBTRACT, Program,
)

FLOAT32_TINY = float(np.finfo(np.float32).tiny)
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Graph:
    """Edges between nodes 0..n-1 with their statistics. ``maxima`` and ``maxima_offsets`` (CSR,
    len(u) + 1) hold each edge's multiset of pair maxima, where the scoring function takes a
    quantile; an edge without a multiset stands for one pair, its maximum. ``key`` breaks ties:
    distinct per edge, and a folded edge's is the larger of its parts' (the pipeline's: where
    its contact ends in the volume's scan order, ``contact_last``; without it, the edge's index)."""

    nodes: int
    u: np.ndarray
    v: np.ndarray
    maximum: np.ndarray
    minimum: np.ndarray
    total: np.ndarray
    area: np.ndarray
    forced: np.ndarray
    maxima: np.ndarray | None = None
    maxima_offsets: np.ndarray | None = None
    key: np.ndarray | None = None


def below(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Which scores lie below ``threshold`` as waterz compares them, both in float32 (its
    ScoreValue): a score of 1 - 51/255 is not below 0.8 there. Rounding keeps the order, so the
    merges below a threshold are still the first ones."""
    return np.asarray(scores).astype(np.float32) < np.float32(threshold)


@dataclass
class Merged:
    """What the loop leaves: merges in order (the smallest node of either region, and the score);
    each node's root and each root's smallest node; which roots are frozen and the highest
    score of the merges that made each; and the deferred edges between frozen roots (as a
    ``Graph`` over root indices, ``maxima`` kept where the program takes quantiles)."""

    kept: np.ndarray
    merged: np.ndarray
    scores: np.ndarray
    root: np.ndarray
    smallest: np.ndarray
    frozen: np.ndarray
    complete_at: np.ndarray
    deferred: Graph


@numba.njit(cache=True, nogil=True)
def _discretize(value, bins):
    if not value > 0:
        return 0
    if value >= 1:
        return bins - 1
    return min(int(value * bins), bins - 1)


@numba.njit(cache=True, nogil=True)
def _select(values, n, k):
    """The k-th smallest of ``values[:n]`` (from 0), which it reorders (Hoare's selection): no
    sort, no allocation, for the short lists most quantiles are taken of."""
    low, high = 0, n - 1
    while low < high:
        pivot = values[(low + high) >> 1]
        i, j = low, high
        while i <= j:
            while values[i] < pivot:
                i += 1
            while values[j] > pivot:
                j -= 1
            if i <= j:
                values[i], values[j] = values[j], values[i]
                i += 1
                j -= 1
        if k <= j:
            high = j
        elif k >= i:
            low = i
        else:
            break
    return values[k]


@numba.njit(cache=True, nogil=True)
def _quantile(e, q, bins, head, length, next_element, value, dense, rows, scratch):
    """The q-th percentile of edge e's pair maxima, as waterz takes it (rank q * n // 100 of the
    sorted maxima; with ``bins``, of their histogram, kept whole in ``rows`` for long lists).
    A histogram's bins keep the maxima's order, so the rank's bin is that of the rank's maximum."""
    n = length[e]
    rank = q * n // 100
    if bins > 0:
        if rank >= n:
            return (bins + 0.5) / bins
        if dense[e] >= 0:
            row, seen = dense[e], 0
            for level in range(bins):
                seen += rows[row, level]
                if seen > rank:
                    return (level + 0.5) / bins
    if n == 1:
        chosen = value[head[e]]
    else:
        element, i = head[e], 0
        while element >= 0:
            scratch[i] = value[element]
            element = next_element[element]
            i += 1
        chosen = _select(scratch, n, min(rank, n - 1))
    if bins > 0:
        return (_discretize(chosen, bins) + 0.5) / bins
    return chosen


@numba.njit(cache=True, nogil=True)
def _score(e, codes, parameters, maximum, minimum, total, area, forced, head, length, next_element, value, dense, rows, stack, scratch):
    """Evaluate the scoring program (postfix) on edge e."""
    if forced[e]:
        return -np.inf
    top = 0
    for i in range(len(codes)):
        code = codes[i]
        if code == MAX:
            stack[top] = maximum[e]
            top += 1
        elif code == MIN:
            stack[top] = minimum[e]
            top += 1
        elif code == MEAN:
            stack[top] = total[e] / area[e]
            top += 1
        elif code == AREA:
            stack[top] = area[e]
            top += 1
        elif code == CONSTANT:
            stack[top] = parameters[i, 0]
            top += 1
        elif code == QUANTILE or code == HISTOGRAM_QUANTILE:
            bins = int(parameters[i, 1]) if code == HISTOGRAM_QUANTILE else 0
            stack[top] = _quantile(e, int(parameters[i, 0]), bins, head, length, next_element, value, dense, rows, scratch)
            top += 1
        elif code == ONE_MINUS:
            stack[top - 1] = 1.0 - stack[top - 1]
        elif code == INVERT:
            stack[top - 1] = 1.0 / stack[top - 1]
        elif code == SQUARE:
            stack[top - 1] = stack[top - 1] * stack[top - 1]
        else:
            b = stack[top - 1]
            a = stack[top - 2]
            top -= 1
            if code == ADD:
                stack[top - 1] = a + b
            elif code == SUBTRACT:
                stack[top - 1] = a - b
            elif code == MULTIPLY:
                stack[top - 1] = a * b
            elif code == DIVIDE:
                if abs(b) <= FLOAT32_TINY:
                    stack[top - 1] = -FLOAT32_MAX if a * b < 0 else FLOAT32_MAX
                else:
                    stack[top - 1] = a / b
            elif code == STEP:
                stack[top - 1] = 0.0 if a < b else 1.0
    return stack[0]


@numba.njit(cache=True, nogil=True)
def _before(score, key, other_score, other_key):
    """Whether (score, key) comes first in the merge order."""
    return score < other_score or (score == other_score and key < other_key)


@numba.njit(cache=True, nogil=True)
def _push(heap_score, heap_key, heap_edge, size, score, key, edge):
    """Push onto the binary heap held in the arrays (grown by the caller); returns the new size."""
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if not _before(score, key, heap_score[parent], heap_key[parent]):
            break
        heap_score[i] = heap_score[parent]
        heap_key[i] = heap_key[parent]
        heap_edge[i] = heap_edge[parent]
        i = parent
    heap_score[i] = score
    heap_key[i] = key
    heap_edge[i] = edge
    return size + 1


EMPTY, DELETED = -1, -2


@numba.njit(cache=True, nogil=True)
def _slot(keys, key):
    """Where ``key`` is in the open-addressing table (linear probing), or where it would go."""
    mask = len(keys) - 1
    h = key * -7046029254386353131  # Fibonacci hashing: 2**64 / golden ratio
    i = (h ^ (h >> 29)) & mask
    free = -1
    while keys[i] != EMPTY:
        if keys[i] == key:
            return i
        if keys[i] == DELETED and free < 0:
            free = i
        i = (i + 1) & mask
    return i if free < 0 else free


@numba.njit(cache=True, nogil=True)
def _rebuild(keys, values):
    """The same entries without the deleted ones, whose slots would lengthen every probe."""
    old_keys, old_values = keys.copy(), values.copy()
    keys[:] = EMPTY
    for i in range(len(old_keys)):
        if old_keys[i] >= 0:
            j = _slot(keys, old_keys[i])
            keys[j] = old_keys[i]
            values[j] = old_values[i]


@numba.njit(cache=True, nogil=True)
def _sift_down(heap_score, heap_key, heap_edge, size, i):
    score, key, edge = heap_score[i], heap_key[i], heap_edge[i]
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and _before(heap_score[child + 1], heap_key[child + 1], heap_score[child], heap_key[child]):
            child += 1
        if not _before(heap_score[child], heap_key[child], score, key):
            break
        heap_score[i] = heap_score[child]
        heap_key[i] = heap_key[child]
        heap_edge[i] = heap_edge[child]
        i = child
    heap_score[i] = score
    heap_key[i] = key
    heap_edge[i] = edge


@numba.njit(cache=True, nogil=True)
def _pop(heap_score, heap_key, heap_edge, size):
    """Remove the top (read it before); returns the new size."""
    size -= 1
    if size > 0:
        heap_score[0], heap_key[0], heap_edge[0] = heap_score[size], heap_key[size], heap_edge[size]
        _sift_down(heap_score, heap_key, heap_edge, size, 0)
    return size


@numba.njit(cache=True, nogil=True)
def _current(s, k, e, score, key, alive, stale, deferred):
    """Whether a heap entry still stands for its edge: the edge's order, or while the edge is
    stale (folded since it was scored) a lower bound of it: its score then is the lowest of
    the folded parts', and its key, a key the edge had, is no larger than the edge's."""
    return alive[e] and not deferred[e] and s == score[e] and (stale[e] or k == key[e])


@numba.njit(cache=True, nogil=True)
def _push_compacting(heap_score, heap_key, heap_edge, size, s, k, e, score, key, alive, stale, deferred):
    """Push; when the heap is full, first drop the entries that no longer stand for their edge
    (in place), and double the arrays only if that leaves it over 3/4 full. Returns the arrays
    and the new size."""
    if size == len(heap_score):
        kept = 0
        for i in range(size):
            if _current(heap_score[i], heap_key[i], heap_edge[i], score, key, alive, stale, deferred):
                heap_score[kept], heap_key[kept], heap_edge[kept] = heap_score[i], heap_key[i], heap_edge[i]
                kept += 1
        size = kept
        for i in range(size // 2 - 1, -1, -1):
            _sift_down(heap_score, heap_key, heap_edge, size, i)
        if 4 * size > 3 * len(heap_score):
            heap_score = np.concatenate((heap_score, np.empty(len(heap_score))))
            heap_key = np.concatenate((heap_key, np.empty(len(heap_key), dtype=np.uint64)))
            heap_edge = np.concatenate((heap_edge, np.empty(len(heap_edge), dtype=np.int32)))
    return heap_score, heap_key, heap_edge, _push(heap_score, heap_key, heap_edge, size, s, k, e)


@numba.njit(cache=True, nogil=True)
def _fold(into, e, maximum, minimum, total, area, forced, key, head, tail, length, next_element, value, collapse, dense, rows, bins):
    """Fold edge e into edge ``into``. ``collapse``: the pieces of one basin are joining, so two
    pairs with one fragment on the other side are one pair, of the larger maximum."""
    key[into] = max(key[into], key[e])
    maximum[into] = max(maximum[into], maximum[e])
    minimum[into] = min(minimum[into], minimum[e])
    total[into] += total[e]
    area[into] += area[e]
    forced[into] = forced[into] or forced[e]
    if collapse and length[into] == 1 and length[e] == 1:
        value[head[into]] = max(value[head[into]], value[head[e]])
    elif dense[e] >= 0 and dense[into] >= 0:
        rows[dense[into]] += rows[dense[e]]
        length[into] += length[e]
    elif dense[into] >= 0 or dense[e] >= 0:
        row, listed = (dense[into], e) if dense[into] >= 0 else (dense[e], into)
        element = head[listed]
        while element >= 0:
            rows[row, _discretize(value[element], bins)] += 1
            element = next_element[element]
        dense[into], head[into] = row, -1
        length[into] += length[e]
    elif length[e] > 0:
        if length[into] > 0:
            next_element[tail[into]] = head[e]
        else:
            head[into] = head[e]
        tail[into] = tail[e]
        length[into] += length[e]


DENSE_FROM = 64


@numba.njit(cache=True, nogil=True)
def _densify(e, used_rows, head, next_element, value, dense, rows, bins):
    """Edge e's list of maxima becomes a histogram row; returns the rows used."""
    element = head[e]
    while element >= 0:
        rows[used_rows, _discretize(value[element], bins)] += 1
        element = next_element[element]
    dense[e], head[e] = used_rows, -1
    return used_rows + 1


@numba.njit(cache=True, nogil=True)
def _freeze_neighbours(ends, alive, frozen):
    """Freeze every region next to a frozen one (the ends of every alive edge are roots)."""
    was = frozen.copy()
    for e in range(ends.shape[0]):
        if alive[e]:
            a, b = ends[e, 0], ends[e, 1]
            if was[a] or was[b]:
                frozen[a] = True
                frozen[b] = True


@numba.njit(cache=True, nogil=True)
def _merge_loop(nodes, ends, maximum, minimum, total, area, forced, key, head, tail, length, next_element, value, dense,
                frozen, codes, parameters, threshold, scratch_size, bins):
    """The loop itself; ``ends`` (E, 2) are updated to roots as regions merge. Returns the merges
    (the smallest node of each region, and the score), each node's parent (roots point at
    themselves), each root's smallest node and highest merge score, and the edges still alive."""
    edges = ends.shape[0]
    parent = np.arange(nodes, dtype=np.int32)
    smallest = np.arange(nodes, dtype=np.int32)
    complete_at = np.full(nodes, -np.inf)
    list_head = np.full(nodes, -1, dtype=np.int32)
    list_tail = np.full(nodes, -1, dtype=np.int32)
    list_length = np.zeros(nodes, dtype=np.int32)
    next_half = np.full(2 * edges, -1, dtype=np.int32)
    alive = np.ones(edges, dtype=np.bool_)
    stale = np.zeros(edges, dtype=np.bool_)
    deferred = np.zeros(edges, dtype=np.bool_)
    score = np.empty(edges)
    capacity = 16
    while capacity < 2 * edges:
        capacity *= 2
    keys = np.full(capacity, EMPTY, dtype=np.int64)
    values = np.empty(capacity, dtype=np.int32)
    used = 0
    stack = np.empty(len(codes) + 1)
    scratch = np.empty(scratch_size)
    # Histograms of long lists: an edge's list grows past DENSE_FROM only by taking up that many
    # pairs, so there are at most pairs / DENSE_FROM (pages untouched until used).
    rows = np.zeros((scratch_size // DENSE_FROM + 1 if bins > 0 else 1, max(bins, 1)), dtype=np.int32)
    used_rows = 0

    for e in range(edges):
        a, b = ends[e, 0], ends[e, 1]
        slot = _slot(keys, np.int64(min(a, b)) * nodes + max(a, b))
        if keys[slot] >= 0:
            _fold(values[slot], e, maximum, minimum, total, area, forced, key, head, tail, length, next_element, value, True, dense, rows, bins)
            alive[e] = False
            continue
        keys[slot] = np.int64(min(a, b)) * nodes + max(a, b)
        values[slot] = e
        used += 1
        for side in range(2):
            node, half = ends[e, side], 2 * e + side
            if list_length[node] == 0:
                list_head[node] = half
            else:
                next_half[list_tail[node]] = half
            list_tail[node] = half
            list_length[node] += 1

    # Room for the entries folds push before merges have left enough stale ones to drop.
    heap_score = np.empty(edges + edges // 4 + 16)
    heap_key = np.empty(len(heap_score), dtype=np.uint64)
    heap_edge = np.empty(len(heap_score), dtype=np.int32)
    size = 0
    for e in range(edges):
        if alive[e]:
            if bins > 0 and length[e] > DENSE_FROM:
                used_rows = _densify(e, used_rows, head, next_element, value, dense, rows, bins)
            score[e] = _score(e, codes, parameters, maximum, minimum, total, area, forced, head, length, next_element, value, dense, rows, stack, scratch)
            heap_score[size], heap_key[size], heap_edge[size] = score[e], key[e], e
            size += 1
    for i in range(size // 2 - 1, -1, -1):
        _sift_down(heap_score, heap_key, heap_edge, size, i)

    kept_out = np.empty(16, dtype=np.int64)
    merged_out = np.empty(16, dtype=np.int64)
    score_out = np.empty(16)
    merges = 0
    forced_merged = False
    while size > 0:
        s, k, e = heap_score[0], heap_key[0], heap_edge[0]
        if np.float32(s) >= np.float32(threshold):  # as ``below`` compares
            break
        size = _pop(heap_score, heap_key, heap_edge, size)
        if not _current(s, k, e, score, key, alive, stale, deferred):
            continue
        if stale[e]:
            # The entry was a lower bound (the lowest score of its parts, a key no larger than
            # its own): the edge goes now if its own order still comes first, else back in line.
            stale[e] = False
            new = _score(e, codes, parameters, maximum, minimum, total, area, forced, head, length, next_element, value, dense, rows, stack, scratch)
            score[e] = new
            if new != s or (k != key[e] and size > 0 and _before(heap_score[0], heap_key[0], new, key[e])):
                heap_score, heap_key, heap_edge, size = _push_compacting(
                    heap_score, heap_key, heap_edge, size, new, key[e], e, score, key, alive, stale, deferred,
                )
                continue
        if not forced_merged and not forced[e]:
            forced_merged = True
            _freeze_neighbours(ends, alive, frozen)
        a, b = ends[e, 0], ends[e, 1]
        if (frozen[a] or frozen[b]) and not forced[e]:
            deferred[e] = True
            frozen[a] = True
            frozen[b] = True
            continue
        if merges == len(kept_out):
            kept_out = np.concatenate((kept_out, np.empty(merges, dtype=np.int64)))
            merged_out = np.concatenate((merged_out, np.empty(merges, dtype=np.int64)))
            score_out = np.concatenate((score_out, np.empty(merges)))
        kept_out[merges], merged_out[merges], score_out[merges] = smallest[a], smallest[b], s
        merges += 1
        big, small = (a, b) if list_length[a] >= list_length[b] else (b, a)
        alive[e] = False
        keys[_slot(keys, np.int64(min(a, b)) * nodes + max(a, b))] = DELETED
        if 4 * used > 3 * len(keys):
            _rebuild(keys, values)
            used = 0
            for i in range(len(keys)):
                used += keys[i] >= 0
        half = list_head[small]
        while half >= 0:
            moving = half >> 1
            if alive[moving]:
                side = half & 1
                other = ends[moving, 1 - side]
                keys[_slot(keys, np.int64(min(small, other)) * nodes + max(small, other))] = DELETED
                pair = np.int64(min(big, other)) * nodes + max(big, other)
                ends[moving, side] = big
                slot = _slot(keys, pair)
                if keys[slot] == pair:
                    existing = values[slot]
                    _fold(existing, moving, maximum, minimum, total, area, forced, key, head, tail, length, next_element, value, forced[e], dense, rows, bins)
                    if bins > 0 and dense[existing] < 0 and length[existing] > DENSE_FROM:
                        used_rows = _densify(existing, used_rows, head, next_element, value, dense, rows, bins)
                    alive[moving] = False
                    # Scored again only when it comes up: until then the lower score of its
                    # parts stands for it, as a folded edge never scores below both, with a
                    # key no larger than its own (which only grows).
                    stale[existing] = True
                    if score[moving] < score[existing]:
                        score[existing] = score[moving]
                        heap_score, heap_key, heap_edge, size = _push_compacting(
                            heap_score, heap_key, heap_edge, size, score[existing], key[existing], existing, score, key, alive, stale, deferred,
                        )
                else:
                    used += keys[slot] == EMPTY
                    keys[slot] = pair
                    values[slot] = moving
            half = next_half[half]
        if list_length[small] > 0:
            if list_length[big] > 0:
                next_half[list_tail[big]] = list_head[small]
            else:
                list_head[big] = list_head[small]
            list_tail[big] = list_tail[small]
            list_length[big] += list_length[small]
        parent[small] = big
        frozen[big] = frozen[a] or frozen[b]
        smallest[big] = min(smallest[a], smallest[b])
        complete_at[big] = max(max(complete_at[a], complete_at[b]), s)

    return kept_out[:merges], merged_out[:merges], score_out[:merges], parent, smallest, complete_at, alive, rows


@numba.njit(cache=True, nogil=True)
def _roots(parent):
    root = parent.copy()
    for i in range(len(root)):
        r = i
        while root[r] != r:
            r = root[r]
        j = i
        while root[j] != r:
            following = root[j]
            root[j] = r
            j = following
    return root


@numba.njit(cache=True, nogil=True)
def _gather_maxima(edges, head, next_element, value, length, dense, rows, bins):
    """The edges' maxima as CSR; a histogram gives each pair its bin's centre, which falls in
    the same bin again."""
    offsets = np.zeros(len(edges) + 1, dtype=np.int64)
    for i in range(len(edges)):
        offsets[i + 1] = offsets[i] + length[edges[i]]
    out = np.empty(offsets[-1], dtype=value.dtype)
    for i in range(len(edges)):
        j = offsets[i]
        if dense[edges[i]] >= 0:
            row = dense[edges[i]]
            for level in range(bins):
                for _ in range(rows[row, level]):
                    out[j] = (level + 0.5) / bins
                    j += 1
            continue
        element = head[edges[i]]
        while element >= 0:
            out[j] = value[element]
            j += 1
            element = next_element[element]
    return out, offsets


def _maxima(graph: Graph, program: Program) -> tuple[np.ndarray, np.ndarray]:
    """The pair maxima of every edge, and how many each has (none where no quantile is scored)."""
    if not program.uses_maxima:
        return np.zeros(0, dtype=np.float32), np.zeros(len(graph.u), dtype=np.int32)
    if graph.maxima is None:
        return graph.maximum.astype(np.float32), np.ones(len(graph.u), dtype=np.int32)
    return graph.maxima.astype(np.float32), np.diff(graph.maxima_offsets).astype(np.int32)


def _chained(lengths: np.ndarray, count: int) -> np.ndarray:
    """Each element's successor in its edge's list (stored one edge after another), -1 at the end."""
    next_element = np.arange(1, count + 1, dtype=np.int32)
    ends = np.cumsum(lengths)[lengths > 0] - 1
    next_element[ends] = -1
    return next_element


def merge(graph: Graph, program: Program, threshold: float, frozen: np.ndarray | None = None) -> Merged:
    """Merge ``graph`` in increasing (score, key) order until the lowest score left reaches
    ``threshold``; regions marked ``frozen`` never merge (see the module's docstring)."""
    ends = np.stack([graph.u, graph.v], axis=1).astype(np.int32)
    # Maxima and minima are affinities, exact in float32; sums and areas grow.
    maximum, minimum = graph.maximum.astype(np.float32), graph.minimum.astype(np.float32)
    total, area = graph.total.astype(np.float64), graph.area.astype(np.float64)
    forced = graph.forced.astype(np.bool_)
    key = np.arange(len(ends), dtype=np.uint64) if graph.key is None else graph.key.astype(np.uint64)
    value, lengths = _maxima(graph, program)
    head = np.where(lengths > 0, np.cumsum(lengths) - lengths, -1).astype(np.int32)
    tail = np.where(lengths > 0, head + lengths - 1, -1).astype(np.int32)
    next_element = _chained(lengths, len(value))
    frozen = np.zeros(graph.nodes, dtype=np.bool_) if frozen is None else frozen.astype(np.bool_).copy()
    dense = np.full(len(ends), -1, dtype=np.int32)
    kept, merged, scores, parent, smallest, complete_at, alive, rows = _merge_loop(
        graph.nodes, ends, maximum, minimum, total, area, forced, key, head, tail, lengths, next_element, value, dense,
        frozen, program.codes, program.parameters, float(threshold), max(len(value), 1), program.bins,
    )
    root = _roots(parent)
    both_frozen = alive & frozen[ends[:, 0]] & frozen[ends[:, 1]]
    kept_edges = np.flatnonzero(both_frozen)
    maxima, offsets = (None, None)
    if program.uses_maxima:
        maxima, offsets = _gather_maxima(kept_edges, head, next_element, value, lengths, dense, rows, program.bins)
    deferred = Graph(
        graph.nodes, ends[kept_edges, 0], ends[kept_edges, 1], maximum[kept_edges], minimum[kept_edges],
        total[kept_edges], area[kept_edges], forced[kept_edges], maxima, offsets, key[kept_edges],
    )
    return Merged(kept, merged, scores, root, smallest, frozen, complete_at, deferred)


@numba.njit(cache=True, nogil=True)
def _score_all(codes, parameters, maximum, minimum, total, area, forced, head, length, next_element, value, bins, scratch_size):
    dense = np.full(len(maximum), -1, dtype=np.int32)
    rows = np.zeros((1, 1), dtype=np.int32)
    stack = np.empty(len(codes) + 1)
    scratch = np.empty(scratch_size)
    scores = np.empty(len(maximum))
    for e in range(len(maximum)):
        scores[e] = _score(e, codes, parameters, maximum, minimum, total, area, forced, head, length, next_element, value, dense, rows, stack, scratch)
    return scores


def score_edges(graph: Graph, program: Program) -> np.ndarray:
    """Every edge's score, as the merge loop takes it: to check a merge history against."""
    value, lengths = _maxima(graph, program)
    head = np.where(lengths > 0, np.cumsum(lengths) - lengths, -1).astype(np.int32)
    next_element = _chained(lengths, len(value))
    return _score_all(
        program.codes, program.parameters, graph.maximum.astype(np.float32), graph.minimum.astype(np.float32),
        graph.total.astype(np.float64), graph.area.astype(np.float64), graph.forced.astype(np.bool_), head, lengths,
        next_element, value, program.bins, max(len(value), 1),
    )
