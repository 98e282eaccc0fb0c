"""Task ids depend on what a task's output depends on (data, parameters, the model's bytes), not
on where the database is or how it is reached, nor on where the run directory lies."""

from __future__ import annotations

import dataclasses
import shutil

import yaml

from neurosam.config import load_config
from neurosam.pipeline import registry
from neurosam.pipeline.plan import task_ids


DATASETS = {"raw": "data.zarr/raw", "affinities": "run/out.zarr/affinities",
            "fragments": "run/out.zarr/fragments", "segmentation": "run/out.zarr/segmentation"}


def write(directory, **changes):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.pt").write_bytes(b"weights")
    config = {
        "work_dir": "run",
        "datasets": DATASETS,
        "blocks": {"block_size": [100, 100, 100]},
        "rag": {"url": "postgresql://neurosam:secret@127.0.0.1:5432/neurosam"},
        "predict": {"checkpoint": "model.pt"},
        **changes,
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_database_address_and_password_do_not_change_task_ids(tmp_path):
    first = task_ids(load_config(write(tmp_path / "a")))
    other = write(tmp_path / "a", rag={"url": "postgresql://neurosam:other@localhost:5432/neurosam"})
    assert task_ids(load_config(other)) == first


def test_a_moved_run_directory_keeps_its_task_ids(tmp_path):
    first = task_ids(load_config(write(tmp_path / "here")))
    shutil.move(tmp_path / "here", tmp_path / "elsewhere")
    assert task_ids(load_config(tmp_path / "elsewhere" / "config.yaml")) == first


def test_another_model_in_the_same_file_changes_every_task_id(tmp_path):
    path = write(tmp_path / "a")
    first = task_ids(load_config(path))
    (tmp_path / "a" / "model.pt").write_bytes(b"retrained weights")
    again = task_ids(load_config(path))
    assert all(first[stage] != again[stage] for stage in first)


def test_a_parameter_still_changes_its_task_and_those_after_it(tmp_path):
    first = task_ids(load_config(write(tmp_path / "a")))
    changed = task_ids(load_config(write(tmp_path / "a", fragments={"epsilon_agglomerate": 0.2})))
    assert changed["predict"] == first["predict"]
    assert all(changed[stage] != first[stage] for stage in first if stage != "predict")


def test_a_new_version_of_a_stage_changes_its_task_and_those_after_it(tmp_path, monkeypatch):
    """Work dirs of the version before keep their done records for the stages before it alone."""
    path = write(tmp_path / "a")
    first = task_ids(load_config(path))
    stages = list(registry.STAGES)
    index = [stage.name for stage in stages].index("contacts")
    stages[index] = dataclasses.replace(stages[index], version=stages[index].version + 1)
    monkeypatch.setattr(registry, "STAGES", stages)
    changed = task_ids(load_config(path))
    before = {stage.name for stage in stages[:index]}
    assert all((changed[stage] == first[stage]) == (stage in before) for stage in first), (first, changed)


def test_ground_truth_skeletons_are_kept_whatever_the_stages_before_them_change(tmp_path):
    datasets = {**DATASETS, "ground_truth": "data.zarr/neuron_ids"}
    first = task_ids(load_config(write(tmp_path / "a", datasets=datasets)))
    changed = task_ids(load_config(write(tmp_path / "a", datasets=datasets, segment={"thresholds": [0.2, 0.4]})))
    assert changed["ground_truth_skeletons"] == first["ground_truth_skeletons"]
    assert changed["evaluate"] != first["evaluate"]
    other = task_ids(load_config(write(tmp_path / "a", datasets=datasets, ground_truth_skeletons={"const": 100})))
    assert other["ground_truth_skeletons"] != first["ground_truth_skeletons"] and other["evaluate"] != first["evaluate"]
    assert all(other[stage] == first[stage] for stage in first if stage not in ("ground_truth_skeletons", "evaluate"))

