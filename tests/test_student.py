"""The distilled student: the teacher's feature shapes at a fraction of its parameters, the
mutual EMA as its formula says, and a student that FGNet and the pipeline use in SAM2's place."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from neurosam.affinities import NEAREST_OFFSETS
from neurosam.model.build import build_model
from neurosam.model.config import ModelConfig, Sam2Config, StudentConfig
from neurosam.model.sam2_backbone import Sam2Backbone, build_image_encoder
from neurosam.model.student import StudentBackbone, StudentEncoder
from neurosam.training.distillation import distill, load_distill_config, mutual_ema
from neurosam.training.pretraining import load_pretrained
from test_training import write_volume

STUDENT_FGNET = {
    "architecture": "fgnet", "backbone": "student", "offsets": NEAREST_OFFSETS,
    "sam2": {"image_size": 64, "slice_batch": 4}, "fge": {"base_channels": 4, "downsample": [[1, 2, 2], [2, 2, 2]]}, "guide_channels": 8,
}


def test_the_student_gives_the_teachers_feature_shapes():
    slices = Sam2Config(image_size=64)
    raw = torch.rand(1, 1, 3, 40, 56)
    teacher = [level.shape for level in Sam2Backbone(slices, load_weights=False).eval()(raw)]
    student = [level.shape for level in StudentBackbone(StudentConfig(), slices).eval()(raw)]
    assert student == teacher


def test_the_student_has_at_most_5_percent_of_hiera_tinys_parameters():
    teacher = sum(p.numel() for p in build_image_encoder("tiny", "2.1", 64).parameters())
    student = sum(p.numel() for p in StudentEncoder(StudentConfig()).parameters())
    assert student <= 0.05 * teacher


def test_mutual_ema_moves_each_towards_the_other_as_its_formula_says():
    torch.manual_seed(0)
    first, second = StudentEncoder(StudentConfig()), StudentEncoder(StudentConfig())
    a, b = ({k: v.clone() for k, v in m.state_dict().items()} for m in (first, second))
    mutual_ema(first, second, momentum=0.9)
    for key, value in first.state_dict().items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(value, 0.9 * a[key] + 0.1 * b[key])
            torch.testing.assert_close(second.state_dict()[key], 0.9 * b[key] + 0.1 * a[key])
        else:
            assert torch.equal(value, a[key])


def test_distillation_in_two_stages_makes_a_student_fgnet_starts_from(tmp_path):
    import matplotlib.image

    write_volume(tmp_path / "volume.h5")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        matplotlib.image.imsave(images / f"image{index}.png", rng.random((70, 90)), cmap="gray")
    config = {
        "teacher": {"image_size": 64}, "generic_images": "images", "volumes": [{"raw": "volume.h5/raw"}],
        "generic_iterations": 2, "em_iterations": 2, "batch_size": 2, "output_dir": "distilled", "ema_momentum": 0.5,
    }
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(config))
    result = distill(load_distill_config(path))
    log = (tmp_path / "distilled" / "distill_log.csv").read_text().splitlines()
    assert [line.split(",")[1] for line in log[1:]] == ["generic", "generic", "em", "em"]
    assert all(line.split(",")[3] for line in log[3:]), "the EM stage trained the EM encoder"

    model = build_model(ModelConfig.model_validate(STUDENT_FGNET))
    assert load_pretrained(model, result["checkpoint"]) == "student"
    saved = torch.load(result["checkpoint"], weights_only=True)["state_dict"]
    for key, value in model.backbone.encoder.state_dict().items():
        torch.testing.assert_close(value, saved[f"backbone.encoder.{key}"])
    outputs = model.eval()(torch.rand(1, 1, 4, 32, 32))
    assert outputs["refined"].shape == outputs["coarse"].shape == (1, len(NEAREST_OFFSETS), 4, 32, 32)

    sam2_fgnet = build_model(ModelConfig.model_validate({**STUDENT_FGNET, "backbone": "sam2"}), load_sam2_weights=False)
    from neurosam.config import ConfigError

    with pytest.raises(ConfigError, match="does not fit"):
        load_pretrained(sam2_fgnet, result["checkpoint"])


def test_a_student_fgnet_checkpoint_predicts_as_the_pipeline_loads_it(tmp_path):
    from neurosam.model.build import load_model, save_checkpoint
    from neurosam.model.inference import predict_volume

    config = ModelConfig.model_validate(STUDENT_FGNET)
    save_checkpoint(tmp_path / "student_fgnet.pt", build_model(config), config, extra={"voxel_size": [10, 10, 10]})
    model, loaded, _ = load_model(tmp_path / "student_fgnet.pt")
    assert loaded.backbone == "student" and isinstance(model.backbone, StudentBackbone)
    affinities = predict_volume(model.eval(), np.random.default_rng(0).random((8, 48, 48)).astype(np.float32), (4, 32, 32), (0, 4, 4), torch.device("cpu"))
    assert affinities.shape == (len(NEAREST_OFFSETS), 8, 48, 48)


@pytest.mark.parametrize("trainable", ["frozen", "all"])
def test_a_frozen_student_keeps_what_distillation_taught(trainable):
    model = build_model(ModelConfig.model_validate({**STUDENT_FGNET, "sam2": {**STUDENT_FGNET["sam2"], "trainable": trainable}})).train()
    before = {name: value.clone() for name, value in model.backbone.encoder.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    sum(logits.mean() for logits in model(torch.rand(1, 1, 4, 32, 32)).values()).backward()
    optimizer.step()
    changed = [name for name, value in model.backbone.encoder.state_dict().items() if not torch.equal(before[name], value)]
    assert (changed == []) == (trainable == "frozen")
    assert model.backbone.encoder.training == (trainable == "all")


def test_the_generic_stage_uses_scikit_images_natural_images_and_the_mutual_ema(tmp_path):
    from neurosam.training.distillation import SKIMAGE_IMAGES, read_images

    images = read_images("skimage")
    assert len(images) == len(SKIMAGE_IMAGES) >= 15
    assert all(image.ndim == 2 and image.dtype == np.float32 and 0.0 <= image.min() < image.max() <= 1.0 for image in images)

    write_volume(tmp_path / "volume.h5")
    config = {
        "teacher": {"image_size": 32}, "student": {"widths": [4, 4, 8, 8]}, "generic_images": "skimage",
        "volumes": [{"raw": "volume.h5/raw"}], "generic_iterations": 1, "em_iterations": 2, "batch_size": 2,
        "output_dir": "distilled", "ema_momentum": 0.5,
    }
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_distill_config(path)
    assert loaded.generic_images == "skimage"
    distill(loaded)
    rows = [line.split(",") for line in (tmp_path / "distilled" / "distill_log.csv").read_text().splitlines()[1:]]
    assert [row[1] for row in rows] == ["generic", "em", "em"]
    assert all(row[2] for row in rows) and all(row[3] for row in rows[1:]), "both students learn in the EM stage"
    saved = torch.load(tmp_path / "distilled" / "student.pt", weights_only=True)
    em = {key.removeprefix("backbone.encoder."): value for key, value in saved["state_dict"].items()}
    general = saved["general"]
    assert any(not torch.equal(em[key], general[key]) for key in general), "two students, pulled together, not one"

    auto_prompted = build_model(ModelConfig.model_validate({**STUDENT_FGNET, "auto_prompt": True, "student": config["student"]}))
    assert load_pretrained(auto_prompted, tmp_path / "distilled" / "student.pt") == "student"
    for key, value in auto_prompted.auto_prompt.backbone.encoder.state_dict().items():
        torch.testing.assert_close(value, general[key])
    for key, value in auto_prompted.backbone.encoder.state_dict().items():
        torch.testing.assert_close(value, em[key])


def test_auto_prompting_the_general_students_prediction_prompts_the_em_model():
    torch.manual_seed(0)
    model = build_model(ModelConfig.model_validate({**STUDENT_FGNET, "auto_prompt": True})).eval()
    with torch.no_grad():
        for attention in model.attention:
            attention.gain.fill_(1.0)
    raw = torch.rand(1, 1, 4, 32, 32)
    outputs = model(raw)
    assert set(outputs) == {"refined", "coarse", "prompt"}
    assert outputs["prompt"].shape == outputs["refined"].shape == (1, len(NEAREST_OFFSETS), 4, 32, 32)
    with torch.no_grad():
        model.auto_prompt.head.bias.add_(5.0)
    prompted = model(raw)
    assert not torch.allclose(prompted["coarse"], outputs["coarse"]), "the prompt steers the EM model's guide"
    assert not torch.allclose(prompted["refined"], outputs["refined"])
    with pytest.raises(ValueError, match="auto_prompt needs backbone: student"):
        ModelConfig.model_validate({**STUDENT_FGNET, "backbone": "sam2", "auto_prompt": True})
