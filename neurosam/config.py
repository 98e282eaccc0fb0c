"""One run, as data: the YAML file a user writes is validated here, up front, and the very same
file is handed to every worker.

Unknown keys are errors (a typo must not silently fall back to a default). Lengths are in nm,
in z, y, x order.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError, field_validator, model_validator

from neurosam.model.tiles import tile_core

Vector3 = tuple[int, int, int]
PositiveVector3 = tuple[PositiveInt, PositiveInt, PositiveInt]
HIST_QUANT_50 = "OneMinus<HistogramQuantileAffinity<RegionGraphType, 50, ScoreValue, 256>>"
HIST_QUANT_75 = "OneMinus<HistogramQuantileAffinity<RegionGraphType, 75, ScoreValue, 256>>"


class ConfigError(ValueError):
    """A config that cannot run: the message names the key or file at fault."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoiSpec(StrictModel):
    offset: Vector3
    shape: PositiveVector3


class Datasets(StrictModel):
    """Where each array of the run lives, as ``container.zarr/dataset``. With a ``predict``
    section the affinities are written from the raw; without one they are an input."""

    raw: str | None = None
    affinities: str
    fragments: str
    segmentation: str
    ground_truth: str | None = None
    ground_truth_skeletons: str | None = None
    """Skeletons of the ground truth's neurons for ERL: a directory of neuroglancer precomputed
    skeletons (``info`` and one file per neuron id, vertices in nm, x y z; CloudVolume, igneous
    and the skeletons stage write them). Default: made from the ground truth by the
    ground_truth_skeletons stage."""


class BlockSpec(StrictModel):
    block_size: PositiveVector3
    context: tuple[NonNegativeInt, NonNegativeInt, NonNegativeInt] | None = None
    """nm the fragments watershed reads around each block, so that a basin cut by a block face
    is known as one. Default: 8 voxels (see ``neurosam.stages.fragments``)."""


class SlurmConfig(StrictModel):
    partition: str | None = None
    cpus_per_worker: int = 1
    memory: str = "4G"
    time: str = "01:00:00"
    gpus_per_worker: int = 0
    extra_args: list[str] = Field(default_factory=list)
    max_pending: float = Field(3600.0, gt=0)
    """Seconds a job may wait in the queue before it starts: a queue that never runs the jobs ends
    the run with the usual short message instead of holding it for ever."""


class StageWorkers(StrictModel):
    """One stage's own worker count and SLURM resources; what is left out comes from ``workers``."""

    count: int | None = Field(None, ge=1)
    slurm: SlurmConfig | None = None


class WorkersConfig(StrictModel):
    launcher: Literal["local", "slurm"] = "local"
    count: int = Field(2, ge=1)
    max_retries: int = Field(2, ge=0)
    block_timeout: float = Field(3600.0, gt=0)
    """Seconds a block may take before its worker is killed and the block retried: a stuck block
    (a hung file system, a deadlock in C) ends as a failure instead of holding the run for ever."""
    max_restarts: int = Field(50, ge=0)
    """Worker processes a task may lose (crashes, kills, preemption) before it gives up: workers
    that die as they start would otherwise be replaced for ever."""
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    stages: dict[str, StageWorkers] = Field(default_factory=dict)
    """Per stage name, e.g. ``predict: {count: 4, slurm: {partition: gpu, gpus_per_worker: 1}}``."""

    def count_for(self, stage: str) -> int:
        own = self.stages.get(stage)
        return own.count if own is not None and own.count is not None else self.count

    def slurm_for(self, stage: str) -> SlurmConfig:
        own = self.stages.get(stage)
        return own.slurm if own is not None and own.slurm is not None else self.slurm


class RagConfig(StrictModel):
    url: str = "sqlite:///rag.db"


