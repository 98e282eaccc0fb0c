"""Contact statistics: what the RAG's edges carry, from which the global agglomeration merges
as waterz agglomerates one volume (``neurosam.graph.merging``, ``neurosam.graph.hierarchy``).

Why this is faithful: waterz scores an edge from statistics of the affinities on the contact
surface of two regions (their maximum, minimum, sum and count), and when regions merge it
combines those statistics by max, min and sums. Each fragment pair's statistics are computed
once, over its whole contact, by the block that owns the pair; so the graph holds exactly what
waterz would hold for the same fragments in one volume. Blocks change the result only where
they cut fragments: the pieces of a basin a face cut are joined by forced edges, merged first.

waterz keeps, for its quantile functions, only each fragment pair's maximum affinity when it
builds the graph (``InitWithMax``, its default), and a quantile of a merged edge is taken over
those maxima; so four numbers per pair carry every function the merge loop scores.
"""

from __future__ import annotations

import numba
import numpy as np

#: What each RAG edge carries: the contact surface's affinity statistics, how much of it the
#: fragments stage saw inside one watershed basin, and its last voxel pair in the volume's scan
#: order (3 * the voxel's index + the axis), by which equal scores merge in an order that
#: does not depend on the blocks.
EDGE_STATISTICS = ("affinity_max", "affinity_min", "affinity_sum", "contact_area", "claimed_area", "contact_last")
#: The top bit of a claim: the claiming basin reaches the border of its block's view (the block
#: and its context) inside the volume, so that block did not see it whole.
OPEN_BASIN = np.uint64(1 << 63)
#: The dtype each is stored in: the extremes are affinities, float32 as waterz reads them; the
#: sum adds up to millions of them, beyond float32's exact integers of 1/255; areas count voxels.
STATISTIC_DTYPES = {
    "affinity_max": np.float32, "affinity_min": np.float32, "affinity_sum": np.float64,
    "contact_area": np.uint32, "claimed_area": np.uint32, "contact_last": np.uint64,
}


