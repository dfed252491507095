"""Presets carry the SPEC's numbers; overrides, validation and error messages."""

from __future__ import annotations

import re

import pytest

from byol.config import Config, ConfigError, config_from_dict, dump_yaml, load_config, preset_names
from byol.optim import scaled_lr

# name -> (epochs, base_lr, weight_decay, tau_base, batch_size, accumulate, processes, precision)
# processes: the GPU count in the mmselfsup name; 8 for the paper / DeepMind presets (8 x 512).
IMAGENET = {
    "byol_resnet50_16xb256-coslr-200e_in1k": (200, 0.3, 1e-6, 0.99, 256, 1, 16, "fp32"),
    "byol_resnet50_8xb32-accum16-coslr-100e_in1k": (100, 0.3, 1e-6, 0.99, 32, 16, 8, "fp32"),
    "byol_resnet50_8xb32-accum16-coslr-200e_in1k": (200, 0.3, 1e-6, 0.99, 32, 16, 8, "fp32"),
    "byol_resnet50_8xb32-accum16-coslr-300e_in1k": (300, 0.3, 1e-6, 0.99, 32, 16, 8, "fp32"),
    "byol_resnet50_8xb256-amp-accum2-coslr-200e_in1k": (200, 0.3, 1e-6, 0.99, 256, 2, 8, "fp16"),
    "byol_resnet50_paper-1000e_in1k": (1000, 0.2, 1.5e-6, 0.996, 512, 1, 8, None),
    "byol_resnet50_deepmind-300e_in1k": (300, 0.3, 1e-6, 0.99, 512, 1, 8, None),
    "byol_resnet50_deepmind-100e_in1k": (100, 0.45, 1e-6, 0.99, 512, 1, 8, None),
    "byol_resnet50_deepmind-40e_in1k": (40, 0.45, 1e-6, 0.97, 512, 1, 8, None),
}


def test_preset_names_complete():
    names = preset_names()
    assert set(IMAGENET) | {"fmnist_full", "fmnist_quick"} <= set(names)
    assert not any(n.startswith("_") for n in names)  # the shared base is not a preset


@pytest.mark.parametrize("name", sorted(IMAGENET))
def test_imagenet_presets_match_spec(name):
    epochs, base_lr, wd, tau, batch, acc, procs, precision = IMAGENET[name]
    cfg = load_config(name)
    assert cfg.name == name
    assert cfg.train.epochs == epochs
    assert cfg.optim.base_lr == pytest.approx(base_lr)
    assert isinstance(cfg.optim.weight_decay, float)
    assert cfg.optim.weight_decay == pytest.approx(wd, rel=1e-12)
    assert cfg.train.tau_base == pytest.approx(tau)
    assert cfg.train.tau_final == 1.0
    assert (cfg.train.batch_size, cfg.train.accumulate) == (batch, acc)
    m = re.search(r"_(\d+)xb(\d+)", name)
    if m:  # mmselfsup name: GPUs x per-GPU batch
        assert (int(m.group(1)), int(m.group(2))) == (procs, batch)
        if "accum" in name:
            assert f"accum{acc}" in name
    assert batch * acc * procs == 4096
    assert scaled_lr(cfg.optim.base_lr, batch * acc * procs) == pytest.approx(base_lr * 16)
    if precision:
        assert cfg.train.precision == precision
    # shared ImageNet settings (SPEC: model, optimisation, augmentations)
    assert cfg.model.arch == "resnet50" and cfg.model.in_chans == 3
    assert not cfg.model.small_stem and cfg.model.width == 64
    assert (cfg.model.proj_hidden_dim, cfg.model.proj_dim, cfg.model.pred_hidden_dim) == (
        4096, 256, 4096)
    assert cfg.model.sync_bn
    o = cfg.optim
    assert (o.name, o.momentum, o.eta, o.warmup_epochs) == ("lars", 0.9, 1e-3, 10.0)
    assert o.exclude_bias_and_norm and o.final_lr == 0.0
    a = cfg.augment
    assert a.image_size == 224 and a.interpolation == "bicubic"
    assert a.mean == pytest.approx((0.485, 0.456, 0.406))
    assert a.std == pytest.approx((0.229, 0.224, 0.225))
    for v, blur, sol in ((a.view1, 1.0, 0.0), (a.view2, 0.1, 0.2)):
        assert v.crop_scale == (0.08, 1.0)
        assert v.crop_ratio == pytest.approx((3 / 4, 4 / 3))
        assert (v.flip_p, v.jitter_p, v.grayscale_p) == (0.5, 0.8, 0.2)
        assert (v.brightness, v.contrast, v.saturation, v.hue) == (0.4, 0.4, 0.2, 0.1)
        assert v.blur_sigma == (0.1, 2.0)
        assert (v.blur_p, v.solarize_p) == (blur, sol)
    assert cfg.data.source == "folder"


