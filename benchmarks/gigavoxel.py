"""A gigavoxel through fragments, contacts, the hierarchical segment and relabel on this machine
(issue 18, goal 4), with every worker process's peak memory and CPU seconds.

The volume is the medulla's noisy boundary map mirrored to N^3 (``postprocess_throughput.py``
makes it the same way), written slab by slab so that no process holds it whole. The run is the
pipeline's, in a child process, with ``--workers`` workers per task; a hook records, as each
daisy worker exits, its task, its peak resident memory (VmHWM) and its CPU seconds. It prints
the wall time and CPU seconds per stage, the largest peak of each kind of process (the segment
stage's levels apart), the edges each level of the hierarchy holds and passes up, and what
monolithic waterz would need at this size, from its growth measured by the throughput benchmark.

    python benchmarks/gigavoxel.py --sizes 256 1024 --workers 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate, Roi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from postprocess_throughput import measured, medulla_boundary, write_config  # noqa: E402

from neurosam.affinities import NEAREST_OFFSETS, boundary_to_affinities, to_uint8  # noqa: E402
from neurosam.io.volumes import create_array  # noqa: E402

PEAKS_VARIABLE = "GIGAVOXEL_PEAKS"
HOOK = f'''
import atexit, os, re, time


def _record():
    with open("/proc/self/status") as status:
        peak_kib = next(line.split()[1] for line in status if line.startswith("VmHWM"))
    task = re.search(r"(?:^|:)task_id=([^:]+)", os.environ["DAISY_CONTEXT"]).group(1)
    with open(os.path.join(os.environ["{PEAKS_VARIABLE}"], str(os.getpid())), "w") as record:
        record.write(f"{{task}} {{peak_kib}} {{time.process_time()}}")


if "DAISY_CONTEXT" in os.environ and "{PEAKS_VARIABLE}" in os.environ:
    atexit.register(_record)
'''
SLAB = 64
#: Monolithic waterz's peak resident memory at 512^3 (benchmarks/results/postprocess_throughput.txt)
#: and its growth from 256^3: about linear in the voxels.
WATERZ_PEAK_MIB = {256: 853, 512: 5688}


def write_volume(path: Path, size: int) -> Coordinate:
    """The mirrored boundary map's affinities, a slab of z at a time (with the plane before it,
    which the slab's affinities along z read)."""
    boundary, voxel_size = medulla_boundary()
    roi = Roi((0, 0, 0), Coordinate((size,) * 3) * voxel_size)
    array = create_array(
        path, roi, voxel_size, np.uint8, channels=3, chunk_voxels=(64,) * 3, attrs={"offsets": [list(o) for o in NEAREST_OFFSETS]},
    )
    depth, period = boundary.shape[0], 2 * boundary.shape[0]
    for start in range(0, size, SLAB):
        low = max(start - 1, 0)
        z = np.arange(low, min(start + SLAB, size)) % period
        z = np.where(z < depth, z, period - 1 - z)
        slab = np.pad(boundary[z], [(0, 0), (0, max(0, size - boundary.shape[1])), (0, max(0, size - boundary.shape[2]))], mode="symmetric")
        affinities = boundary_to_affinities(slab[:, :size, :size])[:, start - low :]
        part = Roi((start * voxel_size[0], 0, 0), Coordinate((affinities.shape[1], size, size)) * voxel_size)
        array[part] = to_uint8(affinities)
    return voxel_size


def run(config: Path, peaks: Path) -> dict:
    """In a child process: the run, and what its workers recorded."""
    from neurosam.layout import load_plan, plan_path
    from neurosam.pipeline.run import run_pipeline
    from neurosam.quiet import quiet_stdout

    os.environ[PEAKS_VARIABLE] = str(peaks)
    with quiet_stdout():
        summary = run_pipeline(config, echo_progress=False)
    tasks = load_plan(str(plan_path(config.parent))).tasks
    records = []
    for record in peaks.iterdir():
        task, peak_kib, cpu = record.read_text().split()
        records.append((tasks[task].stage, tasks[task].task_id, int(peak_kib) * 1024, float(cpu)))
    return {"summary": summary, "records": records}


def process_kind(stage: str, task_id: str) -> str:
    return f"segment {task_id.rsplit('-', 1)[1]}" if stage == "segment" else stage


