"""What masked-image pretraining and the distilled student buy: three tables from one script.

1. Accuracy, every row at the same training budget (configs/train_tiny_cpu.yaml's patches,
   batch, iterations, optimiser, augmentation, loss and seed) on medulla z 0-119, scored on
   z 130-159 through the block-wise pipeline (configs/demo.yaml with the row's model):
   FGNet with EM-pretrained Hiera (frozen, fine-tuned), with random Hiera, with the student;
   the FGE alone with and without pretraining; the 3D U-Net.
2. Label efficiency: FGNet with the student (the fastest guided model) trained on 13% (the
   smallest a 16-section patch fits; 10% would be 12), 25%, 50% and 100% of the training
   sections (z 0-15, 0-29, 0-59, 0-119), with pretraining (the student
   distilled from the EM-pretrained Hiera, the EM-pretrained FGE and decoder trunk) and without
   (both from a random initialisation), same budget.
3. Speed: the student's and SAM2-tiny's encoder on the same slices (voxels/s, peak memory, each
   in a fresh process), with the pipeline VOI of the FGNet rows that use each.

Pretraining (configs/pretrain_fge.yaml, configs/pretrain_hiera.yaml) and distillation
(configs/distill_student.yaml, from the EM-pretrained Hiera) run first, at --pretrain-iterations.
Every step keeps its output under --work-dir and is skipped when it is there, so the script
resumes where it stopped; training runs resume exactly.

    python benchmarks/pretraining_tables.py --iterations 150 --pretrain-iterations 300
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
#: 10% of the 120 training sections is 12, fewer than a training patch's 16: the smallest row
#: takes 16 (13%).
TRAINING_FRACTIONS = {"13%": (0, 16), "25%": (0, 30), "50%": (0, 60), "100%": (0, 120)}


def hardware() -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    return device


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def absolute(config: dict, keys: list[tuple[str, ...]]) -> dict:
    """The shipped configs' paths are relative to configs/: made absolute for copies elsewhere."""
    for key in keys:
        section = config
        for part in key[:-1]:
            section = section.get(part) or {}
        value = section.get(key[-1])
        if isinstance(value, str) and not Path(value).is_absolute():
            section[key[-1]] = str((CONFIGS / value).resolve())
    return config


