"""The network: SAM2-guided affinity network (FGNet) and its baselines, built from a
ModelConfig, saved with that config so that a checkpoint file alone rebuilds the model.

Every model maps raw (B, 1, Z, Y, X) float32 in [0, 1], with Z, Y, X multiples of its
``input_multiple``, to a dict of affinity logits (B, len(offsets), Z, Y, X): "refined" always,
"coarse" too for FGNet.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from neurosam.io.volumes import open_dataset
from neurosam.model.checkpoint import read_checkpoint

from neurosam.model.config import ModelConfig
from neurosam.model.fge import FineGrainedEncoder
from neurosam.model.fgnet import FGNet
from neurosam.model.unet3d import MalaEncoder, UNet3d

CHECKPOINT_FORMAT = "neurosam-model/1"

__all__ = ["ModelConfig", "ModelCheckpointError", "build_model", "save_checkpoint", "load_model", "export_model"]

EXPORTED_KEYS = ("voxel_size", "step", "best", "slice_scale")
"""What a shipped checkpoint keeps of its training state: no optimizer, so it stays small."""
PROTOCOL_KEYS = ("train_z", "validation_z", "report_z")


class ModelCheckpointError(ValueError):
    """A file that is not a neurosam model checkpoint; names the file."""


def build_model(config: ModelConfig, *, load_sam2_weights: bool = True) -> nn.Module:
    """The configured network. ``load_sam2_weights=False`` skips reading the official SAM2
    checkpoint, for when the weights come from a neurosam checkpoint instead."""
    if config.architecture == "fgnet":
        return FGNet(config, load_sam2_weights=load_sam2_weights)
    if config.architecture == "fge":
        return UNet3d(FineGrainedEncoder(config.fge), config.fge, config.num_channels)
    return UNet3d(MalaEncoder(config.unet), config.unet, config.num_channels, config.unet.normalise)


def save_checkpoint(path: str | Path, model: nn.Module, model_config: ModelConfig, extra: dict | None = None) -> None:
    """Weights, the config that built them, and ``extra`` (training state: tensors, numbers,
    strings and containers of them, as the file is read back with ``weights_only``).

    Written to a temporary file and renamed, so an interrupted save never leaves a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "model_config": model_config.model_dump(mode="json"),
        "state_dict": model.state_dict(),
        "extra": extra or {},
    }
    partial = path.with_name(path.name + ".partial")
    torch.save(checkpoint, partial)
    os.replace(partial, path)


def load_model(path: str | Path, map_location: Any = "cpu") -> tuple[nn.Module, ModelConfig, dict]:
    """The model rebuilt from the config stored in the file, its weights, and ``extra``.

    A device given as ``map_location`` (a string or torch.device) receives the model too.
    """
    checkpoint = read_checkpoint(path, "model checkpoint", ModelCheckpointError, CHECKPOINT_FORMAT, map_location)
    try:
        config = ModelConfig.model_validate(checkpoint["model_config"])
        model = build_model(config, load_sam2_weights=False)
        model.load_state_dict(checkpoint["state_dict"])
    except (KeyError, ValueError, RuntimeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelCheckpointError(f"{path}: its weights do not fit the model it describes: {first_line}") from None
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model, config, checkpoint["extra"]


def export_model(source: str | Path, destination: str | Path) -> dict:
    """A checkpoint to ship or predict with: the weights and config of ``source``, the voxel size
    it was trained for, the scale its slice encoder saw, its scores and the protocol's z ranges
    (which sections trained, chose its checkpoint and threshold, and report), without the
    optimizer state. A checkpoint written before training recorded its voxel size gets the one
    of its training data."""
    model, config, state = load_model(source)
    kept = {key: state[key] for key in EXPORTED_KEYS if key in state}
    if "train_config" in state:
        data = state["train_config"]["data"]
        kept["protocol"] = {key: data.get(key) for key in PROTOCOL_KEYS}
    if "voxel_size" not in kept and "train_config" in state:
        with open_dataset(state["train_config"]["data"]["raw"]) as (_, voxel_size, _):
            kept["voxel_size"] = [int(v) for v in voxel_size]
    save_checkpoint(destination, model, config, extra=kept)
    return kept
