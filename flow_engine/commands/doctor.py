"""``python -m flow_engine doctor [--json OUT] [--bench]``: what works on this machine, and why not.

Prints the versions that matter (Python, torch and its CUDA, torchvision, CuPy and the CUDA it
was built for, the NVIDIA driver, decord, PyAV and whether it can encode H.264, OpenCV), the
devices with their memory, then one line per check:

- ``OK``: works here;
- ``not available``: this machine cannot do it (no GPU, CuPy not installed) and the project
  falls back (the PyTorch cost volume, the CPU): healthy;
- ``BROKEN``: installed but failing (a kernel that does not compile or disagrees with the
  PyTorch path, weights that do not load, a decoder that cannot open a video): the line
  says why and what to do.

Checks: CUDA visible to torch; CuPy sees the device; the three correlation kernels (forward,
both gradients) agree with the PyTorch path on fresh random inputs in fp32, fp16 and bf16 at
a size that is not a multiple of the kernel's tile; PWC-Net and RAFT each run one pair on
each device; the shipped weights load (and their hash); video decoding and H.264 encoding.
``--bench`` adds a short timing of the default engine: pairs/s at 1024x436, and at 340x256
in clip mode (features once), on each device.

Exit status: 0 when everything this machine can do works (a CPU-only machine with the
PyTorch path is healthy), 1 when any check is BROKEN.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from flow_engine.commands.args import output_file, write_output

# Each check imports what it checks (CuPy, OpenCV, PyAV, decord, the engines) inside itself: a library
# that is missing or broken is that check's line ("not available" or BROKEN, with why), not a crash.

OK, UNAVAILABLE, BROKEN = "OK", "not available", "BROKEN"
# Agreement of the CuPy kernel with the PyTorch path, relative to the output's scale.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}


@dataclass
class Check:
    name: str
    status: str
    detail: str = ""
    fix: str = ""


def versions() -> dict:
    """Versions of the interpreter and of every library the engine uses (``None`` when absent)."""
    import cv2

    out = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
           "opencv": cv2.__version__}
    for name, module in (("torchvision", "torchvision"), ("decord", "decord"), ("pyav", "av"), ("cupy", "cupy")):
        try:
            out[name] = __import__(module).__version__
        except Exception:  # absent or broken: the checks below say which
            out[name] = None
    out["cupy_cuda"] = out["driver"] = None
    if out["cupy"]:
        try:
            import cupy

            out["cupy_cuda"] = _cuda_version(cupy.cuda.runtime.runtimeGetVersion())
            driver = cupy.cuda.runtime.driverGetVersion()
            out["driver"] = _cuda_version(driver) if driver else None
        except Exception:
            pass
    return out


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def devices() -> list[dict]:
    """The CPU and each CUDA device torch sees, with memory in GiB."""
    cpu_mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    out = [{"device": "cpu", "name": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "memory_gib": round(cpu_mem, 1)}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append({"device": f"cuda:{i}", "name": p.name, "capability": f"{p.major}.{p.minor}",
                        "memory_gib": round(p.total_memory / 2**30, 1)})
    return out


# ----------------------------------------------------------------------------- checks


def check_cuda() -> Check:
    if torch.cuda.is_available():
        return Check("CUDA visible to torch", OK, f"{torch.cuda.device_count()} device(s), CUDA {torch.version.cuda}")
    if torch.version.cuda is None:
        return Check("CUDA visible to torch", UNAVAILABLE, "this torch is a CPU-only build")
    return Check("CUDA visible to torch", UNAVAILABLE, f"torch built for CUDA {torch.version.cuda} sees no GPU (none here, or no driver)")


def _cupy_fix() -> str:
    major = (torch.version.cuda or "12").split(".")[0]
    return f"pip install cupy-cuda{major}x (the CUDA major version torch was built for: {torch.version.cuda})"


def check_cupy() -> Check:
    name = "CuPy sees the device"
    if not torch.cuda.is_available():
        return Check(name, UNAVAILABLE, "no CUDA device: the PyTorch cost volume is used")
    try:
        import cupy
    except ImportError as e:
        return Check(name, UNAVAILABLE, f"CuPy is not installed ({e}): the PyTorch cost volume is used", _cupy_fix())
    except Exception as e:  # a broken install: wrong CUDA libraries, undefined symbols
        return Check(name, BROKEN, f"import cupy fails: {type(e).__name__}: {e}", _cupy_fix())
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return Check(name, BROKEN, f"CuPy cannot query devices: {type(e).__name__}: {e}",
                     "the driver is older than CuPy's CUDA, or CuPy's CUDA major version differs from the driver's; " + _cupy_fix())
    if count < torch.cuda.device_count():
        return Check(name, BROKEN, f"CuPy sees {count} device(s), torch {torch.cuda.device_count()}",
                     "check CUDA_VISIBLE_DEVICES is the same for both; " + _cupy_fix())
    return Check(name, OK, f"{count} device(s)")


def check_kernels(device: torch.device, dtype: torch.dtype, shape: tuple[int, int, int, int] = (2, 7, 13, 37), d: int = 4) -> Check:
    """The CuPy kernels against the PyTorch path: forward and both gradients on random inputs."""
    from flow_engine.models.correlation import correlation, cupy_usable

    name = f"correlation kernels {str(dtype).replace('torch.', '')} {device}"
    if device.type != "cuda":
        return Check(name, UNAVAILABLE, "the CuPy kernels need a CUDA device")
    if not cupy_usable(device):
        from flow_engine.models.correlation import _cupy_reason

        return Check(name, BROKEN if _cupy_installed() else UNAVAILABLE, _cupy_reason(device), _cupy_fix())
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return Check(name, UNAVAILABLE, "this GPU has no bf16")
    try:
        g = torch.Generator(device).manual_seed(int(time.time()))  # fresh inputs on every run
        f1 = torch.randn(shape, generator=g, device=device).to(dtype)
        f2 = torch.randn(shape, generator=g, device=device).to(dtype)
        grad = torch.randn((shape[0], (2 * d + 1) ** 2, shape[2], shape[3]), generator=g, device=device).to(dtype)
        results = {}
        for backend in ("cupy", "torch"):
            a, b = f1.clone().requires_grad_(), f2.clone().requires_grad_()
            out = correlation(a, b, d, backend)
            out.backward(grad)
            results[backend] = (out.float(), a.grad.float(), b.grad.float())
        worst = []
        for label, got, want in zip(("forward", "grad f1", "grad f2"), results["cupy"], results["torch"]):
            err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-6))
            worst.append(f"{label} {err:.1e}")
            if not err <= TOLERANCE[dtype]:
                return Check(name, BROKEN, f"{label} differs from the PyTorch path by {err:.2e} (relative)",
                             "report it with this output; set corr_backend: torch meanwhile")
        torch.cuda.synchronize(device)
        return Check(name, OK, f"B,C,H,W = {shape}: " + ", ".join(worst))
    except Exception as e:
        return Check(name, BROKEN, f"{type(e).__name__}: {e}", _cupy_fix())


def check_torch_cost_volume() -> Check:
    """The PyTorch cost volume (every machine's fallback) against a direct sum over channels."""
    from flow_engine.models.correlation import correlation

    name = "PyTorch cost volume"
    g = torch.Generator().manual_seed(int(time.time()))
    f1, f2 = torch.randn(1, 5, 6, 7, generator=g), torch.randn(1, 5, 6, 7, generator=g)
    d = 2
    got = correlation(f1, f2, d, "torch")
    padded = torch.nn.functional.pad(f2, (d, d, d, d))
    want = torch.stack([(f1 * padded[..., dy : dy + 6, dx : dx + 7]).mean(1) for dy in range(2 * d + 1) for dx in range(2 * d + 1)], 1)
    err = float((got - want).abs().max())
    if err > 1e-5:
        return Check(name, BROKEN, f"differs from the direct computation by {err:.2e}", "report it with this output")
    return Check(name, OK, f"matches the direct computation ({err:.1e})")


def _cupy_installed() -> bool:
    return importlib.util.find_spec("cupy") is not None


def check_engine(model: str, device: torch.device, raft_weights: str | None = None) -> Check:
    """One 64x96 pair through ``model`` on ``device``: PWC-Net with the shipped weights, RAFT with
    ``raft_weights`` or random ones (whether it runs here, not how accurate it is)."""
    from flow_engine.engine import FlowEngine
    from flow_engine.models.raft import RAFT, _builder

    name = f"{model} runs a pair on {device}"
    frames = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    try:
        if model == "pwcnet" or raft_weights:
            engine = FlowEngine(model, weights=raft_weights if model != "pwcnet" else None, device=str(device))
            flow, dtype = engine(frames[:1], frames[1:]), engine.dtype
        else:
            net = RAFT(_builder(model)[0](weights=None), flow_updates=4).to(device).eval()
            with torch.inference_mode():
                flow, dtype = net.predict(*(frames.to(device).float() / 255).split(1)), "fp32, random weights"
        if flow.shape != (1, 2, 64, 96) or not torch.isfinite(flow).all():
            return Check(name, BROKEN, f"flow of shape {tuple(flow.shape)}, finite: {bool(torch.isfinite(flow).all())}")
        return Check(name, OK, dtype)
    except Exception as e:
        return Check(name, BROKEN, f"{type(e).__name__}: {e}")


def check_weights() -> Check:
    from flow_engine.checkpoints import file_hash
    from flow_engine.engine import DEFAULT_WEIGHTS
    from flow_engine.models.pwcnet import PWCNet

    name = "shipped PWC-Net weights load"
    if not DEFAULT_WEIGHTS.is_file():
        return Check(name, BROKEN, f"{DEFAULT_WEIGHTS} is missing", "reinstall the package (the file ships with it)")
    try:
        PWCNet.from_weights(DEFAULT_WEIGHTS)
    except Exception as e:
        return Check(name, BROKEN, f"{type(e).__name__}: {e}", "reinstall the package")
    return Check(name, OK, f"{DEFAULT_WEIGHTS.name} sha256[:16] {file_hash(DEFAULT_WEIGHTS)}")


def check_video() -> list[Check]:
    """H.264 encoding with PyAV, then decoding that file with decord (and PyAV)."""
    import numpy as np

    checks = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.mp4"
        try:
            import av

            with av.open(str(path), "w") as container:
                stream = container.add_stream("libx264", rate=25)
                stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
                for t in range(4):
                    frame = np.full((48, 64, 3), 40 * t, np.uint8)
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
                container.mux(stream.encode())
            checks.append(Check("PyAV encodes H.264", OK, f"libx264 via PyAV {av.__version__}"))
        except Exception as e:
            checks.append(Check("PyAV encodes H.264", BROKEN, f"{type(e).__name__}: {e}",
                                "pip install --force-reinstall av (its wheels bundle FFmpeg with libx264)"))
            return checks
        try:
            from flow_engine.io.video import read_frames

            frames = read_frames(path)
            checks.append(Check("decord decodes video", OK, f"{len(frames)} frames of {frames.shape[2]}x{frames.shape[1]}"))
        except Exception as e:
            checks.append(Check("decord decodes video", BROKEN, f"{type(e).__name__}: {e}", "pip install --force-reinstall decord"))
    return checks


def run_checks(raft_weights: str | None = None) -> list[Check]:
    checks = [check_cuda(), check_cupy(), check_torch_cost_volume()]
    cuda = [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for dev in cuda or [torch.device("cpu")]:
            checks.append(check_kernels(dev, dtype))
    for model in ("pwcnet", "raft_small"):
        for dev in [torch.device("cpu")] + cuda:
            checks.append(check_engine(model, dev, raft_weights))
    checks.append(check_weights())
    checks += check_video()
    return checks


# ----------------------------------------------------------------------------- bench


def bench(iters: int = 3) -> list[dict]:
    """pairs/s of the default engine at 1024x436 (pairs) and 340x256 (16-frame clips) on each device."""
    from flow_engine.commands.bench import bench_clip, bench_engine
    from flow_engine.engine import FlowEngine

    rows = []
    devs = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else ["cpu"]
    for dev in devs:
        engine = FlowEngine(device=dev)
        batch = 8 if dev != "cpu" else 1
        pairs = bench_engine(engine, (436, 1024), batch, iters, warmup=1)
        clip = bench_clip(engine, (256, 340), 16 if dev != "cpu" else 5, iters, warmup=1)
        rows.append({"device": dev, "dtype": engine.dtype, "pairs_per_s_1024x436": pairs["pairs_per_s"], "batch_1024x436": batch,
                     "clip_pairs_per_s_340x256": clip["clip"]["pairs_per_s"], "pair_pairs_per_s_340x256": clip["pairs"]["pairs_per_s"]})
    return rows


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=output_file, metavar="OUT.json", help="also write the report as JSON")
    parser.add_argument("--bench", action="store_true", help="also time the default engine on each device")
    parser.add_argument("--raft-weights", metavar="PATH", help="RAFT weights for the RAFT check (default: random weights)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.ERROR)  # the report says it all; no fallback warnings in between
    report = {"versions": versions(), "devices": devices()}
    print("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if k != "platform"))
    for d in report["devices"]:
        print("device: " + ", ".join(f"{k} {v}" for k, v in d.items()))
    checks = run_checks(args.raft_weights)
    width = max(len(c.name) for c in checks)
    for c in checks:
        line = f"  {c.name:<{width}}  {c.status}" + (f": {c.detail}" if c.detail else "")
        print(line + (f"\n  {'':<{width}}  fix: {c.fix}" if c.status == BROKEN and c.fix else ""))
    report["checks"] = [asdict(c) for c in checks]
    if args.bench:
        report["bench"] = bench()
        for row in report["bench"]:
            print(f"bench {row['device']} ({row['dtype']}): {row['pairs_per_s_1024x436']:.2f} pairs/s at 1024x436 "
                  f"(batch {row['batch_1024x436']}), {row['clip_pairs_per_s_340x256']:.2f} pairs/s at 340x256 as clips "
                  f"({row['pair_pairs_per_s_340x256']:.2f} as pairs)")
    broken = [c for c in checks if c.status == BROKEN]
    report["healthy"] = not broken
    print("healthy: everything this machine can do works" if not broken else f"BROKEN: {len(broken)} check(s) failed")
    if args.json is not None and not write_output(args.json, json.dumps(report, indent=2) + "\n"):
        return 2  # the report above stands; the file could not be written
    return 1 if broken else 0


if __name__ == "__main__":  # pragma: no cover
    p = argparse.ArgumentParser()
    add_arguments(p)
    sys.exit(run(p.parse_args()))
