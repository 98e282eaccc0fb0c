"""The fine-grained encoder (FGE): a light 3D CNN that sees the raw patch at full resolution,
where SAM2 only sees resized slices, so thin processes and membranes keep their detail."""

from __future__ import annotations

import torch.nn as nn

from neurosam.model.blocks import ConvNormAct, LevelEncoder, ResidualBlock
from neurosam.model.config import EncoderShape


class FineGrainedEncoder(LevelEncoder):
    """One stage per level: learned (strided) downsampling, then a residual block.

    Levels left by in-plane downsampling convolve in plane only, so sections of coarse z are
    not mixed before the in-plane resolution has come close to the z resolution.
    """

    def __init__(self, shape: EncoderShape, in_channels: int = 1):
        super().__init__()
        channels, kernels = shape.channels, shape.kernel_sizes
        self.stages.append(
            nn.Sequential(ConvNormAct(in_channels, channels[0], kernels[0]), ResidualBlock(channels[0], kernels[0]))
        )
        for level, factors in enumerate(shape.downsample, start=1):
            self.stages.append(
                nn.Sequential(
                    ConvNormAct(channels[level - 1], channels[level], factors, stride=factors),
                    ResidualBlock(channels[level], kernels[level]),
                )
            )
