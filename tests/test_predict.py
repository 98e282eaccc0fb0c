"""The predict stage: block-wise equals whole-volume, a killed run resumes exactly, bad
checkpoints and voxel sizes fail before any block, and the registry is the only place a stage
is named."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from funlib.geometry import Coordinate, Roi

from neurosam.affinities import NEAREST_OFFSETS, to_uint8
from neurosam.cli import main
from neurosam.config import load_config
from neurosam.io.volumes import create_array, open_array
from neurosam.model.build import build_model, save_checkpoint
from neurosam.model.config import ModelConfig
from neurosam.model.inference import TileTransform, normalise, predict_tiles, predict_volume, tile_transforms
from neurosam.pipeline.plan import task_ids
from neurosam.pipeline.run import run_pipeline
from neurosam.rag import open_rag
from pipeline_support import read_h5

VOXEL_SIZE = (10, 10, 10)
OFFSETS = [*NEAREST_OFFSETS, [0, 0, -3]]
TILE = {"tile_shape": [8, 24, 24], "tile_context": [2, 4, 4], "tile_batch": 1, "threads_per_worker": 1}
"""One tile per batch and one thread, here and in the workers: convolutions then add up in the
same order, so block-wise and whole-volume floats are identical and so are their uint8 values."""


def tiny_checkpoint(path: Path, voxel_size=VOXEL_SIZE, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = ModelConfig(
        architecture="unet", offsets=OFFSETS,
        unet={"base_channels": 4, "channel_multiplier": 2, "downsample": [[1, 2, 2], [2, 2, 2]], "normalise": True},
    )
    save_checkpoint(path, build_model(config), config, extra={"voxel_size": list(voxel_size)})
    return path


@pytest.fixture(scope="module")
def raw_volume(tmp_path_factory) -> tuple[str, np.ndarray]:
    """A real medulla crop whose shape no block size used here divides."""
    raw, voxel_size = read_h5("medulla_fibsem.h5", "raw", (slice(130, 151), slice(0, 61), slice(0, 53)))
    path = tmp_path_factory.mktemp("raw") / "raw.zarr" / "raw"
    roi = Roi((0, 0, 0), Coordinate(raw.shape) * voxel_size)
    create_array(path, roi, voxel_size, np.uint8)[roi] = raw
    return str(path), raw


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


def predict_config(work_dir: Path, raw: str, checkpoint: Path, block_size=(40, 160, 160), **predict) -> Path:
    work_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "work_dir": str(work_dir),
        "datasets": {
            "raw": raw,
            "affinities": str(work_dir / "out.zarr/affinities"),
            "fragments": str(work_dir / "out.zarr/fragments"),
            "segmentation": str(work_dir / "out.zarr/segmentation"),
        },
        "blocks": {"block_size": [100, 200, 200], "context": [20, 20, 20]},
        "workers": {"count": 2},
        "rag": {"url": f"sqlite:///{work_dir / 'rag.db'}"},
        "predict": {"checkpoint": str(checkpoint), "block_size": list(block_size), **TILE, **predict},
        "segment": {"thresholds": [0.5]},
    }
    path = work_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def read_affinities(config_path: Path) -> np.ndarray:
    array = open_array(load_config(config_path).datasets.affinities)
    return array[array.roi]


def whole_volume_prediction(raw: np.ndarray, checkpoint: Path) -> np.ndarray:
    from neurosam.model.build import load_model

    model, _, _ = load_model(checkpoint)
    threads = torch.get_num_threads()
    torch.set_num_threads(TILE["threads_per_worker"])
    try:
        return predict_volume(model, normalise(raw), TILE["tile_shape"], TILE["tile_context"], torch.device("cpu"), tile_batch=1)
    finally:
        torch.set_num_threads(threads)


def test_blockwise_prediction_equals_whole_volume(raw_volume, checkpoint, tmp_path):
    """Blocks of 4 x 16 x 16 voxels, that is 1 x 1 x 1 tile cores, over 21 x 61 x 53 voxels: the
    last block of every axis is cut by the volume's border."""
    raw_path, raw = raw_volume
    config_path = predict_config(tmp_path, raw_path, checkpoint)
    run_pipeline(config_path, until="predict", echo_progress=False)
    blockwise = read_affinities(config_path)
    reference = whole_volume_prediction(raw, checkpoint)
    assert blockwise.shape == (len(OFFSETS), *raw.shape)
    np.testing.assert_array_equal(blockwise, to_uint8(reference))
    stored = open_array(load_config(config_path).datasets.affinities)
    assert stored.attrs["offsets"] == OFFSETS


