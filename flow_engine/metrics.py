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


def _prepare(pred: Flow, gt: Flow, valid: torch.Tensor | np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns the valid pixels' (pred, gt) as float64 [N, 2]."""
    pred, gt = as_flow_tensor(pred), as_flow_tensor(gt)
    if pred.shape != gt.shape or pred.ndim < 3 or pred.shape[-3] != 2:
        raise ValueError(f"pred and gt must both be [..., 2, H, W]; got {tuple(pred.shape)} and {tuple(gt.shape)}")
    pred = pred.to(device=gt.device, dtype=torch.float64)
    gt = gt.to(torch.float64)
    if valid is None:
        mask = torch.ones(gt.shape[:-3] + gt.shape[-2:], dtype=torch.bool, device=gt.device)
    else:
        mask = torch.as_tensor(valid, device=gt.device).bool()
        expected = gt.shape[:-3] + gt.shape[-2:]
        try:
            mask = mask.expand(expected)
        except RuntimeError:
            raise ValueError(f"valid mask of shape {tuple(mask.shape)} does not fit flow {tuple(gt.shape)}") from None
    if not bool(mask.any()):
        raise ValueError("the valid mask has no pixels: there is nothing to score")
    # [..., 2, H, W] -> [..., H, W, 2] -> [N, 2]
    return pred.movedim(-3, -1)[mask], gt.movedim(-3, -1)[mask]


def _end_point_errors(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(p - g, dim=-1)


def epe(pred: Flow, gt: Flow, valid: torch.Tensor | np.ndarray | None = None) -> float:
    """Mean end-point error in pixels over the valid pixels."""
    p, g = _prepare(pred, gt, valid)
    return float(_end_point_errors(p, g).mean())


def angular_error(pred: Flow, gt: Flow, valid: torch.Tensor | np.ndarray | None = None) -> float:
    """Mean angular error in degrees between (u, v, 1) and (u_gt, v_gt, 1) (Barron et al. 1994)."""
    p, g = _prepare(pred, gt, valid)
    return float(_angular_errors(p, g).mean())


def _angular_errors(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    dot = (p * g).sum(-1) + 1
    norms = torch.sqrt((p * p).sum(-1) + 1) * torch.sqrt((g * g).sum(-1) + 1)
    return torch.rad2deg(torch.acos(torch.clamp(dot / norms, -1.0, 1.0)))


def fl_all(pred: Flow, gt: Flow, valid: torch.Tensor | np.ndarray | None = None) -> float:
    """KITTI Fl-all in percent: share of valid pixels whose error is > 3 px and > 5 % of |gt|."""
    p, g = _prepare(pred, gt, valid)
    return float(_outliers(p, g).double().mean() * 100)


def _outliers(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    err = _end_point_errors(p, g)
    return (err > FL_ABS_PX) & (err > FL_REL * torch.linalg.vector_norm(g, dim=-1))


def flow_metrics(pred: Flow, gt: Flow, valid: torch.Tensor | np.ndarray | None = None) -> dict[str, float]:
    """All three at once: ``{"epe": px, "ae": degrees, "fl": percent}``."""
    p, g = _prepare(pred, gt, valid)
    return {
        "epe": float(_end_point_errors(p, g).mean()),
        "ae": float(_angular_errors(p, g).mean()),
        "fl": float(_outliers(p, g).double().mean() * 100),
    }
