"""Training of the affinity networks (FGNet and the FGE / U-Net baselines) from one YAML config.

A run lives in its output directory: checkpoints (last and best by validation VOI), a CSV of
the loss per step, a CSV of validation scores, and a plot of both. Running the same config
again resumes from the last checkpoint and continues exactly where the run stopped: every
batch is drawn from a generator seeded by (seed, step), and the checkpoint holds the
optimizer, the AMP scaler and torch's RNG states.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import waterz
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from neurosam.affinities import NEAREST_OFFSETS, nearest_neighbour_channels
from neurosam.config import HIST_QUANT_50, ConfigError, Vector3, load_file_config
from neurosam.graph.metrics import evaluate
from neurosam.io.volumes import open_dataset
from neurosam.model.build import build_model, load_model, save_checkpoint
from neurosam.model.config import ModelConfig
from neurosam.model.inference import predict_volume
from neurosam.quiet import quiet_stdout
from neurosam.training.augment import AugmentConfig
from neurosam.training.data import DataConfig, PatchSampler, TrainingBatches, load_range
from neurosam.training.losses import HEADS, LossConfig, affinity_loss, channel_weights
from neurosam.training.pretraining import load_pretrained

logger = logging.getLogger(__name__)

TRAINING_LOG = "training_log.csv"
VALIDATION_LOG = "validation_log.csv"
CURVES_PLOT = "training_curves.png"
SCORE_KEYS = ("voi_split", "voi_merge", "voi", "adapted_rand_error")
SLICE_ENCODERS = ("backbone.", "auto_prompt.backbone.")


class ValidationConfig(BaseModel):
    """How the held-out crop is predicted and segmented.

    The crop is predicted in tiles of ``tile_shape`` (default: the training patch), because
    FGNet resizes every slice to SAM2's image size: tiles of another size would show the
    encoder another scale than training did. Each tile's outer ``tile_context`` is discarded.
    """

    model_config = ConfigDict(extra="forbid")

    every: int = Field(100, ge=1)
    thresholds: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=lambda: [round(0.1 * i, 1) for i in range(1, 10)], min_length=1
    )
    scoring_function: str = HIST_QUANT_50
    tile_shape: Vector3 | None = None
    tile_context: Vector3 = (2, 8, 8)
    tile_batch: int = Field(8, ge=1)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelConfig
    pretrained: list[Path] = []
    """Checkpoints of ``neurosam pretrain`` (the FGE with its decoder trunk, SAM2's encoder)
    whose weights a fresh run starts from."""
    data: DataConfig
    output_dir: Path
    patch_shape: Vector3
    batch_size: int = Field(1, ge=1)
    iterations: int = Field(ge=1)
    lr: float = Field(1e-4, gt=0.0)
    backbone_lr_scale: float = Field(0.1, gt=0.0, le=1.0)
    """The slice encoder (SAM2's Hiera or the student), where it trains, learns at this fraction
    of ``lr``: its features come from pretraining or distillation, and the rate that suits the
    freshly initialised rest would wash them out."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """cosine: linear warm-up over ``warmup_iterations``, then a cosine decay to
    ``min_lr_fraction`` of ``lr`` at the last iteration."""
    warmup_iterations: int = Field(0, ge=0)
    min_lr_fraction: float = Field(0.02, ge=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    loss: LossConfig = Field(default_factory=LossConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    checkpoint_every: int = Field(100, ge=1)
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    """Mixed precision (float16 autocast with a gradient scaler); used on CUDA only."""
    num_workers: int = Field(0, ge=0)
    """Processes preparing batches; 0 prepares them in the training process."""

    @model_validator(mode="after")
    def _nearest_offsets_for_validation(self) -> "TrainConfig":
        missing = [offset for offset in NEAREST_OFFSETS if offset not in self.model.offsets]
        if missing:
            raise ValueError(f"model.offsets lacks {missing}: validation segments with the nearest-neighbour affinities")
        return self


def parameter_groups(model: torch.nn.Module, config: TrainConfig) -> tuple[list[dict], list[float]]:
    """The optimizer's parameter groups, and each group's fraction of the scheduled rate: the
    rest of the network at 1, the training slice encoders (SAM2's or the student, and the
    auto-prompt's general student) at ``backbone_lr_scale``."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    backbone = [p for name, p in trainable if name.startswith(SLICE_ENCODERS)]
    rest = [p for name, p in trainable if not name.startswith(SLICE_ENCODERS)]
    if not backbone:
        return [{"params": rest}], [1.0]
    return [{"params": rest}, {"params": backbone}], [1.0, config.backbone_lr_scale]


def learning_rate(config: TrainConfig, step: int) -> float:
    """The rate of a step, from the step alone: a resumed run continues the schedule exactly."""
    if config.lr_schedule == "constant":
        return config.lr
    if step <= config.warmup_iterations:
        return config.lr * step / config.warmup_iterations
    progress = (step - config.warmup_iterations) / max(1, config.iterations - config.warmup_iterations)
    return config.lr * (config.min_lr_fraction + (1.0 - config.min_lr_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def load_train_config(path: str | Path) -> TrainConfig:
    return load_file_config(path, TrainConfig, ["output_dir", "pretrained", "data.raw", "data.labels", "model.sam2.checkpoint"])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_shape(shape, multiple, what: str) -> None:
    if any(size % factor for size, factor in zip(shape, multiple)):
        raise ConfigError(f"{what} {tuple(shape)} must be divisible by the model's input multiple {tuple(multiple)}")


def check_slice_scale(model: torch.nn.Module, patch_shape, tile_shape) -> list[float] | None:
    """The scale (px per voxel, y and x) at which the slice encoder sees training patches, which
    the checkpoint records so that predict can enforce it; validation tiles must show it too.
    None for networks without a slice encoder."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return None
    try:
        scale, validation_scale = (backbone.pixels_per_voxel(*shape[1:]) for shape in (patch_shape, tile_shape))
    except ValueError as error:
        raise ConfigError(f"model.sam2.pixels_per_voxel: {error}") from None
    if validation_scale != scale:
        raise ConfigError(
            f"validation.tile_shape {tuple(tile_shape)} shows the slice encoder {validation_scale} px per voxel, "
            f"patch_shape {tuple(patch_shape)} {scale}: set model.sam2.pixels_per_voxel, or tiles of the patch's in-plane size"
        )
    return scale


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batch: dict[str, torch.Tensor],
    loss_config: LossConfig,
    offsets: list[list[int]],
    device: torch.device,
    amp: bool,
) -> dict[str, float]:
    """One optimizer step; the loss itself is computed in float32 even under autocast."""
    raw, target, mask = (batch[key].to(device, non_blocking=True) for key in ("raw", "affinities", "mask"))
    with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        outputs = model(raw)
    loss, parts = affinity_loss(outputs, target, mask, loss_config, channel_weights(offsets, loss_config.long_range_weight))
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return {"loss": loss.item(), **{head: value.item() for head, value in parts.items()}}


def segment_and_score(
    affinities: np.ndarray,
    offsets: list[list[int]],
    ground_truth: np.ndarray,
    thresholds: list[float],
    scoring_function: str = HIST_QUANT_50,
) -> dict[float, dict[str, float]]:
    """Scores per threshold of waterz segmentations of the nearest-neighbour affinities."""
    nearest = np.ascontiguousarray(affinities[nearest_neighbour_channels(offsets)], dtype=np.float32)
    scores = {}
    with quiet_stdout():
        thresholds = sorted(thresholds)
        segmentations = waterz.agglomerate(nearest, thresholds, scoring_function=scoring_function)
        for threshold, segmentation in zip(thresholds, segmentations):
            scores[threshold] = evaluate(segmentation, ground_truth)
    return scores


def best_threshold(scores: dict[float, dict[str, float]]) -> dict[str, float]:
    threshold = min(scores, key=lambda t: scores[t]["voi"])
    return {"threshold": threshold, **scores[threshold]}


class CsvLog:
    """A CSV that a resumed run continues: rows after the resumed step (written before a crash
    that the last checkpoint does not cover) are dropped."""

    def __init__(self, path: Path, fields: list[str], resume_step: int):
        self.path = path
        self.fields = fields
        rows = []
        if path.exists() and resume_step > 0:
            with open(path, newline="") as file:
                rows = [row for row in csv.DictReader(file) if int(row["step"]) <= resume_step]
        with open(path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: dict) -> None:
        with open(self.path, "a", newline="") as file:
            csv.DictWriter(file, fieldnames=self.fields).writerow(row)

    def read(self) -> dict[str, np.ndarray]:
        with open(self.path, newline="") as file:
            rows = list(csv.DictReader(file))
        return {field: np.array([float(row[field]) if row[field] else np.nan for row in rows]) for field in self.fields}


def plot_curves(training: dict[str, np.ndarray], validation: dict[str, np.ndarray], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5))
    loss_axis, score_axis = figure.subplots(1, 2)
    for key in ("loss", *HEADS):
        if len(training["step"]) and not np.isnan(training[key]).all():
            loss_axis.plot(training["step"], training[key], label=key, linewidth=0.8)
    loss_axis.set_yscale("log")
    loss_axis.set_xlabel("step")
    loss_axis.set_title("training loss")
    loss_axis.legend()
    for key in SCORE_KEYS:
        score_axis.plot(validation["step"], validation[key], marker="o", label=key)
    score_axis.set_xlabel("step")
    score_axis.set_title("validation (best threshold per step)")
    score_axis.legend()
    figure.tight_layout()
    figure.savefig(path)


def rng_states() -> dict:
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])


def train(config: TrainConfig) -> dict:
    """Train (or resume) the run of ``config``; returns where its results are and its best scores."""
    device = resolve_device(config.device)
    amp = config.amp and device.type == "cuda"
    checkpoints = config.output_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    last_path, best_path = checkpoints / "last.pt", checkpoints / "best.pt"
    (config.output_dir / "train_config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

    torch.manual_seed(config.seed)
    if last_path.exists():
        model, saved_model_config, state = load_model(last_path, map_location=device)
        if saved_model_config != config.model:
            raise ConfigError(
                f"{last_path} holds a run of another model configuration; give this config a new output_dir"
            )
        logger.info("resuming from %s at step %d", last_path, state["step"])
    else:
        model, state = build_model(config.model), None
        for path in config.pretrained:
            logger.info("starting from the pretrained %s of %s", load_pretrained(model, path), path)
    model.to(device)
    check_shape(config.patch_shape, model.input_multiple, "patch_shape")
    tile_shape = config.validation.tile_shape or config.patch_shape
    check_shape(tile_shape, model.input_multiple, "validation.tile_shape")
    slice_scale = check_slice_scale(model, config.patch_shape, tile_shape)

    groups, lr_scales = parameter_groups(model, config)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    start_step, best = 0, None
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        restore_rng_states(state["rng"])
        start_step, best = state["step"], state["best"]

    with open_dataset(config.data.raw) as (_, voxel_size, _):
        voxel_size = [int(v) for v in voxel_size]
    train_raw, train_labels = load_range(config.data, config.data.train_z)
    validation_raw, validation_labels = load_range(config.data, config.data.validation_z)
    sampler = PatchSampler(
        train_raw, train_labels, config.patch_shape, config.model.offsets, config.augment, config.data.background
    )
    batches = torch.utils.data.DataLoader(
        TrainingBatches(sampler, config.batch_size, config.seed, config.iterations),
        batch_size=None,
        sampler=range(start_step, config.iterations),
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed),
    )
    training_log = CsvLog(config.output_dir / TRAINING_LOG, ["step", "loss", *HEADS, "lr", "seconds"], start_step)
    validation_log = CsvLog(config.output_dir / VALIDATION_LOG, ["step", "threshold", *SCORE_KEYS], start_step)

    def checkpoint_state(step: int) -> dict:
        return {
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_states(),
            "step": step,
            "best": best,
            "voxel_size": voxel_size,
            "train_config": config.model_dump(mode="json"),
            **({} if slice_scale is None else {"slice_scale": slice_scale}),
        }

    model.train()
    losses = {}
    started = time.monotonic()
    for step, batch in zip(range(start_step + 1, config.iterations + 1), batches):
        for group, scale in zip(optimizer.param_groups, lr_scales):
            group["lr"] = learning_rate(config, step) * scale
        losses = train_step(model, optimizer, scaler, batch, config.loss, config.model.offsets, device, amp)
        training_log.append({"step": step, **losses, "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.monotonic() - started, 3)})
        if step % config.validation.every == 0 or step == config.iterations:
            affinities = predict_volume(
                model, validation_raw, tile_shape, config.validation.tile_context, device,
                torch.float16 if amp else None, config.validation.tile_batch,
            )
            scores = best_threshold(
                segment_and_score(
                    affinities, config.model.offsets, validation_labels,
                    config.validation.thresholds, config.validation.scoring_function,
                )
            )
            validation_log.append({"step": step, **scores})
            logger.info("step %d: loss %.4f, validation %s", step, losses["loss"], scores)
            if best is None or scores["voi"] < best["voi"]:
                best = {"step": step, **scores}
                save_checkpoint(best_path, model, config.model, extra=checkpoint_state(step))
        if step % config.checkpoint_every == 0 or step == config.iterations:
            save_checkpoint(last_path, model, config.model, extra=checkpoint_state(step))

    plot_curves(training_log.read(), validation_log.read(), config.output_dir / CURVES_PLOT)
    return {
        "output_dir": str(config.output_dir),
        "steps": config.iterations,
        "resumed_from_step": start_step,
        "last_loss": losses.get("loss"),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "best": best,
        "best_checkpoint": str(best_path),
        "last_checkpoint": str(last_path),
        "seconds": round(time.monotonic() - started, 1),
    }


def train_from_config(config_path: str | Path) -> dict:
    """The ``neurosam train CONFIG`` entry point."""
    return train(load_train_config(config_path))
