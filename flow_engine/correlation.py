"""PWC-Net cost volume (correlation layer): a pure-PyTorch path and a CuPy CUDA kernel.

For feature maps ``f1, f2`` of shape [B,C,H,W] and a maximum displacement ``d`` the cost
volume has shape [B,(2d+1)^2,H,W]; channel ``(dy+d)*(2d+1) + (dx+d)`` holds

    mean over c of f1[b,c,y,x] * f2[b,c,y+dy,x+dx]      (zero where y+dy, x+dx leave the frame)

which is the official PWC-Net layer (kernel size 1, stride 1, normalised by C).

``correlation(f1, f2, d, backend="auto")`` picks the CuPy kernel for CUDA tensors when CuPy
can use the device, the PyTorch path otherwise; both are differentiable and give the same
numbers (the kernel accumulates in float32 for half/bfloat16 inputs, as the torch path does).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cupy", "torch")


def correlation_torch(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int = 4) -> torch.Tensor:
    """Cost volume [B,(2d+1)^2,H,W] of ``f1, f2`` [B,C,H,W] with plain tensor ops (CPU or GPU).

    One multiply-and-sum per displacement on a zero-padded ``f2`` (81 tensor ops for
    d=4, never a per-pixel loop). Half/bfloat16 inputs are accumulated in float32 and the
    result is returned in the input dtype. Differentiable through autograd.
    """
    _check_pair(f1, f2, max_displacement)
    d = max_displacement
    out_dtype = f1.dtype
    if f1.dtype in (torch.float16, torch.bfloat16):
        f1, f2 = f1.float(), f2.float()
    B, C, H, W = f1.shape
    f2p = F.pad(f2, (d, d, d, d))
    inv_c = 1.0 / C
    planes = []
    for dy in range(2 * d + 1):
        for dx in range(2 * d + 1):
            # multiply-then-sum beats einsum/bmm formulations on CPU (no permuted copies)
            planes.append((f1 * f2p[:, :, dy : dy + H, dx : dx + W]).sum(1))
    return (torch.stack(planes, dim=1) * inv_c).to(out_dtype)


def _check_pair(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int) -> None:
    if f1.dim() != 4 or f2.dim() != 4:
        raise ValueError(f"correlation expects two [B,C,H,W] tensors, got {tuple(f1.shape)} and {tuple(f2.shape)}")
    if f1.shape != f2.shape:
        raise ValueError(f"correlation inputs differ in shape: {tuple(f1.shape)} vs {tuple(f2.shape)}")
    if f1.device != f2.device:
        raise ValueError(f"correlation inputs are on different devices: {f1.device} vs {f2.device}")
    if not isinstance(max_displacement, int) or max_displacement < 0:
        raise ValueError(f"max_displacement must be a non-negative int, got {max_displacement!r}")
    if not f1.is_floating_point() or not f2.is_floating_point():
        raise ValueError(f"correlation needs floating-point features, got {f1.dtype} and {f2.dtype}")


def correlation(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int = 4, backend: str = "auto") -> torch.Tensor:
    """PWC-Net cost volume [B,(2d+1)^2,H,W] (see module docstring).

    ``backend``: "auto" (CuPy kernel for CUDA tensors when usable, else PyTorch), "cupy"
    (force the kernel; an error for CPU tensors or without a usable CuPy) or "torch".
    When the two inputs differ in floating dtype (e.g. a warped fp32 map against bf16
    features under autocast), ``f2`` is cast to ``f1``'s dtype.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown correlation backend {backend!r}; choose one of {BACKENDS}")
    if f2.dtype != f1.dtype and f1.is_floating_point() and f2.is_floating_point():
        f2 = f2.to(f1.dtype)
    if backend == "torch":
        return correlation_torch(f1, f2, max_displacement)
    if backend == "cupy":
        if not f1.is_cuda:
            raise ValueError(f"correlation backend 'cupy' needs CUDA tensors, got tensors on {f1.device}")
        if not cupy_usable(f1.device):
            raise RuntimeError(f"correlation backend 'cupy' requested but CuPy cannot use {f1.device}: {_CUPY_STATE['reason']}")
        return _correlation_cupy(f1, f2, max_displacement)
    if f1.is_cuda and cupy_usable(f1.device):
        return _correlation_cupy(f1, f2, max_displacement)
    return correlation_torch(f1, f2, max_displacement)


# --- CuPy kernel -----------------------------------------------------------------------------
# Filled in below; until CuPy can be used the torch path serves every call.
_CUPY_STATE: dict = {"checked": False, "ok": False, "reason": "not checked yet"}


def cupy_usable(device: torch.device | None = None) -> bool:
    """Whether the CuPy kernel can run here (CuPy importable and a CUDA device it can use)."""
    return False


def _correlation_cupy(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int) -> torch.Tensor:
    raise RuntimeError("the CuPy correlation kernel is not available")
