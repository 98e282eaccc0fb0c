"""What meshes and skeletons add to post-processing: CPU seconds of every process, on the
throughput benchmark's volume (the medulla boundary map with noise, mirrored to N^3; see
``postprocess_throughput.py``), against issue 22's bound of 30% of post-processing.

Three runs of one config, each in a fresh child process whose CPU seconds (RUSAGE_CHILDREN:
the orchestrator, daisy and every worker) are counted: post-processing alone (fragments,
contacts, segment, relabel at the default thresholds); then with a ``meshes`` section, which
resumes and runs only the meshes stages; then with ``skeletons`` too. A last run with nothing
left to do measures what any run costs to start (interpreter, imports, planning, done records):
in one run with meshes and skeletons that is paid once, so it is taken off the two added runs
for the verdict. Each stage's worker peak memory (VmHWM, written by each worker as it exits)
shows that it follows the block size.

    python benchmarks/neurons_cost.py --size 512 --block 128
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from postprocess_throughput import medulla_boundary, write_affinities, write_config  # noqa: E402

TARGET = 0.30
PEAKS_VARIABLE = "NEURONS_COST_PEAKS"
HOOK = f'''
import atexit, os, re

def _record_worker():
    with open("/proc/self/status") as status:
        peak_kib = next(line.split()[1] for line in status if line.startswith("VmHWM"))
    task = re.search(r"(?:^|:)task_id=([^:]+)", os.environ["DAISY_CONTEXT"]).group(1)
    with open(os.path.join(os.environ["{PEAKS_VARIABLE}"], str(os.getpid())), "w") as record:
        record.write(f"{{task}} {{peak_kib}}")

if "DAISY_CONTEXT" in os.environ and "{PEAKS_VARIABLE}" in os.environ:
    atexit.register(_record_worker)
'''


def run(config_path: str) -> None:
    from neurosam.pipeline.run import run_pipeline

    run_pipeline(config_path, echo_progress=False)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured(config_path: Path) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one run in a spawned child."""
    start, start_cpu = time.perf_counter(), cpu_seconds()
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        pool.submit(run, str(config_path)).result()
    return cpu_seconds() - start_cpu, time.perf_counter() - start


def worker_peaks(peaks_dir: Path) -> dict[str, int]:
    """Largest worker peak (KiB) per stage."""
    peaks: dict[str, int] = {}
    for record in peaks_dir.iterdir():
        task, kib = record.read_text().split()
        stage = task.rsplit("-", 1)[0]
        peaks[stage] = max(peaks.get(stage, 0), int(kib))
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="voxels along each axis")
    parser.add_argument("--block", type=int, default=128, help="block edge in voxels")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="neurons_cost_") as directory:
        root = Path(directory)
        (root / "hook").mkdir()
        (root / "hook" / "sitecustomize.py").write_text(HOOK)
        (root / "peaks").mkdir()
        os.environ["PYTHONPATH"] = os.pathsep.join([str(root / "hook"), os.environ.get("PYTHONPATH", "")])
        os.environ[PEAKS_VARIABLE] = str(root / "peaks")
        boundary, voxel_size = medulla_boundary()
        affinities = root / "affinities.zarr" / "affinities"
        write_affinities(affinities, boundary, "noisy", args.size, voxel_size, min(args.block, 64))
        config_path = write_config(root / "run", affinities, args.block, None, voxel_size, args.workers)
        config = yaml.safe_load(config_path.read_text())

        post_cpu, post_wall = measured(config_path)
        config["meshes"] = {}
        config_path.write_text(yaml.safe_dump(config))
        mesh_cpu, mesh_wall = measured(config_path)
        config["skeletons"] = {}
        config_path.write_text(yaml.safe_dump(config))
        skeleton_cpu, skeleton_wall = measured(config_path)
        start_cpu, _ = measured(config_path)
        peaks = worker_peaks(root / "peaks")

    added = (mesh_cpu + skeleton_cpu - 2 * start_cpu) / post_cpu
    print(f"volume {args.size}^3 voxels, blocks of {args.block}^3, {args.workers} workers")
    print(f"post-processing    {post_cpu:8.1f} CPU s  ({post_wall:.1f} s wall)")
    print(f"meshes (+join)     {mesh_cpu:8.1f} CPU s  ({mesh_wall:.1f} s wall)  {mesh_cpu / post_cpu:6.1%} of post-processing")
    print(f"skeletons (+join)  {skeleton_cpu:8.1f} CPU s  ({skeleton_wall:.1f} s wall)  {skeleton_cpu / post_cpu:6.1%} of post-processing")
    print(f"a run with nothing to do {start_cpu:8.1f} CPU s (paid once in a run with meshes and skeletons)")
    print("worker peak memory by stage: " + ", ".join(f"{stage} {kib / 1024:.0f} MiB" for stage, kib in sorted(peaks.items())))
    verdict = "met" if added <= TARGET else "NOT met"
    print(
        f"verdict: meshes and skeletons add {added:.1%} to post-processing CPU, their runs' start-up taken off "
        f"(target at most {TARGET:.0%}): {verdict}"
    )


if __name__ == "__main__":
    main()
