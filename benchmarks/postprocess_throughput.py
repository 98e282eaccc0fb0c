"""Post-processing throughput (affinities -> segmentation, voxels/s) of the block-wise pipeline
with 1 and 2 workers, beside monolithic waterz on the same volume in the same run.

Volumes of N^3 voxels are mirrored from the medulla FIB-SEM volume (160 x 250 x 250). Their
affinities come from a boundary map made from its ground truth: exp(-d / 1.5 voxels), d the
distance to the nearest ground-truth boundary, plus seeded Gaussian noise smoothed over one
voxel (std 0.15), turned into nearest-neighbour affinities by max(boundary here, there). The
noise gives watershed real work: hundreds of fragments per neuron, as with predicted affinities.
With ``--affinities ground-truth`` they are the ground truth's own 0/1 affinities instead (few
fragments: there the fixed cost of each block dominates, as with 64^3 blocks at petascale).

Both sides start from the uint8 affinities in zarr and end with one uint64 segmentation per
threshold in zarr, with the same scoring function and thresholds; monolithic waterz does one
watershed and one agglomeration of the whole volume. "workers" is the pipeline's workers.count,
the workers per task: stages overlap, so with 1 worker fragments and contacts already run
side by side; the CPU seconds of all worker processes show how many cores a run kept busy.

Both sides are measured the same way, by this process: each run is one child process (spawned:
a fresh interpreter, its imports included), its wall clock from just before the child is started
to its return, and its CPU seconds from this process's RUSAGE_CHILDREN, which covers the child
and every process it waited for (the pipeline's orchestrator, daisy's scheduler and workers).
Each configuration runs ``--repeats`` times; the table gives the minimum and median wall time
and the CPU seconds of the median run. Beside the speed, the VOI between the block-wise and the
monolithic segmentation (the largest over the thresholds) shows whether the two agree.

Every run has processes of its own. A sitecustomize hook in every child process counts the CPU
seconds spent inside waterz, for the pipeline and for monolithic waterz alike: they show how much
of the difference is waterz's own work. Peak memory is the kernel's high-water mark of resident
memory (VmHWM) of each process: monolithic waterz reads its own; every daisy worker of the
pipeline writes its own as it exits, through the same hook. (ru_maxrss would not do: a spawned
process inherits its parent's.) Segment is one process that agglomerates the whole graph, so its
memory is reported apart from that of the block workers.

A run on a 64^3 volume (one block) shows the pipeline's fixed cost: a worker process started
per task, one after the other. The time per voxel added between two volume sizes is the
per-voxel cost without it.

    python benchmarks/postprocess_throughput.py --sizes 128 256 512 --workers 1 2
    python benchmarks/postprocess_throughput.py --affinities ground-truth --block 64
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import h5py
import numpy as np
import waterz
import yaml
from funlib.geometry import Coordinate, Roi
from scipy import ndimage

from neurosam.affinities import NEAREST_OFFSETS, boundary_to_affinities, labels_to_affinities, store_affinities, to_float
from neurosam.config import SegmentConfig
from neurosam.io.volumes import create_array, open_array
from neurosam.pipeline.plan import output_chunk_voxels
from neurosam.quiet import quiet_stdout

MEDULLA = Path(__file__).resolve().parents[1] / "data" / "medulla_fibsem.h5"
SCORING_NAME = "hist_quant_50"
SCORING_FUNCTION = SegmentConfig().scoring_functions[SCORING_NAME]
THRESHOLDS = SegmentConfig().thresholds
BOUNDARY_DECAY_VOXELS = 1.5
NOISE_STD = 0.15
NOISE_SMOOTHING_VOXELS = 1.0
FIXED_COST_SIZE = 64
#: Goal 2 of the block-wise agglomeration issue: the pipeline's CPU seconds (every process) at
#: most this many times monolithic waterz's, at 512^3; per kind of affinities.
CPU_RATIO_TARGET = {"noisy": 1.3, "ground-truth": 2.0}
FLATNESS_TOLERANCE = 0.2
PEAKS_DIR_VARIABLE = "POSTPROCESS_BENCHMARK_PEAKS"
HOOK_VARIABLE = "POSTPROCESS_BENCHMARK_HOOK"
HOOK = f'''
import atexit, os, re, time

waterz_cpu_seconds = 0.0


def _time_waterz():
    """waterz works while its generator is advanced: add up the CPU seconds that takes."""
    import waterz

    agglomerate = waterz.agglomerate

    def timed_agglomerate(*args, **kwargs):
        global waterz_cpu_seconds
        results = agglomerate(*args, **kwargs)
        while True:
            start = time.process_time()
            try:
                result = next(results)
            except StopIteration:
                return
            finally:
                waterz_cpu_seconds += time.process_time() - start
            yield result

    waterz.agglomerate = timed_agglomerate


def _record_worker():
    with open("/proc/self/status") as status:
        peak_kib = next(line.split()[1] for line in status if line.startswith("VmHWM"))
    task = re.search(r"(?:^|:)task_id=([^:]+)", os.environ["DAISY_CONTEXT"]).group(1)
    with open(os.path.join(os.environ["{PEAKS_DIR_VARIABLE}"], str(os.getpid())), "w") as record:
        record.write(f"{{task}} {{peak_kib}} {{waterz_cpu_seconds}}")


if "{HOOK_VARIABLE}" in os.environ:
    _time_waterz()
    if "DAISY_CONTEXT" in os.environ and "{PEAKS_DIR_VARIABLE}" in os.environ:
        atexit.register(_record_worker)
'''


def medulla_boundary(seed: int = 0) -> tuple[np.ndarray, Coordinate]:
    """A boundary probability map of the medulla volume, deterministic (noise of ``seed``)."""
    with h5py.File(MEDULLA, "r") as medulla:
        labels = medulla["neuron_ids"][:]
        voxel_size = Coordinate(medulla["neuron_ids"].attrs["resolution"])
    ground_truth, _ = labels_to_affinities(labels, NEAREST_OFFSETS)
    distance = ndimage.distance_transform_edt(ground_truth.min(axis=0) == 1)
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=labels.shape), NOISE_SMOOTHING_VOXELS)
    noise *= NOISE_STD / noise.std()
    return np.clip(np.exp(-distance / BOUNDARY_DECAY_VOXELS) + noise, 0, 1).astype(np.float32), voxel_size


def medulla_labels() -> np.ndarray:
    with h5py.File(MEDULLA, "r") as medulla:
        return medulla["neuron_ids"][:]


def mirrored(volume: np.ndarray, size: int) -> np.ndarray:
    return np.pad(volume, [(0, max(0, size - s)) for s in volume.shape], mode="symmetric")[:size, :size, :size]


def write_affinities(path: Path, source: np.ndarray, kind: str, size: int, voxel_size: Coordinate, chunk: int) -> None:
    """``kind`` noisy: ``source`` is the boundary map; ground-truth: the labels, whose 0/1
    affinities give few fragments."""
    roi = Roi((0, 0, 0), Coordinate((size,) * 3) * voxel_size)
    if kind == "noisy":
        affinities = boundary_to_affinities(mirrored(source, size))
    else:
        affinities, _ = labels_to_affinities(mirrored(source, size), NEAREST_OFFSETS)
    store_affinities(str(path), affinities, roi, voxel_size, NEAREST_OFFSETS, chunk_voxels=(chunk,) * 3)


def write_config(work_dir: Path, affinities: Path, block: int, context: int | None, voxel_size: Coordinate, workers: int) -> Path:
    """``context`` None: the pipeline's default."""
    blocks = {"block_size": list(Coordinate((block,) * 3) * voxel_size)}
    if context is not None:
        blocks["context"] = list(Coordinate((context,) * 3) * voxel_size)
    config = {
        "work_dir": str(work_dir),
        "datasets": {
            "affinities": str(affinities),
            "fragments": str(work_dir / "out.zarr" / "fragments"),
            "segmentation": str(work_dir / "out.zarr" / "segmentation"),
        },
        "blocks": blocks,
        "workers": {"count": workers},
        "rag": {"url": f"sqlite:///{work_dir / 'rag.db'}"},
        "segment": {"scoring_functions": {SCORING_NAME: SCORING_FUNCTION}, "scoring_function": SCORING_NAME, "thresholds": THRESHOLDS},
    }
    work_dir.mkdir(parents=True)
    path = work_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def own_peak_bytes() -> int:
    with open("/proc/self/status") as status:
        return 1024 * next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))


