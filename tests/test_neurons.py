"""Meshes, skeletons and ERL of a run cut into blocks: a neuron that crosses every block comes out
as one closed mesh and one connected skeleton."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neurosam.affinities import NEAREST_OFFSETS, labels_to_affinities
from neurosam.config import load_config
from neurosam.layout import neurons_dir
from neurosam.pipeline.run import run_pipeline
from pipeline_support import read_segmentation, WITH_ERL, write_config, write_inputs

VOXEL_SIZE = (16, 8, 8)
SHAPE = (32, 64, 64)


def tubes() -> np.ndarray:
    """Neuron 1 runs along x through the middle, across every block face (the blocks are 16 x 32
    x 32 voxels) and out of the volume at both ends; neuron 2 runs along y."""
    z, y, x = np.indices(SHAPE)
    labels = np.zeros(SHAPE, dtype=np.uint64)
    labels[((z - 16) / 4.5) ** 2 + ((y - 32) / 9) ** 2 < 1] = 1
    labels[((z - 5) / 3) ** 2 + ((x - 12) / 6) ** 2 < 1] = 2
    return labels


def edge_uses(faces: np.ndarray) -> np.ndarray:
    """How many faces use each edge: 2 everywhere on a closed surface."""
    faces = np.sort(faces, axis=1)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [0, 2]]])
    return np.unique(edges, axis=0, return_counts=True)[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("neurons")
    labels = tubes()
    affinities, _ = labels_to_affinities(labels, NEAREST_OFFSETS)
    inputs = write_inputs(tmp_path / "inputs", affinities, labels, VOXEL_SIZE)
    block = tuple(s * v // 2 for s, v in zip(SHAPE, VOXEL_SIZE))
    config_path = write_config(
        tmp_path / "run", inputs, block, None, segment={"thresholds": [0.5]},
        meshes={"reduction_factor": 10}, skeletons={"dust_threshold": 0, "tick_threshold": 0, "const": 50},
        ground_truth_skeletons={"dust_threshold": 0, "tick_threshold": 0}, evaluate=WITH_ERL,
    )
    summary = run_pipeline(config_path, echo_progress=False)
    config = load_config(config_path)
    segmentation = read_segmentation(config, 0.5)
    return config, summary, segmentation, labels


def test_a_neuron_across_every_block_is_one_closed_mesh(run):
    import zmesh

    config, summary, segmentation, _ = run
    meshes_task = next(task for task in summary["tasks"] if task.startswith("meshes-"))
    assert summary["tasks"][meshes_task]["blocks"] == 8
    neuron = int(segmentation[16, 32, 32])
    directory = neurons_dir(config, 0.5) / "mesh"
    assert json.loads((directory / f"{neuron}:0").read_text()) == {"fragments": [str(neuron)]}
    mesh = zmesh.Mesh.from_precomputed((directory / str(neuron)).read_bytes())
    assert set(edge_uses(mesh.faces)) == {2}, "the joined mesh has holes or seams"
    assert len(zmesh.vertex_connected_components(mesh)) == 1
    lower, upper = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
    assert lower[0] <= 0 and upper[0] >= SHAPE[2] * VOXEL_SIZE[2] - 32, "the mesh does not reach the volume's faces (32 nm samples)"


def test_a_neuron_across_every_block_is_one_connected_skeleton(run):
    from osteoid import Skeleton

    config, _, segmentation, _ = run
    neuron = int(segmentation[16, 32, 32])
    skeleton = Skeleton.from_precomputed((neurons_dir(config, 0.5) / "skeletons" / str(neuron)).read_bytes())
    assert len(skeleton.components()) == 1
    assert np.ptp(skeleton.vertices[:, 0]) > 0.7 * SHAPE[2] * VOXEL_SIZE[2], "the skeleton does not run the neuron's length"


def test_evaluation_reports_erl_on_ground_truth_skeletons(run):
    config, _, segmentation, labels = run
    report = json.loads((config.work_dir / "evaluation.json").read_text())
    scores = report["thresholds"]["0.5000"]
    skeletons = report["ground_truth_skeletons"]
    assert skeletons["skeletons"] == 2
    assert skeletons["length"] > SHAPE[1] * VOXEL_SIZE[1] + 0.7 * SHAPE[2] * VOXEL_SIZE[2]
    assert 0 < scores["erl"] <= skeletons["erl_max"] + 1e-6
    assert isinstance(scores["erl_merges"], int) and isinstance(scores["erl_splits"], int)


def erl_made_in_evaluate(plan) -> dict[str, float]:
    """ERL per threshold as evaluate computed it before the ground truth's skeletons were a stage of
    their own: skeletonised block by block inside evaluate and joined per neuron."""
    from neurosam.graph.erl import SkeletonGraph, run_length_scores
    from neurosam.stages.evaluate import _chunks, values_at
    from neurosam.stages.pieces import sampled
    from neurosam.stages.relabel import segment_ids
    from neurosam.stages.skeletons import join_skeleton, skeletonise

    params = plan.config.ground_truth_skeletons
    pieces: dict[int, list] = {}
    for chunk in _chunks(plan.volume_roi, plan.block_size):
        labels, origin = sampled(plan.arrays["ground_truth"], chunk, plan.volume_roi, plan.voxel_size)
        for neuron, piece in skeletonise(labels, origin, plan.voxel_size, params).items():
            pieces.setdefault(neuron, []).append(piece)
    skeletons = {}
    for neuron, parts in pieces.items():
        skeleton = join_skeleton(neuron, parts, params)
        skeletons[neuron] = (skeleton.vertices[:, ::-1], skeleton.edges)
    graph = SkeletonGraph.join(skeletons)
    fragments = values_at(plan.arrays["fragments"], graph.positions, plan.volume_roi, plan.block_size)
    segments = segment_ids(plan, fragments)
    return {f"{t:.4f}": run_length_scores(graph, segments[row]) for row, t in enumerate(plan.config.segment.thresholds)}


def test_erl_on_the_stage_skeletons_equals_erl_made_inside_evaluate(run):
    from neurosam.layout import load_plan, plan_path

    config, summary, _, _ = run
    assert [task for task in summary["tasks"] if task.startswith("ground_truth_skeletons-")] != []
    report = json.loads((config.work_dir / "evaluation.json").read_text())
    for threshold, scores in erl_made_in_evaluate(load_plan(str(plan_path(config.work_dir)))).items():
        assert report["thresholds"][threshold]["erl"] == scores["erl"]
        assert report["thresholds"][threshold]["erl_merges"] == scores["merges"]
        assert report["thresholds"][threshold]["erl_splits"] == scores["splits"]
        assert report["ground_truth_skeletons"]["length"] == scores["skeleton_length"]


def test_given_ground_truth_skeletons_in_voxels_read_as_the_stage_made_ones(run, tmp_path):
    """Skeletons in voxels with a transform to nm, as CloudVolume may write them, read to the same
    positions in nm as the stage's own."""
    from osteoid import Skeleton

    from neurosam.layout import ground_truth_skeletons_dir, load_plan, plan_path
    from neurosam.stages.evaluate import read_skeletons

    config, _, _, _ = run
    made = ground_truth_skeletons_dir(config)
    info = json.loads((made / "info").read_text())
    info["transform"] = [VOXEL_SIZE[2], 0, 0, 0, 0, VOXEL_SIZE[1], 0, 0, 0, 0, VOXEL_SIZE[0], 0]
    (tmp_path / "info").write_text(json.dumps(info))
    for path in made.iterdir():
        if path.name != "info":
            skeleton = Skeleton.from_precomputed(path.read_bytes())
            skeleton.vertices = skeleton.vertices / np.array(VOXEL_SIZE[::-1], dtype=np.float32)
            (tmp_path / path.name).write_bytes(skeleton.to_precomputed())
    given, stage_made = read_skeletons(tmp_path), read_skeletons(made)
    assert np.allclose(given.positions, stage_made.positions) and np.array_equal(given.edges, stage_made.edges)
    assert len(np.unique(stage_made.skeleton_ids)) == 2


