"""The network: SAM2 backbone and its checkpoints, output contract of every architecture,
trainable parts, and neurosam checkpoints that rebuild the model from the file alone."""

from __future__ import annotations

import logging

import pytest
import torch
from pydantic import ValidationError

from neurosam.affinities import NEAREST_OFFSETS
from neurosam.model.build import ModelCheckpointError, build_model, load_model, save_checkpoint
from neurosam.model.config import ModelConfig, Sam2Config
from neurosam.model.fge import FineGrainedEncoder
from neurosam.model.sam2_backbone import Sam2Backbone, Sam2CheckpointError, build_image_encoder

IMAGE_SIZE = 32
SMALL_FGE = {"base_channels": 4, "downsample": [[1, 2, 2], [2, 2, 2]]}
SMALL_UNET = {"base_channels": 4, "channel_multiplier": 2, "downsample": [[1, 2, 2], [2, 2, 2]]}


def write_official_checkpoint(path, variant: str, version: str = "2.1") -> dict[str, torch.Tensor]:
    """An official-format SAM2 file ({"model": ...}, encoder under image_encoder.) from a fresh
    encoder, with a random pos_embed so that loading it is visible; returns the encoder state."""
    torch.manual_seed(0)
    encoder = build_image_encoder(variant, version, IMAGE_SIZE)
    with torch.no_grad():
        encoder.trunk.pos_embed.normal_()
    state = encoder.state_dict()
    model_state = {f"image_encoder.{key}": value for key, value in state.items()}
    model_state["sam_mask_decoder.conv_s0.weight"] = torch.zeros(32, 256, 1, 1)
    torch.save({"model": model_state}, path)
    return state


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt"
    return path, write_official_checkpoint(path, "tiny")


def small_config(architecture: str, **sam2) -> ModelConfig:
    return ModelConfig(
        architecture=architecture,
        sam2={"image_size": IMAGE_SIZE, "slice_batch": 3, **sam2},
        fge=SMALL_FGE,
        unet=SMALL_UNET,
        guide_channels=8,
    )


@pytest.mark.parametrize(
    "variant, version",
    [("tiny", "2.1"), ("tiny", "2"), ("small", "2.1"), ("base_plus", "2.1"), ("large", "2")],
)
def test_sam2_backbone_loads_official_checkpoint(tmp_path, variant, version):
    path = tmp_path / "sam2.pt"
    state = write_official_checkpoint(path, variant, version)
    backbone = Sam2Backbone(Sam2Config(variant=variant, version=version, checkpoint=path, image_size=IMAGE_SIZE))
    path.unlink()

    loaded = backbone.encoder.state_dict()
    assert torch.equal(loaded["trunk.pos_embed"], state["trunk.pos_embed"])
    assert torch.equal(loaded["neck.convs.3.conv.weight"], state["neck.convs.3.conv.weight"])
    with torch.no_grad():
        levels = backbone(torch.rand(1, 1, 2, 40, 24))
    assert [tuple(level.shape) for level in levels] == [(1, 256, 2, 8, 8), (1, 256, 2, 4, 4), (1, 256, 2, 2, 2)]
    assert all(level.dtype == torch.float32 and torch.isfinite(level).all() for level in levels)


def test_sam2_features_are_stacked_slice_by_slice(tiny_checkpoint):
    backbone = Sam2Backbone(Sam2Config(variant="tiny", checkpoint=tiny_checkpoint[0], image_size=IMAGE_SIZE, slice_batch=3))
    raw = torch.rand(2, 1, 4, 16, 24)
    with torch.no_grad():
        levels = backbone(raw)
        for batch, z in [(0, 0), (0, 3), (1, 1), (1, 3)]:
            alone = backbone.encode_slices(raw[batch : batch + 1, :, z])
            for level, level_alone in zip(levels, alone):
                torch.testing.assert_close(level[batch, :, z], level_alone[0], rtol=1e-4, atol=1e-4)


def test_sam2_without_checkpoint_is_random_and_says_so(caplog):
    with caplog.at_level(logging.WARNING):
        backbone = Sam2Backbone(Sam2Config(variant="tiny", image_size=IMAGE_SIZE))
    assert "randomly initialised" in caplog.text
    assert backbone.encoder.trunk.pos_embed.abs().sum() == 0