def test_mmselfsup_16xb256_peak_lr_is_4_8():
    cfg = load_config("byol_resnet50_16xb256-coslr-200e_in1k")
    assert scaled_lr(cfg.optim.base_lr, cfg.train.batch_size * 16) == pytest.approx(4.8)


@pytest.mark.parametrize("name", ["fmnist_full", "fmnist_quick"])
def test_fmnist_presets_load(name):
    cfg = load_config(name)
    assert cfg.name == name
    assert cfg.data.source == "fashion_mnist"
    assert cfg.model.in_chans == 1 and cfg.model.small_stem
    assert cfg.augment.image_size == 28
    assert len(cfg.augment.mean) == 1 and len(cfg.augment.std) == 1
    # fmnist_full is mmselfsup-style ResNet-18; the CPU quick preset the cheaper ResNet-10 (one
    # block per stage), its small stem at stride 1 as well (the sixth pass of the recipe study)
    assert (cfg.model.arch, cfg.model.stem_stride) == (
        ("resnet18", 1) if name == "fmnist_full" else ("resnet10", 1))


def test_fmnist_quick_inherits_and_overrides_full():
    full, quick = load_config("fmnist_full"), load_config("fmnist_quick")
    assert full.train.epochs == 200 and quick.train.epochs == 2
    assert full.model.width == 64 and quick.model.width == 16
    assert full.augment.view1.crop_scale == full.augment.view2.crop_scale == (0.2, 1.0)
    # the quick preset overrides the crop of both views and keeps the rest of each view
    assert quick.augment.view1.crop_scale == quick.augment.view2.crop_scale == (0.5, 1.0)
    assert quick.augment.view1.blur_p == full.augment.view1.blur_p == 1.0
    assert quick.augment.view2.solarize_p == full.augment.view2.solarize_p == 0.2
    assert quick.data.path == full.data.path


def test_every_preset_loads_and_round_trips(tmp_path):
    for name in preset_names():
        cfg = load_config(name)
        assert config_from_dict(cfg.to_dict()) == cfg
        path = tmp_path / f"{name}.yaml"
        path.write_text(dump_yaml(cfg))
        assert load_config(str(path)) == cfg


# ------------------------------------------------------------------------------------------
# overrides
# ------------------------------------------------------------------------------------------


def test_overrides_apply():
    cfg = load_config("fmnist_quick", ["optim.base_lr=0.5", "train.epochs=7",
                                       "augment.view2.solarize_p=0.3", "model.sync_bn=false",
                                       "augment.view1.crop_scale=[0.3, 0.9]"])
    assert cfg.optim.base_lr == 0.5
    assert cfg.train.epochs == 7
    assert cfg.augment.view2.solarize_p == 0.3
    assert cfg.augment.view1.solarize_p == 0.0  # the other view untouched
    assert cfg.model.sync_bn is False
    assert cfg.augment.view1.crop_scale == (0.3, 0.9)
    assert load_config(None, ["optim.base_lr=0.5"]).optim.base_lr == 0.5
    assert load_config(None).optim.base_lr == Config().optim.base_lr == 0.3


def test_unknown_key_names_key_and_lists_allowed():
    with pytest.raises(ConfigError) as e:
        load_config("fmnist_quick", ["optim.base_lrr=0.5"])
    msg = str(e.value)
    assert "optim.base_lrr" in msg
    for allowed in ("base_lr", "weight_decay", "momentum", "eta", "warmup_epochs"):
        assert allowed in msg
    with pytest.raises(ConfigError, match="trian"):
        load_config(None, ["trian.epochs=3"])
    with pytest.raises(ConfigError) as e:
        load_config(None, ["augment.view1.blur=0.5"])
    assert "augment.view1.blur" in str(e.value) and "blur_p" in str(e.value)


@pytest.mark.parametrize(
    "item, key",
    [
        ("train.batch_size=abc", "train.batch_size"),
        ("train.batch_size=2.5", "train.batch_size"),
        ("optim.base_lr=fast", "optim.base_lr"),
        ("model.sync_bn=maybe", "model.sync_bn"),
        ("augment.view1.crop_scale=0.5", "augment.view1.crop_scale"),
        ("augment.view1.crop_scale=[0.1, 0.5, 0.9]", "augment.view1.crop_scale"),
    ],
)
def test_ill_typed_values_name_the_key(item, key):
    with pytest.raises(ConfigError) as e:
        load_config("fmnist_quick", [item])
    assert f"'{key}'" in str(e.value)


