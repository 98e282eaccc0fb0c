"""Expected run length against cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from neurosam.graph.erl import SkeletonGraph, run_length_scores


def line(nodes: int, y: float) -> tuple[np.ndarray, np.ndarray]:
    """A straight skeleton of ``nodes`` nodes 10 nm apart along x."""
    positions = np.array([(0.0, y, 10.0 * i) for i in range(nodes)])
    return positions, np.array([(i, i + 1) for i in range(nodes - 1)])


# Skeleton 5: 40 nm, skeleton 9: 20 nm, 60 nm in all; a perfect segmentation scores
# (40^2 + 20^2) / 60 = 33.33 nm.
SKELETONS = SkeletonGraph.join({5: line(5, 0.0), 9: line(3, 100.0)})


def test_splits_and_an_omission_break_runs():
    # 5: [1 1 | 2 2 2] gives runs of 10 and 20 nm; 9: [3 3 | 0] one of 10 nm, its last edge in
    # background. ERL = (10^2 + 20^2 + 10^2) / 60 = 10 nm.
    scores = run_length_scores(SKELETONS, np.array([1, 1, 2, 2, 2, 3, 3, 0]))
    assert scores["erl"] == pytest.approx(10.0)
    assert scores["erl_max"] == pytest.approx(2000 / 60)
    assert scores["skeleton_length"] == pytest.approx(60.0)
    assert (scores["merges"], scores["splits"]) == (0, 1)


def test_a_merge_zeroes_every_run_in_the_merged_segment():
    # Segment 2 touches both skeletons: its 20 nm on 5 and 20 nm on 9 count for nothing; only
    # segment 1's 10 nm run is left. ERL = 10^2 / 60.
    scores = run_length_scores(SKELETONS, np.array([1, 1, 2, 2, 2, 2, 2, 2]))
    assert scores["erl"] == pytest.approx(100 / 60)
    assert (scores["merges"], scores["splits"]) == (1, 1)


def test_a_perfect_segmentation_scores_the_maximum():
    scores = run_length_scores(SKELETONS, np.array([7, 7, 7, 7, 7, 8, 8, 8]))
    assert scores["erl"] == pytest.approx(scores["erl_max"])
    assert (scores["merges"], scores["splits"]) == (0, 0)


def test_a_branching_skeleton_runs_through_its_branch_point():
    # A Y: stem 0-1 (10 nm), branches 1-2 (10 nm) and 1-3 (20 nm), all in one segment except
    # node 3: runs of 20 nm (0-1-2) and none for 1-3. ERL = 20^2 / 40 = 10 nm.
    skeletons = SkeletonGraph.join({1: (np.array([(0, 0, 0), (0, 0, 10), (0, 0, 20), (0, 20, 10)], float), np.array([(0, 1), (1, 2), (1, 3)]))})
    scores = run_length_scores(skeletons, np.array([4, 4, 4, 6]))
    assert scores["erl"] == pytest.approx(10.0)
    assert scores["erl_max"] == pytest.approx(40.0)