class PredictConfig(StrictModel):
    """The network run block-wise over the raw. Tiles are laid on one grid anchored at the
    volume's origin, so a block-wise prediction equals a prediction of the whole volume."""

    checkpoint: Path
    """A neurosam model checkpoint: it rebuilds the network from the file alone."""
    block_size: PositiveVector3 | None = None
    """nm; a multiple of the tile core. Default: ``blocks.block_size`` rounded up to one."""
    tile_shape: PositiveVector3 = (48, 160, 160)
    """Voxels the network sees at once; a multiple of the model's input multiple."""
    tile_context: tuple[NonNegativeInt, NonNegativeInt, NonNegativeInt] = (8, 16, 16)
    """Voxels discarded on each side of a tile, where the network lacks context."""
    tile_batch: int = Field(2, ge=1)
    raw_range: tuple[float, float] = (0.0, 255.0)
    """Raw intensities mapped linearly to the network's [0, 1]; as in training: 0..255."""
    device: str = "auto"
    """auto: CUDA where there is a GPU (bf16), else the CPU (fp32)."""
    workers_per_gpu: int = Field(1, ge=1)
    threads_per_worker: int | None = Field(None, ge=1)
    """torch threads of a CPU worker; default: this machine's cores divided among the workers."""
    read_ahead: int = Field(2, ge=1)
    """Rows of tiles (along z) whose raw is read ahead of the network, in background threads."""
    test_time_augmentation: bool = False
    """Average the network over every flip and y-x swap of the tiles that the model's offsets
    and ``tile_context`` allow (8 or 16 passes: a flip along z needs z context as long as the
    longest z offset); costs that many times the network's time."""

    @model_validator(mode="after")
    def _tile_has_core(self) -> "PredictConfig":
        tile_core(self.tile_shape, self.tile_context)
        if self.raw_range[1] <= self.raw_range[0]:
            raise ValueError(f"raw_range {self.raw_range} must be (low, high) with low < high")
        return self

    @property
    def tile_core(self) -> tuple[int, int, int]:
        return tuple(int(c) for c in tile_core(self.tile_shape, self.tile_context))


class FragmentsConfig(StrictModel):
    method: Literal["watershed", "mutex_watershed"] = "watershed"
    """watershed: waterz's watershed of the nearest-neighbour affinities; mutex_watershed:
    mwatershed's over every offset the affinities have, long-range ones included."""
    epsilon_agglomerate: float = Field(0.0, ge=0.0, le=1.0)
    """watershed only: basins merged below this before any fragment is kept."""
    mutex_bias: tuple[float, float] = (0.5, 0.5)
    """mutex_watershed only: subtracted from the (nearest-neighbour, long-range) affinities; a
    pair above it attracts, below it repels."""
    min_size: int = Field(0, ge=0)


class SegmentConfig(StrictModel):
    """The global agglomeration: waterz scoring functions by name, the one to merge by, and the
    thresholds to cut the merges at."""

    scoring_function: str = "hist_quant_50"
    scoring_functions: dict[str, str] = Field(
        default_factory=lambda: {
            "hist_quant_50": HIST_QUANT_50,
            "hist_quant_75": HIST_QUANT_75,
        }
    )
    thresholds: list[float] = Field(default_factory=lambda: [0.3, 0.5, 0.7])
    super_block_factor: int = Field(2, ge=2)
    """Blocks per axis that a level-0 super-block of the global agglomeration groups, and
    super-blocks per axis that each level above groups: a worker holds one super-block's graph."""

    @field_validator("scoring_functions")
    @classmethod
    def _names(cls, scoring_functions: dict[str, str]) -> dict[str, str]:
        if not scoring_functions:
            raise ValueError("at least one scoring function is needed")
        from neurosam.graph.scoring import Program, ScoringFunctionError

        for name, function in scoring_functions.items():
            if not name.isidentifier():
                raise ValueError(f"scoring function name {name!r} must be an identifier")
            try:
                Program(function)
            except ScoringFunctionError as error:
                raise ValueError(f"{name}: not a waterz scoring function ({error})") from None
        return scoring_functions

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, thresholds: list[float]) -> list[float]:
        if not thresholds or any(not 0.0 <= t <= 1.0 for t in thresholds):
            raise ValueError(f"thresholds must be a non-empty list in [0, 1], got {thresholds}")
        return sorted(set(thresholds))

    @model_validator(mode="after")
    def _scoring_function_is_defined(self) -> "SegmentConfig":
        if self.scoring_function not in self.scoring_functions:
            raise ValueError(
                f"scoring_function {self.scoring_function!r} is not one of scoring_functions {sorted(self.scoring_functions)}"
            )
        return self


