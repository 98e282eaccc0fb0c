"""Distilling SAM2's image encoder into the student: ``neurosam distill CONFIG``.

The student learns to give the teacher's FPN levels from the same slices (a mean squared error
per level, scaled by the teacher level's variance, so each level counts alike). Two stages:

1. generic: the general student on natural images (``generic_images: skimage``, the photographs
   that ship with scikit-image) or any folder of images, grey, in random crops at random scales;
2. em: an EM-specific encoder, starting from the general student, on EM slices, while the
   general student goes on with the generic images; after every step the two are pulled
   towards each other by a mutual EMA (each becomes ``m * itself + (1 - m) * the other``), so
   the EM encoder keeps what the generic images taught and the general one learns EM.

The EM-specific encoder is what ships: ``pretrained: [OUTPUT_DIR/student.pt]`` in a training
config whose model has ``backbone: student`` starts FGNet from it.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from neurosam.config import ConfigError, load_file_config, load_yaml
from neurosam.model.config import Sam2Config, StudentConfig
from neurosam.model.sam2_backbone import Sam2Backbone
from neurosam.model.student import StudentEncoder
from neurosam.training.pretraining import PRETRAINED_FORMAT, PretrainVolume, load_part, load_volumes, read_pretrained

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SKIMAGE = "skimage"
SKIMAGE_IMAGES = (
    "astronaut", "brick", "camera", "cat", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "page", "retina", "rocket", "text",
)
"""The natural images (photographs, micrographs, textures) that scikit-image ships, no download."""


class DistillConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teacher: Sam2Config = Field(default_factory=Sam2Config)
    """SAM2's encoder to distil: its variant, official checkpoint and the slice size both see."""
    teacher_pretrained: Path | None = None
    """A ``neurosam pretrain`` checkpoint of target hiera: the teacher's weights come from it."""
    student: StudentConfig = Field(default_factory=StudentConfig)
    generic_images: Literal["skimage"] | Path | None = None
    """Stage 1's images: ``skimage`` (scikit-image's natural images), a folder of images (png,
    jpg, tif), or None, which starts at the EM stage without the mutual EMA."""
    volumes: list[PretrainVolume] = Field(min_length=1)
    """EM volumes for stage 2 (slices of them)."""
    generic_iterations: int = Field(0, ge=0)
    em_iterations: int = Field(ge=1)
    batch_size: int = Field(8, ge=1)
    """Slices (or images) per step."""
    lr: float = Field(1e-3, gt=0.0)
    ema_momentum: float = Field(0.99, ge=0.0, le=1.0)
    output_dir: Path
    checkpoint_every: int = Field(100, ge=1)
    seed: int = 0
    device: str = "auto"


def mutual_ema(first: nn.Module, second: nn.Module, momentum: float) -> None:
    """Each parameter (and float buffer) of both becomes ``m * own + (1 - m) * other's``, both
    from the values before the update."""
    with torch.no_grad():
        for (_, a), (_, b) in zip(_floats(first), _floats(second)):
            a_before = a.clone()
            a.mul_(momentum).add_(b, alpha=1 - momentum)
            b.mul_(momentum).add_(a_before, alpha=1 - momentum)


def _floats(module: nn.Module):
    return [(name, tensor) for name, tensor in module.state_dict(keep_vars=True).items() if tensor.dtype.is_floating_point]


def distillation_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    return sum(((s - t) ** 2).mean() / t.var().clamp(min=1e-6) for s, t in zip(student, teacher)) / len(teacher)


def grey(image: np.ndarray) -> np.ndarray:
    """An image as float32 grey values in [0, 1]."""
    image = np.asarray(image, dtype=np.float32)
    image = image[..., :3].mean(axis=-1) if image.ndim == 3 else image
    return image / 255.0 if image.max() > 1.0 else image


