"""Accuracy of FGNet and its baselines trained with the same budget on the medulla split.

Trains configs/train_tiny_cpu.yaml (FGNet, SAM2 tiny encoder randomly initialised and frozen:
official weights cannot be had on these machines), configs/train_fge_baseline.yaml (FGE alone)
and configs/train_unet_baseline.yaml (MALA-style 3D U-Net) from scratch, each for the same
number of iterations on z 0-119 of data/medulla_fibsem.h5, then prints VOI and adapted Rand
error on the held-out crop z 130-159 (waterz, best threshold).

    python benchmarks/model_accuracy.py [--iterations N] [--output-dir DIR]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import time
from pathlib import Path

import torch

from neurosam.training.training import load_train_config, resolve_device, train

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "FGNet (tiny config)": REPO / "configs" / "train_tiny_cpu.yaml",
    "FGE alone": REPO / "configs" / "train_fge_baseline.yaml",
    "3D U-Net (MALA-style)": REPO / "configs" / "train_unet_baseline.yaml",
}


def sam2_weights(config) -> str:
    if config.model.architecture != "fgnet":
        return "no SAM2"
    sam2 = config.model.sam2
    origin = "random init" if sam2.checkpoint is None else f"official {sam2.checkpoint.name}"
    return f"SAM2 {sam2.variant}, {origin}, {sam2.trainable}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, help="override every config's iterations (same for all)")
    parser.add_argument("--output-dir", type=Path, default=REPO / "runs" / "model_accuracy")
    args = parser.parse_args()

    rows = []
    for name, path in CONFIGS.items():
        config = load_train_config(path)
        iterations = args.iterations or config.iterations
        output_dir = args.output_dir / path.stem
        shutil.rmtree(output_dir, ignore_errors=True)
        config = config.model_copy(
            update={
                "iterations": iterations,
                "output_dir": output_dir,
                "validation": config.validation.model_copy(update={"every": iterations}),
            }
        )
        started = time.monotonic()
        summary = train(config)
        rows.append((name, config, summary, time.monotonic() - started))
        print(f"trained {name} in {rows[-1][3]:.0f} s", flush=True)

    first = rows[0][1]
    augmentations = [name for name, on in first.augment.model_dump().items() if on is True]
    print()
    print(
        f"Medulla FIB-SEM (10 nm isotropic): train z {list(first.data.train_z)}, validate z "
        f"{list(first.data.validation_z)} (30 x 250 x 250), {first.iterations} iterations of batch "
        f"{first.batch_size}, patch {list(first.patch_shape)}, AdamW lr {first.lr}, "
        f"augmentations {', '.join(augmentations)}; seed {first.seed}; "
        f"device {resolve_device(first.device)} ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"
    )
    print(
        "Segmentation: waterz on the refined nearest-neighbour affinities, 50th-percentile scoring, "
        "best of thresholds 0.1-0.9 by VOI; ground-truth 0 ignored."
    )
    print()
    print("| model | SAM2 encoder | parameters trained | VOI split | VOI merge | VOI | adapted Rand error | threshold | train + validate time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, config, summary, seconds in rows:
        best = summary["best"]
        print(
            f"| {name} | {sam2_weights(config)} | {summary['trainable_parameters']:,} | {best['voi_split']:.3f} | "
            f"{best['voi_merge']:.3f} | {best['voi']:.3f} | {best['adapted_rand_error']:.3f} | {best['threshold']:g} | "
            f"{seconds / 60:.1f} min |"
        )


if __name__ == "__main__":
    main()
