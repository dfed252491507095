"""BYOL's two asymmetric view pipelines (paper, appendix B), batched on the training device.

Every random parameter is drawn per sample from a ``torch.Generator`` (so a run resumes with
the same randomness), and all of a batch is transformed by whole-tensor operations: no Python
loop over images and no DataLoader worker for in-memory data. Ops that apply with probability
p are computed for the batch and selected with ``torch.where``, which avoids the host
synchronisation that boolean indexing would cost on a GPU.

Order, per view: random resized crop (bicubic) -> horizontal flip -> colour jitter (p=0.8,
brightness/contrast/saturation/hue in a random order per sample) -> grayscale -> Gaussian blur
(sigma ~ U(0.1, 2), kernel ~10% of the side) -> solarize -> normalise.

Grayscale data (one channel): brightness and contrast act as in torchvision; saturation, hue
and the grayscale op are identities (a gray image has no chroma to change), so the one-channel
pipeline is the RGB pipeline applied to an image whose three channels are equal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .config import AugmentConfig, ViewConfig

LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights, the one luma in byol


def match_channels(x: torch.Tensor, in_chans: int | None) -> torch.Tensor:
    """Adapt 1<->3 channel images to what a backbone expects: gray is replicated to RGB, RGB is
    turned to luminance for a 1-channel model (uint8 stays uint8, rounded). Other channel
    counts are returned as they are, for the caller to reject in its own words."""
    c = x.shape[1]
    if in_chans is None or c == in_chans:
        return x
    if c == 1 and in_chans == 3:
        return x.expand(-1, 3, -1, -1)
    if c == 3 and in_chans == 1:
        if x.is_floating_point():
            return _gray(x)
        return _gray(x.float()).round().clamp(0, 255).to(torch.uint8)
    return x


def _uniform(n: int, lo: float, hi: float, g: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def _bernoulli(n: int, p: float, g: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) < p


def crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    tries: int = 10,
) -> torch.Tensor:
    """Per-sample RandomResizedCrop boxes (x0, y0, w, h) in pixels, float [n, 4].

    torchvision's rule, vectorised: up to ``tries`` draws of area ~ U(scale) * H * W and
    log-aspect ~ U(log ratio); the first draw that fits is kept; if none fits, a central crop
    with the aspect ratio clamped to ``ratio``.
    """
    area = height * width
    target = _uniform(n * tries, scale[0], scale[1], generator, device).view(n, tries) * area
    log_r = _uniform(n * tries, math.log(ratio[0]), math.log(ratio[1]), generator, device)
    aspect = torch.exp(log_r).view(n, tries)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = torch.argmax(ok.to(torch.uint8), dim=1)  # first fitting draw (0 if none fits)
    any_ok = ok.any(dim=1)
    w = w.gather(1, first[:, None]).squeeze(1)
    h = h.gather(1, first[:, None]).squeeze(1)
    # fallback: whole-image central crop, aspect clamped
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = float(width), float(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = float(round(height * ratio[1])), float(height)
    else:
        fw, fh = float(width), float(height)
    w = torch.where(any_ok, w, torch.full_like(w, fw))
    h = torch.where(any_ok, h, torch.full_like(h, fh))
    u = torch.rand(2 * n, generator=generator, device=device).view(2, n)
    x0 = torch.floor(u[0] * (width - w + 1))
    y0 = torch.floor(u[1] * (height - h + 1))
    x0 = torch.where(any_ok, x0, torch.full_like(x0, (width - fw) // 2))
    y0 = torch.where(any_ok, y0, torch.full_like(y0, (height - fh) // 2))
    return torch.stack([x0, y0, w, h], dim=1)


def random_resized_crop_flip(
    x: torch.Tensor,
    size: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
    generator: torch.Generator | None = None,
    interpolation: str = "bicubic",
) -> torch.Tensor:
    """Crop a random box per sample, resize it to ``size`` and flip it with probability
    ``flip_p``: one ``affine_grid`` + ``grid_sample`` for the whole batch. ``x`` is float
    [B, C, H, W]; the result is float [B, C, size, size] (bicubic can overshoot: clamp later)."""
    n, _, height, width = x.shape
    boxes = crop_boxes(n, height, width, scale, ratio, generator, x.device)
    flip = _bernoulli(n, flip_p, generator, x.device)
    x0, y0, w, h = boxes.unbind(1)
    # normalised coordinates (align_corners=False): centre and half-extent of the box
    cx = (x0 + w / 2) / width * 2 - 1
    cy = (y0 + h / 2) / height * 2 - 1
    sx = (w / width) * torch.where(flip, -1.0, 1.0)
    sy = h / height
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = sx, cx
    theta[:, 1, 1], theta[:, 1, 2] = sy, cy
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode=interpolation, padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    s = delta / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    safe = torch.where(delta == 0, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta == 0, torch.zeros_like(h), h)
    h = torch.remainder(h / 6.0, 1.0)
    return h, s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    sel = [i == k for k in range(6)]

    def pick(*vals: torch.Tensor) -> torch.Tensor:
        out = vals[5]
        for k in range(4, -1, -1):
            out = torch.where(sel[k], vals[k], out)
        return out

    return torch.stack([pick(v, q, p, p, t, v), pick(t, v, v, q, p, p), pick(p, p, t, v, v, q)], 1)


def _adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    h, s, v = _rgb_to_hsv(x)
    h = torch.remainder(h + shift.view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(h, s, v)


def color_jitter(
    x: torch.Tensor, view: ViewConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """torchvision's ColorJitter with probability ``view.jitter_p``, drawn per sample: factors
    brightness/contrast/saturation ~ U(max(0, 1-s), 1+s), hue shift ~ U(-hue, hue), the four
    ops in a random order per sample. ``x`` is float in [0, 1]."""
    n, c = x.shape[:2]
    dev = x.device
    apply = _bernoulli(n, view.jitter_p, generator, dev)
    order = torch.argsort(torch.rand(n, 4, generator=generator, device=dev), dim=1)
    one = torch.ones(n, device=dev)

    def factor(strength: float) -> torch.Tensor:
        f = _uniform(n, max(0.0, 1 - strength), 1 + strength, generator, dev)
        return torch.where(apply, f, one)

    fb, fc, fs = factor(view.brightness), factor(view.contrast), factor(view.saturation)
    hue = torch.where(apply, _uniform(n, -view.hue, view.hue, generator, dev), one * 0)
    chroma = c == 3  # saturation and hue are identities on one-channel images
    for pos in range(4):
        op = order[:, pos]
        # brightness (0), contrast (1) and saturation (2) are all blends f*x + (1-f)*ref
        f = torch.where(op == 0, fb, torch.where(op == 1, fc, torch.where(op == 2, fs, one)))
        if not chroma:
            f = torch.where(op == 2, one, f)
        # the reference: 0 (brightness, hue), the mean grey (contrast), the grey image
        # (saturation); 0/1 weights pick it with the same values as a select, in fewer passes
        gray = _gray(x)
        ref = gray.mean(dim=(1, 2, 3), keepdim=True) * (op == 1).to(x.dtype).view(-1, 1, 1, 1)
        if chroma:
            ref = ref + gray * (op == 2).to(x.dtype).view(-1, 1, 1, 1)
        f4 = f.view(-1, 1, 1, 1)
        x = (f4 * x + (1 - f4) * ref).clamp_(0, 1)
        if chroma and view.hue > 0:
            x = _hue_where(x, (op == 3) & apply, hue, one)
    return x


def _hue_where(x: torch.Tensor, sel: torch.Tensor, hue: torch.Tensor,
               one: torch.Tensor) -> torch.Tensor:
    """The hue shift on the samples of ``sel`` (the others unchanged). A jittered sample takes
    the hue step once in the four positions, so on a CPU only those samples are converted to
    HSV and back (a fifth of the work of converting the batch four times, the same values); on
    an accelerator the whole batch is converted and selected with ``torch.where``, which costs
    little there and needs no host synchronisation."""
    if x.device.type == "cpu":
        idx = sel.nonzero().squeeze(1)
        if idx.numel() == 0:
            return x
        if idx.numel() == x.shape[0]:
            return _adjust_hue(x, hue)
        x = x.clone()
        x[idx] = _adjust_hue(x[idx], hue[idx])
        return x
    shift = torch.where(sel, hue, 0.0 * one)
    return torch.where(sel.view(-1, 1, 1, 1), _adjust_hue(x, shift), x)


def blur_kernel_size(image_size: int, frac: float = 0.1) -> int:
    """Odd kernel side about ``frac`` of the image side: 23 at 224 px, 3 at 28-32 px."""
    return max(3, int(round(frac * image_size)) | 1)


def gaussian_blur(
    x: torch.Tensor,
    p: float,
    sigma: Sequence[float],
    kernel_size: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Separable Gaussian blur with sigma ~ U(sigma) per sample, applied with probability p,
    as two grouped convolutions over the whole batch (reflect padding, as torchvision)."""
    n, c, h, w = x.shape
    dev = x.device
    apply = _bernoulli(n, p, generator, dev)
    s = _uniform(n, sigma[0], sigma[1], generator, dev)
    if p <= 0:
        return x
    half = kernel_size // 2
    t = torch.arange(-half, half + 1, device=dev, dtype=x.dtype)
    k = torch.exp(-(t[None, :] ** 2) / (2 * s[:, None].to(x.dtype) ** 2))
    k = k / k.sum(dim=1, keepdim=True)  # [n, ks]
    k = k.repeat_interleave(c, dim=0)  # one kernel per (sample, channel)
    y = x.reshape(1, n * c, h, w)
    pad = min(half, h - 1, w - 1)
    if pad < half:  # images smaller than the kernel: zero-pad the rest
        y = F.pad(y, (pad, pad, pad, pad), mode="reflect")
        y = F.pad(y, (half - pad,) * 4)
    else:
        y = F.pad(y, (half, half, half, half), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, kernel_size), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, kernel_size, 1), groups=n * c)
    y = y.view(n, c, h, w)
    return torch.where(apply.view(-1, 1, 1, 1), y, x)


