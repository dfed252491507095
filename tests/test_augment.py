"""The batched BYOL view pipelines against torchvision's single-image semantics."""

from __future__ import annotations

import colorsys

import pytest
import torch
import torchvision.transforms.functional as TF

from byol import augment as A
from byol.augment import (
    BYOLAugment,
    blur_kernel_size,
    color_jitter,
    crop_boxes,
    gaussian_blur,
    grayscale,
    random_resized_crop_flip,
    solarize,
)
from byol.config import AugmentConfig, ViewConfig


def _images(n=8, c=3, side=16, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, side, side), generator=g, dtype=torch.uint8)


def _plain_cfg(size=12, chans=3, **view_kw) -> AugmentConfig:
    """Mean 0 / std 1 so outputs are the [0, 1] images before normalisation."""
    cfg = AugmentConfig(image_size=size, mean=(0.0,) * chans, std=(1.0,) * chans)
    for k, v in view_kw.items():
        setattr(cfg.view1, k, v)
        setattr(cfg.view2, k, v)
    return cfg


def _identity_view() -> dict:
    return dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)


# ------------------------------------------------------------------------------------------
# shapes, dtypes, ranges, normalisation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chans", [1, 3])
def test_views_shape_dtype_range(chans):
    aug = BYOLAugment(_plain_cfg(12, chans), chans)
    v1, v2 = aug(_images(8, chans, 20), torch.Generator().manual_seed(0))
    for v in (v1, v2):
        assert v.shape == (8, chans, 12, 12) and v.dtype == torch.float32
        assert v.min() >= 0.0 and v.max() <= 1.0
        assert v.std() > 0.01  # not a constant image
    assert not torch.equal(v1, v2)


def test_normalisation_uses_mean_and_std():
    cfg = _plain_cfg(16, **_identity_view())
    imgs = _images(4, 3, 16)
    raw = BYOLAugment(cfg, 3).view(imgs, cfg.view1)
    cfg.mean, cfg.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    norm = BYOLAugment(cfg, 3).view(imgs, cfg.view1)
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    torch.testing.assert_close(norm, (raw - mean) / std)
    # a single mean/std value is broadcast over the channels of 1-channel data
    cfg1 = _plain_cfg(16, 1, **_identity_view())
    cfg1.mean, cfg1.std = (0.5,), (0.25,)
    one = BYOLAugment(cfg1, 1).view(_images(2, 1, 16), cfg1.view1)
    torch.testing.assert_close(one, (_images(2, 1, 16).float() / 255 - 0.5) / 0.25)


# ------------------------------------------------------------------------------------------
# crops and flips
# ------------------------------------------------------------------------------------------


def test_identity_settings_reproduce_input():
    imgs = _images(6, 3, 16)
    for interp in ("bicubic", "bilinear"):
        cfg = _plain_cfg(16, **_identity_view())
        cfg.interpolation = interp
        v1, v2 = BYOLAugment(cfg, 3)(imgs, torch.Generator().manual_seed(3))
        torch.testing.assert_close(v1, imgs.float() / 255, rtol=0, atol=1e-5)
        torch.testing.assert_close(v2, imgs.float() / 255, rtol=0, atol=1e-5)


