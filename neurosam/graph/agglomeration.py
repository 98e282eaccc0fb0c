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
    # Imported here: the fragments stage's workers import this module for OPEN_BASIN, and
    # should not start numba (half a second of CPU and tens of MiB a process) for a constant.
    from neurosam.graph.contact_runs import FIELDS, joined_runs

    codes, runs, places = joined_runs(
        labels, affinities, claimed, base, np.array(offset, dtype=np.int64), np.array(volume_shape, dtype=np.int64)
    )
    pairs = np.stack([codes // base, codes % base], axis=1)
    column = dict(zip(FIELDS, runs.T))
    statistics = {
        "affinity_max": column["max"], "affinity_min": column["min"], "affinity_sum": column["sum"],
        "contact_area": column["area"], "claimed_area": column["claimed"], "contact_last": places,
    }
    return pairs, {name: values.astype(STATISTIC_DTYPES[name]) for name, values in statistics.items()}


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
