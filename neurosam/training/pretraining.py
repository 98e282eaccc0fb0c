"""Masked image modelling on unlabelled EM: ``neurosam pretrain CONFIG``.

Patches of raw are masked (``neurosam.training.masking``), the hidden voxels set to 0, and a
network reconstructs them; the loss counts the masked voxels only. Two targets:

- ``fge``: the fine-grained 3D encoder with the U-Net expanding path (the decoder trunk of every
  architecture) and a 1x1 head, over 3D patches;
- ``hiera``: SAM2's image encoder, slice by slice, with a head on the sum of its FPN levels
  (each upsampled to the finest, stride 4, then pixel-shuffled back to the slice); slice patches
  (1, p, p) suit it. Every level must take part: the stride-4 level alone has no top-down path
  in SAM2's neck and would train only Hiera's first block. With
  ``model.sam2.checkpoint`` set, pretraining continues from the official weights.

A run lives in ``output_dir``: ``last.pt`` (resumed exactly when the same config runs again), a
CSV of the loss, and ``reconstruction.png`` (a section of input, mask and reconstruction).
``neurosam train`` starts from the checkpoint through its ``pretrained`` list.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from neurosam.config import ConfigError, PositiveVector3, load_file_config
from neurosam.io.volumes import open_dataset
from neurosam.model.checkpoint import read_checkpoint
from neurosam.model.config import ModelConfig
from neurosam.model.decoder import SkipDecoder
from neurosam.model.fge import FineGrainedEncoder
from neurosam.model.sam2_backbone import FEATURE_CHANNELS, Sam2Backbone
from neurosam.training.data import raw_to_float
from neurosam.training.masking import MaskConfig, make_mask

logger = logging.getLogger(__name__)

PRETRAINED_FORMAT = "neurosam-pretrained-1"
HIERA_HEAD_STRIDE = 4


class PretrainVolume(BaseModel):
    model_config = ConfigDict(extra="forbid")

    raw: str
    """``file.h5/dataset`` or ``container.zarr/dataset``: (Z, Y, X) or (C, Z, Y, X)."""
    exclude_z: list[tuple[int, int]] = []
    """Sections [start, stop) left out (a validation crop)."""


class PretrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: Literal["fge", "hiera"]
    model: ModelConfig = Field(default_factory=ModelConfig)
    """Where the FGE's shape and the SAM2 encoder's variant, checkpoint and image size come from."""
    volumes: list[PretrainVolume] = Field(min_length=1)
    mask: MaskConfig = Field(default_factory=MaskConfig)
    output_dir: Path
    patch_shape: PositiveVector3
    batch_size: int = Field(2, ge=1)
    iterations: int = Field(ge=1)
    lr: float = Field(1e-3, gt=0.0)
    checkpoint_every: int = Field(100, ge=1)
    seed: int = 0
    device: str = "auto"


def masked_reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked voxels only: what the network could see costs nothing."""
    weights = mask.to(prediction.dtype)
    return ((prediction - target) ** 2 * weights).sum() / weights.sum().clamp(min=1.0)


class VolumeReconstructor(nn.Module):
    """FGE, decoder trunk, and a head back to the raw's channels."""

    def __init__(self, config: ModelConfig, channels: int):
        super().__init__()
        self.encoder = FineGrainedEncoder(config.fge, in_channels=channels)
        self.decoder = SkipDecoder(config.fge)
        self.head = nn.Conv3d(config.fge.base_channels, channels, 1)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(raw)))


