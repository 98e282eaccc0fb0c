"""Cut basins rejoined: fragments that are pieces of one watershed basin, cut by a block face,
are joined by the merge loop's forced edges, before any other merge and even where they are
frozen, into exactly the graph the one-volume watershed gives (node sizes, edges, every
statistic and each pair's maximum for the quantiles), on arrays, without a run; and which claims
of the block below count (``claimed_pairs``)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from neurosam.config import HIST_QUANT_50
from neurosam.graph.agglomeration import OPEN_BASIN, claimed_pairs, contact_statistics
from neurosam.graph.merging import Graph, merge
from neurosam.graph.scoring import Program

SHAPE = (12, 20, 24)
FACES = (7, 12)
"""Block faces along x: three blocks."""


def voronoi_labels(seed: int) -> np.ndarray:
    """Basins as Voronoi cells of random seeds (convex: each piece a face cuts touches the next)."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(SHAPE, dtype=np.int64)
    points = rng.integers(0, SHAPE, size=(30, 3))
    seeds[tuple(points.T)] = np.arange(1, len(points) + 1)
    _, nearest = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    return seeds[tuple(nearest)]


def graph(labels: np.ndarray, affinities: np.ndarray, claimed=None):
    """Node ids and sizes, and the edges as positions in the ids with their statistics."""
    ids, sizes = np.unique(labels, return_counts=True)
    pairs, statistics = contact_statistics(affinities, labels, claimed)
    return ids, sizes, np.searchsorted(ids, pairs[:, 0]), np.searchsorted(ids, pairs[:, 1]), statistics


def test_rejoined_graph_equals_the_one_volume_graph():
    labels = voronoi_labels(0)
    # Multiples of 1/256, as uint8 affinities are: sums are exact in any order.
    affinities = (np.random.default_rng(1).integers(0, 256, (3, *SHAPE)) / 256).astype(np.float32)

    # Each block numbers its own fragments; the claims mark the voxel pairs across a face that
    # the block below saw inside one basin.
    blocks = np.searchsorted(FACES, np.arange(SHAPE[2]), side="right")
    cut = labels + 1000 * blocks[None, None, :]
    claimed = [np.zeros(SHAPE, dtype=bool) for _ in range(3)]
    for face in FACES:
        claimed[2][..., face] = labels[..., face - 1] == labels[..., face]

    ids, sizes, u, v, statistics = graph(cut, affinities, claimed)
    claimed_area, area = statistics["claimed_area"], statistics["contact_area"]
    forced = (claimed_area > 0) & (2 * claimed_area >= area)
    # Every node frozen and a threshold below every score: only the forced edges merge, and
    # every edge left is deferred, as it stands.
    joined = merge(
        Graph(
            len(ids), u, v, statistics["affinity_max"], statistics["affinity_min"], statistics["affinity_sum"], area, forced,
            key=statistics["contact_last"],
        ),
        Program(HIST_QUANT_50), 0.0, frozen=np.ones(len(ids), dtype=bool),
    )
    basin = joined.root
    roots = np.unique(basin)
    assert len(roots) == len(np.unique(labels)) < len(ids)

    one_ids, one_sizes, one_u, one_v, one_statistics = graph(labels, affinities)
    # A basin is named by the one-volume label of its pieces, which all share it.
    label_of = np.zeros(len(ids), dtype=np.int64)
    label_of[basin] = ids % 1000
    assert all(len(np.unique(ids[basin == root] % 1000)) == 1 for root in roots)
    np.testing.assert_array_equal(one_sizes[np.searchsorted(one_ids, label_of[roots])], np.bincount(basin, weights=sizes)[roots])

    edges = joined.deferred
    a, b = np.searchsorted(one_ids, label_of[edges.u]), np.searchsorted(one_ids, label_of[edges.v])
    low, high = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((high, low))
    one_order = np.lexsort((one_v, one_u))
    np.testing.assert_array_equal(low[order], one_u[one_order])
    np.testing.assert_array_equal(high[order], one_v[one_order])
    statistics = (
        (edges.maximum, "affinity_max"), (edges.minimum, "affinity_min"), (edges.total, "affinity_sum"), (edges.area, "contact_area"),
        (edges.key, "contact_last"),
    )
    for ours, name in statistics:
        np.testing.assert_array_equal(ours[order], one_statistics[name][one_order], err_msg=name)
    assert (np.diff(edges.maxima_offsets) == 1).all()
    np.testing.assert_array_equal(edges.maxima[order], one_statistics["affinity_max"][one_order])


def test_a_fragment_two_whole_basins_claim_joins_only_the_leading_one():
    """The layer above a face holds one fragment (7) that the block below sees as two basins,
    fragment 1's (a quarter of its face) and 2's; fragment 3's basin stays below. Seen whole,
    the lesser basin is not joined (the block above merged two basins it could not tell apart);
    open, it may be the other's piece, as the block above saw it, and is joined."""
    below = np.array([[[1, 2, 2, 2], [3, 3, 3, 3]]], dtype=np.uint64)
    above = np.array([[[7, 7, 7, 7], [8, 8, 8, 8]]], dtype=np.uint64)
    claims = np.array([[[1, 2, 2, 2], [0, 0, 0, 0]]], dtype=np.uint64)
    np.testing.assert_array_equal(claimed_pairs(claims, above, below), [[[False, True, True, True], [False] * 4]])
    opened = np.where(claims == 1, claims | OPEN_BASIN, claims)
    np.testing.assert_array_equal(claimed_pairs(opened, above, below), [[[True, True, True, True], [False] * 4]])