def test_sam2_checkpoint_errors_name_the_file_and_the_fault(tmp_path, tiny_checkpoint):
    tiny_path, tiny_state = tiny_checkpoint

    missing = tmp_path / "absent.pt"
    with pytest.raises(Sam2CheckpointError, match="absent.pt does not exist"):
        Sam2Backbone(Sam2Config(variant="tiny", checkpoint=missing, image_size=IMAGE_SIZE))

    with pytest.raises(Sam2CheckpointError, match=r"is a 'tiny' encoder, but the config asks for 'small'"):
        Sam2Backbone(Sam2Config(variant="small", checkpoint=tiny_path, image_size=IMAGE_SIZE))

    renamed = {f"image_encoder.{key}": value for key, value in tiny_state.items()}
    renamed["image_encoder.neck.convs.0.conv.kernel"] = renamed.pop("image_encoder.neck.convs.0.conv.weight")
    corrupted = tmp_path / "renamed.pt"
    torch.save({"model": renamed}, corrupted)
    with pytest.raises(Sam2CheckpointError, match=r"renamed.pt .*1 missing keys \['neck.convs.0.conv.weight'\]"):
        Sam2Backbone(Sam2Config(variant="tiny", checkpoint=corrupted, image_size=IMAGE_SIZE))

    reshaped = {f"image_encoder.{key}": value for key, value in tiny_state.items()}
    reshaped["image_encoder.neck.convs.1.conv.weight"] = torch.zeros(256, 100, 1, 1)
    wrong_shape = tmp_path / "reshaped.pt"
    torch.save({"model": reshaped}, wrong_shape)
    with pytest.raises(Sam2CheckpointError, match=r"reshaped.pt .*wrong shape.*neck.convs.1.conv.weight"):
        Sam2Backbone(Sam2Config(variant="tiny", checkpoint=wrong_shape, image_size=IMAGE_SIZE))

    not_sam2 = tmp_path / "not_sam2.pt"
    torch.save({"state_dict": {}}, not_sam2)
    with pytest.raises(Sam2CheckpointError, match="not_sam2.pt is not a SAM2 checkpoint"):
        Sam2Backbone(Sam2Config(variant="tiny", checkpoint=not_sam2, image_size=IMAGE_SIZE))

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(Sam2CheckpointError, match="garbage.pt is not a readable torch file"):
        Sam2Backbone(Sam2Config(variant="tiny", checkpoint=garbage, image_size=IMAGE_SIZE))


def test_config_defaults_and_validation():
    config = ModelConfig()
    assert config.offsets[:3] == NEAREST_OFFSETS
    assert config.num_channels == len(config.offsets) > 3
    assert config.fge.kernel_sizes == [(1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3)]
    assert config.fge.input_multiple == (2, 8, 8)
    with pytest.raises(ValidationError, match="multiple of 32"):
        Sam2Config(image_size=100)
    with pytest.raises(ValidationError, match="extra"):
        ModelConfig(fge={"base_channels": 8, "width": 3})
    with pytest.raises(ValidationError, match="non-zero"):
        ModelConfig(offsets=[[0, 0, 0]])


@pytest.mark.parametrize("architecture", ["fgnet", "fge", "unet"])
@pytest.mark.parametrize("shape", [(4, 32, 48), (2, 16, 24)])
def test_outputs_are_logits_of_the_input_shape(architecture, shape):
    config = small_config(architecture)
    model = build_model(config)
    assert model.input_multiple == (2, 4, 4)
    outputs = model(torch.rand(2, 1, *shape))
    expected_heads = {"refined", "coarse"} if architecture == "fgnet" else {"refined"}
    assert set(outputs) == expected_heads
    for logits in outputs.values():
        assert logits.shape == (2, config.num_channels, *shape)
        assert logits.dtype == torch.float32
        assert torch.isfinite(logits).all()


def test_in_plane_levels_convolve_within_sections():
    shape = ModelConfig(fge={"base_channels": 4, "downsample": [[1, 2, 2], [1, 2, 2], [2, 2, 2]]}).fge
    encoder = FineGrainedEncoder(shape)
    z_extents = [
        [module.kernel_size[0] for module in stage.modules() if isinstance(module, torch.nn.Conv3d)]
        for stage in encoder.stages
    ]
    assert z_extents == [[1, 1, 1], [1, 1, 1], [1, 3, 3], [2, 3, 3]]


def parameters_after_one_step(model: torch.nn.Module) -> tuple[dict, dict]:
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    outputs = model(torch.rand(1, 1, 2, 16, 16))
    sum(logits.mean() for logits in outputs.values()).backward()
    optimizer.step()
    return before, dict(model.named_parameters())


def test_frozen_sam2_stays_unchanged_while_the_rest_trains():
    model = build_model(small_config("fgnet", trainable="frozen"))
    with torch.no_grad():
        for gain in gains(model):
            gain.fill_(0.5)  # a fresh gain of 0 keeps the attention's own first gradient at 0
    before, after = parameters_after_one_step(model)
    for name, parameter in after.items():
        changed = not torch.equal(before[name], parameter)
        assert changed != name.startswith("backbone."), name
    assert not model.backbone.encoder.training


def test_last_stages_trains_only_the_last_hiera_stages_and_the_neck():
    model = build_model(small_config("fgnet", trainable="last_stages", trainable_stages=1))
    first_of_last_stage = model.backbone.encoder.trunk.stage_ends[-2] + 1
    trained_prefixes = tuple(
        f"backbone.encoder.trunk.blocks.{block}." for block in range(first_of_last_stage, len(model.backbone.encoder.trunk.blocks))
    ) + ("backbone.encoder.neck.",)
    before, after = parameters_after_one_step(model)
    backbone_names = [name for name in after if name.startswith("backbone.")]
    for name in backbone_names:
        changed = not torch.equal(before[name], after[name])
        trained = name.startswith(trained_prefixes)
        # neck.convs.0 reads the stride-32 level, which reaches the outputs only via top-down
        # fusion into level 2: it trains too.
        assert changed == trained, name
    assert any(name.startswith("backbone.encoder.trunk.blocks.0.") for name in backbone_names)