def test_blockwise_float_prediction_equals_whole_volume(raw_volume, checkpoint):
    """Before quantisation: the tiles of a block read with mirrored borders are the tiles of
    the whole volume padded by reflection, up to float rounding."""
    from neurosam.layout import StoredArray
    from neurosam.model.build import load_model
    from neurosam.model.inference import predict_tiles
    from neurosam.stages.predict import tile_rows

    raw_path, raw = raw_volume
    stored = StoredArray(raw_path, Roi((0, 0, 0), Coordinate(raw.shape) * 10), Coordinate(VOXEL_SIZE))
    model, _, _ = load_model(checkpoint)
    reference = whole_volume_prediction(raw, checkpoint)
    core, context = Coordinate(4, 16, 16) * 10, Coordinate(2, 4, 4) * 10
    write_roi = Roi((160, 480, 480), (40, 160, 160)).intersect(stored.roi)
    (row,) = tile_rows(write_roi, core, context)
    block = predict_tiles(model, normalise(stored.read_mirrored(row)), TILE["tile_shape"], TILE["tile_context"], torch.device("cpu"))
    shape, start = write_roi.shape / 10, write_roi.offset / 10
    np.testing.assert_allclose(
        block[(slice(None), *(slice(0, s) for s in shape))],
        reference[(slice(None), *(slice(a, a + s) for a, s in zip(start, shape)))],
        atol=1e-5,
    )


LONG_RANGE = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-3, 0, 0], [0, -3, 0], [0, 0, -3], [-9, 0, 0], [0, -9, 0], [0, 0, -9]]


class PairModel(torch.nn.Module):
    """Each affinity a function of its voxel pair alone (1 - |difference|): the same under any
    flip or swap of the tiles, so test-time augmentation must give back the plain prediction."""

    def __init__(self, offsets):
        super().__init__()
        self.offsets = offsets

    def forward(self, tiles):
        pairs = [1 - (tiles - torch.roll(tiles, [-c for c in offset], [2, 3, 4])).abs() for offset in self.offsets]
        affinities = torch.cat(pairs, 1).clamp(1e-4, 1 - 1e-4)
        return {"refined": torch.log(affinities / (1 - affinities))}


def test_every_tile_transform_is_inverted_exactly_offsets_included():
    rng = np.random.default_rng(0)
    context, tile = (9, 10, 10), (30, 40, 40)
    padded = np.pad(rng.random((24, 40, 40)), [(9, 9), (10, 10), (10, 10)], mode="reflect").astype(np.float32)
    model, cpu = PairModel(LONG_RANGE), torch.device("cpu")
    plain = predict_tiles(model, padded, tile, context, cpu, offsets=LONG_RANGE)
    transforms = tile_transforms(LONG_RANGE, context)
    assert len(transforms) == 16 and transforms[0] == TileTransform()
    for transform in transforms:
        np.testing.assert_array_equal(predict_tiles(model, padded, tile, context, cpu, transforms=[transform], offsets=LONG_RANGE), plain)
    np.testing.assert_allclose(predict_tiles(model, padded, tile, context, cpu, transforms=transforms, offsets=LONG_RANGE), plain, atol=1e-6)
    flipped = predict_tiles(PairModel([[0, 0, -3]] * 9), padded, tile, context, cpu, transforms=[TileTransform((2,))], offsets=LONG_RANGE)
    assert not np.allclose(flipped, plain), "a model that is not symmetric must change under a flip"


def test_tile_transforms_are_those_the_offsets_and_context_allow():
    assert {t.flips for t in tile_transforms(LONG_RANGE, (8, 16, 16))} == {(), (1,), (2,), (1, 2)}
    assert len(tile_transforms(LONG_RANGE, (8, 16, 16))) == 8
    assert all(not t.transpose for t in tile_transforms(OFFSETS, (2, 4, 4)))
    assert len(tile_transforms(OFFSETS, (2, 4, 4))) == 8
    assert tile_transforms([[0, -1, -2]], (4, 4, 4)) == [TileTransform(), TileTransform((0,))]


