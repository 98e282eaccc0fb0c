"""Training data: volumes with ground truth, split by z into training and validation ranges, and
random patches turned into (raw, affinities, mask) for the loss.

The ranges are read into memory once: random patches revisit every chunk of a training volume
many times, and decompressing a chunk per patch would starve the network.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, model_validator

from neurosam.affinities import labels_to_affinities
from neurosam.io.volumes import VolumeError, open_dataset
from neurosam.training.augment import UNKNOWN_LABEL, AugmentConfig, augment_geometry, augment_intensity


ZRange = tuple[int, int]


class DataConfig(BaseModel):
    """Where raw and ground truth live, as ``file.h5/dataset`` or ``container.zarr/dataset``,
    and the protocol's z ranges [start, stop) in voxels: ``train_z`` trains, ``validation_z``
    chooses the checkpoint and the threshold, ``report_z`` (optional) is where the figures are
    reported, at the threshold chosen on ``validation_z``. A figure read off the crop that chose
    the checkpoint or the threshold would flatter the model, so the three must not overlap."""

    model_config = ConfigDict(extra="forbid")

    raw: str
    labels: str
    train_z: ZRange
    validation_z: ZRange
    report_z: ZRange | None = None
    background: int = 0

    @model_validator(mode="after")
    def _disjoint_ranges(self) -> "DataConfig":
        ranges = {name: value for name, value in self.z_ranges.items() if value is not None}
        for name, (start, stop) in ranges.items():
            if not 0 <= start < stop:
                raise ValueError(f"{name} must be [start, stop) with 0 <= start < stop, got {[start, stop]}")
        names = list(ranges)
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                (a, b), (c, d) = ranges[first], ranges[second]
                if a < d and c < b:
                    raise ValueError(f"{first} {[a, b]} and {second} {[c, d]} overlap")
        return self

    @property
    def z_ranges(self) -> dict[str, ZRange | None]:
        return {"train_z": self.train_z, "validation_z": self.validation_z, "report_z": self.report_z}


def raw_to_float(raw: np.ndarray) -> np.ndarray:
    """Intensities in [0, 1], as the network expects."""
    if np.issubdtype(raw.dtype, np.integer):
        return (raw / np.iinfo(raw.dtype).max).astype(np.float32)
    return raw.astype(np.float32)


def load_range(config: DataConfig, z_range: ZRange) -> tuple[np.ndarray, np.ndarray]:
    """Labels (uint64) of sections [start, stop) of the labels, and raw (float32 in [0, 1]) of
    the same voxels: the raw may be larger than the labels (padded, as in CREMI), so the two
    are matched by their offsets in nm."""
    start, stop = z_range
    with open_dataset(config.labels) as (labels_dataset, voxel_size, labels_offset):
        if stop > labels_dataset.shape[0]:
            raise VolumeError(f"{config.labels}: z range {list(z_range)} exceeds its {labels_dataset.shape[0]} sections")
        labels = np.asarray(labels_dataset[start:stop]).astype(np.uint64)
    with open_dataset(config.raw) as (raw_dataset, raw_voxel_size, raw_offset):
        shift, remainder = np.divmod(labels_offset - raw_offset, voxel_size)
        first = shift + (start, 0, 0)
        last = first + labels.shape
        if (raw_voxel_size != voxel_size).any() or remainder.any() or (first < 0).any() or (last > raw_dataset.shape).any():
            raise VolumeError(
                f"raw {config.raw} ({tuple(raw_dataset.shape)} voxels of {tuple(raw_voxel_size)} nm at "
                f"{tuple(raw_offset)} nm) does not cover sections {list(z_range)} of labels {config.labels} "
                f"(voxels of {tuple(voxel_size)} nm at {tuple(labels_offset)} nm)"
            )
        raw = np.asarray(raw_dataset[tuple(slice(a, b) for a, b in zip(first, last))])
    return raw_to_float(raw), labels


def _read_padded(volume: np.ndarray, start: np.ndarray, stop: np.ndarray, fill=None) -> np.ndarray:
    """volume[start:stop], padded where the box leaves the volume: by reflection, or with ``fill``."""
    inside_start = np.maximum(start, 0)
    inside_stop = np.minimum(stop, volume.shape)
    box = volume[tuple(slice(a, b) for a, b in zip(inside_start, inside_stop))]
    padding = list(zip(inside_start - start, stop - inside_stop))
    if fill is None:
        return np.pad(box, padding, mode="reflect")
    return np.pad(box, padding, mode="constant", constant_values=fill)


def _crop(array: np.ndarray, margin) -> np.ndarray:
    """Remove ``margin`` voxels on both sides of each of the last three axes."""
    return array[(..., *(slice(m, array.shape[-3 + i] - m) for i, m in enumerate(margin)))]


class PatchSampler:
    """Random training patches of one volume: raw (1, Z, Y, X), affinities and mask (C, Z, Y, X).

    A patch is read with a context: the reach of the geometric augmentations, so what they move
    in is real data, plus the longest affinity offset, so affinities at the patch border are
    known. Where the context leaves the volume, labels are unknown and masked.
    """

    def __init__(
        self,
        raw: np.ndarray,
        labels: np.ndarray,
        patch_shape: tuple[int, int, int],
        offsets: list[list[int]],
        augment: AugmentConfig | None,
        background: int = 0,
    ):
        if any(p > s for p, s in zip(patch_shape, raw.shape)):
            raise ValueError(f"patch shape {tuple(patch_shape)} does not fit the volume {raw.shape}")
        if augment is not None and augment.flip_transpose and patch_shape[1] != patch_shape[2]:
            raise ValueError(f"in-plane transposes need a square patch, got {tuple(patch_shape)}")
        self.raw = raw
        self.labels = labels
        self.patch_shape = np.array(patch_shape)
        self.offsets = offsets
        self.augment = augment
        self.background = background
        self.offset_context = np.abs(np.array(offsets)).max(axis=0)
        self.augment_context = np.array(augment.context if augment is not None else (0, 0, 0))

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        origin = rng.integers(0, np.array(self.raw.shape) - self.patch_shape + 1)
        context = self.offset_context + self.augment_context
        start, stop = origin - context, origin + self.patch_shape + context
        raw = _read_padded(self.raw, start, stop)
        labels = _read_padded(self.labels, start, stop, fill=UNKNOWN_LABEL)
        if self.augment is not None:
            raw, labels = augment_geometry(raw, labels, self.augment, rng)
        labels = _crop(labels, self.augment_context)
        known = labels != UNKNOWN_LABEL
        labels = np.where(known, labels, self.background)
        affinities, mask = labels_to_affinities(labels, self.offsets, self.background, known=known)
        affinities, mask = _crop(affinities, self.offset_context), _crop(mask, self.offset_context)
        raw = _crop(raw, context)
        if self.augment is not None:
            raw, _ = augment_intensity(raw, _crop(labels, self.offset_context), self.augment, rng)
        return raw[np.newaxis].astype(np.float32), affinities, mask


def batch_generator(seed: int, step: int) -> np.random.Generator:
    """The generator of one training step: seeded by (seed, step), so a resumed run or a data
    worker process draws exactly the batch an uninterrupted run would."""
    return np.random.default_rng([seed, step])


class TrainingBatches(torch.utils.data.Dataset):
    """Item ``step`` is the batch of that training step."""

    def __init__(self, sampler: PatchSampler, batch_size: int, seed: int, iterations: int):
        self.sampler = sampler
        self.batch_size = batch_size
        self.seed = seed
        self.iterations = iterations

    def __len__(self) -> int:
        return self.iterations

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        rng = batch_generator(self.seed, step)
        samples = [self.sampler.sample(rng) for _ in range(self.batch_size)]
        raw, affinities, mask = (torch.from_numpy(np.stack(parts)) for parts in zip(*samples))
        return {"raw": raw, "affinities": affinities, "mask": mask}
