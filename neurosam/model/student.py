"""The student: a light 2D CNN distilled from SAM2's Hiera encoder (``neurosam distill``), so that
prediction at petascale does not pay for SAM2. It gives the teacher's FPN levels (256 channels at
strides 4, 8 and 16) from the same resized grey slices, with at most 5% of Hiera-tiny's
parameters; ``model.backbone: student`` puts it wherever FGNet used SAM2's encoder.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from neurosam.model.config import Sam2Config, StudentConfig
from neurosam.model.sam2_backbone import FEATURE_CHANNELS, SliceBackbone


class SeparableBlock(nn.Module):
    """Depthwise 3x3 and pointwise 1x1 convolutions with a residual: cheap spatial context."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            nn.BatchNorm2d(channels),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _down(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        SeparableBlock(out_channels),
    )


class StudentEncoder(nn.Module):
    """(N, 1, S, S) grey slices in [0, 1] to three (N, 256, S/s, S/s) levels, s = 4, 8, 16."""

    def __init__(self, config: StudentConfig):
        super().__init__()
        widths = config.widths
        self.stages = nn.ModuleList([_down(1, widths[0]), _down(widths[0], widths[1]), _down(widths[1], widths[2]), _down(widths[2], widths[3])])
        self.project = nn.ModuleList(nn.Conv2d(width, FEATURE_CHANNELS, 1) for width in widths[1:])

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        levels, x = [], images
        for stage in self.stages:
            x = stage(x)
            levels.append(x)
        return [project(level) for project, level in zip(self.project, levels[1:])]


class StudentBackbone(SliceBackbone):
    """The student slice by slice, at the image size, slice batch and ``trainable`` of
    ``model.sam2``: frozen, FGNet measures what distillation taught; ``all`` fine-tunes it."""

    def __init__(self, config: StudentConfig, slices: Sam2Config):
        super().__init__()
        self.config = slices
        self.encoder = StudentEncoder(config)
        self.encoder.requires_grad_(not self.frozen)
        self.train()

    def encode_slices(self, slices: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(self.resized(slices))

