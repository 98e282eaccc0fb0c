"""SAM2's Hiera image encoder (trunk and FPN neck) applied slice by slice to a 3D patch.

The encoder is instantiated from the YAML configs shipped inside the ``sam2`` package, taking
only their ``image_encoder`` node, so the rest of SAM2 (and torchvision) is never imported.
Weights come from the official checkpoint files: ``{"model": state_dict}`` with the encoder's
keys under ``image_encoder.``.
"""

from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from neurosam.model.checkpoint import read_checkpoint
from neurosam.model.config import SAM2_TOTAL_STRIDE, Sam2Config

logger = logging.getLogger(__name__)

CONFIG_SUFFIX = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}
ENCODER_PREFIX = "image_encoder."
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VARIANT_SIGNATURES = {(96, 12): "tiny", (96, 16): "small", (112, 24): "base_plus", (144, 48): "large"}
"""(trunk embedding width, number of Hiera blocks) of each released variant."""
FEATURE_CHANNELS = 256
"""Width of every FPN level (the neck's d_model in all released configs)."""
SLICE_MULTIPLE = SAM2_TOTAL_STRIDE
"""Hiera's windows tile its stride-4 grid in units of 8: slices are whole multiples of 32 px."""
FEATURE_STRIDES = (4, 8, 16)
"""Strides of the FPN levels SAM2 keeps (scalp 1 drops the stride-32 level)."""


class Sam2CheckpointError(ValueError):
    """A SAM2 checkpoint that cannot be loaded into the configured encoder; names the file."""


def encoder_yaml(variant: str, version: str) -> Path:
    stem = "sam2_hiera" if version == "2" else "sam2.1_hiera"
    return Path(str(files("sam2") / "configs" / f"sam{version}" / f"{stem}_{CONFIG_SUFFIX[variant]}.yaml"))


def build_image_encoder(variant: str, version: str, image_size: int) -> nn.Module:
    """sam2.modeling.backbones.image_encoder.ImageEncoder as the official config defines it."""
    node = OmegaConf.load(encoder_yaml(variant, version)).model.image_encoder
    node.neck.position_encoding.image_size = image_size
    return instantiate(node)


def variant_of(encoder_state: dict[str, torch.Tensor]) -> str | None:
    """Which released variant an encoder state dict belongs to, None if it matches none."""
    patch_weight = encoder_state.get("trunk.patch_embed.proj.weight")
    if patch_weight is None:
        return None
    depth = len({key.split(".")[2] for key in encoder_state if key.startswith("trunk.blocks.")})
    return VARIANT_SIGNATURES.get((patch_weight.shape[0], depth))


def read_encoder_state(path: Path) -> dict[str, torch.Tensor]:
    """The ``image_encoder.*`` tensors of an official SAM2 checkpoint, prefix stripped."""
    checkpoint = read_checkpoint(path, "SAM2 checkpoint", Sam2CheckpointError)
    if not isinstance(checkpoint.get("model"), dict):
        raise Sam2CheckpointError(f"{path} is not a SAM2 checkpoint: it has no 'model' state dict")
    state = {
        key[len(ENCODER_PREFIX) :]: value for key, value in checkpoint["model"].items() if key.startswith(ENCODER_PREFIX)
    }
    if not state:
        raise Sam2CheckpointError(f"SAM2 checkpoint {path} holds no '{ENCODER_PREFIX}*' keys")
    return state


