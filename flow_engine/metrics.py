"""Optical-flow error metrics over the pixels with known ground truth.

Tensors are laid out ``[..., 2, H, W]`` (pixels) with an optional bool mask ``[..., H, W]``;
numpy arrays are taken in the file layout ``[..., H, W, 2]``. A batch is scored as one set
of pixels (mean over all valid pixels of the batch). Sums run in float64, on the tensors'
device.
"""
from __future__ import annotations

import numpy as np
import torch

FL_ABS_PX = 3.0  # KITTI outlier: error above 3 px ...
FL_REL = 0.05  # ... and above 5 % of the true magnitude

Flow = torch.Tensor | np.ndarray


def as_flow_tensor(flow: Flow) -> torch.Tensor:
    """numpy ``[..., H, W, 2]`` -> tensor ``[..., 2, H, W]``; tensors pass through."""
    if isinstance(flow, torch.Tensor):
        return flow
    flow = np.asarray(flow)
    if flow.ndim < 3 or flow.shape[-1] != 2:
        raise ValueError(f"numpy flow must be [..., H, W, 2], got shape {flow.shape}")
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(flow, -1, -3)))


def _prepare(pred: Flow, gt: Flow, valid: torch.Tensor | np.ndarray | None) -> tuple[torch.Tensor, ...]:
    """Returns the valid pixels' (u, v, u_gt, v_gt) as float64 vectors [N]."""
    pred, gt = as_flow_tensor(pred), as_flow_tensor(gt)
    if pred.shape != gt.shape or pred.ndim < 3 or pred.shape[-3] != 2:
        raise ValueError(f"pred and gt must both be [..., 2, H, W]; got {tuple(pred.shape)} and {tuple(gt.shape)}")
    pred = pred.to(device=gt.device, dtype=torch.float64)
    gt = gt.to(torch.float64)
    if gt.numel() == 0:
        raise ValueError(f"empty flow {tuple(gt.shape)}: there is nothing to score")
    if valid is None:
        return tuple(c.reshape(-1) for c in (*pred.unbind(-3), *gt.unbind(-3)))
    mask = torch.as_tensor(valid, device=gt.device).bool()
    expected = gt.shape[:-3] + gt.shape[-2:]
    try:
        mask = mask.expand(expected)
    except RuntimeError:
        raise ValueError(f"valid mask of shape {tuple(mask.shape)} does not fit flow {tuple(gt.shape)}") from None
    if not bool(mask.any()):
        raise ValueError("the valid mask has no pixels: there is nothing to score")
    return tuple(c[mask] for c in (*pred.unbind(-3), *gt.unbind(-3)))


def _end_point_errors(u: torch.Tensor, v: torch.Tensor, ug: torch.Tensor, vg: torch.Tensor) -> torch.Tensor:
    return torch.hypot(u - ug, v - vg)


def _angular_errors(u: torch.Tensor, v: torch.Tensor, ug: torch.Tensor, vg: torch.Tensor) -> torch.Tensor:
    cos = (u * ug + v * vg + 1) / torch.sqrt((u * u + v * v + 1) * (ug * ug + vg * vg + 1))
    return torch.rad2deg(torch.acos(torch.clamp(cos, -1.0, 1.0)))


def _outliers(u: torch.Tensor, v: torch.Tensor, ug: torch.Tensor, vg: torch.Tensor) -> torch.Tensor:
    err = _end_point_errors(u, v, ug, vg)
    return (err > FL_ABS_PX) & (err > FL_REL * torch.hypot(ug, vg))


def epe(pred: Flow, gt: Flow, valid: torch.Tensor | np.ndarray | None = None) -> float:
    """Mean end-point error in pixels over the valid pixels."""
    return float(_end_point_errors(*_prepare(pred, gt, valid)).mean())


def angular_error(pred: Flow, gt: Flow, valid: torch.Tensor | np.ndarray | None = None) -> float:
    """Mean angular error in degrees between (u, v, 1) and (u_gt, v_gt, 1) (Barron et al. 1994)."""
    return float(_angular_errors(*_prepare(pred, gt, valid)).mean())


def fl_all(pred: Flow, gt: Flow, valid: torch.Tensor | np.ndarray | None = None) -> float:
    """KITTI Fl-all in percent: share of valid pixels whose error is > 3 px and > 5 % of |gt|."""
    return float(_outliers(*_prepare(pred, gt, valid)).double().mean() * 100)


def flow_metrics(pred: Flow, gt: Flow, valid: torch.Tensor | np.ndarray | None = None) -> dict[str, float]:
    """All three at once: ``{"epe": px, "ae": degrees, "fl": percent}``."""
    px = _prepare(pred, gt, valid)
    return {
        "epe": float(_end_point_errors(*px).mean()),
        "ae": float(_angular_errors(*px).mean()),
        "fl": float(_outliers(*px).double().mean() * 100),
    }
