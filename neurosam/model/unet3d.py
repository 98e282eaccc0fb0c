"""The single-head networks: the plain 3D U-Net baseline and the FGE-alone ablation share one
encoder-decoder frame and differ only in their contracting path."""

from __future__ import annotations

import torch
import torch.nn as nn

from neurosam.model.blocks import ConvBlock, LevelEncoder
from neurosam.model.config import EncoderShape, UNetConfig
from neurosam.model.decoder import SkipDecoder


class MalaEncoder(LevelEncoder):
    """MALA-style (Funke et al. 2018) contracting path: max-pool downsampling, two convolutions
    per level. Unlike MALA it pads, so outputs have the input's shape."""

    def __init__(self, shape: UNetConfig, in_channels: int = 1):
        super().__init__()
        channels, kernels = shape.channels, shape.kernel_sizes
        self.stages.append(ConvBlock(in_channels, channels[0], kernels[0], shape.normalise))
        for level, factors in enumerate(shape.downsample, start=1):
            self.stages.append(
                nn.Sequential(
                    nn.MaxPool3d(factors, stride=factors),
                    ConvBlock(channels[level - 1], channels[level], kernels[level], shape.normalise),
                )
            )


class UNet3d(nn.Module):
    """Encoder, U-Net expanding path with skips, and one affinity head."""

    def __init__(self, encoder: LevelEncoder, shape: EncoderShape, num_channels: int, normalise: bool = True):
        super().__init__()
        self.input_multiple = shape.input_multiple
        self.encoder = encoder
        self.decoder = SkipDecoder(shape, normalise)
        self.head = nn.Conv3d(shape.base_channels, num_channels, 1)

    def forward(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"refined": self.head(self.decoder(self.encoder(raw)))}
