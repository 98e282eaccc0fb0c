"""Augmentations keep raw and labels aligned: raw made from the labels stays made from them."""

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from neurosam.training.augment import (
    UNKNOWN_LABEL,
    AugmentConfig,
    augment_geometry,
    augment_intensity,
    elastic,
    flip_transpose,
    gaussian_noise,
    intensity,
    misalign,
    missing_sections,
)

INTENSITY_OF_LABEL = np.linspace(0.05, 0.95, 64, dtype=np.float32)


def block_labels(shape=(6, 40, 40), block=(3, 8, 5)) -> np.ndarray:
    """Distinct ids on a grid of boxes, not symmetric under flips or transposes."""
    z, y, x = np.indices(shape)
    return (1 + (z // block[0]) * 25 + (y // block[1]) * 5 + x // block[2]).astype(np.uint64)


def raw_of(labels: np.ndarray) -> np.ndarray:
    return INTENSITY_OF_LABEL[labels % len(INTENSITY_OF_LABEL)]


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    boundaries = np.zeros(labels.shape, dtype=bool)
    for axis in (1, 2):
        differs = np.diff(labels, axis=axis) != 0
        before = [slice(None)] * 3
        before[axis] = slice(0, -1)
        after = [slice(None)] * 3
        after[axis] = slice(1, None)
        boundaries[tuple(before)] |= differs
        boundaries[tuple(after)] |= differs
    return boundaries


@pytest.mark.parametrize("seed", range(4))
def test_flip_transpose_moves_raw_and_labels_together(seed):
    labels = block_labels()
    raw, moved = flip_transpose(raw_of(labels), labels, np.random.default_rng(seed))
    np.testing.assert_array_equal(raw, raw_of(moved))
    assert sorted(np.unique(moved)) == sorted(np.unique(labels))


def test_flip_transpose_produces_every_orientation():
    labels = block_labels()
    orientations = {flip_transpose(raw_of(labels), labels, np.random.default_rng(seed))[1].tobytes() for seed in range(40)}
    assert len(orientations) == 8


@pytest.mark.parametrize("seed", range(3))
def test_misalign_shifts_raw_and_labels_together(seed):
    labels = block_labels()
    raw, moved = misalign(raw_of(labels), labels, np.random.default_rng(seed), max_shift=4)
    known = moved != UNKNOWN_LABEL
    np.testing.assert_array_equal(raw[known], raw_of(moved[known]))
    np.testing.assert_array_equal(raw[~known], 0.0)
    np.testing.assert_array_equal(moved[0], labels[0])
    assert (moved != labels).any()


def test_misalign_shifts_whole_sections_by_one_vector():
    labels = block_labels()
    for seed in range(20):
        _, moved = misalign(raw_of(labels), labels, np.random.default_rng(seed), max_shift=3)
        for z in range(labels.shape[0]):
            shifted = [
                (dy, dx)
                for dy in range(-3, 4)
                for dx in range(-3, 4)
                if np.array_equal(moved[z, 3:-3, 3:-3], labels[z, 3 - dy : labels.shape[1] - 3 - dy, 3 - dx : labels.shape[2] - 3 - dx])
            ]
            assert shifted, f"section {z} is not a shifted copy of the original (seed {seed})"


@pytest.mark.parametrize("seed", range(3))
def test_elastic_warps_raw_and_labels_by_the_same_field(seed):
    labels = block_labels(shape=(4, 48, 48), block=(2, 16, 12))
    raw, warped = elastic(raw_of(labels), labels, np.random.default_rng(seed), max_displacement=4.0, smoothness=5.0)
    known = warped != UNKNOWN_LABEL
    matches = np.abs(raw - raw_of(np.where(known, warped, 0))) < 1e-5
    near_boundary = binary_dilation(label_boundaries(warped), structure=np.ones((1, 3, 3)), iterations=2)
    assert (warped != labels).any()
    assert matches[known].mean() > 0.85
    assert (matches | near_boundary | ~known).all(), "raw and labels disagree away from label boundaries"


def test_elastic_marks_what_comes_from_outside_as_unknown():
    labels = block_labels()
    _, warped = elastic(raw_of(labels), labels, np.random.default_rng(1), max_displacement=30.0, smoothness=3.0)
    assert (warped == UNKNOWN_LABEL).any()
    assert set(np.unique(warped)) - {UNKNOWN_LABEL} <= set(np.unique(labels))


def test_raw_only_augmentations_leave_labels_and_geometry_alone():
    labels = block_labels()
    raw = raw_of(labels)
    rng = np.random.default_rng(0)

    scaled, same = intensity(raw, labels, rng, max_scale_change=0.2, max_shift=0.05)
    assert same is labels
    slope, intercept = np.polyfit(raw.ravel(), scaled.ravel(), 1)
    np.testing.assert_allclose(scaled, np.clip(slope * raw + intercept, 0, 1), atol=1e-5)
    assert not np.allclose(scaled, raw)

    noisy, same = gaussian_noise(raw, labels, rng, max_sigma=0.05)
    assert same is labels
    assert 0 < np.abs(noisy - raw).mean() < 0.05

    blanked, same = missing_sections(raw, labels, np.random.default_rng(3), probability=0.5)
    assert same is labels
    missing = (blanked == 0).all(axis=(1, 2))
    assert 0 < missing.sum() < raw.shape[0]
    np.testing.assert_array_equal(blanked[~missing], raw[~missing])


def test_augmentations_are_reproducible_from_the_seed():
    labels = block_labels()
    config = AugmentConfig(misalign_probability=1.0, missing_section_probability=0.3)

    def run(seed):
        rng = np.random.default_rng(seed)
        raw, moved = augment_geometry(raw_of(labels), labels, config, rng)
        return augment_intensity(raw, moved, config, rng)

    first, again, other = run(5), run(5), run(6)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_context_covers_the_reach_of_geometric_augmentations():
    config = AugmentConfig(elastic_max_displacement=3.5, misalign_max_shift=5)
    assert config.context == (0, 9, 9)
    assert AugmentConfig(elastic=False, misalign=False).context == (0, 0, 0)
