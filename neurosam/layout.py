"""The run's geometry and file layout, shared by the scheduler side and the block functions.

The scheduler works a ``RunPlan`` out once from the config and the datasets' metadata, writes it
to ``work_dir/plan.json``, and every worker (a local process or a SLURM job) reads that file: no
worker loads the config or plans again. Everything that says where a run's files go lives here,
so a block function and the planner can never disagree about a path.

Block indices are daisy's block ids: fragment ids and the RAG's record of finished blocks both
use ``block.block_id[1]``, which names the same block in every task of one block layout.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from funlib.geometry import Coordinate, Roi

from neurosam.config import RunConfig
from neurosam.io.volumes import split_dataset_path

PLAN_FILE = "plan.json"


@functools.cache
def open_storage(path: str, mode: str = "r"):
    """The dataset's zarr array (or N5 reader), opened once per process: opening reads metadata
    from disk. Workers open storage directly, without funlib.persistence and the dask, xarray
    and pandas it imports (over half a second of every worker's start)."""
    container, dataset = split_dataset_path(path)
    if container.suffix == ".n5":
        from neurosam.io.n5 import N5Dataset

        return N5Dataset(container / dataset)
    return zarr.open_array(str(Path(container) / dataset), mode=mode)


def _roi_json(roi: Roi) -> dict:
    return {"offset": list(roi.offset), "shape": list(roi.shape)}


def _roi(data: dict) -> Roi:
    return Roi(data["offset"], data["shape"])


@dataclass(frozen=True)
class StoredArray:
    """A dataset's path and where its voxels lie in the world (nm)."""

    path: str
    roi: Roi
    voxel_size: Coordinate
    channels: tuple[int, ...] = ()

    @classmethod
    def of(cls, path: str, array) -> StoredArray:
        """From the funlib.persistence ``Array`` the planner opened at ``path``."""
        return cls(str(path), array.roi, array.voxel_size, tuple(array.shape[: array.channel_dims]))

    def read(self, roi: Roi, fill_value=0) -> np.ndarray:
        """The voxels of ``roi`` (channels first), ``fill_value`` where ``roi`` leaves the array."""
        storage = open_storage(self.path)
        data = np.full((*self.channels, *(roi.shape / self.voxel_size)), fill_value, dtype=storage.dtype)
        shared = self.roi.intersect(roi)
        if not shared.empty:
            data[self._slices(shared, roi.offset)] = storage[self._slices(shared, self.roi.offset)]
        return data

    def read_mirrored(self, roi: Roi) -> np.ndarray:
        """The voxels of ``roi``, mirrored at the array's borders where ``roi`` leaves it: the
        same values ``numpy.pad(whole_array, mode="reflect")`` gives, so a block predicted near
        the border sees what a prediction of the whole volume sees."""
        storage = open_storage(self.path)
        start = (roi.offset - self.roi.offset) / self.voxel_size
        axes = [
            _mirrored_indices(begin, size, extent)
            for begin, size, extent in zip(start, roi.shape / self.voxel_size, self.roi.shape / self.voxel_size)
        ]
        box = tuple(slice(int(index.min()), int(index.max()) + 1) for index in axes)
        data = np.asarray(storage[(slice(None),) * len(self.channels) + box])
        local = np.ix_(*(index - b.start for index, b in zip(axes, box)))
        return data[(slice(None),) * len(self.channels) + local]

    def write(self, roi: Roi, data: np.ndarray) -> None:
        if not self.roi.contains(roi):
            raise ValueError(f"{self.path}: cannot write {roi}, outside the array's ROI {self.roi}")
        open_storage(self.path, mode="r+")[self._slices(roi, self.roi.offset)] = data

    def _slices(self, roi: Roi, origin: Coordinate) -> tuple[slice, ...]:
        """Index of ``roi`` in an array of this one's channels whose first voxel lies at ``origin``."""
        spatial = ((roi - origin) / self.voxel_size).to_slices()
        return (slice(None),) * len(self.channels) + spatial

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "roi": _roi_json(self.roi),
            "voxel_size": list(self.voxel_size),
            "channels": list(self.channels),
        }

    @classmethod
    def from_json(cls, data: dict) -> StoredArray:
        return cls(data["path"], _roi(data["roi"]), Coordinate(data["voxel_size"]), tuple(data["channels"]))


def _mirrored_indices(begin: int, size: int, extent: int) -> np.ndarray:
    """Indices begin .. begin + size - 1 reflected into [0, extent) without repeating the edge
    voxel, the way numpy's ``reflect`` padding does (for pads of any width)."""
    index = np.arange(begin, begin + size)
    if extent == 1:
        return np.zeros_like(index)
    period = 2 * (extent - 1)
    index = np.mod(index, period)
    return np.where(index < extent, index, period - index)


@dataclass(frozen=True)
class TaskLayout:
    """One daisy task of the run: its stage, and its blocks in nm (the ROI the blocks tile,
    one block's read and write ROIs)."""

    task_id: str
    stage: str
    block_function: str
    """``module:function`` of the stage's block function, imported by the worker."""
    total_roi: Roi
    read_roi: Roi
    write_roi: Roi

    def to_json(self) -> dict:
        return {
            "task_id": self.task_id,
            "stage": self.stage,
            "block_function": self.block_function,
            "total_roi": _roi_json(self.total_roi),
            "read_roi": _roi_json(self.read_roi),
            "write_roi": _roi_json(self.write_roi),
        }

    @classmethod
    def from_json(cls, data: dict) -> TaskLayout:
        return cls(
            data["task_id"], data["stage"], data["block_function"],
            _roi(data["total_roi"]), _roi(data["read_roi"]), _roi(data["write_roi"]),
        )


