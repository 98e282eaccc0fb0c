"""Predict throughput: the pipeline's predict stage against the bare forward pass of the same
model over the same blocks, in the same run.

The volume is the medulla FIB-SEM raw (data/medulla_fibsem.h5), its first ``--sections``
sections, written to zarr. Then, for each worker count:

- pipeline: ``neurosam predict`` of the volume (planning, worker start, model loading, reads,
  the network, writes, daisy's scheduling), timed from the call to its return;
- bare forward: this process loads the model once and runs ``predict_tiles`` over the raw of
  every predict block, already in memory: the network alone, timed from first tile to last.

It prints voxels/s of both, the pipeline's share of the bare throughput (target: at least 90%),
and where the workers' time went (read, waiting for reads, compute, write), summed over workers.

    python benchmarks/predict_throughput.py                      # CPU, 1 worker
    python benchmarks/predict_throughput.py --workers 1 2 4 --device cuda --sections 160
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import yaml
from funlib.geometry import Coordinate, Roi

REPO = Path(__file__).resolve().parents[1]
MEDULLA = REPO / "data" / "medulla_fibsem.h5"
MODEL = REPO / "neurosam" / "models" / "medulla_unet.pt"
TILE = {"tile_shape": [48, 160, 160], "tile_context": [8, 16, 16]}
PREDICT_BLOCK_CORES = (1, 2, 2)


def write_raw(root: Path, sections: int) -> tuple[str, Coordinate]:
    from neurosam.io.volumes import create_array

    with h5py.File(MEDULLA, "r") as medulla:
        raw = medulla["raw"][:sections]
        voxel_size = Coordinate(medulla["raw"].attrs["resolution"])
    roi = Roi((0, 0, 0), Coordinate(raw.shape) * voxel_size)
    path = root / "raw.zarr" / "raw"
    create_array(path, roi, voxel_size, np.uint8, chunk_voxels=(32, 128, 128))[roi] = raw
    return str(path), voxel_size


def predict_config(work_dir: Path, raw: str, voxel_size: Coordinate, workers: int, device: str, tile_batch: int) -> Path:
    core = Coordinate(t - 2 * c for t, c in zip(TILE["tile_shape"], TILE["tile_context"]))
    block = Coordinate(PREDICT_BLOCK_CORES) * core * voxel_size
    config = {
        "work_dir": str(work_dir),
        "datasets": {
            "raw": raw,
            "affinities": str(work_dir / "out.zarr" / "affinities"),
            "fragments": str(work_dir / "out.zarr" / "fragments"),
            "segmentation": str(work_dir / "out.zarr" / "segmentation"),
        },
        "blocks": {"block_size": list(block)},
        "workers": {"count": workers},
        "rag": {"url": f"sqlite:///{work_dir / 'rag.db'}"},
        "predict": {"checkpoint": str(MODEL), "block_size": list(block), "device": device, "tile_batch": tile_batch, **TILE},
    }
    work_dir.mkdir(parents=True)
    path = work_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_pipeline_predict(config_path: Path) -> dict:
    from neurosam.pipeline.run import run_pipeline
    from neurosam.quiet import quiet_stdout
    from neurosam.layout import predict_timings_dir

    started = time.perf_counter()
    with quiet_stdout():
        run_pipeline(config_path, until="predict", echo_progress=False)
    seconds = time.perf_counter() - started
    split: dict[str, float] = {}
    for record in predict_timings_dir(config_path.parent).glob("*.json"):
        for name, value in json.loads(record.read_text())["seconds"].items():
            split[name] = split.get(name, 0.0) + value
    return {"seconds": seconds, "split": split}


def bare_forward(config_path: Path) -> float:
    """Seconds of the network alone over the raw of every predict block, read beforehand."""
    from neurosam.config import load_config
    from neurosam.model.build import load_model
    from neurosam.model.inference import normalise, predict_tiles
    from neurosam.pipeline.plan import plan_run
    from neurosam.pipeline.tasks import block_ids
    from neurosam.stages.predict import choose_device, tile_context, tile_core, tile_rows
    from neurosam.layout import WorkerSetup

    plan = plan_run(load_config(config_path), check_database=False)
    task = plan.task_of_stage("predict")
    setup = WorkerSetup(plan, task, None, 0)
    device = choose_device(setup)
    model, _, _ = load_model(plan.config.predict.checkpoint, map_location=device)
    autocast = torch.bfloat16 if device.type == "cuda" else None
    core, context = tile_core(plan), tile_context(plan)
    rows = []
    for position in np.ndindex(*block_ids(task).shape):
        write_roi = Roi(plan.volume_roi.offset + task.write_roi.shape * Coordinate(position), task.write_roi.shape)
        write_roi = write_roi.intersect(plan.volume_roi)
        rows += [normalise(plan.arrays["raw"].read_mirrored(roi)) for roi in tile_rows(write_roi, core, context)]
    settings = plan.config.predict
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for raw in rows:
        predict_tiles(model, raw, settings.tile_shape, settings.tile_context, device, autocast, settings.tile_batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", type=int, default=64, help="z sections of the medulla volume (at most 160)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--device", default="cpu", help="cpu, or auto / cuda for a GPU")
    parser.add_argument("--tile-batch", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        raw, voxel_size = write_raw(root, args.sections)
        voxels = args.sections * 250 * 250
        print(f"volume {args.sections} x 250 x 250 = {voxels:,} voxels; model {MODEL.name}; device {args.device}; "
              f"tiles {TILE['tile_shape']} (context {TILE['tile_context']}), {args.tile_batch} per batch; torch threads "
              f"{torch.get_num_threads()}")
        print("| workers | pipeline s | pipeline voxels/s | bare forward s | bare voxels/s | pipeline / bare |"
              " read s | waiting for reads s | compute s | write s |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for workers in args.workers:
            config_path = predict_config(root / f"workers{workers}", raw, voxel_size, workers, args.device, args.tile_batch)
            pipeline = run_pipeline_predict(config_path)
            bare = bare_forward(config_path)
            split = pipeline["split"]
            print(
                f"| {workers} | {pipeline['seconds']:.1f} | {voxels / pipeline['seconds']:,.0f} | {bare:.1f} | "
                f"{voxels / bare:,.0f} | {bare / pipeline['seconds']:.0%} | {split.get('read', 0):.1f} | "
                f"{split.get('waiting for reads', 0):.1f} | {split.get('compute', 0):.1f} | {split.get('write', 0):.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