def run_monolithic(affinities_path: str, output_dir: str, output_chunk: tuple[int, ...]) -> dict:
    """Runs in a child process: read all affinities, waterz, write each threshold's segmentation
    in chunks of the pipeline's outputs."""
    import sitecustomize  # the benchmark's hook, which times waterz

    affinities = open_array(affinities_path)
    data = np.ascontiguousarray(to_float(affinities[affinities.roi]))
    with quiet_stdout():
        segmentations = waterz.agglomerate(data, THRESHOLDS, scoring_function=SCORING_FUNCTION)
        for threshold, segmentation in zip(THRESHOLDS, segmentations):
            output = create_array(f"{output_dir}/out.zarr/threshold_{threshold:.4f}", affinities.roi, affinities.voxel_size, np.uint64, chunk_voxels=output_chunk)
            output[affinities.roi] = segmentation
    return {"waterz_cpu_seconds": sitecustomize.waterz_cpu_seconds, "peak_bytes": own_peak_bytes()}


def run_blockwise(config_path: str, peaks_dir: str) -> dict:
    """Runs in a child process; its daisy workers record their peak memory and their CPU
    seconds in waterz in ``peaks_dir``."""
    from neurosam.layout import load_plan, plan_path
    from neurosam.pipeline.run import run_pipeline

    os.environ[PEAKS_DIR_VARIABLE] = peaks_dir
    with quiet_stdout():
        run_pipeline(config_path, echo_progress=False)
    tasks = load_plan(str(plan_path(Path(config_path).parent))).tasks
    peaks: dict[str, int] = {}
    waterz_cpu_seconds = 0.0
    for record in Path(peaks_dir).iterdir():
        task, peak_kib, in_waterz = record.read_text().split()
        stage = tasks[task].stage
        peaks[stage] = max(peaks.get(stage, 0), 1024 * int(peak_kib))
        waterz_cpu_seconds += float(in_waterz)
    return {"waterz_cpu_seconds": waterz_cpu_seconds, "peaks": peaks}


