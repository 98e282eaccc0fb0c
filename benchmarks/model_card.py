"""The shipped model's card: what the network is, how it was trained, and how it segments.

Prints, for a neurosam checkpoint and the training run's logs:

- the network: architecture, parameters, affinity offsets, the voxel size it was trained on,
  its training step;
- training: iterations, the wall time summed over the logged steps of every (resumed) part of
  the run, and the learning curve (validation VOI and adapted Rand error at each validation
  step, the validation crop segmented by waterz as training does);
- the protocol: the z ranges that trained, that chose the checkpoint and the threshold
  (validation), and the report crop (the embedded default's, configs/demo.yaml: medulla z
  130-159), with a warning where the choosing crop is the report crop;
- the report crop's VOI and adapted Rand error through the full block-wise pipeline at the
  threshold chosen on the validation crop (the checkpoint's ``best.threshold``), and beside it
  the report crop's own best threshold, labelled as picked on the report crop.

    python benchmarks/model_card.py
    python benchmarks/model_card.py --checkpoint my_model.pt --training-dir runs/my_training
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def training_seconds(rows: list[dict]) -> float:
    """``seconds`` restarts at 0 in every resumed part of a run: sum each part's last value."""
    total, last = 0.0, 0.0
    for row in rows:
        seconds = float(row["seconds"])
        if seconds < last:
            total += last
        last = seconds
    return total + last


def demo_z_range() -> tuple[int, int]:
    """The sections of the medulla volume that the demo crop holds, from its offset in nm."""
    from neurosam.config import load_config
    from neurosam.io.volumes import open_array

    raw = open_array(load_config(DEMO).datasets.raw)
    start = raw.roi.offset[0] // raw.voxel_size[0]
    return start, start + raw.roi.shape[0] // raw.voxel_size[0]


def overlaps(first, second) -> bool:
    return first[0] < second[1] and second[0] < first[1]