def solarize(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x < 0.5 ? x : 1 - x on [0, 1], with probability p per sample."""
    apply = _bernoulli(x.shape[0], p, generator, x.device)
    return torch.where(apply.view(-1, 1, 1, 1) & (x >= 0.5), 1 - x, x)


def grayscale(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    apply = _bernoulli(x.shape[0], p, generator, x.device)
    if x.shape[1] == 1:
        return x
    return torch.where(apply.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)


class BYOLAugment:
    """The two view pipelines of a config, for uint8 batches already on the device.

    ``__call__(images)`` crops from full images (in-memory datasets); ``photometric(views)``
    skips the crop for views a DataLoader already cropped (folder datasets).
    """

    def __init__(self, cfg: AugmentConfig | None = None, in_chans: int = 3) -> None:
        cfg = cfg or AugmentConfig()
        self.cfg = cfg
        self.size = cfg.image_size
        self.kernel = blur_kernel_size(cfg.image_size, cfg.view1.blur_kernel_frac)
        mean = list(cfg.mean) * (in_chans if len(cfg.mean) == 1 else 1)
        std = list(cfg.std) * (in_chans if len(cfg.std) == 1 else 1)
        self._mean = torch.tensor(mean[:in_chans]).view(1, -1, 1, 1)
        self._std = torch.tensor(std[:in_chans]).view(1, -1, 1, 1)

    def _finish(self, x: torch.Tensor, view: ViewConfig, g: torch.Generator | None) -> torch.Tensor:
        x = x.clamp_(0, 1)
        x = color_jitter(x, view, g)
        x = grayscale(x, view.grayscale_p, g)
        kernel = blur_kernel_size(x.shape[-1], view.blur_kernel_frac)
        x = gaussian_blur(x, view.blur_p, view.blur_sigma, kernel, g)
        x = solarize(x, view.solarize_p, g)
        mean, std = self._mean.to(x.device), self._std.to(x.device)
        return (x - mean) / std

    def view(
        self, images: torch.Tensor, view: ViewConfig, g: torch.Generator | None = None
    ) -> torch.Tensor:
        x = images.float().div_(255)
        x = random_resized_crop_flip(
            x, self.size, view.crop_scale, view.crop_ratio, view.flip_p, g, self.cfg.interpolation
        )
        return self._finish(x, view, g)

    def __call__(
        self, images: torch.Tensor, g: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view(images, self.cfg.view1, g), self.view(images, self.cfg.view2, g)

    def local_views(self, images: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        """``cfg.local_crops`` small views per image (multi-crop), coloured like view1: one
        batch [local_crops * B, C, s, s], crop j of every image before crop j + 1."""
        cfg = self.cfg
        size = cfg.local_size or max(8, cfg.image_size // 2)
        v = cfg.view1
        x = images.float().div_(255).repeat(cfg.local_crops, 1, 1, 1)
        x = random_resized_crop_flip(x, size, cfg.local_crop_scale, v.crop_ratio, v.flip_p, g,
                                     cfg.interpolation)
        return self._finish(x, v, g)

    def photometric(
        self, v1: torch.Tensor, v2: torch.Tensor, g: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Colour, blur, solarize and normalise for two uint8 views cropped elsewhere."""
        return (
            self._finish(v1.float().div_(255), self.cfg.view1, g),
            self._finish(v2.float().div_(255), self.cfg.view2, g),
        )
