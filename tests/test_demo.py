"""The embedded default: configs/demo.yaml goes from raw EM to scored neurons with nothing but
the repository, the shipped model segments its crop (the validation sections it never trained
on) better than a model that learned nothing could, and a rerun skips every block."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from neurosam.cli import main
from neurosam.config import load_config
from neurosam.model.build import load_model

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
SHIPPED_MODEL_VOI_BOUND = 2.0
"""Well above the shipped model's figure in the README's model card; a model that predicts no
boundaries scores over 3.5 here (every neuron merged into one)."""


def test_the_demo_reports_at_the_threshold_its_model_chose_on_validation():
    demo = load_config(DEMO)
    _, _, extra = load_model(demo.predict.checkpoint)
    assert demo.evaluate.chosen_threshold == extra["best"]["threshold"]


def test_demo_runs_from_raw_to_scored_neurons(tmp_path, capsys):
    demo = load_config(DEMO)
    config = yaml.safe_load(DEMO.read_text())
    config["work_dir"] = str(tmp_path)
    for role in ("affinities", "fragments", "segmentation"):
        config["datasets"][role] = str(tmp_path / f"volumes.zarr/{role}")
    for role in ("raw", "ground_truth"):
        config["datasets"][role] = getattr(demo.datasets, role)
    config["predict"]["checkpoint"] = str(demo.predict.checkpoint)
    config["rag"]["url"] = f"sqlite:///{tmp_path / 'rag.db'}"
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))

    assert main(["run", str(path)]) == 0
    printed = capsys.readouterr().out
    print(printed)
    report = json.loads((tmp_path / "evaluation.json").read_text())
    best = report["thresholds"][report["best_threshold"]]
    chosen = report["thresholds"][report["chosen_threshold"]]
    assert f"at the chosen threshold {report['chosen_threshold']} (chosen on a validation crop): VOI {chosen['voi']:.3f}" in printed
    assert f"best threshold {report['best_threshold']}: VOI {best['voi']:.3f}" in printed
    assert chosen["voi"] < SHIPPED_MODEL_VOI_BOUND
    assert (tmp_path / "segmentation.png").exists() and (tmp_path / "evaluation.png").exists()

    assert main(["run", str(path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert all(counts["skipped_as_done"] == counts["blocks"] for counts in summary["tasks"].values())