def read_images(source: Path | str) -> list[np.ndarray]:
    if source == SKIMAGE:
        import skimage.data

        return [grey(getattr(skimage.data, name)()) for name in SKIMAGE_IMAGES]
    import matplotlib.image

    folder = Path(source)
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ConfigError(f"generic_images {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
    return [grey(matplotlib.image.imread(path)) for path in paths]


def generic_batch(images: list[np.ndarray], size: int, count: int, rng: np.random.Generator) -> torch.Tensor:
    """Random square crops, from half the slice size to the image's smaller side, resized to the
    slice size: the general student sees each image at scales from 2x up to the whole image."""
    crops = []
    for _ in range(count):
        image = images[rng.integers(len(images))]
        side = int(rng.integers(min(size // 2, min(image.shape)), min(image.shape) + 1))
        y, x = (int(rng.integers(0, extent - side + 1)) for extent in image.shape)
        crop = torch.from_numpy(np.ascontiguousarray(image[y : y + side, x : x + side]))[None, None]
        crops.append(torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False))
    return torch.cat(crops)


def em_batch(pieces: list[np.ndarray], size: int, count: int, rng: np.random.Generator) -> torch.Tensor:
    slices = []
    for _ in range(count):
        piece = pieces[rng.integers(len(pieces))]
        section = piece[0, rng.integers(piece.shape[1])]
        side = min(size, *section.shape)
        y, x = (int(rng.integers(0, extent - side + 1)) for extent in section.shape)
        crop = torch.from_numpy(np.ascontiguousarray(section[y : y + side, x : x + side]))[None, None]
        slices.append(torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False))
    return torch.cat(slices)


def distill(config: DistillConfig) -> dict:
    device = torch.device("cuda" if config.device == "auto" and torch.cuda.is_available() else "cpu" if config.device == "auto" else config.device)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    last_path = config.output_dir / "student.pt"
    torch.manual_seed(config.seed)
    teacher = Sam2Backbone(config.teacher.model_copy(update={"trainable": "frozen"}))
    if config.teacher_pretrained is not None:
        state = read_pretrained(config.teacher_pretrained)
        if state["target"] != "hiera":
            raise ConfigError(f"teacher_pretrained {config.teacher_pretrained} pretrains {state['target']}, not SAM2's Hiera")
        load_part(teacher.encoder, state, "backbone.encoder.", config.teacher_pretrained)
    teacher = teacher.to(device).eval()
    general, em = StudentEncoder(config.student).to(device), StudentEncoder(config.student).to(device)
    optimizers = {"general": torch.optim.AdamW(general.parameters(), lr=config.lr), "em": torch.optim.AdamW(em.parameters(), lr=config.lr)}
    step = 0
    if last_path.exists():
        state = torch.load(last_path, map_location=device, weights_only=True)
        general.load_state_dict(state["general"])
        em.load_state_dict({key.removeprefix("backbone.encoder."): value for key, value in state["state_dict"].items()})
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        step = state["step"]
    images = read_images(config.generic_images) if config.generic_images is not None else None
    pieces = load_volumes(config) if config.em_iterations else []
    size = config.teacher.image_size
    total = config.generic_iterations + config.em_iterations
    log_path = config.output_dir / "distill_log.csv"
    if not log_path.exists() or step == 0:
        log_path.write_text("step,stage,general_loss,em_loss,seconds\n")
    started, losses = time.monotonic(), {}

    def learn(student: nn.Module, optimizer, slices: torch.Tensor) -> float:
        with torch.no_grad():
            target = teacher.encode_slices(slices)
        loss = distillation_loss(student(teacher.resized(slices)), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    general.train()
    em.train()
    for step in range(step + 1, total + 1):
        rng = np.random.default_rng([config.seed, step])
        stage = "generic" if step <= config.generic_iterations else "em"
        losses = {}
        if images is not None:
            losses["general"] = learn(general, optimizers["general"], generic_batch(images, size, config.batch_size, rng).to(device))
        if stage == "em":
            if step == config.generic_iterations + 1 and images is not None:
                em.load_state_dict(general.state_dict())
            losses["em"] = learn(em, optimizers["em"], em_batch(pieces, size, config.batch_size, rng).to(device))
            if images is not None:
                mutual_ema(general, em, config.ema_momentum)
        with open(log_path, "a", newline="") as file:
            csv.writer(file).writerow([step, stage, losses.get("general", ""), losses.get("em", ""), round(time.monotonic() - started, 3)])
        if step % config.checkpoint_every == 0 or step == total:
            _save(last_path, config, general, em, optimizers, step)
    return {"checkpoint": str(last_path), "steps": total, "losses": losses, "student_parameters": sum(p.numel() for p in em.parameters())}


def _save(path: Path, config: DistillConfig, general: nn.Module, em: nn.Module, optimizers: dict, step: int) -> None:
    """In the pretraining checkpoint format, so ``pretrained`` in a training config takes it."""
    partial = path.with_name(path.name + ".partial")
    torch.save(
        {
            "format": PRETRAINED_FORMAT,
            "target": "student",
            "student_config": config.student.model_dump(mode="json"),
            "state_dict": {f"backbone.encoder.{key}": value for key, value in em.state_dict().items()},
            "general": general.state_dict(),
            "optimizers": {name: optimizer.state_dict() for name, optimizer in optimizers.items()},
            "step": step,
        },
        partial,
    )
    partial.replace(path)


def load_distill_config(path: str | Path) -> DistillConfig:
    relative = ["output_dir", "teacher_pretrained", "volumes.*.raw", "teacher.checkpoint"]
    if load_yaml(path).get("generic_images") != SKIMAGE:
        relative.append("generic_images")
    return load_file_config(path, DistillConfig, relative)


def distill_from_config(config_path: str | Path) -> dict:
    """The ``neurosam distill CONFIG`` entry point."""
    return distill(load_distill_config(config_path))