def test_flip_p_one_flips():
    x = _images(5, 3, 10).float() / 255
    out = random_resized_crop_flip(x, 10, (1.0, 1.0), (1.0, 1.0), flip_p=1.0,
                                   interpolation="bilinear")
    torch.testing.assert_close(out, x.flip(-1), rtol=0, atol=1e-5)
    assert not torch.allclose(out, x, atol=1e-3)
    # flip_p = 0.5 flips some but not all of 200 samples
    x = _images(200, 1, 6).float() / 255
    out = random_resized_crop_flip(x, 6, (1.0, 1.0), (1.0, 1.0), flip_p=0.5,
                                   generator=torch.Generator().manual_seed(0),
                                   interpolation="bilinear")
    flipped = (out - x.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    kept = (out - x).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert bool((flipped ^ kept).all())
    assert 70 < int(flipped.sum()) < 130


def test_per_sample_crops_differ_for_identical_images():
    img = _images(1, 3, 32)
    batch = img.expand(4, -1, -1, -1).contiguous()
    cfg = _plain_cfg(16)
    aug = BYOLAugment(cfg, 3)
    v1, v2 = aug(batch, torch.Generator().manual_seed(0))
    for v in (v1, v2):
        for i in range(4):
            for j in range(i + 1, 4):
                assert not torch.allclose(v[i], v[j], atol=1e-3)


def test_crop_boxes_within_bounds_and_scale():
    n, h, w = 4000, 40, 30
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    boxes = crop_boxes(n, h, w, scale, ratio, torch.Generator().manual_seed(0))
    x0, y0, bw, bh = boxes.unbind(1)
    assert boxes.shape == (n, 4) and boxes.dtype == torch.float32
    assert bool((x0 >= 0).all() and (y0 >= 0).all())
    assert bool((x0 + bw <= w).all() and (y0 + bh <= h).all())
    assert bool((bw >= 1).all() and (bh >= 1).all())
    assert torch.equal(boxes, boxes.round())  # integer pixel boxes, as torchvision
    frac = bw * bh / (h * w)
    # rounding w and h to whole pixels moves the area a little
    slack = (bw + bh + 1) / (h * w)
    assert bool((frac >= scale[0] - slack).all() and (frac <= scale[1] + slack).all())
    aspect = bw / bh
    assert bool((aspect >= ratio[0] * 0.85).all() and (aspect <= ratio[1] / 0.85).all())
    # areas spread over the range and positions vary
    assert frac.min() < 0.12 and frac.max() > 0.9
    assert len(torch.unique(x0)) > 10 and len(torch.unique(y0)) > 10
    # a narrow scale gives narrow areas
    b2 = crop_boxes(1000, 64, 64, (0.5, 0.5), (1.0, 1.0), torch.Generator().manual_seed(1))
    f2 = b2[:, 2] * b2[:, 3] / 64**2
    assert bool(((f2 - 0.5).abs() < 0.03).all())


# ------------------------------------------------------------------------------------------
# blur and solarize probabilities
# ------------------------------------------------------------------------------------------


def _record_changes(monkeypatch, fn_name: str) -> list[torch.Tensor]:
    """Wrap an op of the pipeline; record, per call, which samples it changed."""
    original = getattr(A, fn_name)
    calls: list[torch.Tensor] = []

    def wrapper(x, *args, **kwargs):
        out = original(x, *args, **kwargs)
        calls.append((out - x).abs().amax(dim=(1, 2, 3)) > 1e-6)
        return out

    monkeypatch.setattr(A, fn_name, wrapper)
    return calls


def test_blur_and_solarize_fractions_per_view(monkeypatch):
    blur_calls = _record_changes(monkeypatch, "gaussian_blur")
    sol_calls = _record_changes(monkeypatch, "solarize")
    cfg = _plain_cfg(8)  # the paper's view probabilities (the defaults)
    # sigma near 0.1 leaves an image unchanged to float precision: keep every blur visible
    cfg.view1.blur_sigma = cfg.view2.blur_sigma = (1.0, 2.0)
    assert (cfg.view1.blur_p, cfg.view2.blur_p) == (1.0, 0.1)
    assert (cfg.view1.solarize_p, cfg.view2.solarize_p) == (0.0, 0.2)
    aug = BYOLAugment(cfg, 3)
    imgs = _images(3000, 3, 8)
    aug(imgs, torch.Generator().manual_seed(0))
    assert len(blur_calls) == 2 and len(sol_calls) == 2  # view1 then view2
    b1, b2 = (c.float().mean().item() for c in blur_calls)
    s1, s2 = (c.float().mean().item() for c in sol_calls)
    # binomial std for n=3000: p=0.1 -> 0.0055, p=0.2 -> 0.0073
    assert b1 > 0.995
    assert abs(b2 - 0.1) < 0.025
    assert s1 == 0.0
    assert abs(s2 - 0.2) < 0.03


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_gaussian_blur_probability(p):
    x = torch.rand(4000, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    y = gaussian_blur(x, p, (1.0, 2.0), 3, torch.Generator().manual_seed(1))
    frac = ((y - x).abs().amax(dim=(1, 2, 3)) > 1e-6).float().mean().item()
    assert abs(frac - p) < 0.03


def test_gaussian_blur_matches_torchvision():
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for sigma, k in ((0.7, 3), (1.3, 5), (2.0, 7)):
        y = gaussian_blur(x, 1.0, (sigma, sigma), k)
        torch.testing.assert_close(y, TF.gaussian_blur(x, [k, k], [sigma, sigma]),
                                   rtol=0, atol=1e-5)


def test_solarize_values_and_probability():
    x = torch.tensor([0.0, 0.2, 0.49, 0.5, 0.7, 1.0]).view(1, 1, 1, 6)
    out = solarize(x, 1.0)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.2, 0.49, 0.5, 0.3, 0.0]).view(1, 1, 1, 6))
    assert torch.equal(solarize(x, 0.0), x)
    xs = torch.full((4000, 1, 2, 2), 0.8)
    frac = (solarize(xs, 0.2, torch.Generator().manual_seed(0)) < 0.5).float().mean().item()
    assert abs(frac - 0.2) < 0.03


