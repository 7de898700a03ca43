"""PWC-Net's training losses and error measures (all flows in pixels unless said otherwise).

Multi-scale loss (Sun et al. 2018, eq. 3): ``sum_l alpha_l * sum_x |w_l(x) - w_gt_l(x)|_2``,
alpha = 0.32, 0.08, 0.02, 0.01, 0.005 for levels 6..2, the ground truth divided by 20 and
area-averaged to each level (over valid pixels only, for sparse ground truth). With
``reduction="sum"`` (the paper's) the per-pixel norms are summed over each image and averaged
over the batch; ``"mean"`` averages them over valid pixels instead. :func:`matching_loss` is an
auxiliary cost-volume loss of this project for short runs (not in the paper).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from flow_engine.models.correlation import correlation
from flow_engine.models.pwcnet import PWCNet, warp

LEVEL_WEIGHTS = (0.32, 0.08, 0.02, 0.01, 0.005)  # levels 6, 5, 4, 3, 2


def downsample_flow(flow: torch.Tensor, valid: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Area-average flow [B,2,H,W] over ``factor``^2 blocks using valid pixels only; returns (flow, valid [B,h,w]).

    The values are not rescaled (callers divide by 20 or by ``factor`` as their units need).
    """
    if factor == 1:
        return flow * valid[:, None], valid
    v = valid[:, None].to(flow.dtype)
    num = F.avg_pool2d(flow * v, factor)
    den = F.avg_pool2d(v, factor)
    return num / den.clamp_min(1e-6), den[:, 0] > 0


def multiscale_loss(
    flows: list[torch.Tensor],
    flow_gt: torch.Tensor,
    valid: torch.Tensor,
    weights: tuple[float, ...] = LEVEL_WEIGHTS,
    norm: str = "l2",
    reduction: str = "sum",
    q: float = 0.4,
    eps: float = 0.01,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """PWC-Net's training loss for predictions ``[flow6..flow2]`` (px/20) and ground truth [B,2,H,W] px.

    ``norm``: "l2" (per-pixel Euclidean norm, the paper's training loss) or "robust"
    (``(|d|_1 + eps)^q``, the paper's fine-tuning loss). ``reduction``: "sum" over pixels
    (then mean over the batch) or "mean" over valid pixels. Returns (total, per-level terms).
    """
    if len(flows) != len(weights):
        raise ValueError(f"{len(flows)} predictions but {len(weights)} level weights")
    H = flow_gt.shape[-2]
    gt = flow_gt.float() / PWCNet.FLOW_SCALE
    total = flow_gt.new_zeros(())
    terms = []
    for pred, w in zip(flows, weights):
        factor = H // pred.shape[-2]
        gt_l, valid_l = downsample_flow(gt, valid, factor)
        diff = pred.float() - gt_l
        if norm == "l2":
            err = (diff.pow(2).sum(1) + 1e-12).sqrt()
        elif norm == "robust":
            err = (diff.abs().sum(1) + eps).pow(q)
        else:
            raise ValueError(f"loss norm must be 'l2' or 'robust', got {norm!r}")
        err = err * valid_l
        if reduction == "sum":
            term = err.sum((1, 2)).mean()
        elif reduction == "mean":
            term = err.sum() / valid_l.sum().clamp_min(1)
        else:
            raise ValueError(f"loss reduction must be 'sum' or 'mean', got {reduction!r}")
        terms.append(term)
        total = total + w * term
    return total, terms


def full_resolution_flow(flow2: torch.Tensor) -> torch.Tensor:
    """Level-2 prediction (px/20 at 1/4 size) -> flow [B,2,4h,4w] in pixels."""
    return PWCNet.FLOW_SCALE * F.interpolate(flow2.float(), scale_factor=4, mode="bilinear", align_corners=False)


def end_point_error(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean EPE (px) over valid pixels; pred, gt [B,2,H,W], valid [B,H,W]."""
    err = (pred.float() - gt.float()).norm(dim=1)
    return (err * valid).sum() / valid.sum().clamp_min(1)


def matching_loss(feats: dict[int, torch.Tensor], flow_gt: torch.Tensor, valid: torch.Tensor, temperature: float = 0.1, max_displacement: int = 4) -> torch.Tensor:
    """Auxiliary cost-volume loss on the pyramid features (not in the paper; for short runs).

    ``feats[l]`` holds the level-l features of both frames stacked [2B,C,h,w]. Frame-2
    features are warped by the ground truth, so the true match sits at zero displacement; the
    cosine cost volume over +-``max_displacement`` is treated as logits (divided by
    ``temperature``) and scored with cross-entropy against the centre. This teaches the
    pyramid discriminative features directly, which from scratch PWC-Net otherwise learns
    only after a long plateau of predicting ~zero flow.
    """
    total = flow_gt.new_zeros(())
    centre = (2 * max_displacement + 1) ** 2 // 2
    for level, f in feats.items():
        B = f.shape[0] // 2
        factor = 2**level
        gt_l, valid_l = downsample_flow(flow_gt.float(), valid, factor)
        gt_l = gt_l / factor
        f1, f2 = F.normalize(f[:B].float(), dim=1), F.normalize(f[B:].float(), dim=1)
        f2w = warp(f2, gt_l)
        h, w = f1.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h, device=f.device), torch.arange(w, device=f.device), indexing="ij")
        x2, y2 = xs + gt_l[:, 0], ys + gt_l[:, 1]
        inside = (x2 >= 0) & (x2 <= w - 1) & (y2 >= 0) & (y2 <= h - 1)
        mask = valid_l & inside
        logits = correlation(f1, f2w, max_displacement, "auto") * (f1.shape[1] / temperature)
        ce = F.cross_entropy(logits, torch.full_like(mask, centre, dtype=torch.long), reduction="none")
        total = total + (ce * mask).sum() / mask.sum().clamp_min(1)
    return total