def test_the_precomputed_export_reads_back_through_cloudvolume(run, tmp_path):
    import zmesh
    from cloudvolume import CloudVolume

    from neurosam.cli import main

    config, _, segmentation, _ = run
    assert main(["export-precomputed", str(config.work_dir / "config.yaml"), "--threshold", "0.5", "--out", str(tmp_path / "out")]) == 0
    volume = CloudVolume(f"file://{tmp_path / 'out'}", progress=False)
    assert tuple(volume.resolution) == VOXEL_SIZE[::-1]
    assert np.array_equal(volume[:, :, :][..., 0], segmentation.T)
    neuron = int(segmentation[16, 32, 32])
    mesh = volume.mesh.get(neuron)
    stored = zmesh.Mesh.from_precomputed((neurons_dir(config, 0.5) / "mesh" / str(neuron)).read_bytes())
    assert len(mesh.faces) == len(stored.faces)
    assert len(volume.skeleton.get(neuron).components()) == 1


@pytest.mark.parametrize("dust_threshold", [399.0, 400.0])
def test_the_join_drops_unjoined_only_what_its_clean_up_drops(tmp_path, dust_threshold):
    """A segment of 400 nm of cable in two blocks' pieces: at a dust threshold of 400 nm kimimaro's
    clean-up leaves nothing of it, and the join skips it; at 399 nm both keep it."""
    from neurosam.config import TeasarConfig
    from neurosam.stages.pieces import save_pieces
    from neurosam.stages.skeletons import join_skeleton, joined_skeletons

    line = np.array([(100.0 * i, 0, 0) for i in range(5)], dtype=np.float32)
    pieces = [
        {"vertices": line[:3], "edges": np.array([(0, 1), (1, 2)], np.uint32), "radii": np.full(3, 50, np.float32)},
        {"vertices": line[2:], "edges": np.array([(0, 1), (1, 2)], np.uint32), "radii": np.full(3, 50, np.float32)},
    ]
    for block, piece in enumerate(pieces):
        save_pieces(tmp_path / "pieces", block, {7: piece}, groups=1)
    params = TeasarConfig(dust_threshold=dust_threshold, tick_threshold=0)
    joined_skeletons(tmp_path / "pieces", tmp_path / "out", params)(None)
    kept = len(join_skeleton(7, pieces, params).vertices) > 0
    assert (tmp_path / "out" / "7").exists() == kept == (dust_threshold < 400)
