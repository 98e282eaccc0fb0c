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
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from funlib.geometry import Coordinate, Roi

from neurosam.config import RunConfig
from neurosam.io.volumes import AXES, open_storage

if TYPE_CHECKING:
    from neurosam.rag import RagStore

PLAN_FILE = "plan.json"


_storage = functools.cache(open_storage)
"""Workers open each dataset once per process: opening reads metadata from disk."""


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
        storage = _storage(self.path)
        data = np.full((*self.channels, *(roi.shape / self.voxel_size)), fill_value, dtype=storage.dtype)
        shared = self.roi.intersect(roi)
        if not shared.empty:
            data[self._slices(shared, roi.offset)] = storage[self._slices(shared, self.roi.offset)]
        return data

    def read_mirrored(self, roi: Roi) -> np.ndarray:
        """The voxels of ``roi``, mirrored at the array's borders where ``roi`` leaves it: the
        same values ``numpy.pad(whole_array, mode="reflect")`` gives, so a block predicted near
        the border sees what a prediction of the whole volume sees."""
        storage = _storage(self.path)
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
        _storage(self.path, mode="r+")[self._slices(roi, self.roi.offset)] = data

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
    level: int = 0
    """Which level of a stage that runs as several tasks (``Stage.steps``)."""

    def to_json(self) -> dict:
        return {
            "task_id": self.task_id,
            "stage": self.stage,
            "block_function": self.block_function,
            "total_roi": _roi_json(self.total_roi),
            "read_roi": _roi_json(self.read_roi),
            "write_roi": _roi_json(self.write_roi),
            "level": self.level,
        }

    @classmethod
    def from_json(cls, data: dict) -> TaskLayout:
        return cls(
            data["task_id"], data["stage"], data["block_function"],
            _roi(data["total_roi"]), _roi(data["read_roi"]), _roi(data["write_roi"]), data["level"],
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
    arrays: dict[str, StoredArray]
    affinity_offsets: list[list[int]]
    nearest_affinity_channels: tuple[int, ...]
    tasks: dict[str, TaskLayout] = field(default_factory=dict)
    """By task id, in pipeline order."""

    def task_of_stage(self, stage: str) -> TaskLayout:
        return next(task for task in self.tasks.values() if task.stage == stage)

    def tasks_of_stage(self, stage: str) -> list[TaskLayout]:
        """In order: a stage may run as several tasks (``Stage.steps``)."""
        return [task for task in self.tasks.values() if task.stage == stage]

    @property
    def work_dir(self) -> Path:
        return self.config.work_dir

    def to_json(self) -> dict:
        return {
            "config": self.config.model_dump(mode="json"),
            "volume_roi": _roi_json(self.volume_roi),
            "voxel_size": list(self.voxel_size),
            "block_size": list(self.block_size),
            "arrays": {role: array.to_json() for role, array in self.arrays.items()},
            "affinity_offsets": self.affinity_offsets,
            "nearest_affinity_channels": list(self.nearest_affinity_channels),
            "tasks": {task_id: task.to_json() for task_id, task in self.tasks.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> RunPlan:
        return cls(
            config=RunConfig.model_validate(data["config"]),
            volume_roi=_roi(data["volume_roi"]),
            voxel_size=Coordinate(data["voxel_size"]),
            block_size=Coordinate(data["block_size"]),
            arrays={role: StoredArray.from_json(array) for role, array in data["arrays"].items()},
            affinity_offsets=data["affinity_offsets"],
            nearest_affinity_channels=tuple(data["nearest_affinity_channels"]),
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


def logs_dir(work_dir: Path) -> Path:
    return Path(work_dir) / "logs"


def task_logs_dir(work_dir: Path, task_id: str) -> Path:
    """daisy's worker logs of the task, and its workers' records of failed blocks."""
    return logs_dir(work_dir) / task_id


FAILED_BLOCKS = "failed_blocks-*.jsonl"


def failed_blocks_file(work_dir: Path, task_id: str) -> Path:
    """Where a worker process records the blocks it failed, one JSON line each."""
    return task_logs_dir(work_dir, task_id) / f"failed_blocks-{os.getpid()}.jsonl"


def scheduler_log_path(work_dir: Path) -> Path:
    return logs_dir(work_dir) / "scheduler.log"


def progress_log_path(work_dir: Path) -> Path:
    return logs_dir(work_dir) / "progress.log"


def slurm_logs_dir(work_dir: Path) -> Path:
    return logs_dir(work_dir) / "slurm"


def submitted_jobs_file(work_dir: Path) -> Path:
    return Path(work_dir) / "slurm_jobs.txt"


def slurm_pending_file(work_dir: Path) -> Path:
    """Written by the SLURM launcher whose job stayed pending too long: every launcher after it
    fails at once with its message, so that the run ends."""
    return Path(work_dir) / "slurm_pending.txt"


def predict_timings_dir(work_dir: Path) -> Path:
    return logs_dir(work_dir) / "predict_timings"


def lock_path(work_dir: Path) -> Path:
    """Held by the run that runs in the work dir, and naming it."""
    return Path(work_dir) / "run.lock"


def configs_path(work_dir: Path) -> Path:
    """The configs run in the work dir, and what each writes."""
    return Path(work_dir) / "configs.json"


def summary_path(work_dir: Path) -> Path:
    return Path(work_dir) / "summary.json"


def evaluation_path(work_dir: Path) -> Path:
    return Path(work_dir) / "evaluation.json"


def evaluation_pictures(work_dir: Path) -> tuple[Path, Path]:
    """The best threshold's segmentation over a section of the raw, and scores by threshold."""
    return Path(work_dir) / "segmentation.png", Path(work_dir) / "evaluation.png"


def view_picture_path(work_dir: Path, threshold: float) -> Path:
    """Where ``neurosam view --png`` draws a section, unless told otherwise."""
    return Path(work_dir) / f"view_{threshold:.4f}.png"


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


def hierarchy_dir(config: RunConfig) -> Path:
    return config.work_dir / "hierarchy" / config.segment.scoring_function


def super_block_path(config: RunConfig, level: int, position: tuple[int, ...]) -> Path:
    """What a super-block of the global agglomeration leaves its parent and its way down
    (``neurosam.graph.hierarchy.SuperBlock``)."""
    return hierarchy_dir(config) / f"level_{level}" / f"{'_'.join(map(str, position))}.npz"


def segment_table_path(config: RunConfig, level: int, position: tuple[int, ...]) -> Path:
    """The final segment, per threshold, of each of a super-block's inputs; at level 0 its
    fragments, which is all relabel reads."""
    return hierarchy_dir(config) / f"level_{level}" / f"{'_'.join(map(str, position))}.table.npz"


def neurons_dir(config: RunConfig, threshold: float) -> Path:
    """The joined meshes (``mesh/``) and skeletons (``skeletons/``) of the segmentation at
    ``threshold``, one file per segment in neuroglancer's precomputed format."""
    return config.work_dir / "neurons" / config.segment.scoring_function / f"threshold_{threshold:.4f}"


def ground_truth_skeletons_dir(config: RunConfig) -> Path:
    """The ground truth's skeletons evaluate scores ERL on, in neuroglancer's precomputed format:
    the user's (``datasets.ground_truth_skeletons``), else those the ground_truth_skeletons stage
    keeps in the work dir."""
    given = config.datasets.ground_truth_skeletons
    return Path(given) if given is not None else config.work_dir / "ground_truth_skeletons"


def pieces_dir(work_dir: Path, task_id: str) -> Path:
    """A meshes or skeletons task's pieces, one file per block and group of segments, read by
    its join: under the task id, so pieces of another segmentation are never joined."""
    return Path(work_dir) / "pieces" / task_id


@dataclass(frozen=True)
class WorkerSetup:
    """What a block function is set up with, once per worker process: the plan, its task, the
    RAG (opened once), and the worker's index among the task's workers (for picking a GPU)."""

    plan: RunPlan
    task: TaskLayout
    rag: RagStore
    index: int = 0

    @property
    def settings(self) -> Any:
        """The stage's own config section (named after the stage), None for a stage without one."""
        return getattr(self.plan.config, self.task.stage, None)
