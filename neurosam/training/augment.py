"""Augmentations of a training patch: raw (Z, Y, X) float32 in [0, 1] and labels (Z, Y, X) uint64.

Every augmentation takes and returns both arrays, so geometric ones move raw and labels
together, and draws its randomness from the numpy Generator it is given, so a run is
reproducible. Voxels whose label an augmentation cannot know (content moved in from outside
the patch) get ``UNKNOWN_LABEL``; the data module masks their affinities out of the loss.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.ndimage import gaussian_filter, map_coordinates

UNKNOWN_LABEL = np.iinfo(np.uint64).max


class AugmentConfig(BaseModel):
    """Switches and strengths; displacements and shifts are in voxels, in plane (y, x)."""

    model_config = ConfigDict(extra="forbid")

    flip_transpose: bool = True
    elastic: bool = True
    elastic_max_displacement: float = Field(4.0, ge=0.0)
    elastic_smoothness: float = Field(8.0, gt=0.0)
    misalign: bool = True
    misalign_probability: float = Field(0.1, ge=0.0, le=1.0)
    misalign_max_shift: int = Field(6, ge=0)
    intensity: bool = True
    intensity_max_scale_change: float = Field(0.1, ge=0.0, lt=1.0)
    intensity_max_shift: float = Field(0.1, ge=0.0)
    noise: bool = True
    noise_max_sigma: float = Field(0.05, ge=0.0)
    missing_sections: bool = True
    missing_section_probability: float = Field(0.02, ge=0.0, le=1.0)

    @property
    def context(self) -> tuple[int, int, int]:
        """How far (z, y, x) geometric augmentations reach: read this much around a patch so
        that what they move in is real data rather than unknown."""
        reach = 0
        if self.elastic:
            reach += math.ceil(self.elastic_max_displacement)
        if self.misalign:
            reach += self.misalign_max_shift
        return (0, reach, reach)


def flip_transpose(raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random flips of y and x, and a random y/x transpose when the plane is square."""
    for axis in (1, 2):
        if rng.random() < 0.5:
            raw, labels = np.flip(raw, axis), np.flip(labels, axis)
    if raw.shape[1] == raw.shape[2] and rng.random() < 0.5:
        raw, labels = raw.transpose(0, 2, 1), labels.transpose(0, 2, 1)
    return np.ascontiguousarray(raw), np.ascontiguousarray(labels)


def elastic(
    raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator, max_displacement: float, smoothness: float
) -> tuple[np.ndarray, np.ndarray]:
    """Warp both arrays by one smooth random in-plane displacement field.

    Raw is interpolated linearly, labels take the nearest voxel, at the same source positions.
    """
    shape = raw.shape
    strength = rng.uniform(0.0, max_displacement)
    displacements = []
    for _ in range(2):
        field = gaussian_filter(rng.standard_normal(shape), sigma=smoothness)
        displacements.append(field * (strength / max(np.abs(field).max(), 1e-12)))
    z, y, x = np.indices(shape, dtype=np.float64)
    source_y, source_x = y + displacements[0], x + displacements[1]
    warped_raw = map_coordinates(raw, [z, source_y, source_x], order=1, mode="reflect").astype(raw.dtype)
    nearest_y, nearest_x = np.rint(source_y).astype(np.int64), np.rint(source_x).astype(np.int64)
    inside = (nearest_y >= 0) & (nearest_y < shape[1]) & (nearest_x >= 0) & (nearest_x < shape[2])
    gathered = labels[z.astype(np.int64), nearest_y.clip(0, shape[1] - 1), nearest_x.clip(0, shape[2] - 1)]
    warped_labels = np.where(inside, gathered, UNKNOWN_LABEL).astype(labels.dtype)
    return warped_raw, warped_labels


def _shift_in_plane(array: np.ndarray, shift_y: int, shift_x: int, fill) -> np.ndarray:
    shifted = np.full_like(array, fill)
    height, width = array.shape[1:]
    target_y = slice(max(shift_y, 0), height + min(shift_y, 0))
    source_y = slice(max(-shift_y, 0), height + min(-shift_y, 0))
    target_x = slice(max(shift_x, 0), width + min(shift_x, 0))
    source_x = slice(max(-shift_x, 0), width + min(-shift_x, 0))
    shifted[:, target_y, target_x] = array[:, source_y, source_x]
    return shifted


def misalign(raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator, max_shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Shift one section (a slip) or every section from a random z on (a step) in plane.

    Labels move with the raw data, as in a stack whose alignment failed; what slides in from
    outside is black raw and unknown labels.
    """
    if raw.shape[0] < 2:
        return raw, labels
    start = int(rng.integers(1, raw.shape[0]))
    stop = start + 1 if rng.random() < 0.5 else raw.shape[0]
    shift_y, shift_x = (int(s) for s in rng.integers(-max_shift, max_shift + 1, size=2))
    raw, labels = raw.copy(), labels.copy()
    raw[start:stop] = _shift_in_plane(raw[start:stop], shift_y, shift_x, 0)
    labels[start:stop] = _shift_in_plane(labels[start:stop], shift_y, shift_x, UNKNOWN_LABEL)
    return raw, labels


def intensity(
    raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator, max_scale_change: float, max_shift: float
) -> tuple[np.ndarray, np.ndarray]:
    scale = rng.uniform(1.0 - max_scale_change, 1.0 + max_scale_change)
    shift = rng.uniform(-max_shift, max_shift)
    return np.clip(raw * scale + shift, 0.0, 1.0).astype(raw.dtype), labels


def gaussian_noise(raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator, max_sigma: float) -> tuple[np.ndarray, np.ndarray]:
    sigma = rng.uniform(0.0, max_sigma)
    noisy = raw + rng.normal(0.0, sigma, size=raw.shape)
    return np.clip(noisy, 0.0, 1.0).astype(raw.dtype), labels


def missing_sections(raw: np.ndarray, labels: np.ndarray, rng: np.random.Generator, probability: float) -> tuple[np.ndarray, np.ndarray]:
    """Blank sections of raw only: the neurons are still there, the network must bridge the gap."""
    missing = rng.random(raw.shape[0]) < probability
    raw = raw.copy()
    raw[missing] = 0.0
    return raw, labels


def augment_geometry(
    raw: np.ndarray, labels: np.ndarray, config: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The augmentations that move voxels: run them on the patch grown by ``config.context``."""
    if config.elastic:
        raw, labels = elastic(raw, labels, rng, config.elastic_max_displacement, config.elastic_smoothness)
    if config.misalign and rng.random() < config.misalign_probability:
        raw, labels = misalign(raw, labels, rng, config.misalign_max_shift)
    if config.flip_transpose:
        raw, labels = flip_transpose(raw, labels, rng)
    return raw, labels


def augment_intensity(
    raw: np.ndarray, labels: np.ndarray, config: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The augmentations of raw values only."""
    if config.intensity:
        raw, labels = intensity(raw, labels, rng, config.intensity_max_scale_change, config.intensity_max_shift)
    if config.noise:
        raw, labels = gaussian_noise(raw, labels, rng, config.noise_max_sigma)
    if config.missing_sections:
        raw, labels = missing_sections(raw, labels, rng, config.missing_section_probability)
    return raw, labels
