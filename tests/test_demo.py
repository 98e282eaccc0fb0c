"""The embedded default: configs/demo.yaml goes from raw EM to scored neurons with nothing but
the repository, the shipped model segments its crop (the report sections, which neither
trained it nor chose its checkpoint) as the README's model card says, and a rerun skips every block."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from neurosam.cli import main
from neurosam.config import load_config
from neurosam.model.build import load_model

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
MODEL_CARD = {"chosen": ("0.5000", 1.518, 0.150), "best": ("0.4000", 1.481, 0.142)}
"""The README's model card (``benchmarks/model_card.py``): threshold, VOI, adapted Rand error at
the threshold the model's training chose, and at the crop's own best."""
VOI_TOLERANCE = 0.03
"""A checkpoint from the first half of training (validation VOI 1.692 at 1,500 steps against
1.462 at 3,500), or a pipeline that segments that much worse, fails."""
RAND_TOLERANCE = 0.01


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
    # One thread per worker, whatever the machine: the figures are then the same everywhere.
    config["predict"]["threads_per_worker"] = 1
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
    for name, scores in (("chosen", chosen), ("best", best)):
        threshold, voi, rand_error = MODEL_CARD[name]
        assert report[f"{name}_threshold"] == threshold
        assert abs(scores["voi"] - voi) <= VOI_TOLERANCE, (name, scores)
        assert abs(scores["adapted_rand_error"] - rand_error) <= RAND_TOLERANCE, (name, scores)
    assert (tmp_path / "segmentation.png").exists() and (tmp_path / "evaluation.png").exists()

    assert main(["run", str(path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert all(counts["skipped_as_done"] == counts["blocks"] for counts in summary["tasks"].values())
