"""Does the block-wise segmentation depend on the blocks? At every threshold from 0.1 to 0.9, the
block-wise run's VOI against the ground truth beside that of the one-block run of the same config,
and the VOI between the two segmentations. Goals: within 0.1 of the one-block VOI, and at most
0.15 apart, for blocks of 16^3 to 128^3 voxels at the default context.

Volumes, each with ground truth:
- gala: the bundled gala FIB-SEM crop (50 x 100 x 200) with its classical boundary map;
- medulla: 256^3 mirrored from the medulla FIB-SEM volume, with the noisy affinities of
  benchmarks/postprocess_throughput.py (hundreds of fragments per neuron);
- network: the demo crop (medulla z 130-159) with affinities the shipped model predicts.

Every run is the pipeline itself (``neurosam run`` in this process, 2 local workers, SQLite),
the same config but for blocks.block_size (one block: the whole volume) and the default context.

    python benchmarks/agglomeration_fidelity.py --volumes gala medulla network --blocks 16 32 64 128
    python benchmarks/agglomeration_fidelity.py --volumes medulla --medulla-size 512 --noise-seed 1 --blocks 64
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import yaml
from funlib.geometry import Coordinate, Roi

from neurosam.affinities import NEAREST_OFFSETS, boundary_to_affinities, store_affinities
from neurosam.config import load_config
from neurosam.graph.metrics import evaluate
from neurosam.io.volumes import create_array, open_array
from neurosam.layout import segmentation_path
from neurosam.pipeline.run import run_pipeline
from neurosam.rag import open_rag

REPO = Path(__file__).resolve().parents[1]
THRESHOLDS = [round(0.1 * step, 1) for step in range(1, 10)]
VOI_GAP_TARGET = 0.1
VOI_BETWEEN_TARGET = 0.15


def _postprocess_benchmark():
    spec = importlib.util.spec_from_file_location("postprocess_throughput", REPO / "benchmarks" / "postprocess_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_inputs(directory: Path, boundary: np.ndarray, labels: np.ndarray, voxel_size) -> dict:
    roi = Roi((0, 0, 0), Coordinate(labels.shape) * Coordinate(voxel_size))
    container = directory / "inputs.zarr"
    store_affinities(str(container / "affinities"), boundary_to_affinities(boundary), roi, voxel_size, NEAREST_OFFSETS)
    create_array(container / "ground_truth", roi, voxel_size, labels.dtype)[roi] = labels
    return {"affinities": str(container / "affinities"), "ground_truth": str(container / "ground_truth")}


def gala_inputs(directory: Path) -> dict:
    import h5py

    with h5py.File(REPO / "neurosam" / "data" / "gala_fib_train.h5", "r") as gala:
        return write_inputs(directory, gala["boundary_prob"][:], gala["neuron_ids"][:], Coordinate(gala["neuron_ids"].attrs["resolution"]))


def medulla_inputs(directory: Path, size: int = 256, seed: int = 0) -> dict:
    import h5py

    boundary, voxel_size = _postprocess_benchmark().medulla_boundary(seed)
    with h5py.File(REPO / "data" / "medulla_fibsem.h5", "r") as medulla:
        labels = medulla["neuron_ids"][:]
    pad = [(0, max(0, size - s)) for s in labels.shape]
    crop = (slice(0, size),) * 3
    return write_inputs(directory, np.pad(boundary, pad, mode="symmetric")[crop], np.pad(labels, pad, mode="symmetric")[crop], voxel_size)


def network_inputs(directory: Path) -> dict:
    """The demo's predict stage, run once into ``directory``."""
    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    base = REPO / "configs"
    work_dir = directory / "predicted"
    config["work_dir"] = str(work_dir)
    for key in ("raw", "ground_truth"):
        config["datasets"][key] = str((base / config["datasets"][key]).resolve())
    for key in ("affinities", "fragments", "segmentation"):
        config["datasets"][key] = str(work_dir / "volumes.zarr" / key)
    config["predict"]["checkpoint"] = str((base / config["predict"]["checkpoint"]).resolve())
    # One thread per worker, whatever the machine: the same affinities everywhere (ties decide merges).
    config["predict"]["threads_per_worker"] = 1
    config["rag"] = {"url": f"sqlite:///{work_dir / 'rag.db'}"}
    work_dir.mkdir(parents=True)
    path = work_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run_pipeline(path, until="predict", echo_progress=False)
    return {"affinities": config["datasets"]["affinities"], "ground_truth": config["datasets"]["ground_truth"]}


VOLUMES = {"gala": gala_inputs, "medulla": medulla_inputs, "network": network_inputs}


class Segmentations(Mapping):
    """A run's segmentation per threshold, read when asked for: at 512^3 the nine of a run,
    held together, would take 9 GiB."""

    def __init__(self, config):
        self.config = config

    def __getitem__(self, threshold: float) -> np.ndarray:
        array = open_array(segmentation_path(self.config, threshold))
        return array[array.roi]

    def __iter__(self):
        return iter(THRESHOLDS)

    def __len__(self) -> int:
        return len(THRESHOLDS)


