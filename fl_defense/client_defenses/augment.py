"""Per-sample random augmentations of a whole image batch at once, for SimCLR and MixMatch.

torchvision's v2 transforms draw one set of random parameters per call, so a batch tensor would get
the same crop for every image; a per-image loop is correct but slow on CPU. Here every image draws its
own parameters (from the caller's generator, so runs repeat) and the geometry of the whole batch is
one `affine_grid`/`grid_sample`, the colour changes a few broadcast operations.
Images are float N x C x H x W in [0, 1] and stay so.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

# ITU-R 601 luma weights (torchvision's rgb_to_grayscale) and the YIQ transform used for hue rotation.
_LUMA = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def _chance(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) < p


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample each image through its own 2x3 affine map (output coordinates to input, in [-1, 1])."""
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """N x 1 x H x W luma of RGB images (the image itself when it has one channel)."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def random_resized_crop_flip(x: torch.Tensor, generator: torch.Generator,
                             scale: tuple[float, float] = (0.2, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """RandomResizedCrop(scale, ratio) back to the full size, then a horizontal flip with p 0.5, per image.

    A crop that would not fit (tall or wide at large scale) is clipped to the image instead of redrawn:
    torchvision redraws up to ten times, which only shifts the aspect-ratio distribution a little.
    """
    n = x.shape[0]
    area = _uniform(n, *scale, generator)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator)
    w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)
    h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - h)
    flip = torch.where(_chance(n, 0.5, generator), -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    return _warp(x, theta)


def color_jitter(x: torch.Tensor, generator: torch.Generator, p: float = 0.8, brightness: float = 0.4,
                 contrast: float = 0.4, saturation: float = 0.4, hue: float = 0.1) -> torch.Tensor:
    """SimCLR's ColorJitter(0.4, 0.4, 0.4, 0.1) applied with probability p, each image its own factors.

    Brightness and contrast for any image; saturation and hue only for RGB. Hue is a rotation of the
    chroma plane in YIQ space (a linear map, so batched), not torchvision's HSV round trip; the order of
    the four changes is fixed instead of shuffled. Every step clamps to [0, 1] as torchvision does.
    """
    n = x.shape[0]
    on = _chance(n, p, generator).view(n, 1, 1, 1).to(x.device)

    def factor(spread: float) -> torch.Tensor:
        f = _uniform(n, 1 - spread, 1 + spread, generator).view(n, 1, 1, 1).to(x.device, x.dtype)
        return torch.where(on, f, torch.ones_like(f))

    out = (x * factor(brightness)).clamp(0, 1)
    mean = _gray(out).mean((1, 2, 3), keepdim=True)
    out = ((out - mean) * factor(contrast) + mean).clamp(0, 1)
    if x.shape[1] == 3:
        gray = _gray(out)
        out = ((out - gray) * factor(saturation) + gray).clamp(0, 1)
        angle = _uniform(n, -hue, hue, generator) * 2 * math.pi * on.view(n).cpu()
        cos, sin = torch.cos(angle), torch.sin(angle)
        rot = torch.zeros(n, 3, 3)
        rot[:, 0, 0], rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = 1, cos, -sin, sin, cos
        mix = torch.linalg.inv(_RGB_TO_YIQ) @ rot @ _RGB_TO_YIQ
        out = torch.einsum("nij,njhw->nihw", mix.to(x.device, x.dtype), out).clamp(0, 1)
    return out


def random_grayscale(x: torch.Tensor, generator: torch.Generator, p: float = 0.2) -> torch.Tensor:
    """RGB images turned grey (all three channels the luma) with probability p each; others unchanged."""
    if x.shape[1] == 1:
        return x
    on = _chance(x.shape[0], p, generator).view(-1, 1, 1, 1).to(x.device)
    return torch.where(on, _gray(x).expand_as(x), x)


def random_blur(x: torch.Tensor, generator: torch.Generator, p: float = 0.5,
                sigma: tuple[float, float] = (0.1, 2.0)) -> torch.Tensor:
    """Gaussian blur with probability p, sigma drawn per image, kernel a tenth of the side (odd, >= 3).

    One grouped convolution: every (image, channel) plane gets its own kernel.
    """
    n, c, hgt, wid = x.shape
    k = max(3, (hgt // 10) | 1)
    s = _uniform(n, *sigma, generator)
    d = torch.arange(k, dtype=torch.float32) - k // 2
    g = torch.exp(-(d.view(1, -1) ** 2) / (2 * s.view(-1, 1) ** 2))
    g = g / g.sum(1, keepdim=True)
    identity = (d == 0).float().expand(n, k)
    g = torch.where(_chance(n, p, generator).view(n, 1), g, identity)
    kernel = (g.view(n, k, 1) * g.view(n, 1, k)).repeat_interleave(c, 0).unsqueeze(1)
    padded = F.pad(x.reshape(1, n * c, hgt, wid), (k // 2,) * 4, mode="reflect")
    return F.conv2d(padded, kernel.to(x.device, x.dtype), groups=n * c).view(n, c, hgt, wid)


def simclr_augment(x: torch.Tensor, generator: torch.Generator, blur: float) -> torch.Tensor:
    """One SimCLR view of every image: crop (0.2, 1) + flip, colour jitter p 0.8, grayscale p 0.2, blur p `blur`."""
    out = random_grayscale(color_jitter(random_resized_crop_flip(x, generator), generator), generator)
    return random_blur(out, generator, blur) if blur > 0 else out


def weak_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """MixMatch's augmentation: a random shift of up to an eighth of the side (zero fill) and a flip with p 0.5."""
    n, _, hgt, wid = x.shape
    pad = max(1, round(hgt / 8))
    shift = torch.randint(-pad, pad + 1, (n, 2), generator=generator).float()
    flip = torch.where(_chance(n, 0.5, generator), -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = flip, 2 * shift[:, 0] / wid
    theta[:, 1, 1], theta[:, 1, 2] = 1.0, 2 * shift[:, 1] / hgt
    return _warp(x, theta)