def level_edges(work_dir: Path) -> list[tuple[int, int, int, int, int]]:
    """Per level: super-blocks, their input nodes, merges, edges deferred and raw edges passed up."""
    from neurosam.graph.hierarchy import SuperBlock

    levels = []
    for level_dir in sorted((work_dir / "hierarchy").glob("*/level_*"), key=lambda p: int(p.name.split("_")[1])):
        blocks = [SuperBlock.load(path) for path in level_dir.glob("*.npz") if not path.name.endswith(".table.npz")]
        levels.append((
            len(blocks), sum(len(b.nodes) for b in blocks), sum(len(b.kept) for b in blocks),
            sum(len(b.deferred) for b in blocks), sum(len(b.outgoing) for b in blocks),
        ))
    return levels


def run_size(root: Path, size: int, block: int, workers: int) -> int:
    """One volume through the pipeline, its tables printed; the largest segment process's peak."""
    volume = root / f"size{size}" / "affinities.zarr"
    started = time.perf_counter()
    voxel_size = write_volume(volume, size) if not volume.exists() else medulla_boundary()[1]
    print(f"{size}^3 voxels ({size ** 3:.2e}), affinities written in {time.perf_counter() - started:.0f} s; "
          f"blocks {block}^3, {workers} workers per task, {os.cpu_count()} CPUs", flush=True)
    work_dir = root / f"size{size}" / "run"
    shutil.rmtree(work_dir, ignore_errors=True)
    config = write_config(work_dir, volume, block, None, voxel_size, workers)
    peaks = work_dir / "peaks"
    peaks.mkdir()
    result = measured(run, config, peaks)
    tasks = result["summary"]["tasks"]
    print(f"wall {result['seconds']:.0f} s, CPU {result['cpu_seconds']:.0f} s (every process)")
    print("| stage | task wall s | worker CPU s | largest worker peak RSS, MiB |\n|---|---:|---:|---:|")
    kinds: dict[str, list] = {}
    for task_id in tasks:  # in pipeline order
        for stage, recorded, peak, cpu in result["records"]:
            if recorded == task_id:
                kind = kinds.setdefault(process_kind(stage, task_id), [0.0, 0, tasks[task_id]["seconds"]])
                kind[0] += cpu
                kind[1] = max(kind[1], peak)
    for kind, (cpu, peak, seconds) in kinds.items():
        print(f"| {kind} | {seconds:.0f} | {cpu:.0f} | {peak / 2**20:,.0f} |")
    print("| level | super-blocks | input nodes | merges | edges deferred up | raw edges passed up |\n|---:|---:|---:|---:|---:|---:|")
    for level, (blocks, nodes, merges, deferred, outgoing) in enumerate(level_edges(work_dir)):
        print(f"| {level} | {blocks} | {nodes:,} | {merges:,} | {deferred:,} | {outgoing:,} |")
    segment_peak = max(peak for (stage, _, peak, _) in result["records"] if stage == "segment")
    print(f"largest segment process: {segment_peak / 2**20:,.0f} MiB")
    per_voxel = WATERZ_PEAK_MIB[512] * 2**20 / 512**3
    print(
        f"monolithic waterz at {size}^3: about {per_voxel * size ** 3 / 2**30:,.0f} GiB in one process, from its measured "
        f"{per_voxel:.0f} bytes per voxel at 512^3 ({WATERZ_PEAK_MIB[256]} MiB at 256^3, {WATERZ_PEAK_MIB[512]:,} MiB at 512^3: "
        f"{WATERZ_PEAK_MIB[512] / WATERZ_PEAK_MIB[256]:.1f}x for 8x the voxels); this machine has "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        flush=True,
    )
    return segment_peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024],
                        help="volume edge lengths in voxels (default 256 1024: 1.07e9 voxels at the largest)")
    parser.add_argument("--block", type=int, default=128, help="block edge length in voxels")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, help="where the volumes and the runs go (default: a temporary directory); "
                        "volumes already there are reused")
    args = parser.parse_args()
    root = args.work_dir or Path(tempfile.mkdtemp(prefix="gigavoxel-"))
    hook = root / "hook"
    hook.mkdir(parents=True, exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    peaks = {size: run_size(root, size, args.block, args.workers) for size in sorted(args.sizes)}
    if len(peaks) > 1:
        smallest, largest = min(peaks), max(peaks)
        growth = peaks[largest] / peaks[smallest] - 1
        print(
            f"largest segment process, {smallest}^3 -> {largest}^3 at {args.block}^3 blocks: {peaks[smallest] / 2**20:,.0f} -> "
            f"{peaks[largest] / 2**20:,.0f} MiB ({growth:+.0%}) -> goal of at most +20%: {'met' if growth <= 0.2 else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