class MeshesConfig(StrictModel):
    """Meshes of one segmentation, made block by block with zmesh and joined per segment. The
    section's presence turns the stage on."""

    threshold: float | None = None
    """The segmentation to mesh; default: ``evaluate.chosen_threshold``, else the middle threshold."""
    resolution: PositiveVector3 = (40, 40, 40)
    """nm: meshed on every k-th voxel, k along each axis the largest at most ``resolution`` /
    voxel size that divides the block (igneous meshes at a lower mip too: far cheaper, and a
    neuron's surface needs no 10 nm detail)."""
    reduction_factor: float = Field(10.0, ge=0.0)
    """zmesh's simplification: aim for this many times fewer triangles (0: none)."""
    max_error: float = Field(40.0, gt=0.0)
    """nm a simplified vertex may move; block faces are never moved, so pieces still join."""


class TeasarConfig(StrictModel):
    """kimimaro's skeletonisation parameters, and the clean-up of the joined skeletons."""

    scale: float = Field(1.5, gt=0.0)
    const: float = Field(300.0, ge=0.0)
    """TEASAR's invalidation ball: radius ``scale * distance to boundary + const`` (nm)."""
    dust_threshold: float = Field(1000.0, ge=0.0)
    """Joined skeletons' pieces shorter than this (nm of cable) are dropped."""
    tick_threshold: float = Field(1000.0, ge=0.0)
    """Joined skeletons' side branches shorter than this (nm) are dropped."""


class SkeletonsConfig(TeasarConfig):
    """Skeletons of one segmentation, made block by block with kimimaro and joined per segment.
    The section's presence turns the stage on."""

    threshold: float | None = None
    """The segmentation to skeletonise; default as for ``meshes``."""
    resolution: PositiveVector3 = (40, 40, 40)
    """nm: skeletonised on every k-th voxel, as for ``meshes``."""
    block_dust_threshold: int = Field(8, ge=0)
    """Samples: a segment's connected piece in one block with fewer is not skeletonised. It
    would give a few nm of cable, a tick or dust to the join's clean-up; most of a noisy
    segmentation's pieces are such, and TEASAR runs per piece (0: every piece)."""


class EvaluateConfig(StrictModel):
    ignore_background: bool = True
    chosen_threshold: float | None = None
    """The threshold chosen on a validation crop (a trained model records its own as
    ``best.threshold``): the report's figure is this threshold's scores. The crop's own best
    threshold is reported beside it, labelled as picked on the crop itself."""
    erl: bool = True
    """Score expected run length on skeletons of the ground truth (``datasets.ground_truth_skeletons``,
    else made by the ground_truth_skeletons stage)."""


