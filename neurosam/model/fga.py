"""Feature-guided attention (FGA): SAM2's semantic features steer the fine-grained encoder.

SAM2 knows what objects look like but sees slices resized and one at a time; the FGE sees every
voxel but knows little. The guide (SAM2's FPN levels merged into one volume) gates the FGE's
channels and, where guide and FGE features disagree (ambiguous boundaries, thin processes),
its voxels.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from neurosam.model.blocks import ConvNormAct

CHANNEL_GATE_REDUCTION = 4


def resample(volume: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(volume, size=tuple(size), mode="trilinear", align_corners=False)


class Sam2Guide(nn.Module):
    """Merges SAM2's FPN levels (stacked along z) into one narrow guide volume at the finest
    level's resolution, mixing neighbouring sections that SAM2 saw independently."""

    def __init__(self, feature_channels: int, num_levels: int, guide_channels: int):
        super().__init__()
        self.project = nn.ModuleList(nn.Conv3d(feature_channels, guide_channels, 1) for _ in range(num_levels))
        self.mix = ConvNormAct(guide_channels, guide_channels, (3, 3, 3))

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        size = levels[0].shape[2:]
        merged = sum(resample(project(level), size) for project, level in zip(self.project, levels))
        return self.mix(merged)


def gain_of_older_checkpoints(module: nn.Module, state_dict: dict, prefix: str, name: str) -> None:
    """Checkpoints written before the gain existed added the guide at full strength: gain 1."""
    if prefix + name not in state_dict:
        state_dict[prefix + name] = torch.ones_like(getattr(module, name))


class FeatureGuidedAttention(nn.Module):
    """Channel and spatial gates from the guide, applied to one FGE level.

    The output keeps the FGE features (the gate only amplifies them) and adds the projected
    guide, both scaled by a learned gain that starts at 0: a fresh FGNet is its FGE, and random
    or poor guide features cannot disturb the refined path before training finds them useful.
    """

    def __init__(self, guide_channels: int, channels: int, kernel_size: Sequence[int]):
        super().__init__()
        hidden = max(channels // CHANNEL_GATE_REDUCTION, 1)
        self.project = ConvNormAct(guide_channels, channels, (1, 1, 1))
        self.channel_gate = nn.Sequential(
            nn.AdaptiveAvgPool3d(1),
            nn.Conv3d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, channels, 1),
            nn.Sigmoid(),
        )
        self.spatial_gate = nn.Sequential(
            nn.Conv3d(2 * channels, 1, tuple(kernel_size), padding=tuple(k // 2 for k in kernel_size)),
            nn.Sigmoid(),
        )
        self.gain = nn.Parameter(torch.zeros(()))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        gain_of_older_checkpoints(self, state_dict, prefix, "gain")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, features: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        guide = self.project(resample(guide, features.shape[2:]))
        attention = self.channel_gate(guide) * self.spatial_gate(torch.cat([features, guide], dim=1))
        return features + self.gain * (features * attention + guide)
