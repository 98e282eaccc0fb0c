import json

import matplotlib.image
import numpy as np
import pytest
import waterz
from funlib.geometry import Coordinate, Roi
from skimage.metrics import adapted_rand_error, variation_of_information

from neurosam.graph.metrics import Contingency, contingency, evaluate, scores_from_contingency, sum_contingencies
from neurosam.io.volumes import VolumeError, create_array, open_array
from neurosam.stages import evaluate as evaluation
from neurosam.layout import StoredArray
from neurosam.stages.evaluate import stored_contingency, threshold_scores, write_report
from neurosam.view import plot_scores_vs_threshold, plot_segmentation_slice, render_overview


def random_labels(seed, shape=(12, 20, 24), ids=6):
    rng = np.random.default_rng(seed)
    return rng.integers(0, ids, shape).astype(np.uint64)


def blocky_labels(seed, shape=(12, 20, 24)):
    """Labels that come in runs, so that segments span several blocks as real ones do."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 9, (shape[0] // 3, shape[1] // 4, shape[2] // 4))
    return np.kron(coarse, np.ones((3, 4, 4), dtype=np.int64)).astype(np.uint64)


def tables_equal(a: Contingency, b: Contingency) -> bool:
    return (
        np.array_equal(a.segment_ids, b.segment_ids)
        and np.array_equal(a.ground_truth_ids, b.ground_truth_ids)
        and np.array_equal(a.counts, b.counts)
    )


def test_identical_segmentations_score_zero_whatever_the_ids():
    truth = random_labels(0) + 1
    relabelled = truth * 1000 + 7
    scores = evaluate(relabelled, truth)
    assert scores == {"voi_split": 0.0, "voi_merge": 0.0, "voi": 0.0, "adapted_rand_error": 0.0}


def test_split_into_equal_halves_costs_one_bit_of_split():
    truth = np.ones((2, 2, 2), dtype=np.uint64)
    halves = np.ones((2, 2, 2), dtype=np.uint64)
    halves[1] = 2
    scores = evaluate(halves, truth)
    assert scores["voi_split"] == 1.0
    assert scores["voi_merge"] == 0.0
    # pairs of distinct voxels: 8 * 7 in truth, 2 * 4 * 3 in the segmentation and jointly
    assert scores["adapted_rand_error"] == pytest.approx(1 - 2 * 24 / (24 + 56))


def test_merge_of_two_equal_bodies_is_the_mirror_of_a_split():
    truth = np.ones((2, 2, 2), dtype=np.uint64)
    truth[1] = 2
    merged = np.full((2, 2, 2), 5, dtype=np.uint64)
    scores = evaluate(merged, truth)
    assert scores["voi_split"] == 0.0
    assert scores["voi_merge"] == 1.0
    assert scores["adapted_rand_error"] == pytest.approx(1 - 2 * 24 / (24 + 56))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_skimage_and_waterz_on_random_volumes(seed):
    truth = random_labels(seed)
    segmentation = random_labels(seed + 100, ids=9)
    scores = evaluate(segmentation, truth)

    split, merge = variation_of_information(truth, segmentation, ignore_labels=(0,))
    error, _, _ = adapted_rand_error(truth, segmentation, ignore_labels=(0,))
    assert scores["voi_split"] == pytest.approx(split, rel=1e-12)
    assert scores["voi_merge"] == pytest.approx(merge, rel=1e-12)
    assert scores["voi"] == pytest.approx(split + merge, rel=1e-12)
    assert scores["adapted_rand_error"] == pytest.approx(error, rel=1e-12)

    field = waterz.evaluate(segmentation, truth)
    assert scores["voi_split"] == pytest.approx(field["voi_split"], rel=1e-9)
    assert scores["voi_merge"] == pytest.approx(field["voi_merge"], rel=1e-9)


def test_ground_truth_background_is_ignored():
    truth = random_labels(4)
    segmentation = random_labels(5)
    scribbled = segmentation.copy()
    scribbled[truth == 0] = 12345
    assert evaluate(scribbled, truth) == evaluate(segmentation, truth)
    assert contingency(segmentation, truth).voxels == np.count_nonzero(truth)
    assert contingency(segmentation, truth, ignore_background=False).voxels == truth.size
    assert evaluate(scribbled, truth, ignore_background=False) != evaluate(segmentation, truth, ignore_background=False)


def test_segment_zero_counts_as_one_segment():
    truth = np.array([[[1, 1, 2, 2]]], dtype=np.uint64)
    segmentation = np.zeros_like(truth)
    assert evaluate(segmentation, truth)["voi_merge"] == 1.0


def test_tables_of_blocks_add_up_to_the_table_of_the_volume():
    truth = blocky_labels(6)
    segmentation = blocky_labels(7)
    whole = contingency(segmentation, truth)
    cuts = [(slice(0, 5), slice(None)), (slice(5, 12), slice(0, 7)), (slice(5, 12), slice(7, 20))]
    blocks = [contingency(segmentation[z, y], truth[z, y]) for z, y in cuts]
    assert tables_equal(sum_contingencies(blocks), whole)
    assert tables_equal(blocks[0] + blocks[1] + blocks[2], whole)
    assert tables_equal(sum(blocks), whole)
    assert scores_from_contingency(sum(blocks)) == scores_from_contingency(whole)


def test_ids_using_all_64_bits_and_mixed_dtypes_are_exact():
    truth = random_labels(8)
    segmentation = random_labels(9)
    huge = segmentation + np.uint64(2**64 - 100)
    small_blocks = contingency(segmentation[:6].astype(np.int32), truth[:6]) + contingency(segmentation[6:], truth[6:])
    assert evaluate(huge, truth) == pytest.approx(evaluate(segmentation, truth), rel=1e-12)
    assert scores_from_contingency(small_blocks) == pytest.approx(evaluate(segmentation, truth), rel=1e-12)
    assert contingency(huge, truth).segment_ids.min() == 2**64 - 100


def test_all_background_is_an_error_not_a_perfect_score():
    with pytest.raises(ValueError, match="no ground-truth voxels"):
        evaluate(random_labels(12), np.zeros((12, 20, 24), dtype=np.uint64))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        contingency(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)))


@pytest.fixture
def stored_pair(tmp_path):
    truth = blocky_labels(13, shape=(15, 24, 28))
    segmentation = blocky_labels(14, shape=(15, 24, 28))
    roi = Roi((40, 100, 60), (15 * 40, 24 * 4, 28 * 4))
    for name, data in (("segmentation", segmentation), ("truth", truth)):
        array = create_array(tmp_path / "eval.zarr" / name, roi, (40, 4, 4), np.uint64, chunk_voxels=(8, 8, 8))
        array[roi] = data
    return tmp_path / "eval.zarr", segmentation, truth


def stored(path) -> StoredArray:
    return StoredArray.of(str(path), open_array(path))


def test_stored_arrays_scored_chunk_by_chunk_equal_in_memory_scores(stored_pair, monkeypatch):
    container, segmentation, truth = stored_pair
    monkeypatch.setattr(evaluation, "TABLES_PER_MERGE", 3)
    labels, ground_truth = stored(container / "segmentation"), stored(container / "truth")
    table = stored_contingency(labels, ground_truth, ground_truth.roi, ground_truth.voxel_size * Coordinate(4, 7, 9))
    assert scores_from_contingency(table) == pytest.approx(evaluate(segmentation, truth), rel=1e-12)


def test_stored_arrays_scored_inside_a_roi(stored_pair):
    container, segmentation, truth = stored_pair
    roi = Roi((40 + 2 * 40, 100 + 4, 60), (5 * 40, 10 * 4, 28 * 4))
    table = stored_contingency(stored(container / "segmentation"), stored(container / "truth"), roi, Coordinate(80, 16, 32))
    assert scores_from_contingency(table) == pytest.approx(evaluate(segmentation[2:7, 1:11], truth[2:7, 1:11]), rel=1e-12)


def test_every_threshold_scored_from_one_fragment_table_equals_its_segmentation():
    """A threshold's segmentation is its fragments under a lookup: scoring the fragments' table
    through the lookup equals scoring the relabelled volume, merged pairs and background included."""
    fragments = random_labels(21, ids=40)
    truth = blocky_labels(22)
    table = contingency(fragments, truth)
    for seed in range(3):
        lookup = np.random.default_rng(seed).integers(1, 6 + 4 * seed, 40).astype(np.uint64)
        lookup[0] = 0
        expected = evaluate(lookup[fragments], truth)
        assert threshold_scores(table, lookup[table.segment_ids]) == pytest.approx(expected, rel=1e-12)


def test_report_is_json_with_numpy_values(tmp_path):
    per_threshold = {0.5: evaluate(random_labels(15), random_labels(16)), 0.7: {"voi": np.float32(1.5)}}
    write_report({"thresholds": per_threshold, "voxels": np.int64(42)}, tmp_path / "out" / "report.json")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["voxels"] == 42
    assert report["thresholds"]["0.7"]["voi"] == 1.5
    assert set(report["thresholds"]["0.5"]) == {"voi_split", "voi_merge", "voi", "adapted_rand_error"}
    assert not list((tmp_path / "out").glob("*.partial"))


def yellow_pixels(png) -> int:
    image = matplotlib.image.imread(png)[..., :3]
    return int(np.count_nonzero((image[..., 0] > 0.9) & (image[..., 1] > 0.9) & (image[..., 2] < 0.2)))


def test_slice_picture_outlines_segments_over_the_raw(tmp_path):
    raw = np.random.default_rng(17).integers(0, 255, (4, 60, 80)).astype(np.uint8) // 2
    segmentation = np.ones((4, 60, 80), dtype=np.uint64)
    segmentation[:, :, 40:] = 2
    plot_segmentation_slice(raw, segmentation, tmp_path / "two.png", colour_alpha=0.0)
    plot_segmentation_slice(raw, np.ones_like(segmentation), tmp_path / "one.png", colour_alpha=0.0)
    assert yellow_pixels(tmp_path / "two.png") > 100
    assert yellow_pixels(tmp_path / "one.png") == 0
    with pytest.raises(ValueError, match="outside"):
        plot_segmentation_slice(raw, segmentation, tmp_path / "bad.png", z=4)


def test_scores_picture_is_written(tmp_path):
    per_threshold = {t: evaluate(random_labels(18), random_labels(19 + i)) for i, t in enumerate((0.1, 0.5, 0.9))}
    figure = plot_scores_vs_threshold(per_threshold, tmp_path / "scores.png")
    height, width, _ = matplotlib.image.imread(tmp_path / "scores.png").shape
    assert width > height > 100
    voi_axis, rand_axis = figure.axes
    shown = {line.get_label(): list(line.get_ydata()) for line in voi_axis.get_lines() if not line.get_label().startswith("_")}
    for key in ("voi_split", "voi_merge", "voi"):
        assert shown[key] == [per_threshold[t][key] for t in (0.1, 0.5, 0.9)]
    assert list(rand_axis.get_lines()[0].get_ydata()) == [per_threshold[t]["adapted_rand_error"] for t in (0.1, 0.5, 0.9)]
    best = min(per_threshold, key=lambda t: per_threshold[t]["voi"])
    assert f"best {per_threshold[best]['voi']:.3f} at {best:g}" in voi_axis.get_title()


def test_overview_renders_one_section_of_stored_arrays(stored_pair, tmp_path):
    container, segmentation, _ = stored_pair
    roi = Roi((40, 100, 60), (15 * 40, 24 * 4, 28 * 4))
    raw = create_array(container / "raw", roi, (40, 4, 4), np.uint8)
    raw[roi] = np.full(segmentation.shape, 60, dtype=np.uint8)
    render_overview(container / "raw", container / "segmentation", tmp_path / "overview.png", z=3)
    assert yellow_pixels(tmp_path / "overview.png") > 0
    with pytest.raises(VolumeError, match="outside"):
        render_overview(container / "raw", container / "segmentation", tmp_path / "bad.png", z=15)