@dataclass(frozen=True)
class RunPlan:
    """Everything a worker needs: the validated config, the volume, the stored arrays by role
    (``raw``, ``affinities``, ``fragments``, a ``segmentation/<threshold>`` per threshold, ...)
    and the layout of every task."""

    config: RunConfig
    volume_roi: Roi
    voxel_size: Coordinate
    block_size: Coordinate
    context: Coordinate
    arrays: dict[str, StoredArray]
    affinity_offsets: list[list[int]]
    nearest_affinity_channels: tuple[int, ...]
    predict_block_size: Coordinate | None = None
    predict_context: Coordinate | None = None
    tasks: dict[str, TaskLayout] = field(default_factory=dict)

    @property
    def voxels_per_block(self) -> int:
        """Fragment ids are ``block id * voxels_per_block + local id`` (local ids from 1): unique
        volume-wide without coordination, never 0, and the owning block reads back from the id."""
        return int(np.prod(self.block_size / self.voxel_size))

    def first_fragment_id(self, block_id: int) -> int:
        return block_id * self.voxels_per_block

    def owner_block(self, fragment_ids: np.ndarray) -> np.ndarray:
        return (fragment_ids.astype(np.uint64) - 1) // np.uint64(self.voxels_per_block)

    def task_of_stage(self, stage: str) -> TaskLayout:
        return next(task for task in self.tasks.values() if task.stage == stage)

    @property
    def work_dir(self) -> Path:
        return self.config.work_dir

    def to_json(self) -> dict:
        def coordinate(value: Coordinate | None) -> list[int] | None:
            return None if value is None else list(value)

        return {
            "config": self.config.model_dump(mode="json"),
            "volume_roi": _roi_json(self.volume_roi),
            "voxel_size": list(self.voxel_size),
            "block_size": list(self.block_size),
            "context": list(self.context),
            "arrays": {role: array.to_json() for role, array in self.arrays.items()},
            "affinity_offsets": self.affinity_offsets,
            "nearest_affinity_channels": list(self.nearest_affinity_channels),
            "predict_block_size": coordinate(self.predict_block_size),
            "predict_context": coordinate(self.predict_context),
            "tasks": {task_id: task.to_json() for task_id, task in self.tasks.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> RunPlan:
        def coordinate(value: list[int] | None) -> Coordinate | None:
            return None if value is None else Coordinate(value)

        return cls(
            config=RunConfig.model_validate(data["config"]),
            volume_roi=_roi(data["volume_roi"]),
            voxel_size=Coordinate(data["voxel_size"]),
            block_size=Coordinate(data["block_size"]),
            context=Coordinate(data["context"]),
            arrays={role: StoredArray.from_json(array) for role, array in data["arrays"].items()},
            affinity_offsets=data["affinity_offsets"],
            nearest_affinity_channels=tuple(data["nearest_affinity_channels"]),
            predict_block_size=coordinate(data["predict_block_size"]),
            predict_context=coordinate(data["predict_context"]),
            tasks={task_id: TaskLayout.from_json(task) for task_id, task in data["tasks"].items()},
        )

    def save(self) -> Path:
        """Written to a temporary file and renamed, so no worker ever reads half a plan."""
        path = plan_path(self.work_dir)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(self.to_json(), indent=1))
        partial.replace(path)
        return path


def plan_path(work_dir: Path) -> Path:
    return Path(work_dir) / PLAN_FILE


@functools.cache
def load_plan(path: str) -> RunPlan:
    """Once per worker process."""
    return RunPlan.from_json(json.loads(Path(path).read_text()))


AXES = "zyx"


def claims_role(axis: int) -> str:
    return f"fragment_claims_{AXES[axis]}"


def claims_path(config: RunConfig, axis: int) -> str:
    """Where a fragments block records, for the voxels just beyond its upper face along
    ``axis``, which of its fragments its watershed extended into them (0: none)."""
    return f"{config.datasets.fragments}_claims_{AXES[axis]}"


def segmentation_role(threshold: float) -> str:
    return f"segmentation/{threshold:.4f}"


def segmentation_path(config: RunConfig, threshold: float) -> str:
    return f"{config.datasets.segmentation}/{config.segment.scoring_function}/threshold_{threshold:.4f}"


def lookup_dir(config: RunConfig) -> Path:
    return config.work_dir / "lookup" / config.segment.scoring_function


def fragment_ids_path(config: RunConfig) -> Path:
    return lookup_dir(config) / "fragment_ids.npy"


def lookup_path(config: RunConfig, threshold: float) -> Path:
    return lookup_dir(config) / f"threshold_{threshold:.4f}.npy"


@dataclass(frozen=True)
class WorkerSetup:
    """What a block function is set up with, once per worker process: the plan, its task, the
    RAG (opened once), and the worker's index among the task's workers (for picking a GPU)."""

    plan: RunPlan
    task: TaskLayout
    rag: object
    index: int = 0
