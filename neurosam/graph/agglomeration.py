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
    codes, values, inside, places = [], [], [], []
    for axis in range(3):
        here = labels[(slice(None),) * axis + (slice(1, None),)]
        there = labels[(slice(None),) * axis + (slice(None, -1),)]
        touching = (here != there) & (here != 0) & (there != 0)
        a, b = here[touching].astype(np.uint64), there[touching].astype(np.uint64)
        codes.append(np.minimum(a, b) * base + np.maximum(a, b))
        values.append(affinities[axis][(slice(None),) * axis + (slice(1, None),)][touching])
        inside.append(claimed[axis][(slice(None),) * axis + (slice(1, None),)][touching] if claimed else np.zeros(touching.sum(), dtype=bool))
        voxel = np.nonzero(touching)
        index = np.zeros(len(voxel[0]), dtype=np.uint64)
        for dimension in range(3):
            coordinate = voxel[dimension] + offset[dimension] + (dimension == axis)
            index = index * np.uint64(volume_shape[dimension]) + coordinate.astype(np.uint64)
        places.append(index * np.uint64(3) + np.uint64(axis))
    codes, values, inside = np.concatenate(codes), np.concatenate(values).astype(np.float32), np.concatenate(inside)
    places = np.concatenate(places)
    order = np.argsort(codes, kind="stable")
    codes, values, inside, places = codes[order], values[order], inside[order], places[order]
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
        "contact_last": np.maximum.reduceat(places, starts),
    }
    return pairs, {name: values.astype(STATISTIC_DTYPES[name]) for name, values in statistics.items()}
