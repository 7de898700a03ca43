"""Cost volume: torch path vs a naive reference, gradients, dispatch; the CuPy kernel (compile on CPU, run on GPU)."""
from __future__ import annotations

import ctypes
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from flow_engine.models import correlation as corr_mod
from flow_engine.models.correlation import correlation, correlation_torch


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


# --- the CuPy kernel without a GPU ---------------------------------------------------------------
# (1) NVRTC (or nvcc) compiles the source of every dtype for sm_90: catches syntax and type errors.
# (2) The same source, compiled as C++ for the host with a small shim (one std::thread per CUDA
#     thread, std::barrier for __syncthreads, blocks run one after another), runs the kernels'
#     indexing, tiling and shared-memory logic on the CPU against the torch path, with the
#     launch geometry of flow_engine.models.correlation.launch_config.

def _compile_for_gpu(source: str) -> None:
    try:
        from cupy_backends.cuda.libs import nvrtc
    except ImportError:
        nvrtc = None
    if nvrtc is not None:
        prog = nvrtc.createProgram(source, "corr.cu", (), ())
        try:
            nvrtc.compileProgram(prog, ("--std=c++17", "-arch=compute_90"))
        except nvrtc.NVRTCError:
            pytest.fail("NVRTC rejected the kernel source:\n" + nvrtc.getProgramLog(prog))
        ptx = nvrtc.getPTX(prog)
        for name in corr_mod.KERNEL_NAMES:
            assert f".entry {name}".encode() in ptx, name
        return
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not Path(nvcc).exists():
        pytest.skip("neither CuPy's NVRTC binding nor nvcc is available to compile the kernel")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "corr.cu"
        src.write_text(source)
        out = subprocess.run([nvcc, "-ptx", "-arch=sm_90", "-std=c++17", str(src), "-o", str(src.with_suffix(".ptx"))],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kernel_source_compiles_for_sm90(dtype):
    _compile_for_gpu(corr_mod.kernel_source(dtype))


HOST_SHIM = r"""
#include <barrier>
#include <cstring>
#include <thread>
#include <vector>
#include <algorithm>
using std::min;
struct dim3 { unsigned x, y, z; };
static thread_local dim3 threadIdx, blockIdx;
static std::barrier<>* g_barrier;
static float smem[1 << 16];  // the block's dynamic shared memory (blocks run one at a time)
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__
#define __launch_bounds__(n)
#define __syncthreads() g_barrier->arrive_and_wait()
static inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
"""

HOST_FP16_PRELUDE = """
typedef _Float16 scalar_t;
inline float to_float(_Float16 h) { return (float)h; }
inline _Float16 from_float(float f) { return (_Float16)f; }
"""

HOST_LAUNCHERS = r"""
template <class F> static void run_grid(int gx, int gy, F body) {
    for (int by = 0; by < gy; ++by)
        for (int bx = 0; bx < gx; ++bx) {
            std::barrier<> bar(TW * TH);
            g_barrier = &bar;
            std::vector<std::thread> threads;
            for (int ty = 0; ty < TH; ++ty)
                for (int tx = 0; tx < TW; ++tx)
                    threads.emplace_back([=] {
                        threadIdx = {(unsigned)tx, (unsigned)ty, 0};
                        blockIdx = {(unsigned)bx, (unsigned)by, 0};
                        body();
                    });
            for (auto& t : threads) t.join();
        }
}
extern "C" void launch_forward(int gx, int gy, const void* f1, const void* f2, void* out,
                               int C, int H, int W, int d, int tiles_x, int tiles, int groups_x) {
    run_grid(gx, gy, [=] { corr_forward((const scalar_t*)f1, (const scalar_t*)f2, (scalar_t*)out, C, H, W, d, tiles_x, tiles, groups_x); });
}
extern "C" void launch_backward_f1(int gx, int gy, const void* g, const void* f2, void* out,
                                   int C, int H, int W, int d, int tiles_x, int tiles) {
    run_grid(gx, gy, [=] { corr_backward_f1((const scalar_t*)g, (const scalar_t*)f2, (scalar_t*)out, C, H, W, d, tiles_x, tiles); });
}
extern "C" void launch_backward_f2(int gx, int gy, const void* g, const void* f1, void* out,
                                   int C, int H, int W, int d, int tiles_x, int tiles) {
    run_grid(gx, gy, [=] { corr_backward_f2((const scalar_t*)g, (const scalar_t*)f1, (scalar_t*)out, C, H, W, d, tiles_x, tiles); });
}
"""


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    """dtype -> ctypes library of the kernel source built for the CPU (skips without g++)."""
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ is needed to run the CUDA kernel source on the CPU")
    root = tmp_path_factory.mktemp("host_kernels")
    libs = {}
    for dtype, name in ((torch.float32, "f32"), (torch.float16, "f16"), (torch.bfloat16, "bf16")):
        prelude = HOST_FP16_PRELUDE if dtype == torch.float16 else corr_mod.PRELUDES[dtype]
        body = corr_mod.kernel_source(dtype, prelude=prelude)
        src = root / f"corr_{name}.cpp"
        src.write_text(HOST_SHIM + body + HOST_LAUNCHERS)
        lib = root / f"corr_{name}.so"
        out = subprocess.run([cxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-Wno-unknown-pragmas",
                              str(src), "-o", str(lib)], capture_output=True, text=True)
        if out.returncode != 0:
            pytest.fail(f"host build of the kernel source failed:\n{out.stderr[-3000:]}")
        libs[dtype] = ctypes.CDLL(str(lib))
    return libs


def _host_launch(lib, kernel: str, tensors, B, C, H, W, d):
    grid, ints, smem = corr_mod.launch_config(kernel, B, C, H, W, d)
    assert smem <= 4 * (1 << 16)
    fn = getattr(lib, {"corr_forward": "launch_forward", "corr_backward_f1": "launch_backward_f1",
                       "corr_backward_f2": "launch_backward_f2"}[kernel])
    ptrs = [ctypes.c_void_p(t.data_ptr()) for t in tensors]
    fn(ctypes.c_int(grid[0]), ctypes.c_int(grid[1]), *ptrs, *[ctypes.c_int(v) for v in ints])


def host_correlation(lib, f1, f2, d):
    B, C, H, W = f1.shape
    out = torch.full((B, (2 * d + 1) ** 2, H, W), float("nan"), dtype=f1.dtype)  # every element must be written
    _host_launch(lib, "corr_forward", (f1.contiguous(), f2.contiguous(), out), B, C, H, W, d)
    return out


def host_backward(lib, f1, f2, g, d):
    B, C, H, W = f1.shape
    g1 = torch.full_like(f1, float("nan"))
    g2 = torch.full_like(f2, float("nan"))
    _host_launch(lib, "corr_backward_f1", (g.contiguous(), f2.contiguous(), g1), B, C, H, W, d)
    _host_launch(lib, "corr_backward_f2", (g.contiguous(), f1.contiguous(), g2), B, C, H, W, d)
    return g1, g2


# Tiles are 32 x 8 pixels and channels go 16 at a time: sizes straddle those boundaries.
HOST_CASES = [((1, 5, 9, 35), 1), ((2, 20, 11, 33), 4), ((1, 33, 17, 9), 3), ((1, 7, 3, 40), 2), ((1, 16, 8, 32), 4)]


@pytest.mark.parametrize("shape,d", HOST_CASES)
def test_kernel_logic_on_host_fp32_forward_and_backward(host_kernels, shape, d):
    g = torch.Generator().manual_seed(d * 100 + shape[1])
    f1, f2 = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    f1r, f2r = f1.clone().requires_grad_(), f2.clone().requires_grad_()
    ref = correlation_torch(f1r, f2r, d)
    out = host_correlation(host_kernels[torch.float32], f1, f2, d)
    torch.testing.assert_close(out, ref.detach(), rtol=1e-5, atol=1e-6)
    grad = torch.randn(ref.shape, generator=g)
    ref.backward(grad)
    g1, g2 = host_backward(host_kernels[torch.float32], f1, f2, grad, d)
    torch.testing.assert_close(g1, f1r.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g2, f2r.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_logic_on_host_half_types(host_kernels, dtype):
    shape, d = (1, 24, 10, 36), 4
    g = torch.Generator().manual_seed(7)
    f1, f2 = torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)
    f1r, f2r = f1.float().requires_grad_(), f2.float().requires_grad_()
    ref = correlation_torch(f1r, f2r, d)  # fp32 reference on the same (rounded) inputs
    out = host_correlation(host_kernels[dtype], f1, f2, d)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref.detach(), rtol=1e-2, atol=1e-2)
    grad = torch.randn(ref.shape, generator=g).to(dtype)
    ref.backward(grad.float())
    g1, g2 = host_backward(host_kernels[dtype], f1, f2, grad, d)
    torch.testing.assert_close(g1.float(), f1r.grad, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(g2.float(), f2r.grad, rtol=1e-2, atol=1e-2)


def test_unusable_cupy_falls_back_and_warns_once(monkeypatch, caplog):
    # CuPy is installed but no GPU/driver is usable (pretend torch saw one, so the CuPy
    # side of the check runs for real): nothing fails, one warning, the torch path serves.
    if torch.cuda.device_count() > 0:
        pytest.skip("a GPU is present: this is the fallback for machines without a usable one")
    monkeypatch.setattr(corr_mod, "_CUPY_STATE", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with caplog.at_level(logging.WARNING, logger="flow_engine.models.correlation"):
        assert corr_mod.cupy_usable() is False
        assert corr_mod.cupy_usable() is False
    warnings = [r for r in caplog.records if "CuPy correlation kernel unavailable" in r.message]
    assert len(warnings) == 1
    f1, f2 = torch.randn(1, 4, 5, 5), torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(correlation(f1, f2, 2), correlation_torch(f1, f2, 2))


# --- on a GPU (skipped here; conftest marks them) -------------------------------------------------
GPU_CASES = [((1, 32, 7, 9), 1), ((2, 20, 13, 37), 2), ((2, 45, 33, 17), 3), ((3, 81, 24, 40), 4), ((1, 196, 5, 7), 4)]


def _gpu_inputs(shape, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    f1 = torch.randn(shape, device="cuda", generator=g)
    f2 = torch.randn(shape, device="cuda", generator=g)
    return f1, f2


def _check_kernel_against_torch(f1, f2, d, dtype):
    """Kernel on ``dtype`` inputs vs the fp32 torch path on the same (rounded) inputs, fwd + bwd."""
    a, b = f1.to(dtype).requires_grad_(), f2.to(dtype).requires_grad_()
    ar, br = a.detach().float().requires_grad_(), b.detach().float().requires_grad_()
    out = correlation(a, b, d, backend="cupy")
    ref = correlation_torch(ar, br, d)
    assert out.dtype == dtype and out.shape == ref.shape
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(out.float(), ref.detach(), **tol)
    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype))
    ref.backward(grad.to(dtype).float())
    assert a.grad.dtype == dtype and b.grad.dtype == dtype
    torch.testing.assert_close(a.grad.float(), ar.grad, **tol)
    torch.testing.assert_close(b.grad.float(), br.grad, **tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,d", GPU_CASES)
def test_gpu_kernel_matches_torch(shape, d, dtype):
    if not corr_mod.cupy_usable(torch.device("cuda")):
        pytest.skip("CuPy cannot use this GPU")
    f1, f2 = _gpu_inputs(shape, dtype, seed=d)
    _check_kernel_against_torch(f1, f2, d, dtype)


@pytest.mark.gpu
def test_gpu_kernel_non_contiguous_inputs_and_auto_dispatch():
    if not corr_mod.cupy_usable(torch.device("cuda")):
        pytest.skip("CuPy cannot use this GPU")
    f1, f2 = _gpu_inputs((2, 40, 19, 30), torch.float32, seed=5)
    nc1 = f1.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)  # same values, NCWH strides
    nc2 = f2[:, :, :, :].transpose(2, 3).contiguous().transpose(2, 3)
    assert not nc1.is_contiguous()
    _check_kernel_against_torch(nc1, nc2, 4, torch.float32)
    sliced = torch.randn(2, 80, 19, 30, device="cuda")[:, ::2]  # channel-strided view
    torch.testing.assert_close(correlation(sliced, f2, 4), correlation_torch(sliced, f2, 4), rtol=1e-5, atol=1e-5)
    # "auto" takes the kernel for CUDA tensors: its autograd node is the CuPy Function
    out = correlation(f1.requires_grad_(), f2, 4)
    assert "CorrelationCupy" in type(out.grad_fn).__name__


@pytest.mark.gpu
def test_gpu_kernel_on_a_non_default_stream():
    if not corr_mod.cupy_usable(torch.device("cuda")):
        pytest.skip("CuPy cannot use this GPU")
    f1, f2 = _gpu_inputs((4, 64, 48, 64), torch.float32, seed=9)
    ref = correlation_torch(f1, f2, 4)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        # the producer of the inputs runs on this stream too: the kernel must queue after it
        a, b = f1 * 2.0, f2 * 0.5
        out = correlation(a, b, 4, backend="cupy")
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_gpu_pwcnet_kernel_and_torch_backends_agree():
    if not corr_mod.cupy_usable(torch.device("cuda")):
        pytest.skip("CuPy cannot use this GPU")
    from flow_engine.models.pwcnet import PWCNet

    torch.manual_seed(0)
    net = PWCNet().cuda().eval()
    x1, x2 = torch.rand(2, 3, 128, 192, device="cuda"), torch.rand(2, 3, 128, 192, device="cuda")
    with torch.no_grad():
        net.corr_backend = "cupy"
        a = net(x1, x2)[-1]
        net.corr_backend = "torch"
        b = net(x1, x2)[-1]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
