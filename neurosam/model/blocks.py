"""Convolutional units shared by the fine-grained encoder, the decoders and the U-Net, so that
the architectures compared in the benchmarks differ only where they are meant to."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

MAX_NORM_GROUPS = 8


class ConvNormAct(nn.Sequential):
    """Conv3d, GroupNorm (batch-size independent, as patches come one or two at a time), ReLU.

    Padding keeps the shape at stride 1; a stride equal to the kernel downsamples exactly.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int] = (3, 3, 3),
        stride: Sequence[int] = (1, 1, 1),
        normalise: bool = True,
    ):
        padding = tuple((k - s + 1) // 2 for k, s in zip(kernel_size, stride))
        layers: list[nn.Module] = [
            nn.Conv3d(in_channels, out_channels, tuple(kernel_size), tuple(stride), padding, bias=not normalise)
        ]
        if normalise:
            layers.append(nn.GroupNorm(math.gcd(MAX_NORM_GROUPS, out_channels), out_channels))
        layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ConvBlock(nn.Sequential):
    """Two ConvNormActs: the unit of one U-Net level."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Sequence[int], normalise: bool = True):
        super().__init__(
            ConvNormAct(in_channels, out_channels, kernel_size, normalise=normalise),
            ConvNormAct(out_channels, out_channels, kernel_size, normalise=normalise),
        )


class ResidualBlock(nn.Module):
    """A ConvBlock with an identity shortcut, so a narrow encoder trains quickly from scratch."""

    def __init__(self, channels: int, kernel_size: Sequence[int]):
        super().__init__()
        self.body = ConvBlock(channels, channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class LevelEncoder(nn.Module):
    """A contracting path: ``stages[0]`` works at full resolution, each later stage first
    downsamples. Subclasses fill ``stages``."""

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList()

    def forward(self, raw: torch.Tensor) -> list[torch.Tensor]:
        """Features of every level, finest first."""
        features = []
        x = raw
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
