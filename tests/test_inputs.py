"""Bad input gets one clear error naming the problem, before any work starts, and leaves what is
already written untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from funlib.geometry import Roi

from neurosam.affinities import boundary_to_affinities
from neurosam.cli import main
from neurosam.io.volumes import create_array, open_array
from pipeline_support import read_h5, write_config, write_inputs

CROP = (slice(0, 10), slice(0, 20), slice(0, 40))


@pytest.fixture
def inputs(tmp_path):
    boundary, voxel_size = read_h5("gala_fib_train.h5", "boundary_prob", CROP)
    labels, _ = read_h5("gala_fib_train.h5", "neuron_ids", CROP)
    return write_inputs(tmp_path, boundary_to_affinities(boundary), labels, voxel_size)


def run_cli(config_path, capsys) -> tuple[int, str]:
    code = main(["run", str(config_path)])
    return code, capsys.readouterr().err


def edit_config(path, change) -> None:
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config))


def test_unknown_key_is_named(tmp_path, inputs, capsys):
    path = write_config(tmp_path / "run", inputs, (50, 100, 100), (20, 20, 20), fragments={"epsilon": 0.1})
    code, error = run_cli(path, capsys)
    assert code == 2 and "fragments.epsilon: unknown key" in error


def test_missing_dataset_is_named(tmp_path, inputs, capsys):
    path = write_config(tmp_path / "run", {**inputs, "affinities": inputs["affinities"] + "_typo"}, (50, 100, 100), (20, 20, 20))
    code, error = run_cli(path, capsys)
    assert code == 2 and "affinities_typo" in error and "no dataset" in error


def test_wrong_dtype(tmp_path, inputs, capsys):
    affinities = open_array(inputs["affinities"])
    float_path = str(tmp_path / "float.zarr/affinities")
    create_array(float_path, affinities.roi, affinities.voxel_size, np.float32, channels=3)
    path = write_config(tmp_path / "run", {**inputs, "affinities": float_path}, (50, 100, 100), (20, 20, 20))
    code, error = run_cli(path, capsys)
    assert code == 2 and "float32" in error and "uint8" in error


def test_voxel_size_mismatch(tmp_path, inputs, capsys):
    ground_truth = open_array(inputs["ground_truth"])
    other = str(tmp_path / "other.zarr/gt")
    create_array(other, Roi((0, 0, 0), ground_truth.roi.shape * 2), (20, 20, 20), np.uint64)
    path = write_config(tmp_path / "run", {**inputs, "ground_truth": other}, (50, 100, 100), (20, 20, 20))
    code, error = run_cli(path, capsys)
    assert code == 2 and "voxel size" in error and "ground truth" in error


def test_roi_outside_volume(tmp_path, inputs, capsys):
    path = write_config(tmp_path / "run", inputs, (50, 100, 100), (20, 20, 20), roi={"offset": [0, 0, 0], "shape": [100, 200, 800]})
    code, error = run_cli(path, capsys)
    assert code == 2 and "outside" in error


def test_block_size_not_multiple_of_voxel_size(tmp_path, inputs, capsys):
    path = write_config(tmp_path / "run", inputs, (55, 100, 100), (20, 20, 20))
    code, error = run_cli(path, capsys)
    assert code == 2 and "blocks.block_size" in error and "multiple" in error


@pytest.mark.parametrize("key, change", [
    ("blocks.block_size.1", lambda c: c["blocks"].update(block_size=[50, 0, 100])),
    ("roi.shape.0", lambda c: c.update(roi={"offset": [0, 0, 0], "shape": [0, 100, 100]})),
])
def test_sizes_that_are_not_positive_are_named(tmp_path, inputs, capsys, key, change):
    path = write_config(tmp_path / "run", inputs, (50, 100, 100), (20, 20, 20))
    edit_config(path, change)
    code, error = run_cli(path, capsys)
    assert code == 2 and f"{key}: Input should be greater than 0" in error


def test_unreachable_database(tmp_path, inputs, capsys):
    path = write_config(tmp_path / "run", inputs, (50, 100, 100), (20, 20, 20), rag={"url": "postgresql://neurosam@127.0.0.1:1/nowhere"})
    code, error = run_cli(path, capsys)
    assert code == 2 and "127.0.0.1:1" in error


def test_unwritable_database(tmp_path, inputs, capsys):
    """/proc is read-only even for root, so this holds wherever the tests run."""
    path = write_config(tmp_path / "run", inputs, (50, 100, 100), (20, 20, 20), rag={"url": "sqlite:////proc/neurosam/rag.db"})
    code, error = run_cli(path, capsys)
    assert code == 2 and "/proc/neurosam/rag.db" in error


@pytest.mark.parametrize(
    "roi, chunk_voxels",
    [
        (Roi((0, 0, 0), (50, 100, 100)), None),
        # the whole volume, but chunks of 20 voxels along x straddle its blocks of 10
        (Roi((0, 0, 0), (100, 200, 400)), (5, 10, 20)),
    ],
    ids=["another shape", "chunks across blocks"],
)
def test_existing_output_that_does_not_fit_is_left_untouched(tmp_path, inputs, capsys, roi, chunk_voxels):
    path = write_config(tmp_path / "run", inputs, (50, 100, 100), (20, 20, 20))
    fragments_path = yaml.safe_load(path.read_text())["datasets"]["fragments"]
    existing = create_array(fragments_path, roi, (10, 10, 10), np.uint64, chunk_voxels=chunk_voxels)
    existing[roi] = 7
    code, error = run_cli(path, capsys)
    assert code == 2 and "already exists" in error
    after = open_array(fragments_path)
    assert after.roi == roi and (after[roi] == 7).all()


@pytest.mark.parametrize("context, message", [
    ([0, 20, 20], "along axis z the volume has several blocks"),
    ([-10, 20, 20], "blocks.context.0: Input should be greater than or equal to 0"),
])
def test_context_too_small_for_stitching_is_refused(tmp_path, inputs, capsys, context, message):
    path = write_config(tmp_path / "run", inputs, (50, 100, 100), context)
    code, error = run_cli(path, capsys)
    assert code == 2 and message in error
    assert not (tmp_path / "run" / "out.zarr").exists()


def test_work_dir_that_is_a_file_is_named_before_the_database_is_touched(tmp_path, inputs, capsys):
    (tmp_path / "taken").write_text("not a directory")
    path = write_config(tmp_path / "run", inputs, (50, 100, 100), (20, 20, 20))
    edit_config(path, lambda c: c.update(work_dir=str(tmp_path / "taken"), rag={"url": f"sqlite:///{tmp_path / 'rag.db'}"}))
    code, error = run_cli(path, capsys)
    assert code == 2 and "is a file, not a directory" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "rag.db").exists()


@pytest.mark.parametrize("function, message", [
    ('OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>; system("touch /tmp/pwned");', "unexpected"),
    ("OneMinus<HistogramQuantileAffinity<RegionGraphType, 150, ScoreValue, 256>>", "integer in [0, 100]"),
    ("OneMinus<Evil<RegionGraphType>>", "'Evil' is not a waterz scoring function"),
    ("OneMinus<MeanAffinity<RegionGraphType, int>>", "takes ScoreValue here"),
])
def test_scoring_functions_outside_waterz_grammar_are_refused(tmp_path, inputs, capsys, function, message):
    """waterz compiles scoring functions as C++: a config must not smuggle code into them."""
    path = write_config(
        tmp_path / "run", inputs, (50, 100, 100), (20, 20, 20), segment={"scoring_functions": {"evil": function}, "scoring_function": "evil"}
    )
    code, error = run_cli(path, capsys)
    assert code == 2 and "segment.scoring_functions" in error and message in error
    assert not (tmp_path / "run" / "out.zarr").exists()


def test_the_command_of_a_renamed_stage_names_the_new_one(tmp_path, inputs, capsys):
    path = write_config(tmp_path / "run", inputs, (50, 100, 100), (20, 20, 20))
    assert main(["agglomerate", str(path)]) == 2
    error = capsys.readouterr().err
    assert "contacts" in error and len(error.splitlines()) == 1


def test_view_at_a_threshold_the_run_does_not_have_lists_those_it_has(tmp_path, inputs, capsys):
    path = write_config(tmp_path / "run", inputs, (50, 100, 100), (20, 20, 20), segment={"thresholds": [0.3, 0.5]})
    assert main(["view", str(path), "--threshold", "0.55", "--png"]) == 2
    error = capsys.readouterr().err
    assert "0.55" in error and "0.3, 0.5" in error and len(error.splitlines()) == 1
