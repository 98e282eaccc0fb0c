"""What the design does at a petavoxel, from one measured run: the RAG's bytes per voxel in
SQLite and in PostgreSQL, against issue 19's target of 0.5, the database writes per block, and what the
scheduler holds per block (the growth of its peak memory between B^3 and (B/2)^3 blocks, per
block more); each scaled to 10^15 voxels. The global step is measured level by level by
benchmarks/gigavoxel.py.

The run: the medulla FIB-SEM volume mirrored to N^3 voxels with the noisy affinities of
benchmarks/postprocess_throughput.py (hundreds of fragments per neuron, as predicted affinities
give), blocks of B^3 voxels at the default context, 2 local workers, SQLite; the B^3 run once more
into PostgreSQL (``--postgres-url``, else the server scripts/start_postgres.sh starts), in a
schema of its own that is dropped after.

    python benchmarks/scale_figures.py --size 256 --block 64
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import psycopg
import yaml

from neurosam.config import load_config
from neurosam.pipeline.run import run_pipeline
from neurosam.rag import open_rag

REPO = Path(__file__).resolve().parents[1]
PETAVOXEL = 10**15
RAG_BYTES_PER_VOXEL_TARGET = 0.5


def _postprocess_benchmark():
    spec = importlib.util.spec_from_file_location("postprocess_throughput", REPO / "benchmarks" / "postprocess_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peak_bytes() -> int:
    with open("/proc/self/status") as status:
        return 1024 * next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))


def in_fresh_process(function, *args):
    """A spawned child's high-water mark is its own, so growths measured there are real."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def run_figures(config_path: Path) -> dict:
    """The whole run, its orchestrator and daisy's server in this process."""
    before = peak_bytes()
    started = time.perf_counter()
    summary = run_pipeline(config_path, echo_progress=False)
    return {"summary": summary, "seconds": time.perf_counter() - started, "scheduler_peak_growth": peak_bytes() - before}


def postgres_server_url(given: str | None) -> str:
    if given:
        return given
    started = subprocess.run(["bash", str(REPO / "scripts" / "start_postgres.sh")], capture_output=True, text=True, check=True)
    return started.stdout.strip().splitlines()[-1]


def postgres_rag_bytes(server_url: str, config_path: Path) -> int:
    """Run the pipeline into a fresh schema; the bytes of its tables, their indexes and TOAST."""
    schema = f"neurosam_scale_{uuid.uuid4().hex[:12]}"
    config = yaml.safe_load(config_path.read_text())
    separator = "&" if "?" in server_url else "?"
    config["rag"] = {"url": f"{server_url}{separator}options=-csearch_path%3D{schema}"}
    config_path.write_text(yaml.safe_dump(config))
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
        try:
            in_fresh_process(run_figures, config_path)
            return int(connection.execute(
                "SELECT sum(pg_total_relation_size(format('%%I.%%I', schemaname, tablename)::regclass)) FROM pg_tables WHERE schemaname = %s",
                (schema,),
            ).fetchone()[0])
        finally:
            connection.execute(f"DROP SCHEMA {schema} CASCADE")


def verdict(bytes_per_voxel: float) -> str:
    return "MET" if bytes_per_voxel <= RAG_BYTES_PER_VOXEL_TARGET else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="volume edge in voxels")
    parser.add_argument("--block", type=int, default=64, help="block edge in voxels")
    parser.add_argument("--postgres-url", help="a PostgreSQL server to measure the RAG in (default: scripts/start_postgres.sh's)")
    args = parser.parse_args()
    server_url = postgres_server_url(args.postgres_url)
    throughput = _postprocess_benchmark()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        boundary, voxel_size = throughput.medulla_boundary()
        affinities = root / "inputs.zarr" / "affinities"
        throughput.write_affinities(affinities, boundary, "noisy", args.size, voxel_size, 64)
        runs = {}
        for block in (args.block, args.block // 2):
            path = throughput.write_config(root / f"run{block}", affinities, block, None, voxel_size, 2)
            config = yaml.safe_load(path.read_text())
            config["segment"] = {"scoring_function": throughput.SCORING_NAME, "thresholds": throughput.THRESHOLDS}
            path.write_text(yaml.safe_dump(config))
            runs[block] = in_fresh_process(run_figures, path)
        path = root / f"run{args.block}" / "config.yaml"
        summary, seconds = runs[args.block]["summary"], runs[args.block]["seconds"]
        task_blocks = {block: sum(task["blocks"] for task in run["summary"]["tasks"].values()) for block, run in runs.items()}
        growths = {block: run["scheduler_peak_growth"] for block, run in runs.items()}
        per_task_block = (growths[args.block // 2] - growths[args.block]) / (task_blocks[args.block // 2] - task_blocks[args.block])
        loaded = load_config(path)
        database = Path(loaded.rag.url.removeprefix("sqlite:///"))
        with open_rag(loaded.rag.url) as rag:
            nodes = len(rag.read_nodes()["ids"])
            edges = rag.edge_count()
        database_bytes = database.stat().st_size
        postgres_config = throughput.write_config(root / "postgresql", affinities, args.block, None, voxel_size, 2)
        postgres_bytes = postgres_rag_bytes(server_url, postgres_config)

    voxels = args.size**3
    blocks = summary["tasks"][next(t for t in summary["tasks"] if t.startswith("fragments"))]["blocks"]
    scale = PETAVOXEL / voxels
    figures = {
        "voxels": voxels, "blocks": blocks, "nodes": nodes, "edges": edges,
        "database_bytes": database_bytes, "postgres_bytes": postgres_bytes, "run_seconds": seconds,
        "scheduler_peak_growth": growths, "task_blocks": task_blocks, "scheduler_bytes_per_task_block": per_task_block,
    }
    print(f"run: {args.size}^3 voxels, {blocks} blocks of {args.block}^3, {seconds:.1f} s through relabel")
    print(f"RAG: {nodes:,} nodes, {edges:,} edges, a row per block for each (packed columns): "
          f"SQLite file {database_bytes / 2**20:.1f} MiB, PostgreSQL tables {postgres_bytes / 2**20:.1f} MiB, "
          f"{database_bytes / max(edges, 1):.1f} and {postgres_bytes / max(edges, 1):.1f} bytes per edge with the nodes")
    for database, size in (("SQLite", database_bytes), ("PostgreSQL", postgres_bytes)):
        print(f"target: RAG at most {RAG_BYTES_PER_VOXEL_TARGET} bytes per voxel, {database}: {size / voxels:.3f} -> {verdict(size / voxels)}")
    print(f"database writes per block: fragments one node row (~{nodes / blocks:.0f} nodes), contacts one edge row "
          f"(~{edges / blocks:.0f} edges), each one upsert statement, and one done record per block and task")
    print("scheduler (the run's process, daisy's server in it): peak memory "
          + ", ".join(f"+{growths[b] / 2**20:.0f} MiB for {task_blocks[b]} task blocks ({b}^3)" for b in growths)
          + f": {per_task_block:.0f} bytes per task block more")
    print(f"at 10^15 voxels ({scale:.1e} x): {PETAVOXEL // (args.block ** 3):.1e} blocks of {args.block}^3, "
          f"{edges * scale:.1e} edges, {database_bytes * scale / 2**40:.0f} TiB of RAG in SQLite ({postgres_bytes * scale / 2**40:.0f} in PostgreSQL), "
          f"scheduler {per_task_block * 4 * PETAVOXEL / args.block ** 3 / 2**30:.0f} GiB for four block-wise tasks")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