def pipeline_scores(checkpoint: Path, chosen_threshold: float) -> dict:
    """The demo config, pointed at ``checkpoint``, its chosen threshold and a temporary work dir,
    run end to end."""
    from neurosam.config import load_config
    from neurosam.layout import evaluation_path
    from neurosam.pipeline.run import run_pipeline
    from neurosam.quiet import quiet_stdout

    demo = load_config(DEMO)
    config = yaml.safe_load(DEMO.read_text())
    with tempfile.TemporaryDirectory() as directory:
        work_dir = Path(directory)
        config["work_dir"] = str(work_dir)
        for role in ("affinities", "fragments", "segmentation"):
            config["datasets"][role] = str(work_dir / f"volumes.zarr/{role}")
        config["datasets"]["raw"], config["datasets"]["ground_truth"] = demo.datasets.raw, demo.datasets.ground_truth
        config["predict"]["checkpoint"] = str(checkpoint.resolve())
        config["rag"]["url"] = f"sqlite:///{work_dir / 'rag.db'}"
        config["evaluate"] = {**config.get("evaluate", {}), "chosen_threshold": chosen_threshold}
        path = work_dir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        with quiet_stdout():
            summary = run_pipeline(path, echo_progress=False)
        report = json.loads(evaluation_path(work_dir).read_text())
    return {"seconds": summary["seconds"], **report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "neurosam" / "models" / "medulla_unet.pt")
    parser.add_argument("--training-dir", type=Path, default=REPO / "benchmarks" / "results" / "medulla_unet",
                        help="holds the run's training_log.csv, validation_log.csv and train_config.yaml")
    args = parser.parse_args()

    from neurosam.model.build import load_model

    model, model_config, extra = load_model(args.checkpoint)
    train_config = yaml.safe_load((args.training_dir / "train_config.yaml").read_text())
    training = read_csv(args.training_dir / "training_log.csv")
    validation = read_csv(args.training_dir / "validation_log.csv")
    parameters = sum(p.numel() for p in model.parameters())
    print(f"checkpoint: {args.checkpoint.relative_to(REPO) if args.checkpoint.is_relative_to(REPO) else args.checkpoint} "
          f"({args.checkpoint.stat().st_size / 2**20:.1f} MiB), step {extra.get('step')}")
    print(f"network: {model_config.architecture}, {parameters:,} parameters; levels {model_config.unet.channels} channels, "
          f"downsampling {model_config.unet.downsample}, GroupNorm {model_config.unet.normalise}")
    print(f"affinity offsets (z, y, x voxels): {model_config.offsets}")
    raw = Path(train_config["data"]["raw"])
    raw = raw.relative_to(REPO) if raw.is_relative_to(REPO) else raw
    data = train_config["data"]
    report_z = demo_z_range()
    print(f"trained on voxels of {extra.get('voxel_size')} nm: {raw}")
    print(f"protocol: trained on z {data['train_z']}, checkpoint and threshold chosen on z {data['validation_z']} "
          f"(validation), reported on z {list(report_z)} (the demo crop)")
    if overlaps(data["validation_z"], report_z) or overlaps(data["train_z"], report_z):
        print("WARNING: the report crop is not untouched: this model's checkpoint and threshold were chosen on it "
              "(it predates the protocol), so its figures flatter it")
    print(f"recipe: {train_config['iterations']} iterations, batch {train_config['batch_size']}, patch {train_config['patch_shape']}, "
          f"AdamW lr {train_config['lr']} ({train_config['lr_schedule']}, warm-up {train_config['warmup_iterations']}), "
          f"weight decay {train_config['weight_decay']}, loss {train_config['loss']}, seed {train_config['seed']}")
    print(f"training: {len(training)} logged steps in {training_seconds(training) / 3600:.2f} h of wall time")
    print("\nlearning curve (validation crop, waterz at the best threshold of 0.1-0.9):")
    print("| step | threshold | VOI split | VOI merge | VOI | adapted Rand error |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in validation:
        print(f"| {row['step']} | {float(row['threshold']):.1f} | {float(row['voi_split']):.3f} | {float(row['voi_merge']):.3f} "
              f"| {float(row['voi']):.3f} | {float(row['adapted_rand_error']):.3f} |")

    chosen = float(extra["best"]["threshold"])
    print(f"checkpoint chosen at step {extra['best']['step']}, threshold {chosen} (validation VOI {extra['best']['voi']:.3f})")
    scores = pipeline_scores(args.checkpoint, chosen)
    print(f"\nreport crop through the block-wise pipeline (configs/demo.yaml, {scores['scoring_function']}, {scores['seconds']:.0f} s):")
    print("| threshold | VOI split | VOI merge | VOI | adapted Rand error |")
    print("|---:|---:|---:|---:|---:|")
    for threshold, row in scores["thresholds"].items():
        labels = [label for label, key in (("chosen", scores["chosen_threshold"]), ("best on the report crop", scores["best_threshold"])) if key == threshold]
        marker = f" ({', '.join(labels)})" if labels else ""
        print(f"| {float(threshold):.1f}{marker} | {row['voi_split']:.3f} | {row['voi_merge']:.3f} | {row['voi']:.3f} "
              f"| {row['adapted_rand_error']:.3f} |")
    at_chosen = scores["thresholds"][scores["chosen_threshold"]]
    best = scores["thresholds"][scores["best_threshold"]]
    lowest = scores["thresholds"][min(scores["thresholds"], key=float)]
    print(f"report crop at the chosen threshold {chosen}: VOI {at_chosen['voi']:.3f} (split {at_chosen['voi_split']:.3f}, "
          f"merge {at_chosen['voi_merge']:.3f}), adapted Rand error {at_chosen['adapted_rand_error']:.3f}")
    print(f"report crop's own best threshold {float(scores['best_threshold'])} (picked on the report crop, for comparison only): "
          f"VOI {best['voi']:.3f}, adapted Rand error {best['adapted_rand_error']:.3f}")
    print(f"targets: VOI <= 1.0 at the chosen threshold: {at_chosen['voi']:.3f} -> {'MET' if at_chosen['voi'] <= 1.0 else 'MISSED'}; "
          f"merge term <= 0.35 at the lowest threshold: {lowest['voi_merge']:.3f} -> {'MET' if lowest['voi_merge'] <= 0.35 else 'MISSED'}")


if __name__ == "__main__":
    main()