def test_blur_kernel_size():
    assert blur_kernel_size(224) == 23
    assert blur_kernel_size(28) == 3
    assert blur_kernel_size(32) == 3
    assert blur_kernel_size(128) == 13
    for s in range(8, 300):
        k = blur_kernel_size(s)
        assert k % 2 == 1 and k >= 3
        assert k == 3 or abs(k - 0.1 * s) <= 1.5


# ------------------------------------------------------------------------------------------
# colour jitter against torchvision
# ------------------------------------------------------------------------------------------


def test_adjust_hue_matches_torchvision():
    x = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    shifts = torch.tensor([-0.5, -0.3, -0.1, -0.01, 0.0, 0.02, 0.1, 0.25, 0.4, 0.5])
    out = A._adjust_hue(x, shifts)
    ref = torch.stack([TF.adjust_hue(xi, float(s)) for xi, s in zip(x, shifts)])
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-6)


def _jitter_only(**kw) -> ViewConfig:
    base = dict(jitter_p=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    base.update(kw)
    return ViewConfig(**base)


def _fit_blend(out: torch.Tensor, x: torch.Tensor, ref: torch.Tensor) -> float:
    """f in out = f*x + (1-f)*ref from the unclamped pixels (least squares)."""
    a, b = (x - ref).flatten(), (out - ref).flatten()
    ok = (out.flatten() > 1e-3) & (out.flatten() < 1 - 1e-3)
    return float((a[ok] * b[ok]).sum() / (a[ok] * a[ok]).sum())


def test_brightness_alone_matches_torchvision():
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = color_jitter(x.clone(), _jitter_only(brightness=0.4), torch.Generator().manual_seed(1))
    factors = []
    for xi, oi in zip(x, out):
        f = _fit_blend(oi, xi, torch.zeros_like(xi))
        factors.append(f)
        torch.testing.assert_close(oi, TF.adjust_brightness(xi, f), rtol=0, atol=1e-5)
    assert min(factors) >= 0.6 - 1e-4 and max(factors) <= 1.4 + 1e-4
    assert min(factors) < 0.75 and max(factors) > 1.25  # spread over U(0.6, 1.4)
    assert bool((out >= 0).all() and (out <= 1).all())
    assert bool((out == 1.0).any())  # brightening clamps as torchvision does


# torchvision's tensor rgb_to_grayscale uses 0.2989 for red, byol 0.299: contrast and
# saturation references differ by up to 1e-4 * red (see the strict test below).
LUMA_TOL = 3e-5


def test_contrast_alone_matches_torchvision():
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = color_jitter(x.clone(), _jitter_only(contrast=0.4), torch.Generator().manual_seed(1))
    factors = []
    for xi, oi in zip(x, out):
        mean = TF.rgb_to_grayscale(xi).mean()
        f = _fit_blend(oi, xi, mean.expand_as(xi))
        factors.append(f)
        torch.testing.assert_close(oi, TF.adjust_contrast(xi, f), rtol=0, atol=LUMA_TOL)
    assert min(factors) >= 0.6 - 1e-3 and max(factors) <= 1.4 + 1e-3
    assert min(factors) < 0.75 and max(factors) > 1.25


def test_saturation_alone_matches_torchvision():
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = color_jitter(x.clone(), _jitter_only(saturation=0.2), torch.Generator().manual_seed(1))
    factors = []
    for xi, oi in zip(x, out):
        gray = TF.rgb_to_grayscale(xi).expand_as(xi)
        f = _fit_blend(oi, xi, gray)
        factors.append(f)
        torch.testing.assert_close(oi, TF.adjust_saturation(xi, f), rtol=0, atol=LUMA_TOL)
    assert min(factors) >= 0.8 - 1e-3 and max(factors) <= 1.2 + 1e-3
    assert min(factors) < 0.85 and max(factors) > 1.15


def _hue_of_most_saturated_pixel(img: torch.Tensor) -> tuple[float, int]:
    flat = img.reshape(3, -1)
    sat = (flat.max(0).values - flat.min(0).values) / flat.max(0).values.clamp_min(1e-6)
    i = int(sat.argmax())
    r, g, b = (float(v) for v in flat[:, i])
    return colorsys.rgb_to_hsv(r, g, b)[0], i


def test_hue_alone_matches_torchvision():
    x = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = color_jitter(x.clone(), _jitter_only(hue=0.1), torch.Generator().manual_seed(1))
    shifts = []
    for xi, oi in zip(x, out):
        h_in, i = _hue_of_most_saturated_pixel(xi)
        r, g, b = (float(v) for v in oi.reshape(3, -1)[:, i])
        shift = (colorsys.rgb_to_hsv(r, g, b)[0] - h_in + 0.5) % 1.0 - 0.5
        shifts.append(shift)
        torch.testing.assert_close(oi, TF.adjust_hue(xi, shift), rtol=0, atol=1e-4)
    assert all(abs(s) <= 0.1 + 1e-4 for s in shifts)
    assert min(shifts) < -0.05 and max(shifts) > 0.05


def test_jitter_probability_and_strength_zero():
    x = torch.rand(2000, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    view = ViewConfig(jitter_p=0.8)
    out = color_jitter(x.clone(), view, torch.Generator().manual_seed(1))
    changed = ((out - x).abs().amax(dim=(1, 2, 3)) > 1e-6).float().mean().item()
    assert abs(changed - 0.8) < 0.03
    same = color_jitter(x.clone(), _jitter_only(), torch.Generator().manual_seed(1))
    torch.testing.assert_close(same, x, rtol=0, atol=1e-6)


def test_grayscale_weights_equal_torchvision_exactly():
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = grayscale(x, 1.0)
    torch.testing.assert_close(out, TF.rgb_to_grayscale(x, 3), rtol=0, atol=1e-6)


def test_grayscale_op():
    x = torch.rand(2000, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    out = grayscale(x, 0.2, torch.Generator().manual_seed(1))
    gray = (out[:, 0] == out[:, 1]).all(dim=(1, 2)) & (out[:, 1] == out[:, 2]).all(dim=(1, 2))
    assert abs(gray.float().mean().item() - 0.2) < 0.03
    torch.testing.assert_close(out[gray], TF.rgb_to_grayscale(x[gray], 3), rtol=0, atol=2e-4)
    assert torch.equal(out[~gray], x[~gray])


def test_one_channel_grayscale_saturation_hue_are_identity():
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(grayscale(x, 1.0), x)
    view = _jitter_only(saturation=0.5, hue=0.4)
    torch.testing.assert_close(color_jitter(x.clone(), view, torch.Generator().manual_seed(0)),
                               x, rtol=0, atol=1e-7)
    # brightness still acts on one channel
    out = color_jitter(x.clone(), _jitter_only(brightness=0.4), torch.Generator().manual_seed(0))
    assert (out - x).abs().max() > 1e-2


# ------------------------------------------------------------------------------------------
# reproducibility
# ------------------------------------------------------------------------------------------


def test_generator_seeding_is_reproducible():
    aug = BYOLAugment(_plain_cfg(12), 3)
    imgs = _images(8, 3, 20)
    a1, a2 = aug(imgs, torch.Generator().manual_seed(7))
    b1, b2 = aug(imgs, torch.Generator().manual_seed(7))
    c1, c2 = aug(imgs, torch.Generator().manual_seed(8))
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.allclose(a1, c1) and not torch.allclose(a2, c2)
    # input untouched (uint8 converted into a new tensor)
    assert torch.equal(imgs, _images(8, 3, 20))


def test_grayscale_probability_leaves_one_channel_views_and_the_random_stream_alone():
    """A grayscale probability (the monitor's hint for colour data) cannot change a one-channel
    run: the op is the identity there and draws the same random numbers whatever its p."""
    from byol.config import AugmentConfig, ViewConfig

    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    outs = []
    for p in (0.2, 0.8):
        view = ViewConfig(crop_scale=(0.2, 1.0), grayscale_p=p)
        aug = BYOLAugment(AugmentConfig(image_size=28, mean=(0.5,), std=(0.25,), view1=view,
                                        view2=view), in_chans=1)
        g = torch.Generator().manual_seed(3)
        a, b = aug(images, g)
        outs.append((a, b, torch.rand(4, generator=g)))
    for x, y in zip(outs[0], outs[1]):
        assert torch.equal(x, y)
    # on three channels the probability does act
    rgb = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8).float() / 255
    gray = grayscale(rgb, 1.0, torch.Generator().manual_seed(0))
    assert torch.allclose(gray[:, 0], gray[:, 1]) and not torch.allclose(rgb[:, 0], rgb[:, 1])
    assert torch.equal(grayscale(rgb, 0.0, torch.Generator().manual_seed(0)), rgb)


def test_hue_on_cpu_converts_only_the_selected_samples_with_the_same_values():
    # the CPU path converts the selected samples only; the accelerator path converts the batch
    # and selects with torch.where: both must give the same bits (the run's numbers do not
    # depend on which path ran)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 16, 16, generator=g)
    hue = torch.rand(64, generator=g) * 0.4 - 0.2
    one = torch.ones(64)
    for sel in (torch.rand(64, generator=g) < 0.3, torch.zeros(64, dtype=torch.bool),
                torch.ones(64, dtype=torch.bool)):
        want = torch.where(sel.view(-1, 1, 1, 1), A._adjust_hue(x, torch.where(sel, hue, 0 * one)), x)
        got = A._hue_where(x, sel, hue, one)
        assert torch.equal(got, want)
        assert torch.equal(got[~sel], x[~sel])  # the others untouched
        if sel.any():
            assert not torch.equal(got[sel], x[sel])


def test_hue_path_does_not_change_a_view(monkeypatch):
    # the whole jitter with the CPU path against the same jitter forced onto the where path
    x = torch.rand(48, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    view = ViewConfig(jitter_p=0.8, hue=0.2)
    fast = color_jitter(x.clone(), view, torch.Generator().manual_seed(4))

    def where_path(x, sel, hue, one):
        return torch.where(sel.view(-1, 1, 1, 1), A._adjust_hue(x, torch.where(sel, hue, 0 * one)), x)

    monkeypatch.setattr(A, "_hue_where", where_path)
    slow = color_jitter(x.clone(), view, torch.Generator().manual_seed(4))
    assert torch.equal(fast, slow)


def test_views_not_jittered_are_left_bit_for_bit():
    # torchvision leaves an image alone when the jitter is not drawn; so must the hue step
    # (an HSV round trip is not exactly the identity)
    x = torch.rand(400, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    out = color_jitter(x.clone(), ViewConfig(jitter_p=0.5, hue=0.2), torch.Generator().manual_seed(1))
    same = (out == x).flatten(1).all(dim=1)
    assert 0.4 < same.float().mean().item() < 0.6