@pytest.mark.parametrize("architecture", ["fgnet", "fge", "unet"])
def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path, tiny_checkpoint, architecture):
    sam2_copy = tmp_path / "sam2.pt"
    sam2_copy.write_bytes(tiny_checkpoint[0].read_bytes())
    config = small_config(architecture, checkpoint=sam2_copy)
    model = build_model(config)
    parameters_after_one_step(model)
    model.eval()
    path = tmp_path / "model" / "checkpoint.pt"
    save_checkpoint(path, model, config, extra={"step": 7, "optimizer": {"lr": torch.tensor(0.1)}})
    sam2_copy.unlink()

    loaded, loaded_config, extra = load_model(path)
    loaded.eval()
    assert loaded_config == config
    assert extra["step"] == 7 and torch.equal(extra["optimizer"]["lr"], torch.tensor(0.1))
    raw = torch.rand(1, 1, 4, 16, 24)
    with torch.no_grad():
        expected, actual = model(raw), loaded(raw)
    assert set(expected) == set(actual)
    for head in expected:
        assert torch.equal(expected[head], actual[head])


def test_load_model_errors(tmp_path):
    with pytest.raises(ModelCheckpointError, match="nothing.pt does not exist"):
        load_model(tmp_path / "nothing.pt")
    torch.save({"model": {}}, tmp_path / "sam2_like.pt")
    with pytest.raises(ModelCheckpointError, match="sam2_like.pt is not a neurosam model checkpoint"):
        load_model(tmp_path / "sam2_like.pt")


class RandomFeatures(torch.nn.Module):
    """Stands in for the slice encoder: other guide features than the model's own."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, raw):
        return [torch.randn_like(level) for level in self.backbone(raw)]


def gains(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [attention.gain for attention in model.attention] + [model.decoder.coarse_gain]


def test_a_fresh_fgnet_is_its_fge_and_the_guide_counts_once_its_gain_is_not_zero():
    torch.manual_seed(0)
    model = build_model(small_config("fgnet")).eval()
    raw = torch.rand(1, 1, 4, 32, 32)
    guided = model(raw)["refined"]
    model.backbone = RandomFeatures(model.backbone)
    assert torch.equal(model(raw)["refined"], guided)
    with torch.no_grad():
        for gain in gains(model):
            gain.fill_(0.5)
    assert not torch.allclose(model(raw)["refined"], model(raw)["refined"])


def test_the_gain_learns_from_the_first_step():
    model = build_model(small_config("fgnet"))
    sum(logits.mean() for logits in model(torch.rand(1, 1, 4, 32, 32)).values()).backward()
    assert all(gain.grad is not None and gain.grad.abs() > 0 for gain in gains(model))


def test_fgnet_checkpoints_from_before_the_gain_load_with_the_guide_at_full_strength(tmp_path):
    config = small_config("fgnet")
    model = build_model(config)
    save_checkpoint(tmp_path / "model.pt", model, config)
    checkpoint = torch.load(tmp_path / "model.pt", weights_only=True)
    checkpoint["state_dict"] = {name: value for name, value in checkpoint["state_dict"].items() if "gain" not in name}
    torch.save(checkpoint, tmp_path / "older.pt")
    loaded, _, _ = load_model(tmp_path / "older.pt")
    assert all(gain.item() == 1.0 for gain in gains(loaded))


def test_the_shipped_model_still_loads():
    from pathlib import Path

    model, config, extra = load_model(Path(__file__).resolve().parents[1] / "neurosam" / "models" / "medulla_unet.pt")
    assert config.architecture == "unet" and extra["voxel_size"] == [10, 10, 10]


def test_slices_at_a_fixed_physical_scale_grow_with_the_tile():
    from neurosam.model.student import StudentBackbone
    from neurosam.model.config import StudentConfig

    backbone = StudentBackbone(StudentConfig(), Sam2Config(pixels_per_voxel=4 / 3))
    assert backbone.image_shape(48, 48) == (64, 64) and backbone.image_shape(96, 144) == (128, 192)
    levels = backbone.eval()(torch.rand(1, 1, 2, 96, 144))
    assert [tuple(level.shape[-2:]) for level in levels] == [(32, 48), (16, 24), (8, 12)]
    with pytest.raises(ValueError, match="whole multiples of 32 px"):
        backbone.image_shape(40, 48)
    fixed_size = StudentBackbone(StudentConfig(), Sam2Config(image_size=64))
    assert fixed_size.pixels_per_voxel(48, 48) == [4 / 3, 4 / 3] and fixed_size.pixels_per_voxel(96, 96) == [2 / 3, 2 / 3]
