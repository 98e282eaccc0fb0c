"""Block functions on small hand-made and real inputs."""

from __future__ import annotations

import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi

from neurosam.graph.agglomeration import contact_statistics
from neurosam.graph.labels import unique_inverse
from neurosam.stages.fragments import fragment_nodes, local_ids
from neurosam.stages.relabel import apply_lookup


@pytest.mark.parametrize("dtype", [np.uint64, np.int32])
@pytest.mark.parametrize("first", [1, 100_000])
def test_contact_statistics_find_each_contact_once_with_its_affinities(dtype, first):
    """Also for int32 ids whose pair codes need more than 32 bits. Channel d at voxel p is the
    affinity between p and p minus one step along d, as waterz reads it."""
    labels = np.zeros((1, 3, 4), dtype=dtype)
    labels[0] = [[1, 1, 2, 0], [3, 3, 2, 0], [3, 3, 0, 4]]
    labels[labels > 0] += first - 1
    affinities = np.random.default_rng(0).random((3, 1, 3, 4)).astype(np.float32)
    pairs, statistics = contact_statistics(affinities, labels)
    np.testing.assert_array_equal(pairs, np.array([[1, 2], [1, 3], [2, 3]]) + first - 1)
    y, x = affinities[1, 0], affinities[2, 0]
    contacts = {  # (u, v): the affinities of their voxel pairs
        (1, 2): [x[0, 2]],
        (1, 3): [y[1, 0], y[1, 1]],
        (2, 3): [x[1, 2]],
    }
    # The last voxel pair of each contact, 3 * (its voxel's index in the array) + its axis.
    np.testing.assert_array_equal(statistics["contact_last"], [3 * 2 + 2, 3 * 5 + 1, 3 * 6 + 2])
    for index, values in enumerate(contacts.values()):
        assert statistics["affinity_max"][index] == pytest.approx(max(values))
        assert statistics["affinity_min"][index] == pytest.approx(min(values))
        assert statistics["affinity_sum"][index] == pytest.approx(sum(values))
        assert statistics["contact_area"][index] == len(values)


def test_relabel_local_is_consecutive_and_drops_small_fragments():
    labels = np.array([[[7, 7, 7, 0, 9, 5, 5]]], dtype=np.uint64)
    np.testing.assert_array_equal(local_ids(labels, min_size=2)[labels], [[[2, 2, 2, 0, 0, 1, 1]]])


def test_fragment_nodes_are_the_centres_and_sizes_of_the_voxels():
    local = np.random.default_rng(0).integers(1, 6, size=(4, 5, 6)).repeat(2, axis=2)
    roi = Roi((100, 200, 300), (40, 50, 120))
    ids, positions, sizes = fragment_nodes(local, 1000, roi, Coordinate(10, 10, 10))
    coordinates = np.indices(local.shape).reshape(3, -1).T
    for node_id, position, size in zip(ids, positions, sizes):
        voxels = coordinates[local.ravel() == node_id - 1000]
        assert size == len(voxels)
        np.testing.assert_allclose(position, np.array(roi.offset) + (voxels.mean(axis=0) + 0.5) * 10)


def test_unique_inverse_equals_numpy():
    labels = np.random.default_rng(1).integers(0, 9, size=(3, 4, 7)).repeat(3, axis=1).astype(np.uint64)
    ids, inverse = unique_inverse(labels)
    expected_ids, expected_inverse = np.unique(labels, return_inverse=True)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(inverse, expected_inverse.reshape(labels.shape))


def test_apply_lookup_keeps_background_and_rejects_unknown_fragments():
    ids = np.array([3, 5, 9], dtype=np.uint64)
    table = np.array([3, 3, 9], dtype=np.uint64)
    fragments = np.array([[[0, 3, 5, 9]]], dtype=np.uint64)
    np.testing.assert_array_equal(apply_lookup(fragments, ids, table), [[[0, 3, 3, 9]]])
    with pytest.raises(ValueError, match="not in the RAG"):
        apply_lookup(np.array([[[4]]], dtype=np.uint64), ids, table)
