"""Training augmentation for optical flow (the FlowNet2 / PWC-Net recipe), batched torch.

- :func:`random_spatial`: per-sample random scale (with a little stretch), horizontal and
  vertical flips and a random crop, as one affine resampling (``grid_sample``) of both
  frames and of the flow. The flow is resampled too and multiplied by the linear part of
  the map: a horizontal flip negates u, a vertical flip negates v, scaling by ``s`` scales
  the flow by ``s``. Sparse ground truth (KITTI) is resampled with nearest neighbours so
  known and unknown pixels never blend.
- :func:`photometric`: brightness, contrast, saturation, hue rotation, gamma and additive
  Gaussian noise, shared by the two frames (or drawn per frame now and then).

Images are float [B,3,H,W] in [0,1], flows [B,2,H,W] in pixels, valid masks bool [B,H,W].
All randomness comes from an optional ``torch.Generator``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device)


def _uniform(lo: float, hi: float, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * _rand((n,), generator, device)


def spatial_transform(
    img1: torch.Tensor,
    img2: torch.Tensor,
    flow: torch.Tensor,
    valid: torch.Tensor,
    crop: tuple[int, int],
    scale: torch.Tensor,
    flip: torch.Tensor,
    offset: torch.Tensor,
    sparse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scales, flips and crops a batch deterministically.

    Args:
        img1, img2: [B,C,H,W] frames; flow [B,2,H,W] px; valid bool [B,H,W].
        crop: output (h, w).
        scale: [B,2] per-sample (sx, sy) factors; the scaled frame is (sy*H, sx*W).
        flip: bool [B,2] (horizontal, vertical) flips of the scaled frame.
        offset: [B,2] top-left (x, y) of the crop in the scaled (and flipped) frame, pixels.
        sparse: nearest-neighbour resampling of flow and valid (KITTI).

    Returns the cropped ``(img1, img2, flow, valid)``; pixels whose source lies outside the
    input are invalid.
    """
    B, _, H, W = img1.shape
    h, w = crop
    dev = img1.device
    # Continuous coordinates: pixel j covers [j, j+1). Output centre c' = j + 0.5 in the crop
    # maps to c = (c' + offset) / s in the input, mirrored when flipped.
    ys = torch.arange(h, device=dev, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=dev, dtype=torch.float32) + 0.5
    sx, sy = scale[:, 0, None], scale[:, 1, None]
    ux = xs[None] + offset[:, 0, None]  # [B,w] in the scaled frame
    uy = ys[None] + offset[:, 1, None]
    ux = torch.where(flip[:, 0, None], sx * W - ux, ux) / sx
    uy = torch.where(flip[:, 1, None], sy * H - uy, uy) / sy
    grid = torch.stack(torch.broadcast_tensors((2 * ux / W - 1)[:, None, :], (2 * uy / H - 1)[:, :, None]), -1)  # [B,h,w,2]

    def sample(x: torch.Tensor, mode: str) -> torch.Tensor:
        # border, not zeros: output pixels at the edge of a just-covering crop blend with the edge, not with 0
        return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)

    out1 = sample(img1.float(), "bilinear")
    out2 = sample(img2.float(), "bilinear")
    flow_mode = "nearest" if sparse else "bilinear"
    out_flow = sample(flow.float(), flow_mode)
    # A pixel is valid if its source is inside the input and (for sparse flow) a known pixel.
    inside = (grid.abs() <= 1).all(-1)
    out_valid = sample(valid[:, None].float(), "nearest")[:, 0] > 0.5
    out_valid = out_valid & inside
    sign = torch.where(flip, -1.0, 1.0)
    out_flow = out_flow * (sign * scale)[:, :, None, None]
    out_flow = out_flow * out_valid[:, None]
    return out1, out2, out_flow, out_valid