@pytest.mark.parametrize(
    "item, key",
    [
        ("train.batch_size=0", "train.batch_size"),
        ("train.accumulate=0", "train.accumulate"),
        ("optim.base_lr=-0.1", "optim.base_lr"),
        ("optim.base_lr=0", "optim.base_lr"),
        ("train.tau_base=1.5", "train.tau_base"),
        ("augment.view1.flip_p=2", "augment.view1.flip_p"),
        ("augment.view2.solarize_p=-0.1", "augment.view2.solarize_p"),
        ("optim.weight_decay=-1e-6", "optim.weight_decay"),
        ("optim.momentum=1.0", "optim.momentum"),
        ("optim.name=adam", "optim.name"),
        ("train.epochs=0", "train.epochs"),
        ("augment.view1.crop_scale=[0.5, 0.1]", "augment.view1.crop_scale"),
        ("augment.view1.hue=0.7", "augment.view1.hue"),
        ("data.source=imagenet", "data.source"),
    ],
)
def test_impossible_values_name_the_key(item, key):
    with pytest.raises(ConfigError) as e:
        load_config("fmnist_quick", [item])
    assert f"'{key}'" in str(e.value)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError) as e:
        load_config("no_such_preset")
    assert "no_such_preset" in str(e.value) and "fmnist_quick" in str(e.value)


def test_yaml_exponent_without_dot_parses_as_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  weight_decay: 1e-6\n  base_lr: 2e-1\ntrain:\n  epochs: 30\n")
    cfg = load_config(str(path))
    assert isinstance(cfg.optim.weight_decay, float) and cfg.optim.weight_decay == 1e-6
    assert isinstance(cfg.optim.base_lr, float) and cfg.optim.base_lr == 0.2
    cfg = load_config(None, ["optim.weight_decay=1e-5"])
    assert isinstance(cfg.optim.weight_decay, float) and cfg.optim.weight_decay == 1e-5


def test_yaml_base_inheritance(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("_base_: fmnist_quick\ntrain:\n  epochs: 9\n")
    cfg = load_config(str(path))
    assert cfg.train.epochs == 9
    assert cfg.model.width == 16  # from fmnist_quick
    assert cfg.train.batch_size == 128 and cfg.train.time_budget == "8m"  # from fmnist_quick


def test_optional_bool_accepts_bool_and_null():
    cfg = load_config(None, ["train.channels_last=false", "data.in_memory=true"])
    assert cfg.train.channels_last is False and cfg.data.in_memory is True
    cfg = load_config(None, ["train.channels_last=null"])
    assert cfg.train.channels_last is None


@pytest.mark.parametrize(
    "item, key",
    [
        ("train.channels_last=maybe", "train.channels_last"),
        ("data.in_memory=abc", "data.in_memory"),
        ("data.in_memory=3", "data.in_memory"),
    ],
)
def test_optional_bool_rejects_non_bool(item, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [item])
    assert f"'{key}'" in str(e.value)


def test_stem_stride_is_checked_and_names_the_key():
    with pytest.raises(ConfigError, match="model.stem_stride.*must be 1 or 2"):
        load_config("fmnist_quick", ["model.stem_stride=3"])
    # the stride belongs to the small stem: with the standard stem it is moot (a recipe's
    # stride-2 choice must not break a user's model.small_stem=false)
    from byol.models import build_byol

    cfg = load_config("fmnist_quick", ["model.stem_stride=2", "model.small_stem=false"])
    assert build_byol(cfg.model).backbone.conv1.kernel_size == (7, 7)
    cfg = load_config("fmnist_cpu1h")
    assert (cfg.model.stem_stride, cfg.model.small_stem, cfg.model.width,
            cfg.model.last_stage_width) == (1, True, 16, 512)
    assert (cfg.model.feature_bn, cfg.model.feature_whiten) == (True, 0.01)
    quick = load_config("fmnist_quick").model  # the README's job keeps torchvision's features
    assert (quick.feature_bn, quick.feature_whiten) == (False, 0.0)


def test_last_stage_width_is_checked():
    from byol.config import Config, validate
    from byol.errors import ConfigError

    cfg = Config()
    cfg.model.last_stage_width = -8
    with pytest.raises(ConfigError, match="model.last_stage_width"):
        validate(cfg)
    cfg.model.last_stage_width, cfg.model.arch = 256, "timm:resnet18"
    with pytest.raises(ConfigError, match="timm"):
        validate(cfg)
    cfg.model.last_stage_width, cfg.model.feature_bn = 0, True
    with pytest.raises(ConfigError, match="model.feature_bn.*timm"):
        validate(cfg)
    cfg.model.arch = "resnet18"
    validate(cfg)
    assert Config().model.feature_bn is False  # torchvision's ResNet unless a preset asks