def run(work_dir: Path, inputs: dict, block_voxels: int | None) -> tuple[Segmentations, int]:
    """The pipeline on ``inputs`` with cubic blocks (None: one block); segmentations by threshold
    and the RAG's edge count."""
    affinities = open_array(inputs["affinities"])
    voxel_size = affinities.voxel_size
    shape = affinities.roi.shape / voxel_size
    block = Coordinate(shape if block_voxels is None else (block_voxels,) * 3) * voxel_size
    config = {
        "work_dir": str(work_dir),
        "datasets": {
            **inputs,
            "fragments": str(work_dir / "out.zarr" / "fragments"),
            "segmentation": str(work_dir / "out.zarr" / "segmentation"),
        },
        "blocks": {"block_size": list(block)},
        "workers": {"count": 2},
        "rag": {"url": f"sqlite:///{work_dir / 'rag.db'}"},
        "segment": {"thresholds": THRESHOLDS},
    }
    work_dir.mkdir(parents=True)
    path = work_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run_pipeline(path, until="relabel", echo_progress=False)
    loaded = load_config(path)
    with open_rag(loaded.rag.url) as rag:
        return Segmentations(loaded), rag.edge_count()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", nargs="+", choices=list(VOLUMES), default=list(VOLUMES))
    parser.add_argument("--blocks", nargs="+", type=int, default=[16, 32, 64, 128], help="block edge in voxels")
    parser.add_argument("--medulla-size", type=int, default=256, help="edge of the mirrored medulla volume in voxels")
    parser.add_argument("--noise-seed", type=int, default=0, help="seed of the medulla's boundary noise")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--summarize", help="print only the per-block-size summary of a JSON an earlier run wrote")
    args = parser.parse_args()
    if args.summarize:
        print_summary(json.loads(Path(args.summarize).read_text()))
        return

    rows = []
    print(f"{'volume':<8} {'block':>6} {'t':>4} {'VOI block-wise':>15} {'VOI one block':>14} {'gap':>6} {'VOI between':>12}  met")
    volumes = {**VOLUMES, "medulla": functools.partial(medulla_inputs, size=args.medulla_size, seed=args.noise_seed)}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for volume in args.volumes:
            inputs = volumes[volume](scratch / volume)
            ground_truth = open_array(inputs["ground_truth"])
            truth = ground_truth[ground_truth.roi].astype(np.uint64)
            one_block, _ = run(scratch / volume / "one_block", inputs, None)
            shape = ground_truth.roi.shape / ground_truth.voxel_size
            for block in args.blocks:
                if all(block >= s for s in shape):
                    continue
                blockwise, _ = run(scratch / volume / f"blocks_{block}", inputs, block)
                for threshold in THRESHOLDS:
                    block_segmentation, one_segmentation = blockwise[threshold], one_block[threshold]
                    ours = evaluate(block_segmentation, truth)
                    reference = evaluate(one_segmentation, truth)
                    between = evaluate(block_segmentation, one_segmentation, ignore_background=False)
                    row = {
                        "volume": volume, "block": block, "threshold": threshold,
                        "voi_blockwise": ours["voi"], "voi_one_block": reference["voi"],
                        "voi_between": between["voi"],
                    }
                    gap = row["voi_blockwise"] - row["voi_one_block"]
                    met = abs(gap) <= VOI_GAP_TARGET and row["voi_between"] <= VOI_BETWEEN_TARGET
                    rows.append({**row, "met": met})
                    print(
                        f"{volume:<8} {block:>4}^3 {threshold:>4.1f} {row['voi_blockwise']:>15.3f} {row['voi_one_block']:>14.3f} "
                        f"{gap:>+6.3f} {row['voi_between']:>12.3f}  {'yes' if met else 'NO'}",
                        flush=True,
                    )
                shutil.rmtree(scratch / volume / f"blocks_{block}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print_summary(rows)


def print_summary(rows: list[dict]) -> None:
    """Per volume and block size, the worst threshold of each goal."""
    print("\n| volume | block | largest VOI gap (block-wise - one block) | largest VOI between | thresholds meeting both |")
    print("|---|---:|---:|---:|---:|")
    for volume in dict.fromkeys(r["volume"] for r in rows):
        for block in dict.fromkeys(r["block"] for r in rows if r["volume"] == volume):
            mine = [r for r in rows if r["volume"] == volume and r["block"] == block]
            gap = max((r["voi_blockwise"] - r["voi_one_block"] for r in mine), key=abs)
            print(f"| {volume} | {block}^3 | {gap:+.3f} | {max(r['voi_between'] for r in mine):.3f} | {sum(r['met'] for r in mine)}/{len(mine)} |")
    worst_gap = max(abs(r["voi_blockwise"] - r["voi_one_block"]) for r in rows)
    worst_between = max(r["voi_between"] for r in rows)
    print(f"\nlargest |gap| {worst_gap:.3f} (target {VOI_GAP_TARGET}), largest VOI between {worst_between:.3f} (target {VOI_BETWEEN_TARGET}); "
          f"{sum(r['met'] for r in rows)}/{len(rows)} rows meet both")


if __name__ == "__main__":
    sys.exit(main())