class SliceReconstructor(nn.Module):
    """SAM2's image encoder, trained whole, and a head on the sum of its FPN levels, so that the
    deep blocks, which reach only the coarse levels, learn from the reconstruction too."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.backbone = Sam2Backbone(config.sam2.model_copy(update={"trainable": "all"}))
        self.head = nn.Conv2d(FEATURE_CHANNELS, HIERA_HEAD_STRIDE**2, 1)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        batch, _, depth, height, width = raw.shape
        slices = raw.permute(0, 2, 1, 3, 4).reshape(batch * depth, 1, height, width)
        levels = self.backbone.encode_slices(slices)
        finest = sum(F.interpolate(level, size=levels[0].shape[2:], mode="bilinear", align_corners=False) for level in levels)
        reconstruction = F.interpolate(F.pixel_shuffle(self.head(finest), HIERA_HEAD_STRIDE), size=(height, width), mode="bilinear", align_corners=False)
        return reconstruction.reshape(batch, depth, 1, height, width).permute(0, 2, 1, 3, 4)


def build_reconstructor(config: PretrainConfig, channels: int) -> nn.Module:
    if config.target == "hiera":
        if channels != 1:
            raise ConfigError(f"target hiera reconstructs grey slices; the volumes have {channels} channels")
        return SliceReconstructor(config.model)
    return VolumeReconstructor(config.model, channels)


def load_volumes(config: PretrainConfig) -> list[np.ndarray]:
    """Each volume as float32 (C, Z, Y, X) in [0, 1], one array per run of kept sections."""
    pieces = []
    for volume in config.volumes:
        with open_dataset(volume.raw) as (dataset, _, _):
            raw = raw_to_float(np.asarray(dataset[:]))
        raw = raw[None] if raw.ndim == 3 else raw
        kept = np.ones(raw.shape[1], dtype=bool)
        for start, stop in volume.exclude_z:
            kept[start:stop] = False
        edges = np.flatnonzero(np.diff(np.concatenate([[0], kept.astype(np.int8), [0]])))
        pieces += [raw[:, start:stop] for start, stop in zip(edges[::2], edges[1::2])]
    channels = {piece.shape[0] for piece in pieces}
    if len(channels) > 1:
        raise ConfigError(f"the pretraining volumes have different channel counts: {sorted(channels)}")
    return pieces


def sample_batch(pieces: list[np.ndarray], config: PretrainConfig, step: int) -> dict[str, torch.Tensor]:
    """Patches and their masks, from a generator seeded by (seed, step): a resumed run draws the
    batches an uninterrupted one would."""
    rng = np.random.default_rng([config.seed, step])
    usable = [piece for piece in pieces if all(s >= p for s, p in zip(piece.shape[1:], config.patch_shape))]
    if not usable:
        raise ConfigError(f"no pretraining volume is as large as patch_shape {tuple(config.patch_shape)}")
    raws, masks = [], []
    for _ in range(config.batch_size):
        piece = usable[rng.integers(len(usable))]
        start = [rng.integers(0, s - p + 1) for s, p in zip(piece.shape[1:], config.patch_shape)]
        raw = piece[(slice(None), *(slice(a, a + p) for a, p in zip(start, config.patch_shape)))]
        raws.append(raw)
        masks.append(make_mask(raw, config.mask, rng))
    return {"raw": torch.from_numpy(np.stack(raws)), "mask": torch.from_numpy(np.stack(masks))}


def save_pretrained(path: Path, model: nn.Module, config: PretrainConfig, channels: int, extra: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    torch.save(
        {
            "format": PRETRAINED_FORMAT,
            "target": config.target,
            "channels": channels,
            "model_config": config.model.model_dump(mode="json"),
            "state_dict": model.state_dict(),
            **extra,
        },
        partial,
    )
    partial.replace(path)


def draw_reconstruction(raw: torch.Tensor, mask: torch.Tensor, reconstruction: torch.Tensor, path: Path) -> None:
    from matplotlib.figure import Figure

    """A section of the first patch: the input, the mask, and the input with the hidden patches
    as the network filled them in (it is not asked for the visible ones)."""
    middle = raw.shape[2] // 2
    hidden = mask[0, 0, middle]
    filled = torch.where(hidden, reconstruction[0, 0, middle].clamp(0, 1), raw[0, 0, middle])
    images = [raw[0, 0, middle], hidden.float(), filled]
    figure = Figure(figsize=(10, 3.6))
    for axis, image, title in zip(figure.subplots(1, 3), images, ("input", "mask (white: hidden)", "hidden patches reconstructed")):
        axis.imshow(image.detach().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        axis.set_title(title)
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path)


def pretrain(config: PretrainConfig) -> dict:
    device = torch.device("cuda" if config.device == "auto" and torch.cuda.is_available() else "cpu" if config.device == "auto" else config.device)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    last_path = config.output_dir / "last.pt"
    pieces = load_volumes(config)
    channels = pieces[0].shape[0]
    torch.manual_seed(config.seed)
    model = build_reconstructor(config, channels).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    start_step = 0
    if last_path.exists():
        state = torch.load(last_path, map_location=device, weights_only=True)
        if state["target"] != config.target or state["model_config"] != config.model.model_dump(mode="json"):
            raise ConfigError(f"{last_path} holds a pretraining run of another model; give this config a new output_dir")
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start_step = state["step"]
    log_path = config.output_dir / "pretrain_log.csv"
    rows = []
    if log_path.exists() and start_step:
        with open(log_path, newline="") as file:
            rows = [row for row in csv.DictReader(file) if int(row["step"]) <= start_step]
    with open(log_path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["step", "loss", "seconds"])
        writer.writeheader()
        writer.writerows(rows)

    model.train()
    started, loss = time.monotonic(), None
    for step in range(start_step + 1, config.iterations + 1):
        batch = sample_batch(pieces, config, step)
        raw, mask = batch["raw"].to(device), batch["mask"].to(device)
        reconstruction = model(raw * ~mask)
        loss = masked_reconstruction_loss(reconstruction, raw, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with open(log_path, "a", newline="") as file:
            csv.writer(file).writerow([step, f"{loss.item():.6f}", round(time.monotonic() - started, 3)])
        if step % config.checkpoint_every == 0 or step == config.iterations:
            save_pretrained(last_path, model, config, channels, {"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(), "step": step})
            draw_reconstruction(raw, mask, reconstruction, config.output_dir / "reconstruction.png")
            logger.info("pretraining step %d: masked reconstruction loss %.5f", step, loss.item())
    return {"output_dir": str(config.output_dir), "checkpoint": str(last_path), "steps": config.iterations, "last_loss": None if loss is None else loss.item()}


def load_pretrain_config(path: str | Path) -> PretrainConfig:
    return load_file_config(path, PretrainConfig, ["output_dir", "volumes.*.raw", "model.sam2.checkpoint"])


def pretrain_from_config(config_path: str | Path) -> dict:
    """The ``neurosam pretrain CONFIG`` entry point."""
    return pretrain(load_pretrain_config(config_path))


def read_pretrained(path: str | Path) -> dict:
    return read_checkpoint(path, "pretraining checkpoint", ConfigError, PRETRAINED_FORMAT)


def load_part(module: nn.Module, state: dict, prefix: str, path: str | Path) -> None:
    """The weights under ``prefix`` of a pretraining checkpoint into ``module``, exactly."""
    own = {key[len(prefix):]: value for key, value in state["state_dict"].items() if key.startswith(prefix)}
    try:
        module.load_state_dict(own, strict=True)
    except RuntimeError as error:
        raise ConfigError(f"{path} does not fit this model's {prefix.rstrip('.')}: {str(error).splitlines()[0]}") from None


def load_pretrained(model: nn.Module, path: str | Path) -> str:
    """Copy a pretraining checkpoint's encoder (and, for the FGE, decoder trunk) into a network
    about to train: the FGE, SAM2's Hiera, or the distilled student. Returns which; shapes must
    match exactly (a student does not fit where SAM2's encoder is, nor the reverse). With
    auto-prompting, distillation's general student becomes the prompting model."""
    state = read_pretrained(path)
    if state["target"] in ("hiera", "student"):
        backbone = getattr(model, "backbone", None)
        if backbone is None:
            raise ConfigError(f"{path} holds a slice encoder ({state['target']}), which this architecture does not have")
        load_part(backbone.encoder, state, "backbone.encoder.", path)
        auto_prompt = getattr(model, "auto_prompt", None)
        if auto_prompt is not None:
            if "general" not in state:
                raise ConfigError(f"{path} holds no general student, which auto_prompt needs: distil with generic_images")
            load_part(auto_prompt.backbone.encoder, {"state_dict": state["general"]}, "", path)
    else:
        decoder = model.decoder.refine if hasattr(model.decoder, "refine") else model.decoder
        load_part(model.encoder, state, "encoder.", path)
        load_part(decoder, state, "decoder.", path)
    return state["target"]
