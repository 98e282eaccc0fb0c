"""Block functions on small hand-made and real inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import waterz
from funlib.geometry import Coordinate, Roi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from neurosam.affinities import boundary_to_affinities
from neurosam.config import HIST_QUANT_50, RunConfig
from neurosam.rag import open_rag
from neurosam.workers.agglomerate import pair_scores, touching_pairs
from neurosam.workers.fragments import fragment_nodes, relabel_local, watershed
from neurosam.workers.labels import unique_inverse
from neurosam.workers.segment import apply_lookup, find_segments, fragment_ids_path, lookup_path
from pipeline_support import read_h5


@pytest.mark.parametrize("dtype", [np.uint64, np.int32])
@pytest.mark.parametrize("first", [1, 100_000])
def test_touching_pairs_finds_each_contact_once(dtype, first):
    """Also for int32 ids whose pair codes need more than 32 bits."""
    labels = np.zeros((1, 3, 4), dtype=dtype)
    labels[0] = [[1, 1, 2, 0], [3, 3, 2, 0], [3, 3, 0, 4]]
    labels[labels > 0] += first - 1
    expected = np.array([[1, 2], [1, 3], [2, 3]]) + first - 1
    np.testing.assert_array_equal(touching_pairs(labels), expected)


def test_relabel_local_is_consecutive_and_drops_small_fragments():
    labels = np.array([[[7, 7, 7, 0, 9, 5, 5]]], dtype=np.uint64)
    np.testing.assert_array_equal(relabel_local(labels, min_size=2), [[[2, 2, 2, 0, 0, 1, 1]]])


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


@pytest.mark.parametrize("max_threshold", [1.0, 0.65])
def test_thresholding_merge_scores_reproduces_waterz(max_threshold):
    """Edges below t, joined into components, give waterz's own segmentation at t, whether
    waterz agglomerated up to 1 or stopped earlier and left the rest to its region graph."""
    boundary, _ = read_h5("gala_fib_train.h5", "boundary_prob", (slice(0, 20), slice(0, 60), slice(0, 60)))
    affinities = boundary_to_affinities(boundary)
    fragments = watershed(affinities, 0.0)
    pairs = touching_pairs(fragments)
    scoring = HIST_QUANT_50
    scores = pair_scores(affinities, fragments, pairs, scoring, max_threshold)
    if max_threshold < 1:
        left_to_region_graph = scores[scores >= max_threshold]
        assert ((left_to_region_graph > max_threshold) & (left_to_region_graph < 1)).any()
    for threshold in (0.3, 0.6):
        expected = next(waterz.agglomerate(affinities, [threshold], fragments=fragments.copy(), scoring_function=scoring))
        below = pairs[scores < threshold]
        size = int(fragments.max()) + 1
        graph_matrix = coo_matrix((np.ones(len(below)), (below[:, 0], below[:, 1])), shape=(size, size))
        _, components = connected_components(graph_matrix, directed=False)
        ours = components[fragments]
        assert len(np.unique(ours[fragments > 0])) == len(np.unique(expected[expected > 0]))
        joint = np.unique(np.stack([ours[fragments > 0], expected[fragments > 0]]), axis=1)
        assert joint.shape[1] == len(np.unique(expected[expected > 0]))


def _config(tmp_path: Path, url: str, edges_per_page: int, thresholds: list[float]) -> RunConfig:
    return RunConfig.model_validate({
        "work_dir": str(tmp_path / f"work{edges_per_page}"),
        "datasets": {"affinities": "a.zarr/affs", "fragments": "a.zarr/frags", "segmentation": "a.zarr/seg"},
        "blocks": {"block_size": [1, 1, 1]},
        "rag": {"url": url},
        "segment": {"thresholds": thresholds, "edges_per_page": edges_per_page},
    })


@pytest.mark.parametrize("edges_per_page", [3, 1000])
def test_segments_are_connected_components_named_by_smallest_fragment(tmp_path, edges_per_page):
    """Every threshold from one pass over the edges; at 0.02 most pages of 3 have no edge below."""
    rng = np.random.default_rng(0)
    ids = np.sort(rng.choice(np.arange(1, 10_000), size=300, replace=False)).astype(np.uint64)
    u_index, v_index = rng.integers(0, 300, size=(2, 400))
    keep = u_index < v_index
    u, v = ids[u_index[keep]], ids[v_index[keep]]
    scores = rng.random(len(u))
    url = f"sqlite:///{tmp_path / 'rag.db'}"
    thresholds = [0.02, 0.4, 0.7]
    config = _config(tmp_path, url, edges_per_page, thresholds)
    with open_rag(url) as rag:
        rag.write_nodes(ids, np.zeros((len(ids), 3)), np.ones(len(ids), dtype=np.uint64))
        rag.write_edges(u, v, {"hist_quant_50": scores, "hist_quant_75": 1 - scores})
        find_segments(config, rag)

    np.testing.assert_array_equal(np.load(fragment_ids_path(config)), ids)
    for threshold in thresholds:
        table = np.load(lookup_path(config, threshold))
        below = scores < threshold
        graph_matrix = coo_matrix((np.ones(below.sum()), (u_index[keep][below], v_index[keep][below])), shape=(300, 300))
        _, components = connected_components(graph_matrix, directed=False)
        for component in np.unique(components):
            members = ids[components == component]
            assert set(table[components == component].tolist()) == {int(members.min())}


def test_apply_lookup_keeps_background_and_rejects_unknown_fragments():
    ids = np.array([3, 5, 9], dtype=np.uint64)
    table = np.array([3, 3, 9], dtype=np.uint64)
    fragments = np.array([[[0, 3, 5, 9]]], dtype=np.uint64)
    np.testing.assert_array_equal(apply_lookup(fragments, ids, table), [[[0, 3, 3, 9]]])
    with pytest.raises(ValueError, match="not in the RAG"):
        apply_lookup(np.array([[[4]]], dtype=np.uint64), ids, table)


def _segment_peak_growth(config_path: str) -> tuple[int, int]:
    """In a fresh process: resident memory before segment (imports, RAG open) and its peak."""
    from neurosam.config import load_config
    from neurosam.rag import open_rag
    from neurosam.workers.segment import find_segments

    def high_water_mark() -> int:
        with open("/proc/self/status") as status:
            return 1024 * next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))

    config = load_config(config_path)
    with open_rag(config.rag.url) as rag:
        before = high_water_mark()
        find_segments(config, rag)
    return before, high_water_mark()


def test_segment_memory_stays_bounded_on_a_graph_larger_than_it(tmp_path):
    """3 M edges (72 MB as the arrays u, v, score) through segment with pages of 20k edges: its
    memory grows by a fraction of the graph, as it would not if it held the graph."""
    import multiprocessing

    import yaml

    rng = np.random.default_rng(0)
    nodes, edges = 200_000, 3_000_000
    ids = np.arange(1, nodes + 1, dtype=np.uint64)
    url = f"sqlite:///{tmp_path / 'rag.db'}"
    config = _config(tmp_path, url, 20_000, [0.3])
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    with open_rag(url) as rag:
        rag.write_nodes(ids, np.zeros((nodes, 3)), np.ones(nodes, dtype=np.uint64))
        for start in range(0, edges, 500_000):
            u = rng.integers(1, nodes, size=500_000).astype(np.uint64)
            v = u + rng.integers(1, 1000, size=500_000).astype(np.uint64)
            keep = v <= nodes
            scores = rng.random(keep.sum())
            rag.write_edges(u[keep], v[keep], {"hist_quant_50": scores, "hist_quant_75": scores})
        stored = rag.count_edges()
    graph_bytes = stored * 24
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        before, peak = pool.apply(_segment_peak_growth, (str(config_path),))
    assert stored > 2_000_000
    assert peak - before < graph_bytes / 3, f"segment grew by {(peak - before) / 2**20:.0f} MiB for a {graph_bytes / 2**20:.0f} MiB graph"
    table = np.load(lookup_path(config, 0.3))
    assert len(table) == nodes and (table <= ids).all()