def random_spatial(
    img1: torch.Tensor,
    img2: torch.Tensor,
    flow: torch.Tensor,
    valid: torch.Tensor,
    crop: tuple[int, int],
    *,
    min_log2_scale: float = -0.2,
    max_log2_scale: float = 0.5,
    scale_prob: float = 0.8,
    max_log2_stretch: float = 0.2,
    stretch_prob: float = 0.8,
    hflip_prob: float = 0.5,
    vflip_prob: float = 0.1,
    sparse: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random scale/stretch, flips and crop of a batch (see :func:`spatial_transform`).

    The scale is ``2^U(min_log2_scale, max_log2_scale)`` (applied with ``scale_prob``), each
    axis stretched by ``2^U(-max_log2_stretch, max_log2_stretch)`` (``stretch_prob``), and
    never below what still covers the crop: frames smaller than the crop (a teacher's labels of a
    320x240 video under 256x256 crops) are scaled up to cover it, flow with them.
    """
    B, _, H, W = img1.shape
    h, w = crop
    dev = img1.device
    log_s = _uniform(min_log2_scale, max_log2_scale, B, generator, dev) * (_rand((B,), generator, dev) < scale_prob)
    stretch = _uniform(-max_log2_stretch, max_log2_stretch, B, generator, dev) * (_rand((B,), generator, dev) < stretch_prob)
    scale = torch.stack([2 ** (log_s + stretch / 2), 2 ** (log_s - stretch / 2)], 1)
    # +1 px of slack so every output centre samples inside the input.
    floor = torch.tensor([(w + 1) / W, (h + 1) / H], device=dev)
    scale = torch.maximum(scale, floor)
    flip = torch.stack([_rand((B,), generator, dev) < hflip_prob, _rand((B,), generator, dev) < vflip_prob], 1)
    room = torch.stack([scale[:, 0] * W - w, scale[:, 1] * H - h], 1).clamp_min(0)
    offset = _rand((B, 2), generator, dev) * room
    return spatial_transform(img1, img2, flow, valid, crop, scale, flip, offset, sparse)


# ----------------------------------------------------------------------------- colour

_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _hue_matrices(angle: torch.Tensor) -> torch.Tensor:
    """RGB -> RGB matrices [B,3,3] rotating the chroma (I, Q) plane of YIQ by ``angle`` radians."""
    yiq = _RGB_TO_YIQ.to(angle.device)
    c, s = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(angle.shape[0], 3, 3, device=angle.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
    return torch.linalg.inv(yiq) @ rot @ yiq


def colour_transform(img: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor, hue: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Applies per-image factors [B] to RGB images [B,3,H,W] in [0,1]; the result is clamped to [0,1]."""
    view = (-1, 1, 1, 1)
    x = img * brightness.view(view)
    grey_mean = (x * _RGB_TO_YIQ[0].to(x.device).view(1, 3, 1, 1)).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = (x - grey_mean) * contrast.view(view) + grey_mean
    grey = (x * _RGB_TO_YIQ[0].to(x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = (x - grey) * saturation.view(view) + grey
    x = torch.einsum("bij,bjhw->bihw", _hue_matrices(hue), x)
    return x.clamp(0, 1).pow(gamma.view(view))


def photometric(
    img1: torch.Tensor,
    img2: torch.Tensor,
    *,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.5 / math.pi,
    gamma: tuple[float, float] = (0.7, 1.5),
    noise: tuple[float, float] = (0.0, 0.04),
    asymmetric_prob: float = 0.2,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random colour jitter and noise of a batch of frame pairs [B,3,H,W] in [0,1].

    Factors: brightness and contrast and saturation ``U(1-x, 1+x)``, hue rotation
    ``U(-hue, hue) * pi`` radians, gamma ``U(*gamma)``, noise std ``U(*noise)``. The two frames
    share the factors except with ``asymmetric_prob``, when frame 2 draws its own.
    """
    B = img1.shape[0]
    dev = img1.device

    def draw() -> list[torch.Tensor]:
        return [
            _uniform(1 - brightness, 1 + brightness, B, generator, dev),
            _uniform(1 - contrast, 1 + contrast, B, generator, dev),
            _uniform(1 - saturation, 1 + saturation, B, generator, dev),
            _uniform(-hue, hue, B, generator, dev) * math.pi,
            _uniform(gamma[0], gamma[1], B, generator, dev),
        ]

    first, second = draw(), draw()
    own = _rand((B,), generator, dev) < asymmetric_prob
    second = [torch.where(own, b, a) for a, b in zip(first, second)]
    out1 = colour_transform(img1.float(), *first)
    out2 = colour_transform(img2.float(), *second)
    std = _uniform(noise[0], noise[1], B, generator, dev).view(-1, 1, 1, 1)
    out1 = out1 + std * torch.randn(out1.shape, generator=generator, device=dev)
    out2 = out2 + std * torch.randn(out2.shape, generator=generator, device=dev)
    return out1.clamp(0, 1), out2.clamp(0, 1)