def measured(function, *args) -> dict:
    """``function(*args)`` in a fresh child process, with the wall and CPU seconds of the child
    and of every process below it, from its start to its end."""
    start, start_cpu = time.perf_counter(), cpu_seconds(resource.RUSAGE_CHILDREN)
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        result = pool.submit(function, *args).result()
    return {**result, "seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds(resource.RUSAGE_CHILDREN) - start_cpu}


def repeated(run, repeats: int) -> dict:
    """The median run (by wall time), with the minimum wall time of all runs beside it."""
    results = sorted((run(repeat) for repeat in range(repeats)), key=lambda result: result["seconds"])
    return {**results[len(results) // 2], "min_seconds": results[0]["seconds"]}


def largest_voi(first_container: Path, second_container: Path) -> float:
    """The VOI between two runs' segmentations, the largest over the thresholds."""
    from neurosam.graph.metrics import evaluate

    vois = []
    for threshold in THRESHOLDS:
        first, second = (open_array(f"{c}/threshold_{threshold:.4f}") for c in (first_container, second_container))
        vois.append(evaluate(first[first.roi], second[second.roi], ignore_background=False)["voi"])
    return max(vois)


class Runs:
    """Inputs and runs under one directory; the hook directory goes first on every child's path."""

    def __init__(self, root: Path, args: argparse.Namespace):
        self.root = root
        self.args = args
        if args.affinities == "noisy":
            self.source, self.voxel_size = medulla_boundary()
        else:
            self.source, self.voxel_size = medulla_labels(), medulla_boundary()[1]
        hook_dir = root / "hook"
        hook_dir.mkdir(exist_ok=True)
        (hook_dir / "sitecustomize.py").write_text(HOOK)
        os.environ[HOOK_VARIABLE] = "1"
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook_dir), os.environ.get("PYTHONPATH")]))

    def affinities(self, size: int) -> Path:
        path = self.root / f"size{size}" / "inputs.zarr" / "affinities"
        if not path.exists():
            write_affinities(path, self.source, self.args.affinities, size, self.voxel_size, self.args.chunk)
        return path

    def monolithic_output(self, size: int, repeat: int) -> Path:
        return self.root / f"size{size}" / f"monolithic{repeat}" / "out.zarr"

    def blockwise_output(self, size: int, workers: int, repeat: int) -> Path:
        return self.root / f"size{size}" / f"workers{workers}-{repeat}" / "out.zarr" / "segmentation" / SCORING_NAME

    def monolithic(self, size: int) -> dict:
        block = Coordinate((self.args.block,) * 3) * self.voxel_size
        output_chunk = output_chunk_voxels(block, self.voxel_size)
        affinities = str(self.affinities(size))
        return repeated(
            lambda repeat: measured(run_monolithic, affinities, str(self.monolithic_output(size, repeat).parent), output_chunk),
            self.args.repeats,
        )

    def blockwise(self, size: int, workers: int, repeats: int | None = None) -> dict:
        def run(repeat: int) -> dict:
            work_dir = self.root / f"size{size}" / f"workers{workers}-{repeat}"
            config = write_config(work_dir, self.affinities(size), self.args.block, self.args.context, self.voxel_size, workers)
            peaks_dir = work_dir / "peaks"
            peaks_dir.mkdir()
            return measured(run_blockwise, str(config), str(peaks_dir))

        result = repeated(run, repeats or self.args.repeats)
        if size != FIXED_COST_SIZE:
            result["voi_to_monolithic"] = largest_voi(self.blockwise_output(size, workers, 0), self.monolithic_output(size, 0))
        return result

    def drop(self, size: int) -> None:
        shutil.rmtree(self.root / f"size{size}")


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.0f}"


