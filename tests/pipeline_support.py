"""Building blocks for pipeline tests: the real volumes kept in the repository (data/ and the
package's data/), written as a run's inputs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
import yaml
from funlib.geometry import Coordinate, Roi
from scipy import ndimage

from neurosam.affinities import NEAREST_OFFSETS, boundary_to_affinities, labels_to_affinities, store_affinities
from neurosam.graph.agglomeration import EDGE_STATISTICS
from neurosam.io.volumes import create_array, open_array
from neurosam.layout import segmentation_path
from neurosam.pipeline.plan import task_ids
from neurosam.rag import open_rag

REPO = Path(__file__).resolve().parents[1]
DATA_DIRS = (REPO / "data", REPO / "neurosam" / "data")


def data_file(name: str) -> Path:
    return next(directory / name for directory in DATA_DIRS if (directory / name).exists())


def read_h5(name: str, dataset: str, crop: tuple[slice, ...] = ()) -> tuple[np.ndarray, Coordinate]:
    with h5py.File(data_file(name), "r") as volume:
        return volume[dataset][crop], Coordinate(volume[dataset].attrs["resolution"])


def write_inputs(
    directory: Path, affinities: np.ndarray, ground_truth: np.ndarray, voxel_size, raw: np.ndarray | None = None, offsets=NEAREST_OFFSETS
) -> dict:
    """Write affinities (float, C-first), ground truth and raw into one zarr container."""
    container = directory / "inputs.zarr"
    roi = Roi((0, 0, 0), Coordinate(ground_truth.shape) * Coordinate(voxel_size))
    store_affinities(str(container / "affinities"), affinities, roi, voxel_size, offsets)
    create_array(container / "ground_truth", roi, voxel_size, ground_truth.dtype)[roi] = ground_truth
    datasets = {"affinities": f"{container}/affinities", "ground_truth": f"{container}/ground_truth"}
    if raw is not None:
        create_array(container / "raw", roi, voxel_size, np.uint8)[roi] = raw
        datasets["raw"] = f"{container}/raw"
    return datasets


def gala_inputs(directory: Path) -> dict:
    boundary, voxel_size = read_h5("gala_fib_train.h5", "boundary_prob")
    labels, _ = read_h5("gala_fib_train.h5", "neuron_ids")
    raw, _ = read_h5("gala_fib_train.h5", "raw")
    return write_inputs(directory, boundary_to_affinities(boundary), labels, voxel_size, raw)


def medulla_gt_inputs(directory: Path, noise: float = 0.0, offsets=NEAREST_OFFSETS, crop: tuple[slice, ...] = ()) -> dict:
    """Affinities of the medulla ground truth (of ``crop``), with seeded Gaussian noise of std
    ``noise`` (smoothed over a voxel) when asked: 0/1 affinities make stitching trivial."""
    labels, voxel_size = read_h5("medulla_fibsem.h5", "neuron_ids", crop)
    affinities, _ = labels_to_affinities(labels, offsets)
    if noise:
        jitter = ndimage.gaussian_filter(np.random.default_rng(0).normal(0, noise, affinities.shape), (0, 1, 1, 1))
        affinities = np.clip(affinities + jitter, 0.0, 1.0)
    return write_inputs(directory, affinities, labels, voxel_size, offsets=offsets)


#: The ground truth's skeletons and ERL are left out of a test's run unless it asks for them
#: (``evaluate=WITH_ERL``): they cost a third of a small run's CPU, and the tests of them and of
#: their resume and fingerprints ask.
WITH_ERL = {"erl": True}


def write_config(work_dir: Path, inputs: dict, block_size, context, **sections) -> Path:
    """A run config in ``work_dir`` over the given inputs (``context`` None: the default);
    ``sections`` override config sections."""
    work_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "work_dir": str(work_dir),
        "datasets": {
            **inputs,
            "fragments": str(work_dir / "out.zarr/fragments"),
            "segmentation": str(work_dir / "out.zarr/segmentation"),
        },
        "blocks": {"block_size": list(block_size), **({} if context is None else {"context": list(context)})},
        "workers": {"count": 2},
        "rag": {"url": f"sqlite:///{work_dir / 'rag.db'}"},
        "fragments": {"epsilon_agglomerate": 0.1},
        "evaluate": {"erl": False},
        **sections,
    }
    path = work_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def read_edges(rag, statistics=EDGE_STATISTICS) -> dict[str, np.ndarray]:
    """Every edge through the store's paged reads, sorted by (u, v): ``u``, ``v`` and a column
    per statistic, at float64."""
    pages = list(rag.iter_edges(10_000))
    u = np.concatenate([np.zeros(0, dtype=np.uint64)] + [page.u for page in pages])
    v = np.concatenate([np.zeros(0, dtype=np.uint64)] + [page.v for page in pages])
    order = np.lexsort((v, u))
    edges = {"u": u[order], "v": v[order]}
    for name in statistics:
        edges[name] = np.concatenate([np.zeros(0)] + [page.statistics[name] for page in pages]).astype(np.float64)[order]
    return edges


def read_segmentation(config, threshold: float) -> np.ndarray:
    array = open_array(segmentation_path(config, threshold))
    return array[array.roi]


def checksum(config) -> str:
    """One digest of everything a run wrote: fragments and every segmentation voxel for voxel,
    and the RAG's nodes, edges and done records row for row (in a fixed order)."""
    digest = hashlib.sha256()
    for path in [config.datasets.fragments] + [segmentation_path(config, t) for t in config.segment.thresholds]:
        array = open_array(path)
        digest.update(np.ascontiguousarray(array[array.roi]).tobytes())
    with open_rag(config.rag.url) as rag:
        for table, keys in ((rag.read_nodes(), ("ids",)), (read_edges(rag), ("v", "u"))):
            order = np.lexsort(tuple(table[key] for key in keys))
            for name in sorted(table):
                digest.update(name.encode() + np.ascontiguousarray(table[name][order]).tobytes())
        for stage, task_id in task_ids(config).items():
            digest.update(f"{stage}: {sorted(rag.done_blocks(task_id))}".encode())
    return digest.hexdigest()
