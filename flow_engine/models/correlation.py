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

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

BACKENDS = ("auto", "cupy", "torch")


def correlation_torch(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int = 4) -> torch.Tensor:
    """Cost volume [B,(2d+1)^2,H,W] of ``f1, f2`` [B,C,H,W] with plain tensor ops (CPU or GPU).

    One multiply-and-sum per displacement on a zero-padded ``f2`` (81 tensor ops for d=4,
    never a per-pixel loop). Half/bfloat16 inputs are accumulated in float32 and the result is
    returned in the input dtype. Differentiable: an autograd Function whose backward runs the
    same shift loop (gather for f1, in-place slice adds for f2), instead of autograd's 81
    padded-size zero tensors.
    """
    _check_pair(f1, f2, max_displacement)
    return _CorrelationTorch.apply(f1, f2, max_displacement)


def _shifts(d: int):
    """(channel, dy, dx) with dy, dx as offsets into an f2 padded by d on each side."""
    K = 2 * d + 1
    return ((i * K + j, i, j) for i in range(K) for j in range(K))


class _CorrelationTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, f1: torch.Tensor, f2: torch.Tensor, d: int) -> torch.Tensor:
        out_dtype = f1.dtype
        if f1.dtype in (torch.float16, torch.bfloat16):
            f1, f2 = f1.float(), f2.float()
        B, C, H, W = f1.shape
        f2p = F.pad(f2, (d, d, d, d))
        out = f1.new_empty((B, (2 * d + 1) ** 2, H, W))
        for k, dy, dx in _shifts(d):
            # multiply-then-sum beats einsum/bmm formulations on CPU (no permuted copies)
            out[:, k] = (f1 * f2p[:, :, dy : dy + H, dx : dx + W]).sum(1)
        ctx.save_for_backward(f1, f2p)
        ctx.d, ctx.in_dtypes = d, (out_dtype, out_dtype)
        return out.mul_(1.0 / C).to(out_dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        f1, f2p = ctx.saved_tensors
        d = ctx.d
        B, C, H, W = f1.shape
        g = grad_out.to(f1.dtype) * (1.0 / C)
        grad1 = torch.zeros_like(f1) if ctx.needs_input_grad[0] else None
        grad2p = torch.zeros_like(f2p) if ctx.needs_input_grad[1] else None
        for k, dy, dx in _shifts(d):
            gk = g[:, k : k + 1]
            if grad1 is not None:
                grad1.addcmul_(gk, f2p[:, :, dy : dy + H, dx : dx + W])
            if grad2p is not None:
                grad2p[:, :, dy : dy + H, dx : dx + W].addcmul_(gk, f1)
        if grad1 is not None:
            grad1 = grad1.to(ctx.in_dtypes[0])
        grad2 = grad2p[:, :, d : d + H, d : d + W].to(ctx.in_dtypes[1]) if grad2p is not None else None
        return grad1, grad2, None


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
            raise RuntimeError(f"correlation backend 'cupy' requested but CuPy cannot use {f1.device}: {_cupy_reason(f1.device)}")
        return _correlation_cupy(f1, f2, max_displacement)
    if (
        f1.is_cuda
        and f1.dtype in PRELUDES
        and isinstance(max_displacement, int)
        and cupy_usable(f1.device)
        and _kernel_fits(max_displacement, f1.device)
    ):
        return _correlation_cupy(f1, f2, max_displacement)
    return correlation_torch(f1, f2, max_displacement)


# --- CuPy kernel -------------------------------------------------------------------------------
# Tile geometry, baked into the source (problem sizes B, C, H, W, d are kernel arguments):
# a block of TW x TH threads owns a TW x TH tile of output pixels of one image.
TILE = {"TW": 32, "TH": 8, "CC": 16, "NDY": 3, "NDX": 9}
KERNEL_NAMES = ("corr_forward", "corr_backward_f1", "corr_backward_f2")

# Per-dtype preludes: storage type, load to float, store from float. Header-free (no cuda_fp16.h
# or cuda_bf16.h) so NVRTC needs no include paths: fp16 converts with PTX cvt, bf16 with bit
# arithmetic (round to nearest even, as torch does).
PRELUDES = {
    torch.float32: """
typedef float scalar_t;
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float from_float(float v) { return v; }
""",
    torch.float16: """
typedef unsigned short scalar_t;
__device__ __forceinline__ float to_float(unsigned short h) {
    float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f;
}
__device__ __forceinline__ unsigned short from_float(float f) {
    unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h;
}
""",
    torch.bfloat16: """
typedef unsigned short scalar_t;
__device__ __forceinline__ float to_float(unsigned short h) { return __uint_as_float(((unsigned int)h) << 16); }
__device__ __forceinline__ unsigned short from_float(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)0x7fc0u;  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
""",
}

KERNEL_BODY = r"""
// All three kernels: blockIdx.x = b * tiles + tile, block (TW, TH), one thread per pixel of
// the tile; features are NCHW contiguous, so a warp (32 consecutive x) reads and writes
// coalesced rows. Shared memory holds float copies of the frame-2 (or frame-1) rows that a
// tile needs, so each loaded element is reused by up to (2d+1) neighbouring threads.

// Forward: out[b, (dy+d)*K + dx+d, y, x] = sum_c f1[b,c,y,x] * f2[b,c,y+dy,x+dx] / C.
// blockIdx.y picks a group of NDY x NDX displacements; each thread keeps NDY*NDX sums and its
// own f1 value in registers while channels stream through shared memory CC at a time.
extern "C" __global__ void __launch_bounds__(TW * TH)
corr_forward(const scalar_t* __restrict__ f1, const scalar_t* __restrict__ f2, scalar_t* __restrict__ out,
             const int C, const int H, const int W, const int d,
             const int tiles_x, const int tiles, const int groups_x)
{
    extern __shared__ float smem[];  // f2 patch [CC][TH + NDY - 1][TW + NDX - 1]
    const int PR = TH + NDY - 1, PQ = TW + NDX - 1, K = 2 * d + 1;
    const int b = blockIdx.x / tiles, tile = blockIdx.x % tiles;
    const int x0 = (tile % tiles_x) * TW, y0 = (tile / tiles_x) * TH;
    const int dy0 = -d + (int)(blockIdx.y / groups_x) * NDY;
    const int dx0 = -d + (int)(blockIdx.y % groups_x) * NDX;
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * TW + tx;
    const int x = x0 + tx, y = y0 + ty;
    const bool inside = x < W && y < H;
    const long long plane = (long long)H * W;
    const scalar_t* f1p = f1 + (long long)b * C * plane + (inside ? (long long)y * W + x : 0);
    const scalar_t* f2b = f2 + (long long)b * C * plane;

    float acc[NDY][NDX];
#pragma unroll
    for (int i = 0; i < NDY; ++i)
#pragma unroll
        for (int j = 0; j < NDX; ++j) acc[i][j] = 0.0f;

    for (int c0 = 0; c0 < C; c0 += CC) {
        const int nc = min(CC, C - c0);
        for (int i = tid; i < nc * PR * PQ; i += TW * TH) {
            const int q = i % PQ, r = (i / PQ) % PR, cc = i / (PR * PQ);
            const int ys = y0 + dy0 + r, xs = x0 + dx0 + q;
            smem[i] = (ys >= 0 && ys < H && xs >= 0 && xs < W)
                          ? to_float(f2b[(c0 + cc) * plane + (long long)ys * W + xs]) : 0.0f;
        }
        __syncthreads();
        if (inside) {
            for (int cc = 0; cc < nc; ++cc) {
                const float v1 = to_float(f1p[(c0 + cc) * plane]);
                const float* p = smem + (cc * PR + ty) * PQ + tx;
#pragma unroll
                for (int i = 0; i < NDY; ++i)
#pragma unroll
                    for (int j = 0; j < NDX; ++j) acc[i][j] += v1 * p[i * PQ + j];
            }
        }
        __syncthreads();
    }
    if (!inside) return;
    const float inv_c = 1.0f / (float)C;
    scalar_t* o = out + (long long)b * K * K * plane + (long long)y * W + x;
#pragma unroll
    for (int i = 0; i < NDY; ++i)
#pragma unroll
        for (int j = 0; j < NDX; ++j) {
            const int dy = dy0 + i, dx = dx0 + j;
            if (dy <= d && dx <= d) o[((dy + d) * K + (dx + d)) * plane] = from_float(acc[i][j] * inv_c);
        }
}

// grad_f1[b,c,y,x] = sum_{dy,dx} g[b,k,y,x] * f2[b,c,y+dy,x+dx] / C  (gather, no atomics).
// blockIdx.y picks a chunk of CC channels; each thread keeps CC sums; for each dy the f2 rows
// y0+dy .. y0+dy+TH-1 (with a d-wide halo in x) go through shared memory.
extern "C" __global__ void __launch_bounds__(TW * TH)
corr_backward_f1(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ f2, scalar_t* __restrict__ grad_f1,
                 const int C, const int H, const int W, const int d, const int tiles_x, const int tiles)
{
    extern __shared__ float smem[];  // f2 rows for one dy: [CC][TH][TW + 2d]
    const int PQ = TW + 2 * d, K = 2 * d + 1;
    const int b = blockIdx.x / tiles, tile = blockIdx.x % tiles;
    const int x0 = (tile % tiles_x) * TW, y0 = (tile / tiles_x) * TH;
    const int c0 = blockIdx.y * CC, nc = min(CC, C - c0);
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * TW + tx;
    const int x = x0 + tx, y = y0 + ty;
    const bool inside = x < W && y < H;
    const long long plane = (long long)H * W;
    const scalar_t* g = grad_out + (long long)b * K * K * plane + (inside ? (long long)y * W + x : 0);
    const scalar_t* f2b = f2 + ((long long)b * C + c0) * plane;

    float acc[CC];
#pragma unroll
    for (int cc = 0; cc < CC; ++cc) acc[cc] = 0.0f;

    for (int dy = -d; dy <= d; ++dy) {
        for (int i = tid; i < CC * TH * PQ; i += TW * TH) {
            const int q = i % PQ, r = (i / PQ) % TH, cc = i / (TH * PQ);
            const int ys = y0 + dy + r, xs = x0 - d + q;
            smem[i] = (cc < nc && ys >= 0 && ys < H && xs >= 0 && xs < W)
                          ? to_float(f2b[cc * plane + (long long)ys * W + xs]) : 0.0f;
        }
        __syncthreads();
        if (inside) {
            for (int dx = -d; dx <= d; ++dx) {
                const float gk = to_float(g[((dy + d) * K + (dx + d)) * plane]);
                const float* p = smem + ty * PQ + tx + dx + d;
#pragma unroll
                for (int cc = 0; cc < CC; ++cc) acc[cc] += gk * p[cc * TH * PQ];
            }
        }
        __syncthreads();
    }
    if (!inside) return;
    const float inv_c = 1.0f / (float)C;
    scalar_t* o = grad_f1 + ((long long)b * C + c0) * plane + (long long)y * W + x;
#pragma unroll
    for (int cc = 0; cc < CC; ++cc)
        if (cc < nc) o[cc * plane] = from_float(acc[cc] * inv_c);
}

// grad_f2[b,c,y',x'] = sum_{dy,dx} g[b,k,y'-dy,x'-dx] * f1[b,c,y'-dy,x'-dx] / C  (gather form).
// For each dy the source rows y0-dy .. y0-dy+TH-1 of f1 (CC channels) and of the K gradient
// planes of that dy go through shared memory; out-of-frame sources are zero.
extern "C" __global__ void __launch_bounds__(TW * TH)
corr_backward_f2(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ f1, scalar_t* __restrict__ grad_f2,
                 const int C, const int H, const int W, const int d, const int tiles_x, const int tiles)
{
    extern __shared__ float smem[];  // f1 rows [CC][TH][TW + 2d], then gradient rows [K][TH][TW + 2d]
    const int PQ = TW + 2 * d, K = 2 * d + 1;
    float* s_f1 = smem;
    float* s_g = smem + CC * TH * PQ;
    const int b = blockIdx.x / tiles, tile = blockIdx.x % tiles;
    const int x0 = (tile % tiles_x) * TW, y0 = (tile / tiles_x) * TH;
    const int c0 = blockIdx.y * CC, nc = min(CC, C - c0);
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * TW + tx;
    const int x = x0 + tx, y = y0 + ty;
    const bool inside = x < W && y < H;
    const long long plane = (long long)H * W;
    const scalar_t* gb = grad_out + (long long)b * K * K * plane;
    const scalar_t* f1b = f1 + ((long long)b * C + c0) * plane;

    float acc[CC];
#pragma unroll
    for (int cc = 0; cc < CC; ++cc) acc[cc] = 0.0f;

    for (int dy = -d; dy <= d; ++dy) {
        for (int i = tid; i < CC * TH * PQ; i += TW * TH) {
            const int q = i % PQ, r = (i / PQ) % TH, cc = i / (TH * PQ);
            const int ys = y0 - dy + r, xs = x0 - d + q;
            s_f1[i] = (cc < nc && ys >= 0 && ys < H && xs >= 0 && xs < W)
                          ? to_float(f1b[cc * plane + (long long)ys * W + xs]) : 0.0f;
        }
        for (int i = tid; i < K * TH * PQ; i += TW * TH) {
            const int q = i % PQ, r = (i / PQ) % TH, kx = i / (TH * PQ);
            const int ys = y0 - dy + r, xs = x0 - d + q;
            s_g[i] = (ys >= 0 && ys < H && xs >= 0 && xs < W)
                         ? to_float(gb[((dy + d) * K + kx) * plane + (long long)ys * W + xs]) : 0.0f;
        }
        __syncthreads();
        if (inside) {
            for (int dx = -d; dx <= d; ++dx) {
                const int col = ty * PQ + tx - dx + d;  // source pixel (y - dy, x - dx)
                const float gk = s_g[(dx + d) * TH * PQ + col];
                const float* p = s_f1 + col;
#pragma unroll
                for (int cc = 0; cc < CC; ++cc) acc[cc] += gk * p[cc * TH * PQ];
            }
        }
        __syncthreads();
    }
    if (!inside) return;
    const float inv_c = 1.0f / (float)C;
    scalar_t* o = grad_f2 + ((long long)b * C + c0) * plane + (long long)y * W + x;
#pragma unroll
    for (int cc = 0; cc < CC; ++cc)
        if (cc < nc) o[cc * plane] = from_float(acc[cc] * inv_c);
}
"""


def kernel_source(dtype: torch.dtype, prelude: str | None = None) -> str:
    """CUDA source of the three kernels for ``dtype`` (float32, float16 or bfloat16)."""
    if dtype not in PRELUDES:
        raise ValueError(f"the CuPy correlation kernel supports float32, float16 and bfloat16, not {dtype}")
    defines = "".join(f"#define {k} {v}\n" for k, v in TILE.items())
    return defines + (PRELUDES[dtype] if prelude is None else prelude) + KERNEL_BODY


def launch_config(kernel: str, B: int, C: int, H: int, W: int, d: int) -> tuple[tuple[int, int, int], tuple[int, ...], int]:
    """(grid, trailing int arguments, dynamic shared-memory bytes) for one launch of ``kernel``."""
    TW, TH, CC = TILE["TW"], TILE["TH"], TILE["CC"]
    K = 2 * d + 1
    tiles_x = -(-W // TW)
    tiles = tiles_x * -(-H // TH)
    if kernel == "corr_forward":
        groups_x = -(-K // TILE["NDX"])
        groups = -(-K // TILE["NDY"]) * groups_x
        smem = CC * (TH + TILE["NDY"] - 1) * (TW + TILE["NDX"] - 1) * 4
        return (B * tiles, groups, 1), (C, H, W, d, tiles_x, tiles, groups_x), smem
    rows = CC if kernel == "corr_backward_f1" else CC + K
    smem = rows * TH * (TW + 2 * d) * 4
    return (B * tiles, -(-C // CC), 1), (C, H, W, d, tiles_x, tiles), smem


_KERNELS: dict[tuple[torch.dtype, int], dict] = {}
_CUPY_STATE: dict[int, tuple[bool, str]] = {}  # device index -> (usable, reason if not)


def _kernels(dtype: torch.dtype, device_index: int) -> dict:
    """The compiled kernels for ``dtype`` on that device (compiled once, then cached)."""
    key = (dtype, device_index)
    if key not in _KERNELS:
        import cupy  # optional (CUDA machines): imported where the kernel runs

        with cupy.cuda.Device(device_index):
            module = cupy.RawModule(code=kernel_source(dtype), options=("--std=c++17",))
            _KERNELS[key] = {name: module.get_function(name) for name in KERNEL_NAMES}
    return _KERNELS[key]


def cupy_usable(device: torch.device | None = None) -> bool:
    """Whether the CuPy kernel can run on ``device`` (default: the current CUDA device).

    Checked once per device: CuPy importable, the device visible to it, the float32 kernels
    compiled and loaded. When not, the reason is logged once (a warning) and False returned.
    """
    if not torch.cuda.is_available():
        index = -1
    else:
        index = device.index if device is not None and device.index is not None else torch.cuda.current_device()
    if index not in _CUPY_STATE:
        try:
            if index < 0:
                raise RuntimeError("PyTorch sees no CUDA device")
            import cupy  # optional (CUDA machines): imported where the kernel runs

            if cupy.cuda.runtime.getDeviceCount() <= index:
                raise RuntimeError(f"CuPy sees {cupy.cuda.runtime.getDeviceCount()} CUDA device(s)")
            _kernels(torch.float32, index)
            _CUPY_STATE[index] = (True, "")
        except Exception as e:  # ImportError, no driver, driver too old, NVRTC missing ...
            reason = f"{type(e).__name__}: {e}"
            _CUPY_STATE[index] = (False, reason)
            log.warning("CuPy correlation kernel unavailable (%s); using the PyTorch cost volume", reason)
    return _CUPY_STATE[index][0]


def _cupy_reason(device: torch.device) -> str:
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _CUPY_STATE.get(index, (False, "not checked"))[1]


def _kernel_fits(d: int, device: torch.device) -> bool:
    """Whether the shared memory the backward kernels need for ``d`` fits this device."""
    need = launch_config("corr_backward_f2", 1, 1, 1, 1, d)[2]
    return need <= torch.cuda.get_device_properties(device).shared_memory_per_block_optin


def _launch(kernel: str, tensors: tuple[torch.Tensor, ...], B: int, C: int, H: int, W: int, d: int) -> None:
    """Run ``kernel`` on the current torch CUDA stream of the tensors' device; pointers via data_ptr."""
    import cupy  # optional (CUDA machines): imported where the kernel runs
    device = tensors[0].device
    grid, ints, smem = launch_config(kernel, B, C, H, W, d)
    fn = _kernels(tensors[0].dtype, device.index)[kernel]
    args = tuple(np.uint64(t.data_ptr()) for t in tensors) + tuple(np.int32(v) for v in ints)
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream, device.index)
    with cupy.cuda.Device(device.index), stream:
        if smem > 48 * 1024 and fn.max_dynamic_shared_size_bytes < smem:
            fn.max_dynamic_shared_size_bytes = smem  # opt in beyond the default 48 KB
        fn(grid, (TILE["TW"], TILE["TH"], 1), args, shared_mem=smem)


class _CorrelationCupy(torch.autograd.Function):
    """Cost volume with the CuPy kernels for forward and backward (grad wrt both inputs)."""

    @staticmethod
    def forward(ctx, f1: torch.Tensor, f2: torch.Tensor, d: int) -> torch.Tensor:
        f1, f2 = f1.contiguous(), f2.contiguous()
        B, C, H, W = f1.shape
        out = torch.empty((B, (2 * d + 1) ** 2, H, W), dtype=f1.dtype, device=f1.device)
        if out.numel():
            _launch("corr_forward", (f1, f2, out), B, C, H, W, d)
        ctx.save_for_backward(f1, f2)
        ctx.d = d
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        f1, f2 = ctx.saved_tensors
        B, C, H, W = f1.shape
        grad_out = grad_out.to(f1.dtype).contiguous()
        grad1 = grad2 = None
        if ctx.needs_input_grad[0]:
            grad1 = torch.empty_like(f1)
            if grad1.numel():
                _launch("corr_backward_f1", (grad_out, f2, grad1), B, C, H, W, ctx.d)
        if ctx.needs_input_grad[1]:
            grad2 = torch.empty_like(f2)
            if grad2.numel():
                _launch("corr_backward_f2", (grad_out, f1, grad2), B, C, H, W, ctx.d)
        return grad1, grad2, None


def _correlation_cupy(f1: torch.Tensor, f2: torch.Tensor, max_displacement: int) -> torch.Tensor:
    _check_pair(f1, f2, max_displacement)
    if f1.dtype not in PRELUDES:
        raise ValueError(f"the CuPy correlation kernel supports float32, float16 and bfloat16, not {f1.dtype}")
    if not _kernel_fits(max_displacement, f1.device):
        raise ValueError(f"max_displacement={max_displacement} needs more shared memory than {f1.device} has; use backend='torch'")
    return _CorrelationCupy.apply(f1, f2, max_displacement)
