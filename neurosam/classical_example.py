"""The classical route, as an example: a real FIB-SEM crop shipped with the package, whose
affinities come from its classical boundary map instead of a network, segmented by the same
post-processing on this machine with SQLite and local workers. The embedded default
(``configs/demo.yaml``) predicts its affinities with the shipped network instead.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import h5py
import yaml
from funlib.geometry import Coordinate, Roi

from neurosam.affinities import NEAREST_OFFSETS, boundary_to_affinities, store_affinities
from neurosam.io.convert import convert
from neurosam.io.volumes import dataset_exists

GALA_VOLUME = files("neurosam") / "data" / "gala_fib_train.h5"


def classical_config() -> dict:
    container = "volumes.zarr"
    return {
        "work_dir": ".",
        "datasets": {
            "raw": f"{container}/raw",
            "affinities": f"{container}/affinities",
            "fragments": f"{container}/fragments",
            "segmentation": f"{container}/segmentation",
            "ground_truth": f"{container}/neuron_ids",
        },
        "blocks": {"block_size": [250, 500, 500], "context": [100, 100, 100]},
        "workers": {"launcher": "local", "count": 2},
        "rag": {"url": "sqlite:///rag.db"},
        "fragments": {"epsilon_agglomerate": 0.1},
        "segment": {"scoring_function": "hist_quant_50", "thresholds": [0.5, 0.6, 0.7, 0.8, 0.9]},
    }


def prepare_classical_example(work_dir: str | Path) -> Path:
    """Write the example's volumes and config into ``work_dir`` (kept if already there); return the config path."""
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    container = work_dir / "volumes.zarr"
    for name in ("raw", "neuron_ids"):
        if not dataset_exists(container / name):
            convert(GALA_VOLUME, name, container / name)
    if not dataset_exists(container / "affinities"):
        with h5py.File(GALA_VOLUME, "r") as volume:
            boundary = volume["boundary_prob"]
            voxel_size = Coordinate(boundary.attrs["resolution"])
            roi = Roi(boundary.attrs["offset"], Coordinate(boundary.shape) * voxel_size)
            store_affinities(str(container / "affinities"), boundary_to_affinities(boundary[:]), roi, voxel_size, NEAREST_OFFSETS)
    config_path = work_dir / "config.yaml"
    if not config_path.exists():
        config_path.write_text(yaml.safe_dump(classical_config(), sort_keys=False))
    return config_path
