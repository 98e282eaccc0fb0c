"""What the design does at a petavoxel, from one measured run: the RAG's rows and bytes per voxel,
the database writes per block, the global step's time and memory per edge, and what the
scheduler holds per block; each scaled to 10^15 voxels.

The run: the medulla FIB-SEM volume mirrored to N^3 voxels with the noisy affinities of
benchmarks/postprocess_throughput.py (hundreds of fragments per neuron, as predicted affinities
give), blocks of B^3 voxels at the default context, 2 local workers, SQLite.

    python benchmarks/scale_figures.py --size 256 --block 64
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import yaml
from funlib.geometry import Coordinate

from neurosam.agglomeration import EDGE_STATISTICS
from neurosam.config import load_config
from neurosam.pipeline.run import run_pipeline
from neurosam.rag import open_rag

REPO = Path(__file__).resolve().parents[1]
PETAVOXEL = 10**15


def _postprocess_benchmark():
    spec = importlib.util.spec_from_file_location("postprocess_throughput", REPO / "benchmarks" / "postprocess_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peak_bytes() -> int:
    with open("/proc/self/status") as status:
        return 1024 * next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))


def segment_figures(config_path: Path) -> dict:
    """The global step alone, in this process: its time and its peak memory growth."""
    from neurosam.workers.segment import find_segments

    config = load_config(config_path)
    with open_rag(config.rag.url) as rag:
        before = peak_bytes()
        start = time.perf_counter()
        find_segments(config, rag)
        return {"seconds": time.perf_counter() - start, "peak_growth": peak_bytes() - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="volume edge in voxels")
    parser.add_argument("--block", type=int, default=64, help="block edge in voxels")
    args = parser.parse_args()
    throughput = _postprocess_benchmark()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        boundary, voxel_size = throughput.medulla_boundary()
        affinities = root / "inputs.zarr" / "affinities"
        throughput.write_affinities(affinities, boundary, "noisy", args.size, voxel_size, 64)
        work_dir = root / "run"
        path = throughput.write_config(work_dir, affinities, args.block, None, voxel_size, 2)
        config = yaml.safe_load(path.read_text())
        config["segment"] = {"scoring_function": throughput.SCORING_NAME, "thresholds": throughput.THRESHOLDS}
        path.write_text(yaml.safe_dump(config))
        before = peak_bytes()
        started = time.perf_counter()
        summary = run_pipeline(path, echo_progress=False)
        seconds = time.perf_counter() - started
        scheduler_growth = peak_bytes() - before
        loaded = load_config(path)
        database = Path(loaded.rag.url.removeprefix("sqlite:///"))
        with open_rag(loaded.rag.url) as rag:
            nodes, edges = rag.count_nodes(), rag.count_edges()
        global_step = segment_figures(path)

    voxels = args.size**3
    blocks = summary["tasks"][next(t for t in summary["tasks"] if t.startswith("fragments"))]["blocks"]
    rows = nodes + edges * len(EDGE_STATISTICS)
    database_bytes = database.stat().st_size if database.exists() else 0
    scale = PETAVOXEL / voxels
    figures = {
        "voxels": voxels, "blocks": blocks, "nodes": nodes, "edges": edges, "rows": rows,
        "database_bytes": database_bytes, "run_seconds": seconds,
        "segment_seconds": global_step["seconds"], "segment_peak_growth": global_step["peak_growth"],
        "scheduler_peak_growth": scheduler_growth,
    }
    print(f"run: {args.size}^3 voxels, {blocks} blocks of {args.block}^3, {seconds:.1f} s through relabel")
    print(f"RAG: {nodes:,} nodes, {edges:,} edges ({len(EDGE_STATISTICS)} statistics each): {rows:,} rows, "
          f"{rows / voxels:.2e} rows and {database_bytes / voxels:.3f} bytes per voxel (SQLite file {database_bytes / 2**20:.1f} MiB)")
    print(f"database writes per block: {nodes / blocks:.0f} node rows (fragments), {edges * len(EDGE_STATISTICS) / blocks:.0f} "
          f"edge rows (agglomerate), each as one upsert statement per stage, and one done record per block and task")
    print(f"global step (segment): {global_step['seconds']:.2f} s, peak memory +{global_step['peak_growth'] / 2**20:.0f} MiB: "
          f"{1e6 * global_step['seconds'] / max(edges, 1):.1f} us and {global_step['peak_growth'] / max(edges, 1):.0f} bytes per edge")
    print(f"scheduler (this process, daisy's server in it): peak memory +{scheduler_growth / 2**20:.0f} MiB for {blocks * len(summary['tasks'])} "
          f"task blocks, {scheduler_growth / max(blocks * len(summary['tasks']), 1):.0f} bytes per task block")
    print(f"at 10^15 voxels ({scale:.1e} x): {PETAVOXEL // (args.block ** 3):.1e} blocks of {args.block}^3, "
          f"{edges * scale:.1e} edges, {rows * scale:.1e} RAG rows, {database_bytes * scale / 2**40:.0f} TiB of RAG, "
          f"global step {global_step['seconds'] * scale / 3600:.0f} h and {global_step['peak_growth'] * scale / 2**40:.1f} TiB in one process")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