def test_blockwise_prediction_with_test_time_augmentation_equals_whole_volume(raw_volume, checkpoint, tmp_path):
    from neurosam.model.build import load_model

    raw_path, raw = raw_volume
    config_path = predict_config(tmp_path, raw_path, checkpoint, test_time_augmentation=True)
    run_pipeline(config_path, until="predict", echo_progress=False)
    model, _, _ = load_model(checkpoint)
    context, core = np.array(TILE["tile_context"]), np.array(TILE["tile_shape"]) - 2 * np.array(TILE["tile_context"])
    padding = [(c, -(-s // k) * k - s + c) for c, k, s in zip(context, core, raw.shape)]
    padded = np.pad(normalise(raw), padding, mode="reflect")
    transforms = tile_transforms(OFFSETS, TILE["tile_context"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        augmented = predict_tiles(model, padded, TILE["tile_shape"], context, torch.device("cpu"), transforms=transforms, offsets=OFFSETS)
        plain = predict_tiles(model, padded, TILE["tile_shape"], context, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    inside = (slice(None), *(slice(0, s) for s in raw.shape))
    blockwise = read_affinities(config_path)
    assert np.abs(blockwise.astype(int) - to_uint8(augmented[inside]).astype(int)).max() <= 1
    assert np.abs(blockwise.astype(int) - to_uint8(plain[inside]).astype(int)).max() > 1


def test_mirrored_read_equals_numpy_reflect_padding(raw_volume):
    from neurosam.layout import StoredArray

    raw_path, raw = raw_volume
    stored = StoredArray(raw_path, Roi((0, 0, 0), Coordinate(raw.shape) * 10), Coordinate(VOXEL_SIZE))
    padded = np.pad(raw, [(30, 30), (70, 70), (60, 60)], mode="reflect")
    read = stored.read_mirrored(Roi((-300, -700, -600), (Coordinate(raw.shape) + Coordinate(60, 140, 120)) * 10))
    np.testing.assert_array_equal(read, padded)


def test_killed_prediction_resumes_exactly(raw_volume, checkpoint, tmp_path):
    raw_path, _ = raw_volume
    reference_path = predict_config(tmp_path / "reference", raw_path, checkpoint)
    run_pipeline(reference_path, until="predict", echo_progress=False)

    config_path = predict_config(tmp_path / "killed", raw_path, checkpoint)
    config = load_config(config_path)
    task = task_ids(config)["predict"]
    process = subprocess.Popen(
        [sys.executable, "-m", "neurosam.cli", "predict", str(config_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        if (config.work_dir / "rag.db").exists():
            with open_rag(config.rag.url) as rag:
                if len(rag.done_blocks(task)) >= 5:
                    break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    with open_rag(config.rag.url) as rag:
        done_before = len(rag.done_blocks(task))
    assert 0 < done_before < 6 * 4 * 4

    summary = run_pipeline(config_path, until="predict", echo_progress=False)
    assert summary["tasks"][task]["skipped_as_done"] >= done_before
    np.testing.assert_array_equal(read_affinities(config_path), read_affinities(reference_path))


def written(path: Path, write) -> Path:
    write(path)
    return path


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (lambda path: path, "does not exist"),
        (lambda path: written(path, lambda p: p.write_bytes(b"not a checkpoint")), "cannot be read as a checkpoint"),
        (lambda path: written(path, lambda p: torch.save({"format": "other"}, p)), "is not a neurosam model checkpoint"),
        (lambda path: tiny_checkpoint(path, voxel_size=(40, 4, 4)), "was trained on (40, 4, 4) nm"),
    ],
)
def test_bad_checkpoint_fails_before_any_block(raw_volume, tmp_path, capsys, make_bad, message):
    bad = make_bad(tmp_path / "bad.pt")
    config_path = predict_config(tmp_path / "run", raw_volume[0], bad)
    assert main(["run", str(config_path)]) == 2
    error = capsys.readouterr().err
    assert message in error and str(bad) in error
    assert not (tmp_path / "run" / "out.zarr").exists()


def test_checkpoint_with_mismatched_weights_is_named(raw_volume, checkpoint, tmp_path, capsys):
    state = torch.load(checkpoint, weights_only=True)
    del state["state_dict"]["head.weight"]
    bad = tmp_path / "truncated.pt"
    torch.save(state, bad)
    config_path = predict_config(tmp_path / "run", raw_volume[0], bad)
    assert main(["run", str(config_path)]) == 2
    error = capsys.readouterr().err
    assert "do not fit the model" in error and str(bad) in error


def test_predict_block_size_must_hold_whole_tile_cores(raw_volume, checkpoint, tmp_path, capsys):
    config_path = predict_config(tmp_path, raw_volume[0], checkpoint, block_size=(40, 150, 160))
    assert main(["run", str(config_path)]) == 2
    assert "predict.block_size" in capsys.readouterr().err


def test_each_stage_asks_slurm_for_its_own_resources(raw_volume, checkpoint, tmp_path):
    """Predict jobs go to the GPU partition with a GPU each; the other stages to the CPU one."""
    from neurosam.layout import load_plan
    from neurosam.pipeline.launchers import make_process_function, sbatch_command
    from neurosam.pipeline.plan import plan_run, prepare_outputs

    config_path = predict_config(tmp_path, raw_volume[0], checkpoint)
    edit = yaml.safe_load(config_path.read_text())
    edit["workers"] = {
        "launcher": "slurm", "count": 8, "slurm": {"partition": "cpu", "memory": "8G"},
        "stages": {"predict": {"count": 2, "slurm": {"partition": "gpu", "gpus_per_worker": 1, "memory": "32G"}}},
    }
    config_path.write_text(yaml.safe_dump(edit))
    plan = plan_run(load_config(config_path), check_database=False)
    prepare_outputs(plan)
    plan_file = str(plan.save())
    assert load_plan(plan_file) == plan
    for task in plan.tasks.values():
        function = make_process_function(plan, plan_file, task)
        command, job_name, slurm, work_dir = function.args
        assert command[-3:] == [plan_file, "--task", task.task_id]
        sbatch = sbatch_command(command, job_name, slurm, work_dir)
        if task.stage == "predict":
            assert "--partition=gpu" in sbatch and "--gres=gpu:1" in sbatch and "--mem=32G" in sbatch
            assert plan.config.workers.count_for("predict") == 2
        else:
            assert "--partition=cpu" in sbatch and not any(arg.startswith("--gres") for arg in sbatch)
            assert plan.config.workers.count_for(task.stage) == 8


@pytest.mark.parametrize("workers_per_gpu, expected", [(1, [0, 1, 0, 1]), (2, [0, 0, 1, 1])])
def test_each_local_worker_gets_its_own_gpu(raw_volume, checkpoint, tmp_path, monkeypatch, workers_per_gpu, expected):
    """On a machine with two GPUs (faked: none is touched), worker i takes GPU
    (i // workers_per_gpu) mod 2; threads_per_worker sets a CPU worker's torch threads."""
    from neurosam.layout import WorkerSetup
    from neurosam.pipeline.plan import plan_run
    from neurosam.stages.predict import choose_device, cpu_threads

    config = load_config(predict_config(tmp_path, raw_volume[0], checkpoint, workers_per_gpu=workers_per_gpu))
    plan = plan_run(config, check_database=False)
    task = plan.task_of_stage("predict")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    devices = [choose_device(WorkerSetup(plan, task, None, index)) for index in range(4)]
    assert [device.index for device in devices] == expected and {d.type for d in devices} == {"cuda"}
    assert cpu_threads(WorkerSetup(plan, task, None, 0)) == TILE["threads_per_worker"]


def student_fgnet_checkpoint(path: Path, **sam2) -> Path:
    """A SAM2-guided model (with the student as its slice encoder) as training leaves it: it
    records the scale, px per voxel, at which its encoder saw 16 x 16 voxel training patches."""
    from neurosam.training.training import check_slice_scale

    config = ModelConfig(
        architecture="fgnet", backbone="student", offsets=OFFSETS, sam2={"slice_batch": 8, **sam2},
        student={"widths": [4, 4, 8, 8]}, fge={"base_channels": 4, "downsample": [[1, 2, 2], [2, 2, 2]]}, guide_channels=4,
    )
    model = build_model(config)
    scale = check_slice_scale(model, (8, 48, 48), (8, 48, 48))
    save_checkpoint(path, model, config, extra={"voxel_size": list(VOXEL_SIZE), "slice_scale": scale})
    return path


def test_predict_refuses_tiles_whose_slices_the_encoder_would_see_at_another_scale(raw_volume, tmp_path, capsys):
    fixed_size = student_fgnet_checkpoint(tmp_path / "fixed_size.pt", image_size=64)
    config_path = predict_config(tmp_path / "run", raw_volume[0], fixed_size)
    assert main(["run", str(config_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert "predict.tile_shape (8, 24, 24) shows the slice encoder [2.6667, 2.6667] px per voxel" in error
    assert "trained at [1.3333, 1.3333]" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "run" / "out.zarr").exists()


def test_a_model_at_a_fixed_physical_scale_sees_any_tile_at_its_training_scale(raw_volume, tmp_path, capsys):
    from neurosam.pipeline.plan import plan_run

    fixed_scale = student_fgnet_checkpoint(tmp_path / "fixed_scale.pt", pixels_per_voxel=4 / 3)
    plan_run(load_config(predict_config(tmp_path / "run", raw_volume[0], fixed_scale)), check_database=False)
    config_path = predict_config(tmp_path / "odd", raw_volume[0], fixed_scale, tile_shape=[8, 28, 28], block_size=[40, 200, 200])
    assert main(["run", str(config_path)]) == 2
    assert "slices of 28 x 28 voxels at 1.33333 px per voxel are 37.3333 x 37.3333 px" in capsys.readouterr().err