class RunConfig(StrictModel):
    work_dir: Path
    datasets: Datasets
    roi: RoiSpec | None = None
    blocks: BlockSpec
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    rag: RagConfig = Field(default_factory=RagConfig)
    predict: PredictConfig | None = None
    fragments: FragmentsConfig = Field(default_factory=FragmentsConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    ground_truth_skeletons: TeasarConfig = Field(default_factory=TeasarConfig)
    """How the ground_truth_skeletons stage skeletonises the ground truth (at full resolution)."""
    meshes: MeshesConfig | None = None
    skeletons: SkeletonsConfig | None = None

    @model_validator(mode="after")
    def _chosen_threshold_is_segmented(self) -> "RunConfig":
        for key, chosen in (
            ("evaluate.chosen_threshold", self.evaluate.chosen_threshold),
            ("meshes.threshold", self.meshes and self.meshes.threshold),
            ("skeletons.threshold", self.skeletons and self.skeletons.threshold),
        ):
            if chosen is not None and chosen not in self.segment.thresholds:
                raise ValueError(f"{key} {chosen} is not one of segment.thresholds {self.segment.thresholds}")
        return self

    def neuron_threshold(self, section: MeshesConfig | SkeletonsConfig) -> float:
        """The segmentation meshes and skeletons are made of (see ``MeshesConfig.threshold``)."""
        if section.threshold is not None:
            return section.threshold
        if self.evaluate.chosen_threshold is not None:
            return self.evaluate.chosen_threshold
        return self.segment.thresholds[len(self.segment.thresholds) // 2]

    def fingerprint(self, *sections: str) -> str:
        """A short hash of the named sections: a task's done records live under it, so changing
        what a task depends on starts it afresh instead of silently reusing old blocks. Dataset
        paths count relative to the work dir, so a run moved with its data keeps its records."""
        values = {name: _jsonable(getattr(self, name)) for name in sections}
        if "datasets" in values:
            values["datasets"] = {
                role: None if path is None else os.path.relpath(path, self.work_dir)
                for role, path in values["datasets"].items()
            }
        if values.get("predict") is not None:
            values["predict"] = {**values["predict"], "checkpoint": _content_hash(self.predict.checkpoint)}
        payload = json.dumps(values, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:10]


def _content_hash(path: Path) -> str | None:
    """A model is known by its bytes, not its path: retraining into the same file is a new model."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _jsonable(value):
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


SQLITE_URL = "sqlite:///"
RUN_CONFIG_PATHS = ["work_dir", "datasets.*", "predict.checkpoint", "rag.url"]
"""Where a run config holds paths, which are relative to the config file."""


def _absolute(value, base: Path):
    """A path relative to ``base`` made absolute (in a list, each; of an SQLite URL, its file);
    other URLs and everything else unchanged."""
    if isinstance(value, list):
        return [_absolute(item, base) for item in value]
    if not isinstance(value, str):
        return value
    if value.startswith(SQLITE_URL):
        return SQLITE_URL + _absolute(value[len(SQLITE_URL) :], base)
    if "://" in value or Path(value).is_absolute():
        return value
    return str((base / value).resolve())


def _make_absolute(node, key: tuple[str, ...], base: Path) -> None:
    """In place, the values at ``key`` (``*``: every item of a list or mapping) made absolute."""
    head, rest = key[0], key[1:]
    if isinstance(node, dict):
        names = list(node) if head == "*" else [head] if head in node else []
    elif isinstance(node, list) and head == "*":
        names = range(len(node))
    else:
        return
    for name in names:
        if rest:
            _make_absolute(node[name], rest, base)
        else:
            node[name] = _absolute(node[name], base)


def _validated(path: Path, model: type[BaseModel], data: dict, relative_paths: list[str]):
    """``data`` from the file at ``path`` as ``model``, its paths at ``relative_paths`` (dotted
    keys) taken relative to the file, so that it runs from any directory."""
    for key in relative_paths:
        _make_absolute(data, tuple(key.split(".")), path.resolve().parent)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(path, error)) from None


def load_file_config(path: str | Path, model: type[BaseModel], relative_paths: list[str]):
    """A YAML config validated as ``model``, whose paths at ``relative_paths`` (dotted keys, ``*``
    for every item) are relative to the file."""
    path = Path(path)
    return _validated(path, model, load_yaml(path), relative_paths)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def format_validation_error(path: str | Path, error: ValidationError) -> str:
    """One line, however many problems: each as ``key.path: what is wrong``."""
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        problems.append(f"{where}: {message}")
    return f"{path}: invalid config: " + "; ".join(problems)


def _refuse_renamed_keys(data: dict, path: Path) -> None:
    """Configs written before the stages were renamed fail with the new names, not as unknown keys."""
    if "agglomerate" in data:
        raise ConfigError(
            f"{path}: the agglomerate section is gone: its scoring_functions are now segment.scoring_functions "
            "(the stage that computes contact statistics is now called contacts)"
        )
    segment = data.get("segment")
    if isinstance(segment, dict) and "edges_per_page" in segment:
        raise ConfigError(
            f"{path}: segment.edges_per_page is gone: the segment stage reads one super-block's edges at a time "
            "(segment.super_block_factor sets its size)"
        )
    evaluate = data.get("evaluate")
    if isinstance(evaluate, dict) and "ground_truth_skeletons" in evaluate:
        raise ConfigError(
            f"{path}: evaluate.ground_truth_skeletons is now the ground_truth_skeletons section (the stage that "
            "makes them); a directory of skeletons you have goes in datasets.ground_truth_skeletons"
        )
    workers = data.get("workers")
    if isinstance(workers, dict) and isinstance(workers.get("stages"), dict) and "agglomerate" in workers["stages"]:
        raise ConfigError(f"{path}: workers.stages.agglomerate: the stage is now called contacts (workers.stages.contacts)")


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    data = load_yaml(path)
    _refuse_renamed_keys(data, path)
    return _validated(path, RunConfig, data, RUN_CONFIG_PATHS)
