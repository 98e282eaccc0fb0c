"""The cost of the evaluate stage: its share of the demo's time, and its CPU time per voxel on
the throughput benchmark's volume; beside it, the cost of the ground truth's skeletons (the
ground_truth_skeletons stage), which evaluate reads for ERL. They depend on the ground truth
alone, so a ground truth pays for them once, whatever the runs and thresholds scored against it:
they are counted apart, and evaluate's own targets are judged without them.

1. The demo (configs/demo.yaml, into a temporary work dir): the evaluate task's seconds against
   the whole run's, from summary.json, and the ground-truth skeletons' tasks' seconds. Target:
   evaluate at most a tenth.
2. An N^3 volume (default 512^3) made as postprocess_throughput.py makes it (the medulla volume
   mirrored, noisy affinities of its ground truth), run block-wise with 128^3 blocks and 2
   workers, with the mirrored ground truth to score against. Evaluate then runs again in a fresh
   process on the finished run: its CPU seconds (imports and worker start excluded; reads,
   tables, scores, ERL and pictures included) per voxel of the volume, for every threshold
   together, and again without ERL. Target: at most 10 ns per voxel. The ground-truth skeletons'
   blocks and join are replayed the same way, in one process, for their CPU per voxel.

    python benchmarks/evaluate_speed.py              # both
    python benchmarks/evaluate_speed.py --size 256   # a smaller volume
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import yaml
from funlib.geometry import Coordinate, Roi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from postprocess_throughput import medulla_boundary, medulla_labels, mirrored, write_affinities, write_config  # noqa: E402

from neurosam.io.volumes import create_array  # noqa: E402
from neurosam.quiet import quiet_stdout  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARE_TARGET = 0.1
NS_PER_VOXEL_TARGET = 10.0
BLOCK = 128
WORKERS = 2


def verdict(met: bool) -> str:
    return "MET" if met else "MISSED"


def demo_share(scratch: Path) -> None:
    from neurosam.pipeline.run import run_pipeline

    text = (REPO / "configs" / "demo.yaml").read_text()
    text = text.replace("../runs/demo", str(scratch / "demo")).replace("../neurosam/", f"{REPO / 'neurosam'}/")
    path = scratch / "demo.yaml"
    path.write_text(text)
    with quiet_stdout():
        summary = run_pipeline(str(path), echo_progress=False)
    evaluate = next(seconds["seconds"] for task, seconds in summary["tasks"].items() if task.startswith("evaluate-"))
    skeletons = sum(seconds["seconds"] for task, seconds in summary["tasks"].items() if task.startswith("ground_truth_skeletons-"))
    share, skeletons_share = evaluate / summary["seconds"], skeletons / summary["seconds"]
    print(f"demo: evaluate {evaluate:.1f} s of the run's {summary['seconds']:.1f} s = {share:.1%}; "
          f"the ground truth's skeletons (once per ground truth) {skeletons:.1f} s = {skeletons_share:.1%}")
    print(f"target: evaluate at most {SHARE_TARGET:.0%} of the demo's time: {share:.1%} -> {verdict(share <= SHARE_TARGET)}")
    both = share + skeletons_share
    print(f"evaluate with the ground truth's skeletons, as a first run pays: {both:.1%} -> {verdict(both <= SHARE_TARGET)}")


def evaluate_again(work_dir: str, erl: bool = True) -> dict:
    """In a fresh process: evaluate the finished run (with ERL or without), timed after the imports."""
    from neurosam.layout import load_plan, plan_path
    from neurosam.stages.evaluate import evaluate_run

    plan = load_plan(str(plan_path(Path(work_dir))))
    plan = replace(plan, config=plan.config.model_copy(update={"evaluate": plan.config.evaluate.model_copy(update={"erl": erl})}))
    start, start_cpu = time.perf_counter(), time.process_time()
    evaluate_run(plan)
    return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - start_cpu}


def ground_truth_skeletons_again(work_dir: str) -> dict:
    """In a fresh process: every block of the ground_truth_skeletons stage's tasks and their join,
    one after the other, timed after the imports."""
    from neurosam.layout import WorkerSetup, load_plan, plan_path
    from neurosam.pipeline.tasks import task_blocks
    from neurosam.pipeline.worker_process import import_block_function

    plan = load_plan(str(plan_path(Path(work_dir))))
    tasks = plan.tasks_of_stage("ground_truth_skeletons")
    functions = [import_block_function(task.block_function) for task in tasks]
    start, start_cpu = time.perf_counter(), time.process_time()
    for task, function in zip(tasks, functions):
        with function(WorkerSetup(plan, task, rag=None)) as process:
            for block in task_blocks(task):
                process(block)
    return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - start_cpu}


def again(function, work_dir: Path, *args) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, str(work_dir), *args).result()


def volume_cost(scratch: Path, size: int) -> None:
    from neurosam.pipeline.run import run_pipeline

    boundary, voxel_size = medulla_boundary()
    affinities = scratch / "inputs.zarr" / "affinities"
    write_affinities(affinities, boundary, "noisy", size, voxel_size, 64)
    roi = Roi((0, 0, 0), Coordinate((size,) * 3) * voxel_size)
    truth = scratch / "inputs.zarr" / "ground_truth"
    create_array(truth, roi, voxel_size, np.uint64, chunk_voxels=(BLOCK,) * 3)[roi] = mirrored(medulla_labels(), size).astype(np.uint64)
    config_path = write_config(scratch / "run", affinities, BLOCK, None, voxel_size, WORKERS)
    config = yaml.safe_load(config_path.read_text())
    config["datasets"]["ground_truth"] = str(truth)
    config_path.write_text(yaml.safe_dump(config))
    with quiet_stdout():
        run_pipeline(str(config_path), echo_progress=False)
    without_erl = again(evaluate_again, scratch / "run", False)
    timing = again(evaluate_again, scratch / "run")
    skeletons = again(ground_truth_skeletons_again, scratch / "run")
    thresholds = len(json.loads((scratch / "run" / "evaluation.json").read_text())["thresholds"])
    ns = timing["cpu_seconds"] / size**3 * 1e9
    print(f"{size}^3 ({size**3:,} voxels, {thresholds} thresholds, {BLOCK}^3 blocks): evaluate {timing['seconds']:.2f} s wall, "
          f"{timing['cpu_seconds']:.2f} CPU s = {ns:.1f} ns per voxel")
    print(f"target: evaluate at most {NS_PER_VOXEL_TARGET:g} ns per voxel at {size}^3: {ns:.1f} -> {verdict(ns <= NS_PER_VOXEL_TARGET)}")
    print(f"evaluate without ERL: {without_erl['cpu_seconds']:.2f} CPU s = {without_erl['cpu_seconds'] / size**3 * 1e9:.1f} ns per voxel")
    print(f"the ground truth's skeletons (once per ground truth, in one process): {skeletons['seconds']:.2f} s wall, "
          f"{skeletons['cpu_seconds']:.2f} CPU s = {skeletons['cpu_seconds'] / size**3 * 1e9:.1f} ns per voxel")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--skip-demo", action="store_true")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="evaluate_speed_"))
    try:
        if not args.skip_demo:
            demo_share(scratch)
        volume_cost(scratch, args.size)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