def block_worker_peak(result: dict) -> tuple[str, int]:
    """The largest peak of the workers of block-wise stages; segment is one process over the
    whole graph, whose memory is set by the graph instead."""
    return max(((stage, peak) for stage, peak in result["peaks"].items() if stage != "segment"), key=lambda item: item[1])


TABLE_HEADER = (
    "| volume | workers | block-wise s, min / median (CPU s) | block-wise voxels/s | monolithic s, min / median (CPU s) "
    "| monolithic voxels/s | wall, block-wise / monolithic | CPU s, block-wise / monolithic | CPU s in waterz, block-wise / monolithic "
    "| ns/voxel | ns/voxel added | block worker peak RSS, MiB | segment peak RSS, MiB | monolithic peak RSS, MiB | VOI block-wise vs monolithic |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"
)


def ns_per_voxel_added(row: dict) -> float | None:
    """Time per voxel between this volume and the previous one: the per-voxel cost without the
    fixed cost of a run."""
    previous = row["previous"]
    if previous is None:
        return None
    return 1e9 * (row["blockwise"]["seconds"] - previous["blockwise"]["seconds"]) / (row["size"] ** 3 - previous["size"] ** 3)


def print_row(row: dict) -> None:
    voxels = row["size"] ** 3
    blockwise, monolithic = row["blockwise"], row["monolithic"]
    stage, peak = block_worker_peak(blockwise)
    added = ns_per_voxel_added(row)
    print(
        f"| {row['size']}^3 | {row['workers']} | {blockwise['min_seconds']:.1f} / {blockwise['seconds']:.1f} ({blockwise['cpu_seconds']:.0f}) "
        f"| {voxels / blockwise['seconds']:,.0f} | {monolithic['min_seconds']:.1f} / {monolithic['seconds']:.1f} ({monolithic['cpu_seconds']:.0f}) "
        f"| {voxels / monolithic['seconds']:,.0f} | {blockwise['seconds'] / monolithic['seconds']:.2f}x "
        f"| {blockwise['cpu_seconds'] / monolithic['cpu_seconds']:.2f}x "
        f"| {blockwise['waterz_cpu_seconds']:.1f} / {monolithic['waterz_cpu_seconds']:.1f} | {1e9 * blockwise['seconds'] / voxels:.0f} | {'-' if added is None else f'{added:.0f}'} "
        f"| {mib(peak)} ({stage}) | {mib(blockwise['peaks']['segment'])} | {mib(monolithic['peak_bytes'])} "
        f"| {blockwise['voi_to_monolithic']:.3f} |",
        flush=True,
    )


def verdict(met: bool) -> str:
    return "MET" if met else "MISSED"


def spread(values: list[float]) -> float:
    return max(values) / min(values) - 1


