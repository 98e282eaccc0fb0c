"""FGNet, the SAM2-guided affinity network."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from neurosam.model.config import ModelConfig
from neurosam.model.decoder import DualAffinityDecoder
from neurosam.model.fga import FeatureGuidedAttention, Sam2Guide, resample
from neurosam.model.fge import FineGrainedEncoder
from neurosam.model.sam2_backbone import FEATURE_CHANNELS, FEATURE_STRIDES, Sam2Backbone
from neurosam.model.student import StudentBackbone


class AutoPrompt(nn.Module):
    """The general student's affinity prediction (the "prompt" head) and its encoding into the
    guide's width, added to the EM-specific student's guide: the model is told where a model of
    natural images sees boundaries, and learns how far to trust it."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.backbone = StudentBackbone(config.student, config.sam2)
        self.guide = Sam2Guide(FEATURE_CHANNELS, len(FEATURE_STRIDES), config.guide_channels)
        self.head = nn.Conv3d(config.guide_channels, config.num_channels, 1)
        self.encode = nn.Sequential(
            nn.Conv3d(config.num_channels, config.guide_channels, (1, 3, 3), padding=(0, 1, 1)),
            nn.GroupNorm(math.gcd(8, config.guide_channels), config.guide_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt's logits and its encoding, both at the guide's resolution."""
        logits = self.head(self.guide(self.backbone(raw)))
        return logits, self.encode(torch.sigmoid(logits))


class FGNet(nn.Module):
    """SAM2 features, stacked along z, guide a fine-grained 3D encoder through feature-guided
    attention after each of its levels; a dual-affinity decoder predicts coarse (SAM2 path) and
    refined (fused path) affinity logits at the input's resolution. With ``auto_prompt`` the
    general student's prediction prompts the guide, and is supervised as the "prompt" head."""

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
        self.auto_prompt = AutoPrompt(config) if config.auto_prompt else None

    def forward(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        guide = self.guide(self.backbone(raw))
        prompt = None
        if self.auto_prompt is not None:
            prompt, encoded = self.auto_prompt(raw)
            guide = guide + encoded
        skips = []
        x = raw
        for stage, attention in zip(self.encoder.stages, self.attention):
            x = attention(stage(x), guide)
            skips.append(x)
        outputs = self.decoder(guide, skips)
        if prompt is not None:
            outputs["prompt"] = resample(prompt, raw.shape[2:])
        return outputs

