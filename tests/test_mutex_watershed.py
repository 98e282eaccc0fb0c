"""The fragments stage's mutex watershed (``fragments.method: mutex_watershed``)."""

from __future__ import annotations

import numpy as np
import pytest
from funlib.geometry import Coordinate

from neurosam.affinities import labels_to_affinities
from neurosam.config import load_config
from neurosam.graph.metrics import evaluate
from neurosam.io.volumes import open_array
from neurosam.pipeline.run import run_pipeline
from neurosam.stages.fragments import mutex_watershed
from pipeline_support import medulla_gt_inputs, read_h5, read_segmentation, write_config

LONG_RANGE = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-3, 0, 0], [0, -3, 0], [0, 0, -3], [-9, 0, 0], [0, -9, 0], [0, 0, -9]]
CROP = (slice(0, 48), slice(0, 96), slice(0, 96))
MUTEX = {"method": "mutex_watershed", "mutex_bias": [0.5, 0.5]}
THRESHOLDS = {"thresholds": [0.3, 0.5, 0.7]}


def test_mutex_watershed_of_ground_truth_affinities_gives_back_the_neurons():
    labels, _ = read_h5("medulla_fibsem.h5", "neuron_ids", CROP)
    affinities, _ = labels_to_affinities(labels, LONG_RANGE)
    fragments = mutex_watershed(affinities, LONG_RANGE, (0.5, 0.5))
    assert fragments.dtype == np.uint64 and fragments.min() == 1
    np.testing.assert_array_equal(np.unique(fragments), np.arange(1, fragments.max() + 1))
    scores = evaluate(fragments, labels)
    assert scores["voi_merge"] < 0.01, scores
    assert scores["voi"] < 0.2, scores


@pytest.fixture(scope="module")
def mutex_runs(tmp_path_factory):
    """Noisy long-range affinities (std 0.6), run block-wise (blocks of 16 x 32 x 32 voxels) and
    as one block."""
    directory = tmp_path_factory.mktemp("mutex")
    inputs = medulla_gt_inputs(directory, noise=0.6, offsets=LONG_RANGE, crop=CROP)
    voxel_size = open_array(inputs["affinities"]).voxel_size
    sections = {"fragments": MUTEX, "segment": THRESHOLDS}
    blockwise = write_config(directory / "blockwise", inputs, Coordinate(16, 32, 32) * voxel_size, None, **sections)
    one_block = write_config(directory / "one_block", inputs, Coordinate(48, 96, 96) * voxel_size, None, **sections)
    for path in (blockwise, one_block):
        run_pipeline(path, echo_progress=False)
    return load_config(blockwise), load_config(one_block)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_blockwise_mutex_watershed_equals_one_block(mutex_runs, threshold):
    """The block-wise segmentation equals the one-block one, up to a few voxels."""
    blockwise, one_block = mutex_runs
    between = evaluate(read_segmentation(blockwise, threshold), read_segmentation(one_block, threshold), ignore_background=False)
    assert between["voi"] <= 1e-3, between  # measured before the hierarchy: 3e-5 at most
