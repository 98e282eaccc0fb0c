"""Losses on affinity logits, masked by the affinity mask of the ground truth.

Affinities inside neurons far outnumber those across boundaries, and a plain BCE learns to
predict "same neuron" everywhere; the BCE is therefore class-balanced, and a Dice or MSE term
adds a signal that does not drown in the majority class.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

HEADS = ("refined", "coarse", "prompt")


class LossConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bce_weight: float = Field(1.0, ge=0.0)
    second_term: Literal["dice", "mse"] = "dice"
    second_term_weight: float = Field(1.0, ge=0.0)
    refined_weight: float = Field(1.0, ge=0.0)
    coarse_weight: float = Field(0.5, ge=0.0)
    prompt_weight: float = Field(0.5, ge=0.0)
    """The general student's prediction (FGNet with ``auto_prompt``): a prompt that is itself
    an affinity map."""
    min_class_fraction: float = Field(0.05, gt=0.0, lt=0.5)
    long_range_weight: float = Field(1.0, gt=0.0)
    """The weight of every affinity channel beyond the nearest neighbours, against 1 for those:
    weighted up, long-range affinities teach the network context across a boundary's gaps
    (an auxiliary target the field found to help)."""


def channel_weights(offsets: list[list[int]], long_range_weight: float) -> torch.Tensor:
    """Per affinity channel: 1 for a nearest-neighbour offset, ``long_range_weight`` beyond."""
    return torch.tensor([1.0 if sum(abs(step) for step in offset) == 1 else long_range_weight for offset in offsets])


def class_balance_weights(target: torch.Tensor, mask: torch.Tensor, min_class_fraction: float = 0.05) -> torch.Tensor:
    """Per-voxel weights giving positives and negatives equal total weight, per channel.

    Fractions are clipped to [min_class_fraction, 1 - min_class_fraction] so a class that is
    almost absent from a patch cannot get an enormous weight. Weights are 0 outside the mask;
    inside it they average to 1 when both classes are present.
    """
    dims = [d for d in range(target.dim()) if d != 1]
    masked_count = mask.sum(dim=dims, keepdim=True).clamp(min=1.0)
    positive_fraction = (target * mask).sum(dim=dims, keepdim=True) / masked_count
    positive_fraction = positive_fraction.clamp(min_class_fraction, 1.0 - min_class_fraction)
    weights = target / (2.0 * positive_fraction) + (1.0 - target) / (2.0 * (1.0 - positive_fraction))
    return weights * mask


def balanced_bce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, min_class_fraction: float = 0.05) -> torch.Tensor:
    weights = class_balance_weights(target, mask, min_class_fraction)
    per_voxel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (weights * per_voxel).sum() / mask.sum().clamp(min=1.0)


def balanced_mse(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, min_class_fraction: float = 0.05) -> torch.Tensor:
    weights = class_balance_weights(target, mask, min_class_fraction)
    per_voxel = (torch.sigmoid(logits) - target) ** 2
    return (weights * per_voxel).sum() / mask.sum().clamp(min=1.0)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice of affinities and of boundaries (1 - affinity), averaged, so neither class dominates."""
    probabilities = torch.sigmoid(logits)

    def soft_dice(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        overlap = (p * t * mask).sum()
        total = (p * mask).sum() + (t * mask).sum()
        return 1.0 - (2.0 * overlap + smooth) / (total + smooth)

    return 0.5 * (soft_dice(probabilities, target) + soft_dice(1.0 - probabilities, 1.0 - target))


def head_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, config: LossConfig) -> torch.Tensor:
    logits = logits.float()
    bce = balanced_bce(logits, target, mask, config.min_class_fraction)
    if config.second_term == "dice":
        second = dice_loss(logits, target, mask)
    else:
        second = balanced_mse(logits, target, mask, config.min_class_fraction)
    return config.bce_weight * bce + config.second_term_weight * second


def affinity_loss(
    outputs: dict[str, torch.Tensor], target: torch.Tensor, mask: torch.Tensor, config: LossConfig, weights: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted sum over the heads the model has, and each head's loss (detached) for the logs.
    ``weights`` (one per channel, ``channel_weights``) scale the mask, so both terms weigh a
    channel's voxels by its weight, and weights of 1 leave the loss as it was."""
    mask = mask * weights.to(mask.device).view(1, -1, *([1] * (mask.dim() - 2)))
    head_weights = {"refined": config.refined_weight, "coarse": config.coarse_weight, "prompt": config.prompt_weight}
    total = torch.zeros((), device=target.device)
    parts = {}
    for head in HEADS:
        if head in outputs:
            loss = head_loss(outputs[head], target, mask, config)
            total = total + head_weights[head] * loss
            parts[head] = loss.detach()
    return total, parts
