"""FGNet, the SAM2-guided affinity network."""

from __future__ import annotations

import torch
import torch.nn as nn

from neurosam.model.config import ModelConfig
from neurosam.model.decoder import DualAffinityDecoder
from neurosam.model.fga import FeatureGuidedAttention, Sam2Guide
from neurosam.model.fge import FineGrainedEncoder
from neurosam.model.sam2_backbone import FEATURE_CHANNELS, FEATURE_STRIDES, Sam2Backbone
from neurosam.model.student import StudentBackbone


class FGNet(nn.Module):
    """SAM2 features, stacked along z, guide a fine-grained 3D encoder through feature-guided
    attention after each of its levels; a dual-affinity decoder predicts coarse (SAM2 path) and
    refined (fused path) affinity logits at the input's resolution."""

    def __init__(self, config: ModelConfig, load_sam2_weights: bool = True):
        super().__init__()
        self.input_multiple = config.fge.input_multiple
        if config.backbone == "student":
            self.backbone = StudentBackbone(config.student, config.sam2)
        else:
            self.backbone = Sam2Backbone(config.sam2, load_weights=load_sam2_weights)
        self.guide = Sam2Guide(FEATURE_CHANNELS, len(FEATURE_STRIDES), config.guide_channels)
        self.encoder = FineGrainedEncoder(config.fge)
        self.attention = nn.ModuleList(
            FeatureGuidedAttention(config.guide_channels, channels, kernel_size)
            for channels, kernel_size in zip(config.fge.channels, config.fge.kernel_sizes)
        )
        self.decoder = DualAffinityDecoder(config.fge, config.guide_channels, config.num_channels)

    def forward(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        guide = self.guide(self.backbone(raw))
        skips = []
        x = raw
        for stage, attention in zip(self.encoder.stages, self.attention):
            x = attention(stage(x), guide)
            skips.append(x)
        return self.decoder(guide, skips)

