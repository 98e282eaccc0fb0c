"""Inference options against plain prediction, under the protocol: test-time augmentation
(``predict.test_time_augmentation``) and a mutex watershed over every offset the network
predicts (``fragments.method: mutex_watershed``), alone and together.

Each option runs the demo's pipeline (its config, the model given, two local workers) on the
validation crop (medulla z 100-129), where it chooses its threshold (and, for the mutex
watershed, its long-range bias) by VOI; then on the report crop (z 130-159, the demo crop), where
its figures are read at that choice. The cost per voxel is the wall time of the predict and
fragments tasks over the report crop's voxels (two workers on two cores; a shared machine makes
it longer). The mutex watershed reads the affinities its prediction option wrote, so each
prediction runs once per crop.

    python benchmarks/inference_options.py
    python benchmarks/inference_options.py --checkpoint runs/ranking/unet/checkpoints/best.pt
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import yaml
from funlib.geometry import Coordinate, Roi

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"
MEDULLA = REPO / "data" / "medulla_fibsem.h5"
CROPS = {"validation": (100, 130), "report": (130, 160)}
THRESHOLDS = [round(0.1 * step, 1) for step in range(1, 10)]
MUTEX_BIASES = [(0.5, 0.9), (0.5, 1.0), (0.7, 1.0), (0.9, 1.0)]
"""(nearest-neighbour, long-range) biases the mutex watershed chooses among on validation."""
OPTIONS = {
    "plain": (False, None),
    "test-time augmentation": (True, None),
    "mutex watershed": (False, "mutex_watershed"),
    "test-time augmentation + mutex watershed": (True, "mutex_watershed"),
}


def write_crop(directory: Path, z: tuple[int, int]) -> dict:
    """The medulla's raw and ground truth of sections ``z`` as zarr."""
    from neurosam.io.volumes import create_array

    with h5py.File(MEDULLA, "r") as medulla:
        raw = medulla["raw"][z[0] : z[1]]
        labels = medulla["neuron_ids"][z[0] : z[1]]
        voxel_size = Coordinate(medulla["raw"].attrs["resolution"])
    roi = Roi((0, 0, 0), Coordinate(raw.shape) * voxel_size)
    create_array(directory / "crop.zarr" / "raw", roi, voxel_size, np.uint8)[roi] = raw
    create_array(directory / "crop.zarr" / "neuron_ids", roi, voxel_size, labels.dtype)[roi] = labels
    return {"raw": str(directory / "crop.zarr" / "raw"), "ground_truth": str(directory / "crop.zarr" / "neuron_ids")}


def run(work_dir: Path, crop: dict, checkpoint: Path, augment: bool, fragments: dict | None, affinities: str | None) -> dict:
    """The demo config on ``crop``; with ``affinities`` given, from those (no predict)."""
    from neurosam.pipeline.run import run_pipeline
    from neurosam.quiet import quiet_stdout

    config = yaml.safe_load(DEMO.read_text())
    config["work_dir"] = str(work_dir)
    config["datasets"] = {
        **crop,
        "affinities": affinities or str(work_dir / "volumes.zarr/affinities"),
        "fragments": str(work_dir / "volumes.zarr/fragments"),
        "segmentation": str(work_dir / "volumes.zarr/segmentation"),
    }
    if affinities:
        del config["predict"]
    else:
        config["predict"].update(checkpoint=str(checkpoint.resolve()), test_time_augmentation=augment)
    if fragments:
        config["fragments"] = {**config.get("fragments", {}), **fragments}
    config["rag"] = {"url": f"sqlite:///{work_dir / 'rag.db'}"}
    config["segment"]["thresholds"] = THRESHOLDS
    config.pop("evaluate", None)
    work_dir.mkdir(parents=True)
    (work_dir / "config.yaml").write_text(yaml.safe_dump(config))
    with quiet_stdout():
        summary = run_pipeline(work_dir / "config.yaml", echo_progress=False)
    seconds = {task.split("-")[0]: record["seconds"] for task, record in summary["tasks"].items()}
    return {"scores": json.loads((work_dir / "evaluation.json").read_text())["thresholds"], "seconds": seconds,
            "affinities": config["datasets"]["affinities"]}


def best(scores: dict) -> str:
    return min(scores, key=lambda threshold: scores[threshold]["voi"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "neurosam" / "models" / "medulla_unet.pt")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="inference_options_"))
    try:
        crops = {name: write_crop(scratch / name, z) for name, z in CROPS.items()}
        voxels = (CROPS["report"][1] - CROPS["report"][0]) * int(np.prod(h5py.File(MEDULLA, "r")["raw"].shape[1:]))
        predicted: dict[tuple[str, bool], dict] = {}
        rows = []
        for label, (augment, method) in OPTIONS.items():
            chosen = {}
            for crop_name, crop in crops.items():
                key = (crop_name, augment)
                if key not in predicted:
                    predicted[key] = run(scratch / f"{crop_name}-augment{int(augment)}", crop, args.checkpoint, augment, None, None)
                if method is None:
                    chosen[crop_name] = {"run": predicted[key], "bias": None}
                    continue
                biases = MUTEX_BIASES if crop_name == "validation" else [chosen["validation"]["bias"]]
                results = {
                    bias: run(scratch / f"{crop_name}-augment{int(augment)}-mutex{bias[1]}", crop, args.checkpoint, augment,
                              {"method": method, "mutex_bias": list(bias)}, predicted[key]["affinities"])
                    for bias in biases
                }
                bias = min(results, key=lambda b: results[b]["scores"][best(results[b]["scores"])]["voi"])
                chosen[crop_name] = {"run": results[bias], "bias": bias}
            threshold = best(chosen["validation"]["run"]["scores"])
            bias = chosen["validation"]["bias"]
            report = chosen["report"]["run"]["scores"]
            at = report[threshold]
            predict_seconds = predicted[("report", augment)]["seconds"]["predict"]
            fragments_seconds = chosen["report"]["run"]["seconds"]["fragments"]
            rows.append(
                f"| {label} | threshold {float(threshold):g}{'' if bias is None else f', bias {bias}'} "
                f"| {chosen['validation']['run']['scores'][threshold]['voi']:.3f} "
                f"| {at['voi']:.3f} ({at['voi_split']:.3f}, {at['voi_merge']:.3f}) | {at['adapted_rand_error']:.3f} "
                f"| {report[f'{THRESHOLDS[0]:.4f}']['voi_merge']:.3f} "
                f"| {predict_seconds / voxels * 1e6:.2f} | {fragments_seconds / voxels * 1e6:.2f} |"
            )
        print(f"model {args.checkpoint.name}; thresholds (and biases) chosen on medulla z 100-129, figures on z 130-159 ({voxels:,} voxels)\n")
        print("| option | chosen on validation | validation VOI | report VOI (split, merge) | report adapted Rand error "
              "| report merge at 0.1 | predict us/voxel | fragments us/voxel |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for row in rows:
            print(row)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
