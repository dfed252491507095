"""The no-config recipe: one pure function of device, dataset size, image size and channels."""

from __future__ import annotations

from byol.config import load_config
from byol.recipes import CPU_BUDGET, SMALL_DATA, choose_recipe


def _cfg(overrides):
    def text(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ",".join(map(str, v)) + "]"
        return str(v)

    norm = {"augment.mean": [0.5] * overrides["model.in_chans"],
            "augment.std": [0.25] * overrides["model.in_chans"]}
    return load_config(None, [f"{k}={text(v)}" for k, v in {**overrides, **norm}.items()])


def test_cpu_small_data_is_the_quick_recipe_bounded_in_time():
    o, why = choose_recipe("cpu", 5000, 28, 1, labeled=True)
    quick = load_config("fmnist_quick")
    cfg = _cfg(o)  # every key is a valid setting
    for key in ("arch", "width", "small_stem", "proj_hidden_dim", "proj_dim", "pred_hidden_dim"):
        assert getattr(cfg.model, key) == getattr(quick.model, key), key
    for key in ("name", "base_lr", "eta", "weight_decay"):
        assert getattr(cfg.optim, key) == getattr(quick.optim, key), key
    # where the quick preset's sixth pass (stride 1, batch 128, tau 0.99, crops 50-100%) was
    # measured on data of another kind it won on generated shapes and lost 15 kNN points on
    # generated textures at equal wall time, so the recipe for unknown data keeps the settings
    # that did better on both (docs/RESULTS.md, sixth pass)
    assert (cfg.model.stem_stride, cfg.train.batch_size, cfg.train.tau_base) == (2, 64, 0.9)
    assert (quick.model.stem_stride, quick.train.batch_size, quick.train.tau_base) == (1, 128, 0.99)
    assert cfg.augment.view1.crop_scale == (0.2, 1.0)
    assert cfg.train.time_budget == CPU_BUDGET and cfg.model.in_chans == 1
    # 28 px: the paper's blur, as the quick preset (the study: removing it cost 3.8 points)
    assert cfg.augment.view1.blur_p == quick.augment.view1.blur_p == 1.0
    # below 28 px the stem keeps stride 1 (the last stage would shrink below 2x2); no blur
    # below 24 px
    o, _ = choose_recipe("cpu", 5000, 20, 3)
    assert o["model.stem_stride"] == 1 and o["augment.view1.blur_p"] == 0.0
    o, _ = choose_recipe("cuda", 5000, 32, 3)
    assert o["model.stem_stride"] == 1  # the GPU recipe keeps the papers' stem
    assert cfg.log.knn_every_steps > 0 and cfg.log.knn_queries <= 5000 // 5
    assert any("CPU" in w for w in why)


def test_gpu_or_large_data_is_the_full_recipe_scaled_by_image_size():
    o, _ = choose_recipe("cuda", 5000, 32, 3)
    cfg = _cfg(o)
    assert cfg.model.width == 64 and cfg.model.proj_hidden_dim == 4096
    assert cfg.train.time_budget == "" and cfg.train.epochs == 200
    assert cfg.model.small_stem and cfg.augment.view1.blur_p == 1.0  # 32 px: blur stays
    assert cfg.log.knn_every_steps == 0  # no labels, no monitor
    o, why = choose_recipe("cpu", SMALL_DATA, 224, 3)
    cfg = _cfg(o)
    assert cfg.model.arch == "resnet50" and not cfg.model.small_stem
    assert cfg.augment.view1.crop_scale == (0.08, 1.0) and any("slow on a CPU" in w for w in why)


def test_tiny_data_gets_a_batch_that_fits():
    o, _ = choose_recipe("cpu", 60, 20, 3)
    assert o["train.batch_size"] <= 30 and o["train.batch_size"] >= 2
