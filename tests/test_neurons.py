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
from pipeline_support import read_segmentation, write_config, write_inputs

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
        evaluate={"ground_truth_skeletons": {"dust_threshold": 0, "tick_threshold": 0}},
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
