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
from neurosam.config import HIST_QUANT_50, HIST_QUANT_75, RunConfig
from neurosam.graph.agglomeration import Scorer, agglomerate_graph, contact_statistics
from neurosam.graph.labels import unique_inverse
from neurosam.graph.metrics import evaluate
from neurosam.graph.scoring import ScoringFunctionError
from neurosam.layout import fragment_ids_path, lookup_path
from neurosam.rag import open_rag
from neurosam.stages.fragments import fragment_nodes, local_ids, watershed
from neurosam.stages.relabel import apply_lookup
from neurosam.stages.segment import find_segments
from pipeline_support import read_edges, read_h5


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


def graph_segmentation(fragments: np.ndarray, kept, merged, levels, threshold: float) -> np.ndarray:
    size = int(fragments.max()) + 1
    below = levels < threshold
    _, components = connected_components(coo_matrix((np.ones(below.sum()), (kept[below], merged[below])), shape=(size, size)), directed=False)
    return np.where(fragments > 0, components[fragments], 0)


@pytest.mark.parametrize("scoring", [HIST_QUANT_50, HIST_QUANT_75, "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>"])
def test_global_agglomeration_reproduces_waterz(scoring):
    """From the contact statistics alone, the agglomeration gives waterz's own segmentation of
    the same fragments at every threshold; only the order of equal scores, which waterz leaves
    to its heap, may differ."""
    boundary, _ = read_h5("gala_fib_train.h5", "boundary_prob", (slice(0, 30), slice(0, 80), slice(0, 80)))
    affinities = np.round(boundary_to_affinities(boundary) * 255).astype(np.float32) / 255
    fragments = watershed(affinities, 0.0)
    pairs, statistics = contact_statistics(affinities, fragments)
    sizes = np.bincount(fragments.ravel().astype(np.int64))
    thresholds = [0.1, 0.3, 0.5, 0.7, 0.9]
    kept, merged, levels = agglomerate_graph(sizes, pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64), statistics, scoring, 1.0)
    expected = [s.copy() for s in waterz.agglomerate(affinities, thresholds, fragments=fragments.copy(), scoring_function=scoring)]
    for threshold, theirs in zip(thresholds, expected):
        ours = graph_segmentation(fragments, kept, merged, levels, threshold)
        scores = evaluate(ours.astype(np.uint64), theirs.astype(np.uint64), ignore_background=False)
        assert scores["voi_split"] + scores["voi_merge"] < 0.02, (threshold, scores)


def test_quantile_functions_that_need_every_affinity_are_refused():
    with pytest.raises(ScoringFunctionError, match="InitWithMax"):
        Scorer("OneMinus<HistogramQuantileAffinity<RegionGraphType, 50, ScoreValue, 256, false>>")
    with pytest.raises(ScoringFunctionError, match="cannot be scored"):
        Scorer("OneMinus<MeanMaxKAffinity<RegionGraphType, 3, ScoreValue>>")


SINGLE_LINKAGE = "OneMinus<MaxAffinity<RegionGraphType, ScoreValue>>"


def _config(tmp_path: Path, url: str, edges_per_page: int, thresholds: list[float]) -> RunConfig:
    """Merging by 1 - max affinity is single linkage: the segments at t are the connected
    components of the edges scored below t, whatever the merge order."""
    return RunConfig.model_validate({
        "work_dir": str(tmp_path / f"work{edges_per_page}"),
        "datasets": {"affinities": "a.zarr/affs", "fragments": "a.zarr/frags", "segmentation": "a.zarr/seg"},
        "blocks": {"block_size": [1, 1, 1]},
        "rag": {"url": url},
        "segment": {
            "scoring_functions": {"single": SINGLE_LINKAGE},
            "scoring_function": "single",
            "thresholds": thresholds,
            "edges_per_page": edges_per_page,
        },
    })


def edge_statistics(scores: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of a one-voxel contact whose 1 - max affinity is ``scores``."""
    affinity = 1.0 - scores
    ones = np.ones(len(scores))
    return {"affinity_max": affinity, "affinity_min": affinity, "affinity_sum": affinity, "contact_area": ones, "claimed_area": 0 * ones}


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
        rag.write_nodes(0, ids, np.zeros((len(ids), 3)), np.ones(len(ids), dtype=np.uint64))
        rag.write_edges(0, u, v, edge_statistics(scores))
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
    from neurosam.stages.segment import find_segments

    def high_water_mark() -> int:
        with open("/proc/self/status") as status:
            return 1024 * next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))

    config = load_config(config_path)
    with open_rag(config.rag.url) as rag:
        before = high_water_mark()
        find_segments(config, rag)
    return before, high_water_mark()


#: What the global agglomeration may hold per edge (its Python graph, heap and statistics); the
#: README's scale section works from the figure benchmarks/agglomeration_fidelity.py prints.
MAX_BYTES_PER_EDGE = 1200


def test_segment_memory_grows_with_the_graph_and_no_faster(tmp_path):
    """The global agglomeration holds the whole graph: its memory is bounded per edge."""
    import multiprocessing

    import yaml

    rng = np.random.default_rng(0)
    nodes, edges = 100_000, 400_000
    ids = np.arange(1, nodes + 1, dtype=np.uint64)
    url = f"sqlite:///{tmp_path / 'rag.db'}"
    config = _config(tmp_path, url, 50_000, [0.3])
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    with open_rag(url) as rag:
        rag.write_nodes(0, ids, np.zeros((nodes, 3)), np.ones(nodes, dtype=np.uint64))
        u = rng.integers(1, nodes, size=edges).astype(np.uint64)
        v = u + rng.integers(1, 1000, size=edges).astype(np.uint64)
        u, v = np.unique(np.stack([u, v])[:, v <= nodes], axis=1)
        rag.write_edges(0, u, v, edge_statistics(rng.random(len(u))))
        stored = len(read_edges(rag, ["affinity_max"])["u"])
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        before, peak = pool.apply(_segment_peak_growth, (str(config_path),))
    assert stored > 300_000
    assert peak - before < MAX_BYTES_PER_EDGE * stored, f"segment grew by {(peak - before) / stored:.0f} bytes per edge"
    table = np.load(lookup_path(config, 0.3))
    assert len(table) == nodes and (table <= ids).all()