def print_targets(rows: list[dict], fixed_seconds: dict[int, float], args: argparse.Namespace) -> None:
    largest, smallest = rows[-1]["size"], rows[0]["size"]
    print()
    print(
        f"fixed cost: a run of one {FIXED_COST_SIZE}^3 block takes "
        + ", ".join(f"{seconds:.1f} s with {workers} worker(s)" for workers, seconds in fixed_seconds.items())
    )
    target = CPU_RATIO_TARGET[args.affinities]
    for row in rows:
        if row["size"] == largest:
            blockwise, monolithic = row["blockwise"], row["monolithic"]
            ratio = blockwise["cpu_seconds"] / monolithic["cpu_seconds"]
            print(
                f"target: CPU seconds at most {target}x monolithic waterz's at {largest}^3, {args.affinities} affinities, "
                f"{args.block}^3 blocks, {row['workers']} worker(s): {ratio:.2f}x ({blockwise['cpu_seconds']:.0f} against "
                f"{monolithic['cpu_seconds']:.0f} CPU s; {blockwise['waterz_cpu_seconds']:.0f} of them in waterz's watersheds, against "
                f"{monolithic['waterz_cpu_seconds']:.0f}) -> {verdict(ratio <= target)}"
            )
    for workers in fixed_seconds:
        mine = [r for r in rows if r["workers"] == workers]
        end_to_end = spread([r["blockwise"]["seconds"] / r["size"] ** 3 for r in mine])
        line = (
            f"target: time per voxel flat within {FLATNESS_TOLERANCE:.0%} from {smallest}^3 to {largest}^3, {workers} worker(s): "
            f"end to end spread {end_to_end:.0%} -> {verdict(end_to_end <= FLATNESS_TOLERANCE)}"
        )
        added = [ns_per_voxel_added(r) for r in mine[1:]]
        if len(added) > 1:
            line += f"; per voxel added between sizes spread {spread(added):.0%} -> {verdict(spread(added) <= FLATNESS_TOLERANCE)}"
        print(line)
        peaks = [block_worker_peak(r["blockwise"])[1] for r in mine]
        growth = peaks[-1] / peaks[0] - 1
        print(
            f"target: peak memory per block worker set by the block size, {workers} worker(s): "
            + " -> ".join(f"{mib(peak)} MiB at {r['size']}^3" for peak, r in zip(peaks, mine))
            + f" ({growth:+.0%} for {(largest / smallest) ** 3:.0f}x the voxels; monolithic waterz "
            f"{mib(mine[0]['monolithic']['peak_bytes'])} -> {mib(mine[-1]['monolithic']['peak_bytes'])} MiB) "
            f"-> {verdict(growth <= FLATNESS_TOLERANCE)}"
        )
        if len(peaks) > 2 and smallest <= args.block:
            print(
                f"  at {smallest}^3 a worker ran one block, which has no neighbour to read as context; "
                f"from {mine[-2]['size']}^3 to {largest}^3 the peak changes {peaks[-1] / peaks[-2] - 1:+.0%}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512], help="volume edge lengths in voxels")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--block", type=int, default=128, help="block edge length in voxels")
    parser.add_argument("--chunk", type=int, default=64, help="chunk edge length of the affinities in voxels")
    parser.add_argument("--context", type=int, help="context around each block, in voxels (default: the pipeline's)")
    parser.add_argument("--affinities", choices=list(CPU_RATIO_TARGET), default="noisy", help="noisy boundary map, or the ground truth's 0/1 affinities")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration (min and median are printed)")
    parser.add_argument("--work-dir", type=Path, help="where volumes and runs go (default: a temporary directory)")
    args = parser.parse_args()
    if min(args.sizes) <= FIXED_COST_SIZE:
        parser.error(f"sizes must be larger than {FIXED_COST_SIZE}, whose run measures the fixed cost")

    print(
        f"block {args.block}^3 voxels, context {'the default' if args.context is None else f'{args.context} voxels'}, "
        f"affinity chunks {args.chunk}^3, scoring {SCORING_NAME}, thresholds {THRESHOLDS}, {os.cpu_count()} CPUs\naffinities: "
        + (f"ground-truth boundary distance of the medulla volume (mirrored to size), exp(-d / {BOUNDARY_DECAY_VOXELS}) plus seeded "
           f"noise (std {NOISE_STD}, smoothed {NOISE_SMOOTHING_VOXELS} voxel)\n" if args.affinities == "noisy"
           else "the medulla ground truth's own 0/1 affinities (mirrored to size)\n")
    )
    root = args.work_dir or Path(tempfile.mkdtemp(prefix="postprocess_throughput_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        runs = Runs(root, args)
        fixed_seconds = {workers: runs.blockwise(FIXED_COST_SIZE, workers)["min_seconds"] for workers in args.workers}
        runs.drop(FIXED_COST_SIZE)
        print(TABLE_HEADER, flush=True)
        rows = []
        previous = dict.fromkeys(args.workers)
        for size in sorted(args.sizes):
            monolithic = runs.monolithic(size)
            for workers in args.workers:
                row = {"size": size, "workers": workers, "monolithic": monolithic, "blockwise": runs.blockwise(size, workers), "previous": previous[workers]}
                print_row(row)
                rows.append(row)
                previous[workers] = row
            runs.drop(size)
    finally:
        if args.work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print_targets(rows, fixed_seconds, args)


if __name__ == "__main__":
    main()