def shipped(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


def pretraining(work: Path, iterations: int) -> dict[str, Path]:
    from neurosam.training.distillation import distill_from_config
    from neurosam.training.pretraining import pretrain_from_config

    checkpoints = {}
    for target in ("fge", "hiera"):
        config = shipped(f"pretrain_{target}.yaml")
        for volume in config["volumes"]:
            volume["raw"] = str((CONFIGS / volume["raw"]).resolve())
        config.update(output_dir=str(work / f"pretrain_{target}"), iterations=iterations)
        checkpoints[target] = Path(pretrain_from_config(write_yaml(work / f"pretrain_{target}.yaml", config))["checkpoint"])
    config = shipped("distill_student.yaml")
    for volume in config["volumes"]:
        volume["raw"] = str((CONFIGS / volume["raw"]).resolve())
    config.update(output_dir=str(work / "distill"), em_iterations=iterations, teacher_pretrained=str(checkpoints["hiera"]))
    checkpoints["student"] = Path(distill_from_config(write_yaml(work / "distill.yaml", config))["checkpoint"])
    return checkpoints


def training_config(base: str, work: Path, name: str, iterations: int, model_changes: dict | None = None,
                    pretrained: list[Path] = (), train_z: tuple[int, int] | None = None) -> Path:
    config = absolute(shipped(base), [("data", "raw"), ("data", "labels")])
    budget = shipped("train_tiny_cpu.yaml")
    for key in ("patch_shape", "batch_size", "lr", "augment", "loss", "seed", "validation"):
        if key in budget:
            config[key] = budget[key]
    config.update(output_dir=str(work / name), iterations=iterations, checkpoint_every=max(1, iterations // 3))
    config["validation"] = {**config.get("validation", {}), "every": iterations}
    for path, value in (model_changes or {}).items():
        section = config["model"]
        *parents, leaf = path.split(".")
        for parent in parents:
            section = section.setdefault(parent, {})
        section[leaf] = value
    if pretrained:
        config["pretrained"] = [str(p) for p in pretrained]
    if train_z is not None:
        config["data"]["train_z"] = list(train_z)
    return write_yaml(work / f"{name}.yaml", config)


def train_and_score(config_path: Path, work: Path, name: str) -> dict:
    """Train (or resume), export the best checkpoint, run the demo's pipeline with it."""
    from neurosam.model.build import export_model
    from neurosam.training.training import train_from_config
    from neurosam.pipeline.run import run_pipeline

    result_path = work / f"{name}.result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    started = time.monotonic()
    trained = train_from_config(config_path)
    training_seconds = time.monotonic() - started
    model_path = work / f"{name}.pt"
    export_model(trained["best_checkpoint"], model_path)
    demo = shipped("demo.yaml")
    run_dir = work / f"{name}_pipeline"
    demo["work_dir"] = str(run_dir)
    for key in ("raw", "ground_truth"):
        demo["datasets"][key] = str((CONFIGS / demo["datasets"][key]).resolve())
    for key in ("affinities", "fragments", "segmentation"):
        demo["datasets"][key] = str(run_dir / "volumes.zarr" / key)
    demo["rag"] = {"url": f"sqlite:///{run_dir / 'rag.db'}"}
    model_config = yaml.safe_load(Path(config_path).read_text())
    patch = model_config["patch_shape"]
    demo["predict"] = {"checkpoint": str(model_path), "tile_shape": patch, "tile_context": [2, 8, 8]}
    summary = run_pipeline(write_yaml(run_dir / "config.yaml", demo), echo_progress=False)
    best = summary["evaluation"]["best_threshold"]
    scores = summary["evaluation"]["thresholds"][best]
    result = {
        "name": name, "threshold": float(best), "voi": scores["voi"], "adapted_rand_error": scores["adapted_rand_error"],
        "training_seconds": round(training_seconds, 1), "trainable_parameters": trained["trainable_parameters"],
        "steps": trained["steps"],
    }
    result_path.write_text(json.dumps(result))
    return result


def encoder_speed(backbone: str, raw_shape: tuple[int, int, int], image_size: int, repeats: int) -> dict:
    """In a fresh process: voxels/s of one encoder over a raw block, and its peak memory."""
    from neurosam.model.config import Sam2Config, StudentConfig
    from neurosam.model.sam2_backbone import Sam2Backbone
    from neurosam.model.student import StudentBackbone

    torch.set_num_threads(os.cpu_count())
    slices = Sam2Config(image_size=image_size, slice_batch=16)
    model = Sam2Backbone(slices, load_weights=False) if backbone == "sam2-tiny" else StudentBackbone(StudentConfig(), slices)
    model.eval()
    raw = torch.rand(1, 1, *raw_shape)
    with torch.no_grad():
        model(raw)
        started = time.perf_counter()
        for _ in range(repeats):
            model(raw)
        seconds = (time.perf_counter() - started) / repeats
    with open("/proc/self/status") as status:
        peak = 1024 * next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    return {"voxels_per_second": float(np.prod(raw_shape)) / seconds, "peak_bytes": peak,
            "parameters": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=150, help="training budget of every row")
    parser.add_argument("--pretrain-iterations", type=int, default=300)
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "pretraining_tables")
    parser.add_argument("--tables", nargs="+", choices=["accuracy", "labels", "speed"], default=["accuracy", "labels", "speed"])
    args = parser.parse_args()
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    where = f"{hardware()}, {args.iterations} iterations per row, pretraining {args.pretrain_iterations} iterations"
    results = {}
    checkpoints = pretraining(work, args.pretrain_iterations) if {"accuracy", "labels"} & set(args.tables) else {}

    rows = {}
    if "accuracy" in args.tables:
        plan = {
            "FGNet, EM-pretrained Hiera, frozen": ("train_tiny_cpu.yaml", {"sam2.trainable": "frozen"}, [checkpoints["hiera"]]),
            "FGNet, EM-pretrained Hiera, fine-tuned": ("train_tiny_cpu.yaml", {"sam2.trainable": "all"}, [checkpoints["hiera"]]),
            "FGNet, random Hiera (frozen)": ("train_tiny_cpu.yaml", {}, []),
            "FGNet, student": ("train_tiny_cpu.yaml", {"backbone": "student"}, [checkpoints["student"]]),
            "FGE alone": ("train_fge_baseline.yaml", {}, []),
            "FGE alone, pretrained": ("train_fge_baseline.yaml", {}, [checkpoints["fge"]]),
            "3D U-Net": ("train_unet_baseline.yaml", {}, []),
        }
        print(f"\n### Accuracy at one budget ({where})\n")
        print("| model | VOI | adapted Rand error | best threshold | trainable parameters | training s |\n|---|---:|---:|---:|---:|---:|")
        for label, (base, changes, pretrained) in plan.items():
            name = "accuracy_" + "".join(c if c.isalnum() else "_" for c in label.lower())
            row = train_and_score(training_config(base, work, name, args.iterations, changes, pretrained), work, name)
            rows[label] = row
            print(f"| {label} | {row['voi']:.3f} | {row['adapted_rand_error']:.3f} | {row['threshold']:.1f} | {row['trainable_parameters']:,} | {row['training_seconds']:.0f} |", flush=True)
        guided, alone = rows["FGNet, EM-pretrained Hiera, fine-tuned"]["voi"], rows["FGE alone, pretrained"]["voi"]
        print(f"\nSAM2 guidance against the same encoder without it (both pretrained): VOI {guided:.3f} against {alone:.3f}: "
              f"{'guidance better' if guided < alone else 'guidance not better'}")
        results["accuracy"] = rows

    if "labels" in args.tables:
        print(f"\n### Label efficiency, FGNet with the student ({where})\n")
        print("| training sections | VOI without pretraining | VOI with | ARE without | ARE with |\n|---|---:|---:|---:|---:|")
        efficiency = {}
        for fraction, z_range in TRAINING_FRACTIONS.items():
            pair = {}
            for pretrained in (False, True):
                name = f"labels_{fraction.rstrip('%')}_{'pretrained' if pretrained else 'scratch'}"
                weights = [checkpoints["student"], checkpoints["fge"]] if pretrained else []
                config = training_config("train_tiny_cpu.yaml", work, name, args.iterations, {"backbone": "student"}, weights, z_range)
                pair[pretrained] = train_and_score(config, work, name)
            efficiency[fraction] = pair
            print(f"| {fraction} (z {z_range[0]}-{z_range[1] - 1}) | {pair[False]['voi']:.3f} | {pair[True]['voi']:.3f} | "
                  f"{pair[False]['adapted_rand_error']:.3f} | {pair[True]['adapted_rand_error']:.3f} |", flush=True)
        claim = efficiency["25%"][True]["voi"] <= efficiency["100%"][False]["voi"]
        print(f"\nclaim: with pretraining, 25% of the labels reach the VOI of 100% without it: "
              f"{efficiency['25%'][True]['voi']:.3f} against {efficiency['100%'][False]['voi']:.3f} -> {'holds' if claim else 'does not hold'}")
        results["labels"] = {fraction: {str(k): v for k, v in pair.items()} for fraction, pair in efficiency.items()}

    if "speed" in args.tables:
        block, image_size = (30, 250, 250), 64
        print(f"\n### Encoder speed ({hardware()}, one block of {block} voxels, slices at {image_size} px, 3 repeats)\n")
        print("| encoder | parameters | voxels/s | peak RSS, MiB | pipeline VOI of its FGNet row |\n|---|---:|---:|---:|---:|")
        speed = {}
        for backbone, row in (("sam2-tiny", "FGNet, EM-pretrained Hiera, fine-tuned"), ("student", "FGNet, student")):
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                measured = pool.submit(encoder_speed, backbone, block, image_size, 3).result()
            voi = rows.get(row, {}).get("voi")
            speed[backbone] = {**measured, "voi": voi}
            print(f"| {backbone} | {measured['parameters']:,} | {measured['voxels_per_second']:,.0f} | {measured['peak_bytes'] / 2**20:,.0f} | "
                  f"{'-' if voi is None else f'{voi:.3f}'} |", flush=True)
        ratio = speed["student"]["voxels_per_second"] / speed["sam2-tiny"]["voxels_per_second"]
        print(f"\ntarget: the student at least 5x faster: {ratio:.1f}x -> {'MET' if ratio >= 5 else 'MISSED'}")
        if speed["student"]["voi"] is not None and speed["sam2-tiny"]["voi"] is not None:
            worse = speed["student"]["voi"] - speed["sam2-tiny"]["voi"]
            print(f"target: VOI no more than 0.1 worse: {worse:+.3f} -> {'MET' if worse <= 0.1 else 'MISSED'}")
        results["speed"] = speed
    (work / "tables.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
