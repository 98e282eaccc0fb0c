"""The ranking of networks at a real budget, under the protocol (issue 20).

Every row trains with the shipped model's recipe (configs/train_medulla_unet.yaml: 4,000
iterations, patches of 32 x 64 x 64, AdamW 2e-3 with a cosine schedule) on medulla z 0-99, and
chooses its checkpoint and threshold on z 100-129; its figures are the report crop's (z 130-159,
the demo crop) through the block-wise pipeline at that threshold. The SAM2 rows first need their
encoder: masked-image pretraining of Hiera on the unlabelled medulla, then (for the student row)
distillation from it.

Run again to resume: every stage continues from its last checkpoint, and a finished one returns
at once. Stages and rows run one after another in this process, in the order below.

    python benchmarks/network_ranking.py --root /work/training             # run or resume all, print the table
    python benchmarks/network_ranking.py --root /work/training --rows unet --table-only
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
sys.path.insert(0, str(Path(__file__).resolve().parent))

STAGES = {
    "pretrain_hiera": ("pretrain", "pretrain_hiera_medulla.yaml", {}),
    "distill_student": ("distill", "distill_student_medulla.yaml", {"teacher_pretrained": ("pretrain_hiera", "last.pt")}),
}
"""Encoder stages: how each runs, its config, and which of its paths come from another stage."""
ROWS = {
    "unet": ("3D U-Net", "train_medulla_unet.yaml", {}),
    "unet_long_range": ("3D U-Net, long-range affinities weighted x2", "train_medulla_unet_long_range.yaml", {}),
    "fgnet_student": ("FGNet, distilled student (frozen, auto-prompted)", "train_medulla_fgnet_student.yaml",
                      {"pretrained": ("distill_student", "student.pt")}),
    "fgnet_hiera": ("FGNet, EM-pretrained Hiera (frozen)", "train_medulla_fgnet_hiera.yaml",
                    {"pretrained": ("pretrain_hiera", "last.pt")}),
    "fge": ("FGE alone", "train_medulla_fge.yaml", {}),
}


def needed_stages(rows: list[str]) -> list[str]:
    """The encoder stages the rows depend on, each after the stages it depends on."""
    order: list[str] = []

    def visit(name: str) -> None:
        for dependency, _ in STAGES[name][2].values():
            visit(dependency)
        if name not in order:
            order.append(name)

    for row in rows:
        for dependency, _ in ROWS[row][2].values():
            visit(dependency)
    return order


def rooted(config, name: str, links: dict, root: Path):
    """The config with its output under ``root/name`` and each linked path to its stage's output."""
    update = {"output_dir": root / name}
    for key, (stage, file_name) in links.items():
        path = root / stage / file_name
        update[key] = [path] if key == "pretrained" else path
    return config.model_copy(update=update)


def run_stage(name: str, root: Path) -> None:
    from neurosam.training.distillation import distill, load_distill_config
    from neurosam.training.pretraining import load_pretrain_config, pretrain

    kind, file_name, links = STAGES[name]
    if kind == "pretrain":
        pretrain(rooted(load_pretrain_config(CONFIGS / file_name), name, links, root))
    else:
        distill(rooted(load_distill_config(CONFIGS / file_name), name, links, root))


def train_row(name: str, root: Path) -> None:
    from neurosam.training.training import load_train_config, train

    _, file_name, links = ROWS[name]
    train(rooted(load_train_config(CONFIGS / file_name), name, links, root))


def read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def print_table(rows: list[str], root: Path) -> None:
    import torch

    from model_card import pipeline_scores, training_seconds
    from neurosam.training.training import load_train_config

    print("| row | steps | training h | chosen step | chosen threshold | validation VOI "
          "| report VOI (split, merge) at the chosen threshold | report adapted Rand error | report's own best threshold: VOI |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---|")
    curves = {}
    for name in rows:
        label, file_name, _ = ROWS[name]
        iterations = load_train_config(CONFIGS / file_name).iterations
        directory = root / name
        training = read_csv(directory / "training_log.csv")
        curves[name] = read_csv(directory / "validation_log.csv")
        steps = int(training[-1]["step"]) if training else 0
        hours = training_seconds(training) / 3600 if training else 0.0
        best_path = directory / "checkpoints" / "best.pt"
        if not best_path.exists():
            print(f"| {label} | {steps} / {iterations} | {hours:.2f} | - | - | - | not validated yet | - | - |")
            continue
        best = torch.load(best_path, map_location="cpu", weights_only=True)["extra"]["best"]
        chosen = f"| {label} | {steps} / {iterations} | {hours:.2f} | {best['step']} | {best['threshold']} | {best['voi']:.3f} "
        if steps < iterations:
            print(chosen + "| still training | - | - |")
            continue
        scores = pipeline_scores(best_path, best["threshold"])
        at = scores["thresholds"][scores["chosen_threshold"]]
        own = scores["thresholds"][scores["best_threshold"]]
        collapsed = " (merges every neuron)" if at["voi_split"] == 0 else ""
        print(chosen + f"| {at['voi']:.3f} ({at['voi_split']:.3f}, {at['voi_merge']:.3f}){collapsed} "
              f"| {at['adapted_rand_error']:.3f} | {float(scores['best_threshold'])}: {own['voi']:.3f} |")

    print("\nlearning curves (validation crop z 100-129, waterz at the best threshold of 0.1-0.9: VOI / adapted Rand error):")
    for name in rows:
        points = ", ".join(f"{row['step']}: {float(row['voi']):.3f} / {float(row['adapted_rand_error']):.3f}" for row in curves[name])
        print(f"- {ROWS[name][0]}: {points or 'no validation yet'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "ranking", help="where every stage and row keeps its run")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--table-only", action="store_true", help="print the table from the runs as they stand")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not args.table_only:
        for stage in needed_stages(args.rows):
            run_stage(stage, args.root)
        for row in args.rows:
            train_row(row, args.root)
    print_table(args.rows, args.root)


if __name__ == "__main__":
    main()
