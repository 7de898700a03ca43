"""Cost volume: torch path vs a naive reference, gradients, dispatch; the CuPy kernel (compile on CPU, run on GPU)."""
from __future__ import annotations

import logging

import pytest
import torch

from flow_engine import correlation as corr_mod
from flow_engine.correlation import correlation, correlation_torch


def naive_correlation(f1: torch.Tensor, f2: torch.Tensor, d: int) -> torch.Tensor:
    """Per-pixel Python loops straight from the definition (tiny inputs only)."""
    B, C, H, W = f1.shape
    k = 2 * d + 1
    out = torch.zeros(B, k * k, H, W, dtype=torch.float64)
    for b in range(B):
        for dy in range(-d, d + 1):
            for dx in range(-d, d + 1):
                ch = (dy + d) * k + (dx + d)
                for y in range(H):
                    for x in range(W):
                        y2, x2 = y + dy, x + dx
                        if 0 <= y2 < H and 0 <= x2 < W:
                            out[b, ch, y, x] = (f1[b, :, y, x].double() * f2[b, :, y2, x2].double()).sum() / C
    return out


@pytest.mark.parametrize("shape,d", [((1, 3, 5, 7), 1), ((2, 5, 6, 4), 2), ((1, 7, 9, 5), 3), ((2, 4, 5, 11), 4)])
def test_torch_path_matches_naive_definition(shape, d):
    g = torch.Generator().manual_seed(sum(shape) + d)
    f1, f2 = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    out = correlation_torch(f1, f2, d)
    assert out.shape == (shape[0], (2 * d + 1) ** 2, shape[2], shape[3])
    torch.testing.assert_close(out.double(), naive_correlation(f1, f2, d), rtol=1e-5, atol=1e-6)


def test_known_shift_peaks_at_its_displacement():
    # f2 is f1 moved right by 2 and down by 1: f1(y,x) == f2(y+1, x+2); the channel for
    # (dy, dx) = (1, 2) must be the largest at every interior pixel.
    d = 4
    f1 = torch.randn(1, 256, 12, 12, generator=torch.Generator().manual_seed(0))
    f2 = torch.roll(f1, shifts=(1, 2), dims=(2, 3))
    out = correlation_torch(f1, f2, d)
    best = out[0, :, 1:-1, 2:-2].argmax(0)
    assert (best == (1 + d) * (2 * d + 1) + (2 + d)).all()


def test_gradcheck_float64():
    f1 = torch.randn(1, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    f2 = torch.randn(1, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: correlation_torch(a, b, 2), (f1, f2))


def test_half_inputs_accumulate_in_float32_and_keep_dtype():
    f1, f2 = torch.randn(1, 64, 6, 6), torch.randn(1, 64, 6, 6)
    ref = correlation_torch(f1, f2, 2)
    out = correlation_torch(f1.bfloat16(), f2.bfloat16(), 2)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=3e-2)


def test_dispatch_and_errors():
    f1, f2 = torch.randn(1, 4, 5, 5), torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(correlation(f1, f2, 1), correlation_torch(f1, f2, 1))
    torch.testing.assert_close(correlation(f1, f2, 1, backend="torch"), correlation_torch(f1, f2, 1))
    with pytest.raises(ValueError, match="cupy.*CUDA"):
        correlation(f1, f2, 1, backend="cupy")
    with pytest.raises(ValueError, match="unknown correlation backend"):
        correlation(f1, f2, 1, backend="triton")
    with pytest.raises(ValueError, match="differ in shape"):
        correlation(f1, torch.randn(1, 4, 5, 6))
    # mixed dtypes (a warped fp32 map against bf16 features) follow f1's dtype
    assert correlation(f1.bfloat16(), f2, 1).dtype == torch.bfloat16