def load_encoder_weights(encoder: nn.Module, path: Path, variant: str) -> None:
    state = read_encoder_state(path)
    found = variant_of(state)
    if found is not None and found != variant:
        raise Sam2CheckpointError(f"SAM2 checkpoint {path} is a '{found}' encoder, but the config asks for '{variant}'")
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise Sam2CheckpointError(
            f"SAM2 checkpoint {path} does not match the '{variant}' image encoder: "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    mismatched = [
        f"{key} {tuple(state[key].shape)} != {tuple(value.shape)}"
        for key, value in expected.items()
        if state[key].shape != value.shape
    ]
    if mismatched:
        raise Sam2CheckpointError(
            f"SAM2 checkpoint {path} does not match the '{variant}' image encoder: "
            f"{len(mismatched)} tensors of the wrong shape, e.g. {mismatched[:3]}"
        )
    encoder.load_state_dict(state, strict=True)
    logger.info("SAM2 %s image encoder loaded from %s", variant, path)


class SliceBackbone(nn.Module):
    """Runs each z-slice through a 2D image encoder and stacks its feature levels along z.

    Input (B, 1, Z, Y, X) in [0, 1]; output one (B, 256, Z, H/s, W/s) tensor per level,
    finest first, with H x W the slice's size in the encoder (``image_shape``) and s the
    level's stride (4, 8, 16); consumers resample the features back to the patch's own grid. Subclasses give ``encode_slices`` and ``encoder``; ``trainable:
    frozen`` keeps the encoder fixed (and in eval mode), whatever the rest of the network does.
    """

    config: Sam2Config
    encoder: nn.Module

    @property
    def frozen(self) -> bool:
        return self.config.trainable == "frozen"

    def train(self, mode: bool = True) -> "SliceBackbone":
        """A frozen encoder stays in eval mode: training the rest of the network never alters it."""
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def encode_slices(self, slices: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def image_shape(self, height: int, width: int) -> tuple[int, int]:
        """The size a slice of ``height`` x ``width`` voxels is resized to for the encoder."""
        factor = self.config.pixels_per_voxel
        if factor is None:
            return self.config.image_size, self.config.image_size
        sides = (height * factor, width * factor)
        if any(abs(side - round(side)) > 1e-3 or round(side) % SLICE_MULTIPLE for side in sides):
            raise ValueError(
                f"slices of {height} x {width} voxels at {factor:g} px per voxel are {sides[0]:g} x {sides[1]:g} px; "
                f"the encoder needs whole multiples of {SLICE_MULTIPLE} px"
            )
        return round(sides[0]), round(sides[1])

    def pixels_per_voxel(self, height: int, width: int) -> list[float]:
        """The scale (y, x) at which the encoder sees slices of ``height`` x ``width`` voxels."""
        shape = self.image_shape(height, width)
        return [shape[0] / height, shape[1] / width]

    def resized(self, slices: torch.Tensor) -> torch.Tensor:
        size = self.image_shape(*slices.shape[-2:])
        return F.interpolate(slices, size=size, mode="bilinear", align_corners=False, antialias=True)

    def forward(self, raw: torch.Tensor) -> list[torch.Tensor]:
        batch, _, depth, height, width = raw.shape
        slices = raw.permute(0, 2, 1, 3, 4).reshape(batch * depth, 1, height, width)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            chunks = [self.encode_slices(chunk) for chunk in slices.split(self.config.slice_batch)]
        levels = [torch.cat(level_chunks) for level_chunks in zip(*chunks)]
        return [
            level.reshape(batch, depth, *level.shape[1:]).permute(0, 2, 1, 3, 4).contiguous() for level in levels
        ]


class Sam2Backbone(SliceBackbone):
    """SAM2's image encoder (Hiera trunk and FPN neck), slice by slice."""

    def __init__(self, config: Sam2Config, load_weights: bool = True):
        super().__init__()
        self.config = config
        self.encoder = build_image_encoder(config.variant, config.version, config.image_size)
        if load_weights and config.checkpoint is not None:
            load_encoder_weights(self.encoder, config.checkpoint, config.variant)
        elif load_weights:
            logger.warning("SAM2 %s image encoder randomly initialised: no checkpoint in the config", config.variant)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.set_trainable()
        self.train()

    def set_trainable(self) -> None:
        """Freeze what the config keeps fixed; last_stages trains Hiera's last stages and the neck."""
        self.encoder.requires_grad_(self.config.trainable == "all")
        if self.config.trainable == "last_stages":
            trunk = self.encoder.trunk
            stage_starts = [0] + [end + 1 for end in trunk.stage_ends[:-1]]
            for block in trunk.blocks[stage_starts[-self.config.trainable_stages] :]:
                block.requires_grad_(True)
            self.encoder.neck.requires_grad_(True)

    def encode_slices(self, slices: torch.Tensor) -> list[torch.Tensor]:
        """(N, 1, Y, X) grey slices to SAM2's FPN levels, each (N, 256, h, w)."""
        images = (self.resized(slices).expand(-1, 3, -1, -1) - self.mean) / self.std
        return self.encoder(images)["backbone_fpn"]
