"""The network's configuration, as data: saved inside every neurosam checkpoint so that
prediction rebuilds the exact model, with its input and output shapes, from the file alone.

Unknown keys are errors. Spatial tuples are in z, y, x order.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from neurosam.affinities import LONG_RANGE_OFFSETS, NEAREST_OFFSETS

SAM2_TOTAL_STRIDE = 32
"""Hiera embeds 4x4 patches and halves the resolution three more times."""

IN_PLANE_KERNEL = (1, 3, 3)
VOLUME_KERNEL = (3, 3, 3)


class Sam2Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    variant: Literal["tiny", "small", "base_plus", "large"] = "tiny"
    version: Literal["2", "2.1"] = "2.1"
    checkpoint: Path | None = None
    """Official SAM2 ``.pt`` file; None trains the encoder from a random initialisation."""
    trainable: Literal["frozen", "all", "last_stages"] = "frozen"
    trainable_stages: int = Field(1, ge=1, le=4)
    """How many of Hiera's four stages train (with the FPN neck) when trainable is last_stages."""
    image_size: int = 128
    """Side every z-slice is resized to before the encoder (SAM2 itself uses 1024), unless
    ``pixels_per_voxel`` is set."""
    pixels_per_voxel: float | None = Field(None, gt=0.0)
    """Slices resized by this factor instead: the encoder sees one physical scale, whatever the
    tile size, so prediction in larger tiles than training's patches shows it what training
    did. A tile's in-plane sides times this factor must be whole multiples of 32 px. None
    resizes to ``image_size``: the scale then depends on the tile, and predict refuses tiles
    of another in-plane size than the one training recorded."""
    slice_batch: int = Field(8, ge=1)
    """Slices per encoder call: bounds the encoder's activation memory."""

    @field_validator("image_size")
    @classmethod
    def _multiple_of_stride(cls, image_size: int) -> int:
        if image_size <= 0 or image_size % SAM2_TOTAL_STRIDE:
            raise ValueError(f"image_size must be a positive multiple of {SAM2_TOTAL_STRIDE}, got {image_size}")
        return image_size


class StudentConfig(BaseModel):
    """The encoder distilled from SAM2's (``neurosam.model.student``)."""

    model_config = ConfigDict(extra="forbid")

    widths: list[int] = Field(default_factory=lambda: [32, 48, 96, 160], min_length=4, max_length=4)
    """Channels at strides 2, 4, 8 and 16; the last three are projected to the teacher's 256."""


class EncoderShape(BaseModel):
    """Widths and resolutions of a 3D encoder's levels; its decoder mirrors them."""

    model_config = ConfigDict(extra="forbid")

    base_channels: int = Field(16, ge=1)
    channel_multiplier: int = Field(2, ge=1)
    downsample: list[list[int]] = [[1, 2, 2], [1, 2, 2], [2, 2, 2]]
    """Factor from each level to the next. A level left by in-plane downsampling only, e.g.
    (1, 2, 2), still has coarse z and convolves in plane only, with (1, 3, 3) kernels."""

    @field_validator("downsample")
    @classmethod
    def _positive_factors(cls, downsample: list[list[int]]) -> list[list[int]]:
        if any(len(factors) != 3 or min(factors) < 1 for factors in downsample):
            raise ValueError(f"downsample factors must be three (z, y, x) integers >= 1, got {downsample}")
        return downsample

    @property
    def levels(self) -> int:
        return len(self.downsample) + 1

    @property
    def channels(self) -> list[int]:
        return [self.base_channels * self.channel_multiplier**level for level in range(self.levels)]

    @property
    def kernel_sizes(self) -> list[tuple[int, int, int]]:
        in_plane = [factors[0] == 1 and max(factors[1:]) > 1 for factors in self.downsample] + [False]
        return [IN_PLANE_KERNEL if flat else VOLUME_KERNEL for flat in in_plane]

    @property
    def input_multiple(self) -> tuple[int, int, int]:
        return tuple(math.prod(factors[axis] for factors in self.downsample) for axis in range(3))


class FgeConfig(EncoderShape):
    """The fine-grained encoder: light (few, narrow levels) because SAM2 carries the semantics."""


class UNetConfig(EncoderShape):
    """The MALA-style 3D U-Net baseline: wider levels, two plain convolutions per level."""

    base_channels: int = Field(12, ge=1)
    channel_multiplier: int = Field(3, ge=1)
    normalise: bool = False
    """MALA uses no normalisation; GroupNorm helps with short training budgets."""


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    architecture: Literal["fgnet", "fge", "unet"] = "fgnet"
    offsets: list[list[int]] = Field(
        default_factory=lambda: [list(offset) for offset in NEAREST_OFFSETS + LONG_RANGE_OFFSETS[:3]]
    )
    """Affinity neighbourhood, one output channel per offset (z, y, x voxels)."""
    backbone: Literal["sam2", "student"] = "sam2"
    """FGNet's slice encoder: SAM2's, or the student distilled from it (at ``sam2``'s image size)."""
    auto_prompt: bool = False
    """With ``backbone: student``: the general student (distillation's first, generic-image
    student) predicts affinities from its own features, and that prediction, encoded, prompts
    the EM-specific student's guide (auto-prompting, as RRL-MedSAM prompts its EM model)."""
    sam2: Sam2Config = Field(default_factory=Sam2Config)
    student: StudentConfig = Field(default_factory=StudentConfig)
    fge: FgeConfig = Field(default_factory=FgeConfig)
    guide_channels: int = Field(32, ge=1)
    """Width of the SAM2 guide that drives the attention and the coarse head."""
    unet: UNetConfig = Field(default_factory=UNetConfig)

    @field_validator("offsets")
    @classmethod
    def _three_dimensional_offsets(cls, offsets: list[list[int]]) -> list[list[int]]:
        if not offsets:
            raise ValueError("at least one affinity offset is needed")
        if any(len(offset) != 3 or not any(offset) for offset in offsets):
            raise ValueError(f"affinity offsets must be non-zero (z, y, x) triples, got {offsets}")
        return offsets

    @model_validator(mode="after")
    def _student_trains_whole_or_not(self) -> "ModelConfig":
        if self.auto_prompt and self.backbone != "student":
            raise ValueError("auto_prompt needs backbone: student (the general student's prediction is the prompt)")
        if self.backbone == "student" and self.sam2.trainable == "last_stages":
            raise ValueError("sam2.trainable: last_stages applies to SAM2's Hiera; the student is frozen or trains whole (all)")
        return self

    @property
    def num_channels(self) -> int:
        return len(self.offsets)