def contact_statistics(
    affinities: np.ndarray, labels: np.ndarray, claimed: list[np.ndarray] | None = None,
    offset: tuple[int, int, int] = (0, 0, 0), volume_shape: tuple[int, int, int] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every pair (u, v), u < v, of non-zero labels touching along an axis, with the statistics
    of the affinities between their touching voxels, as waterz reads them: channel d at voxel p
    is the affinity between p and p minus one step along axis d. ``claimed[d]`` at p, where
    given, marks the pair (p - d, p) as inside one watershed basin (``claimed_area`` counts them).
    The arrays start at voxel ``offset`` of a volume of ``volume_shape`` (default: the arrays
    are the volume), whose scan order ``contact_last`` counts in.

    Returns pairs (N, 2), sorted, and EDGE_STATISTICS arrays of N each, in STATISTIC_DTYPES."""
    base = np.uint64(labels.max(initial=0)) + np.uint64(1)
    volume_shape = labels.shape if volume_shape is None else volume_shape
    claimed = tuple(np.zeros((0, 0, 0), dtype=bool) for _ in range(3)) if claimed is None else tuple(claimed)
    scan = (labels, affinities, claimed, base, np.array(offset, dtype=np.int64), np.array(volume_shape, dtype=np.int64))
    runs = np.zeros((count_runs(*scan), len(FIELDS)))
    codes, places = np.zeros(len(runs), dtype=np.uint64), np.zeros(len(runs), dtype=np.uint64)
    fill_runs(*scan, runs, codes, places)
    codes, runs, places = join_runs(codes, runs, places, stable_order(codes))
    pairs = np.stack([codes // base, codes % base], axis=1)
    column = dict(zip(FIELDS, runs.T))
    statistics = {
        "affinity_max": column["max"], "affinity_min": column["min"], "affinity_sum": column["sum"],
        "contact_area": column["area"], "claimed_area": column["claimed"], "contact_last": places,
    }
    return pairs, {name: values.astype(STATISTIC_DTYPES[name]) for name, values in statistics.items()}


#: The statistics of a run of voxel pairs, a row of float64: pairs of one fragment pair that
#: follow one another in the scan are summed as they come, and only runs are sorted.
FIELDS = ("max", "min", "sum", "area", "claimed")


@numba.njit(cache=True, nogil=True)
def count_runs(labels, affinities, claimed, base, offset, volume_shape):
    return scan_runs(labels, affinities, claimed, base, offset, volume_shape, None, None, None)


@numba.njit(cache=True, nogil=True)
def fill_runs(labels, affinities, claimed, base, offset, volume_shape, runs, codes, places):
    scan_runs(labels, affinities, claimed, base, offset, volume_shape, runs, codes, places)


@numba.njit(cache=True, nogil=True)
def scan_runs(labels, affinities, claimed, base, offset, volume_shape, runs, codes, places):
    """The voxel pairs of different non-zero labels, axis by axis, each in scan order, as runs
    of one pair code (min * base + max): into ``runs`` (FIELDS, the affinities as float32, summed
    in float64: exact for uint8 affinities, in any order), ``codes`` and ``places`` (3 * the
    last upper voxel's index in the volume + the axis), unless they are None. Returns the number
    of runs. One pass over the voxels, where numpy took a dozen with volume-sized temporaries."""
    depth, height, width = labels.shape
    n = 0
    previous = np.uint64(0)
    for axis in range(3):
        dz, dy, dx = int(axis == 0), int(axis == 1), int(axis == 2)
        with_claims = claimed[axis].size > 0
        for z in range(dz, depth):
            for y in range(dy, height):
                for x in range(dx, width):
                    here, there = np.uint64(labels[z, y, x]), np.uint64(labels[z - dz, y - dy, x - dx])
                    if here == there or here == 0 or there == 0:
                        continue
                    code = min(here, there) * base + max(here, there)
                    if n == 0 or code != previous:
                        n += 1
                        previous = code
                        if runs is not None:
                            codes[n - 1] = code
                            runs[n - 1, 0] = -np.inf
                            runs[n - 1, 1] = np.inf
                    if runs is None:
                        continue
                    value = np.float64(np.float32(affinities[axis, z, y, x]))
                    run = runs[n - 1]
                    run[0] = max(run[0], value)
                    run[1] = min(run[1], value)
                    run[2] += value
                    run[3] += 1
                    if with_claims and claimed[axis][z, y, x]:
                        run[4] += 1
                    index = (np.uint64(z + offset[0]) * np.uint64(volume_shape[1]) + np.uint64(y + offset[1])) * np.uint64(
                        volume_shape[2]
                    ) + np.uint64(x + offset[2])
                    places[n - 1] = index * np.uint64(3) + np.uint64(axis)
    return n


RADIX_BITS = 16


@numba.njit(cache=True, nogil=True)
def stable_order(codes):
    """The stable sorting order of ``codes`` (uint64), by counting, RADIX_BITS at a time."""
    order = np.arange(len(codes))
    other = np.empty_like(order)
    top = codes.max() if len(codes) else np.uint64(0)
    digits = 1 << RADIX_BITS
    shift = 0
    while shift < 64 and (shift == 0 or top >> np.uint64(shift) > 0):
        counts = np.zeros(digits + 1, dtype=np.int64)
        for i in order:
            counts[((codes[i] >> np.uint64(shift)) & np.uint64(digits - 1)) + 1] += 1
        counts = np.cumsum(counts)
        for i in order:
            digit = (codes[i] >> np.uint64(shift)) & np.uint64(digits - 1)
            other[counts[digit]] = i
            counts[digit] += 1
        order, other = other, order
        shift += RADIX_BITS
    return order


@numba.njit(cache=True, nogil=True)
def join_runs(codes, runs, places, order):
    """The runs of each pair code joined, in ``order``: (codes, FIELDS, last places)."""
    groups = 0
    for k in range(len(order)):
        groups += k == 0 or codes[order[k]] != codes[order[k - 1]]
    joined_codes = np.empty(groups, dtype=np.uint64)
    joined = np.empty((groups, runs.shape[1]))
    last = np.empty(groups, dtype=np.uint64)
    g = -1
    for k in range(len(order)):
        i = order[k]
        if k == 0 or codes[i] != codes[order[k - 1]]:
            g += 1
            joined_codes[g] = codes[i]
            for field in range(runs.shape[1]):
                joined[g, field] = runs[i, field]
            last[g] = places[i]
            continue
        joined[g, 0] = max(joined[g, 0], runs[i, 0])
        joined[g, 1] = min(joined[g, 1], runs[i, 1])
        for field in range(2, runs.shape[1]):
            joined[g, field] += runs[i, field]
        last[g] = max(last[g], places[i])
    return joined_codes, joined, last


def claimed_pairs(claims: np.ndarray, above: np.ndarray, below: np.ndarray) -> np.ndarray:
    """Which voxel pairs (below, above) across a block face lie inside one watershed basin, by the
    claims of the block below on the layer above (``above``: its fragments; ``below``: those of
    the layer under it; ``claims``: the fragment below whose basin covers the voxel, 0 none).

    A claim counts where its basin covers at least as much of the fragment above's face as any
    other claiming basin does, or where its basin is open (``OPEN_BASIN``). A fragment above
    whose face several basins claim is one basin to the block above and several to the block
    below. Where the block below saw the lesser basin whole, the block above is the one short of
    context (its watershed, cut off from that basin's peak, ran it into the other), and joining
    would merge the two basins before any scoring; an open basin, one the block below did not see
    whole, may be the other's piece, as the block above saw it."""
    claimant = claims & ~OPEN_BASIN
    claiming = (claimant != 0) & (above != 0)
    pairs, index, counts = np.unique(np.stack([above[claiming], claimant[claiming]]), axis=1, return_inverse=True, return_counts=True)
    fragment_index = np.unique(pairs[0], return_inverse=True)[1]
    largest = np.zeros(fragment_index.max(initial=-1) + 1, dtype=counts.dtype)
    np.maximum.at(largest, fragment_index, counts)
    leading = np.zeros(above.shape, dtype=bool)
    leading[claiming] = (counts >= largest[fragment_index])[index.ravel()]
    return claiming & (claimant == below) & (leading | ((claims & OPEN_BASIN) != 0))
