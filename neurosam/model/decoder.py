"""Decoders: the U-Net expanding path shared by every architecture, and FGNet's dual-affinity
decoder with a coarse head on the SAM2 path and a refined head on the fused path."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from neurosam.model.blocks import ConvBlock, ConvNormAct
from neurosam.model.config import EncoderShape
from neurosam.model.fga import gain_of_older_checkpoints, resample


class SkipDecoder(nn.Module):
    """Upsamples level by level (transposed convolution by the encoder's own factors) and
    merges each encoder level's features through a skip connection."""

    def __init__(self, shape: EncoderShape, normalise: bool = True):
        super().__init__()
        channels, kernels = shape.channels, shape.kernel_sizes
        self.upsample = nn.ModuleList(
            nn.ConvTranspose3d(channels[level + 1], channels[level], factors, stride=factors)
            for level, factors in enumerate(shape.downsample)
        )
        self.merge = nn.ModuleList(
            ConvBlock(2 * channels[level], channels[level], kernels[level], normalise)
            for level in range(len(shape.downsample))
        )

    def forward(self, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        """Encoder features, finest first, to features at the finest level's resolution."""
        x = skips[-1]
        for level in reversed(range(len(skips) - 1)):
            x = self.merge[level](torch.cat([skips[level], self.upsample[level](x)], dim=1))
        return x


class DualAffinityDecoder(nn.Module):
    """Coarse affinities from the SAM2 guide, refined ones from the fused FGE path.

    The coarse affinities (upsampled to full resolution) also enter the refined head, scaled by
    a gain that starts at 0 like the attention's, so a fresh refined head is the FGE's alone and
    learns how far to follow the SAM2 path; both heads are supervised.
    """

    def __init__(self, shape: EncoderShape, guide_channels: int, num_channels: int):
        super().__init__()
        self.coarse_head = nn.Conv3d(guide_channels, num_channels, 1)
        self.refine = SkipDecoder(shape)
        self.refined_head = nn.Sequential(
            ConvNormAct(shape.base_channels + num_channels, shape.base_channels, shape.kernel_sizes[0]),
            nn.Conv3d(shape.base_channels, num_channels, 1),
        )
        self.coarse_gain = nn.Parameter(torch.zeros(()))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        gain_of_older_checkpoints(self, state_dict, prefix, "coarse_gain")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, guide: torch.Tensor, skips: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        refined_features = self.refine(skips)
        coarse = resample(self.coarse_head(guide), refined_features.shape[2:])
        refined = self.refined_head(torch.cat([refined_features, self.coarse_gain * torch.sigmoid(coarse)], dim=1))
        return {"refined": refined, "coarse": coarse}
