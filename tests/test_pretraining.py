"""Masked image modelling: masks hide what they should, the loss sees only what was hidden, and
a pretrained encoder carries into training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from neurosam.affinities import NEAREST_OFFSETS
from neurosam.model.build import build_model
from neurosam.model.config import ModelConfig
from neurosam.training.masking import MaskConfig, make_mask, patch_means
from neurosam.training.pretraining import load_pretrain_config, load_pretrained, masked_reconstruction_loss, pretrain
from neurosam.training.training import load_train_config, train_from_config
from test_training import write_config as write_train_config
from test_training import write_volume

TINY_FGE = {"architecture": "fge", "offsets": NEAREST_OFFSETS, "fge": {"base_channels": 4, "downsample": [[1, 2, 2], [2, 2, 2]]}}


def half_dark(shape=(1, 8, 32, 32)) -> np.ndarray:
    """Left half dark (membrane-like), right half bright."""
    raw = np.full(shape, 0.9, dtype=np.float32)
    raw[..., : shape[-1] // 2] = 0.1
    return raw


@pytest.mark.parametrize("patch", [(4, 8, 8), (1, 8, 8)])
def test_random_masks_hide_the_asked_ratio_in_whole_patches(patch):
    rng = np.random.default_rng(0)
    raw = np.random.default_rng(1).random((2, 8, 32, 32)).astype(np.float32)
    mask = make_mask(raw, MaskConfig(ratio=0.4, patch=patch), rng)
    assert mask.shape == raw.shape
    grid = mask[0].reshape(8 // patch[0], patch[0], 4, 8, 4, 8)
    assert (grid.all(axis=(1, 3, 5)) == grid.any(axis=(1, 3, 5))).all(), "a patch is partly masked"
    patches = grid.any(axis=(1, 3, 5)).size
    assert grid.any(axis=(1, 3, 5)).sum() == round(0.4 * patches)
    np.testing.assert_array_equal(mask[0], mask[1])


@pytest.mark.parametrize("prefer", ["dark", "bright"])
def test_intensity_masks_prefer_the_configured_structure(prefer):
    raw = half_dark()
    config = MaskConfig(strategy="intensity", ratio=0.3, patch=(4, 8, 8), prefer=prefer, strength=3.0)
    rng = np.random.default_rng(0)
    dark_share = []
    for _ in range(50):
        mask = make_mask(raw, config, rng)
        assert mask.mean() == pytest.approx(0.3, abs=1 / 32)
        dark_share.append(mask[0, :, :, :16].sum() / mask.sum())
    assert np.mean(dark_share) > 0.9 if prefer == "dark" else np.mean(dark_share) < 0.1
    means = patch_means(raw, (4, 8, 8))
    assert means.min() == pytest.approx(0.1) and means.max() == pytest.approx(0.9)


def test_channel_separated_masks_differ_by_channel_with_the_ratio_in_each():
    raw = np.random.default_rng(1).random((3, 8, 32, 32)).astype(np.float32)
    mask = make_mask(raw, MaskConfig(strategy="channel", ratio=0.5, patch=(4, 8, 8)), np.random.default_rng(0))
    for channel in mask:
        assert channel.mean() == pytest.approx(0.5)
    assert not np.array_equal(mask[0], mask[1]) and not np.array_equal(mask[1], mask[2])


def test_the_reconstruction_loss_ignores_unmasked_voxels():
    target = torch.rand(1, 1, 4, 8, 8)
    mask = torch.zeros_like(target, dtype=torch.bool)
    mask[..., :4] = True
    prediction = target.clone()
    prediction[..., 4:] += 5.0
    prediction.requires_grad_(True)
    loss = masked_reconstruction_loss(prediction, target, mask)
    assert loss.item() == 0.0
    wrong = target.clone()
    wrong[..., :4] += 0.5
    assert masked_reconstruction_loss(wrong, target, mask).item() == pytest.approx(0.25)
    loss = masked_reconstruction_loss(prediction * 1.0 + 0.1, target, mask)
    loss.backward()
    assert (prediction.grad[..., 4:] == 0).all() and (prediction.grad[..., :4] != 0).all()


def write_pretrain_config(directory: Path, target: str, model: dict, patch_shape, mask: dict, iterations: int = 3) -> Path:
    config = {
        "target": target,
        "model": model,
        "volumes": [{"raw": "volume.h5/raw", "exclude_z": [[18, 24]]}],
        "mask": mask,
        "output_dir": f"pretrain_{target}",
        "patch_shape": list(patch_shape),
        "batch_size": 1,
        "iterations": iterations,
        "checkpoint_every": 2,
    }
    path = directory / f"pretrain_{target}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_pretraining_resumes_exactly_and_draws_its_reconstruction(tmp_path):
    write_volume(tmp_path / "volume.h5")
    whole = pretrain(load_pretrain_config(write_pretrain_config(tmp_path / ".", "fge", TINY_FGE, (4, 16, 16), {"patch": [2, 4, 4]}, 4)))
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    (resumed_dir / "volume.h5").symlink_to(tmp_path / "volume.h5")
    first = load_pretrain_config(write_pretrain_config(resumed_dir, "fge", TINY_FGE, (4, 16, 16), {"patch": [2, 4, 4]}, 2))
    pretrain(first)
    second = pretrain(first.model_copy(update={"iterations": 4}))
    assert second["last_loss"] == pytest.approx(whole["last_loss"], rel=1e-5)
    assert (Path(whole["output_dir"]) / "reconstruction.png").stat().st_size > 5_000


def test_a_pretrained_fge_is_where_training_starts(tmp_path):
    write_volume(tmp_path / "volume.h5")
    result = pretrain(load_pretrain_config(write_pretrain_config(tmp_path, "fge", TINY_FGE, (4, 16, 16), {"patch": [2, 4, 4]})))
    fresh = build_model(ModelConfig.model_validate(TINY_FGE))
    assert load_pretrained(fresh, result["checkpoint"]) == "fge"
    pretrained = torch.load(result["checkpoint"], weights_only=True)["state_dict"]
    for key, value in fresh.encoder.state_dict().items():
        torch.testing.assert_close(value, pretrained[f"encoder.{key}"])
    for key, value in fresh.decoder.state_dict().items():
        torch.testing.assert_close(value, pretrained[f"decoder.{key}"])

    train_path = write_train_config(tmp_path, iterations=1, model=TINY_FGE)
    edit = yaml.safe_load(train_path.read_text())
    edit["pretrained"] = [str(Path(result["checkpoint"]).relative_to(tmp_path))]
    train_path.write_text(yaml.safe_dump(edit))
    assert load_train_config(train_path).pretrained == [Path(result["checkpoint"])]
    assert train_from_config(train_path)["steps"] == 1


def test_a_pretrained_fge_does_not_fit_another_architecture(tmp_path):
    from neurosam.config import ConfigError

    write_volume(tmp_path / "volume.h5")
    result = pretrain(load_pretrain_config(write_pretrain_config(tmp_path, "fge", TINY_FGE, (4, 16, 16), {"patch": [2, 4, 4]}, 1)))
    other = build_model(ModelConfig.model_validate({**TINY_FGE, "fge": {"base_channels": 8, "downsample": [[1, 2, 2], [2, 2, 2]]}}))
    with pytest.raises(ConfigError, match="does not fit"):
        load_pretrained(other, result["checkpoint"])


def test_hiera_pretrains_slice_by_slice_and_loads_into_fgnet(tmp_path):
    write_volume(tmp_path / "volume.h5")
    model = {"architecture": "fgnet", "offsets": NEAREST_OFFSETS, "sam2": {"image_size": 64, "slice_batch": 4},
             "fge": {"base_channels": 4, "downsample": [[1, 2, 2], [2, 2, 2]]}, "guide_channels": 8}
    path = write_pretrain_config(tmp_path, "hiera", model, (2, 32, 32), {"patch": [1, 8, 8], "strategy": "intensity"}, 1)
    result = pretrain(load_pretrain_config(path))
    fgnet = build_model(ModelConfig.model_validate(model), load_sam2_weights=False)
    assert load_pretrained(fgnet, result["checkpoint"]) == "hiera"
    pretrained = torch.load(result["checkpoint"], weights_only=True)["state_dict"]
    for key, value in list(fgnet.backbone.encoder.state_dict().items())[:20]:
        torch.testing.assert_close(value, pretrained[f"backbone.encoder.{key}"])


def test_masked_image_modelling_trains_every_hiera_block():
    """The reconstruction reaches every block of Hiera and every convolution of the neck, not
    only the stride-4 level's first block."""
    from neurosam.training.pretraining import SliceReconstructor

    model = SliceReconstructor(ModelConfig(sam2={"image_size": 64, "slice_batch": 4}))
    raw = torch.rand(1, 1, 2, 64, 64)
    mask = torch.rand(raw.shape) < 0.5
    masked_reconstruction_loss(model(raw * ~mask), raw, mask).backward()
    encoder = model.backbone.encoder
    for index, block in enumerate(encoder.trunk.blocks):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters()), f"Hiera block {index}"
    for index, conv in enumerate(encoder.neck.convs):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in conv.parameters()), f"neck conv {index}"
