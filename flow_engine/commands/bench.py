"""``python -m flow_engine bench``: engine throughput and the cost volume, CuPy kernel vs PyTorch.

    python -m flow_engine bench --size 1024x436 --batch 8 --dtype bf16 --iters 20 --json bench.json

1. Engine: pairs/s of ``FlowEngine`` on ``--batch`` random uint8 frame pairs already on the
   engine's device (warm-up, then timed with CUDA events / perf_counter), and peak memory
   (``torch.cuda.max_memory_allocated`` on GPU, the process's peak RSS on CPU). With
   ``--clip T``: T-frame clips, timed in the same run as T-1 separate pairs (``pairs``) and
   through ``FlowEngine.clip_flow`` (``clip``: each frame's features computed once).
2. Cost volume alone on the pyramid shapes PWC-Net sees at that size (levels 6..2, d=4):
   median ms of forward and forward+backward for each backend. On GPU also the kernel's
   bytes-moved floor (read f1 and f2 once, write the volume once, at the card's measured
   device-to-device copy bandwidth) and the fraction of it achieved. On CPU only the PyTorch
   path runs (the kernel needs CUDA), and the table says so.
Sizes are WIDTHxHEIGHT. Random weights are fine here: speed does not depend on them.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from flow_engine.commands.args import add_engine_argument, add_engine_options, output_file, parse_size, write_output
from flow_engine.engine import DTYPES, ENGINES, FlowEngine
from flow_engine.errors import FlowEngineError
from flow_engine.models.correlation import correlation, cupy_usable
from flow_engine.models.pwcnet import MAX_DISPLACEMENT, PYRAMID_CHANNELS, FlowInputError, padded_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=parse_size, default=(436, 1024), metavar="WxH", help="frame size (default 1024x436, Sintel)")
    parser.add_argument("--batch", type=int, default=8, help="frame pairs per engine call (default 8)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"), help="engine precision")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda ... (default auto)")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default 2)")
    add_engine_argument(parser, "pwcnet", ENGINES)
    add_engine_options(parser)
    parser.add_argument("--clip", type=int, metavar="T", help="also time T-frame clips: pair path vs clip path (features once)")
    parser.add_argument("--skip-engine", action="store_true", help="benchmark the cost volume only")
    parser.add_argument("--skip-cost-volume", action="store_true", help="benchmark the engine only")
    parser.add_argument("--json", type=output_file, metavar="OUT", help="also write the numbers as JSON")


def _timer(device: torch.device, fn: Callable[[], object], iters: int, warmup: int) -> list[float]:
    """Milliseconds of each of ``iters`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
    return times


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (each copy reads and writes ``nbytes``)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = statistics.median(_timer(device, lambda: dst.copy_(src), iters=10, warmup=3))
    del src, dst
    return 2 * nbytes / (ms / 1000)


def bench_engine(engine: FlowEngine, size: tuple[int, int], batch: int, iters: int, warmup: int) -> dict:
    H, W = size
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (batch + 1, 3, H, W), dtype=torch.uint8, generator=g).to(engine.device)
    f1, f2 = frames[:-1], frames[1:]
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    times = _timer(engine.device, lambda: engine(f1, f2), iters, warmup)
    total_s = sum(times) / 1000
    out = {
        "pairs_per_s": batch * iters / total_s,
        "ms_per_batch_median": statistics.median(times),
        "pairs_per_forward": min(batch, engine.pairs_per_batch(H, W)),
    }
    if engine.device.type == "cuda":
        out["peak_memory_mib"] = torch.cuda.max_memory_allocated(engine.device) / 2**20
    else:
        out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return out


def bench_clip(engine: FlowEngine, size: tuple[int, int], frames: int, iters: int, warmup: int) -> dict:
    """pairs/s on a ``frames``-frame clip, as separate pairs and through the clip path, in one run."""
    H, W = size
    g = torch.Generator().manual_seed(0)
    clip = torch.randint(0, 256, (frames, 3, H, W), dtype=torch.uint8, generator=g).to(engine.device)
    out = {}
    for mode, fn in (("pairs", lambda: engine(clip[:-1], clip[1:])), ("clip", lambda: engine.clip_flow(clip))):
        times = _timer(engine.device, fn, iters, warmup)
        out[mode] = {"pairs_per_s": (frames - 1) * iters / (sum(times) / 1000), "ms_per_clip_median": statistics.median(times)}
    out["speedup"] = out["clip"]["pairs_per_s"] / out["pairs"]["pairs_per_s"]
    return out


def pyramid_shapes(size: tuple[int, int], batch: int) -> list[tuple[int, tuple[int, int, int, int]]]:
    """(level, [B,C,h,w]) of the features PWC-Net correlates at each level, coarsest first."""
    Hp, Wp = padded_size(*size)
    return [(lvl, (batch, PYRAMID_CHANNELS[lvl - 1], Hp >> lvl, Wp >> lvl)) for lvl in (6, 5, 4, 3, 2)]


def bench_cost_volume(device: torch.device, dtype: torch.dtype, size: tuple[int, int], batch: int,
                      iters: int, warmup: int) -> tuple[list[dict], str]:
    d = MAX_DISPLACEMENT
    backends = ["torch"]
    note = ""
    if device.type == "cuda" and cupy_usable(device):
        backends.insert(0, "cupy")
    elif device.type == "cuda":
        note = "CuPy cannot use this GPU: PyTorch path only"
    else:
        note = "CPU: PyTorch path only (the CuPy kernel needs a CUDA GPU)"
    bandwidth = copy_bandwidth(device) if device.type == "cuda" else None
    rows = []
    for level, shape in pyramid_shapes(size, batch):
        f1 = torch.randn(shape, device=device).to(dtype)
        f2 = torch.randn(shape, device=device).to(dtype)
        row = {"level": level, "shape": list(shape), "dtype": str(dtype).replace("torch.", "")}
        nbytes = (2 * f1.numel() + shape[0] * (2 * d + 1) ** 2 * shape[2] * shape[3]) * f1.element_size()
        for backend in backends:
            fwd = _timer(device, lambda: correlation(f1, f2, d, backend), iters, warmup)
            a, b = f1.clone().requires_grad_(), f2.clone().requires_grad_()
            grad = torch.randn((shape[0], (2 * d + 1) ** 2, shape[2], shape[3]), device=device).to(dtype)

            def fwd_bwd() -> None:
                out = correlation(a, b, d, backend)
                torch.autograd.backward(out, grad)

            both = _timer(device, fwd_bwd, iters, warmup)
            row[f"{backend}_fwd_ms"] = statistics.median(fwd)
            row[f"{backend}_fwd_bwd_ms"] = statistics.median(both)
        if bandwidth is not None:
            floor_ms = nbytes / bandwidth * 1000
            row["bytes_moved_floor_ms"] = floor_ms
            if "cupy" in backends:
                row["cupy_fraction_of_floor"] = floor_ms / row["cupy_fwd_ms"]
        rows.append(row)
    return rows, note


def check_memory(engine: FlowEngine, args: argparse.Namespace) -> None:
    """FlowInputError unless every part of the benchmark asked for fits the engine and the device's memory:
    the engine's pass with its frames held, the clips, and the cost volume's features."""
    H, W = args.size
    if not args.skip_engine:
        engine.check_size(H, W, args.batch, held_bytes=(args.batch + 1) * 3 * H * W)
    if args.clip:
        engine.check_size(H, W, 1, held_bytes=args.clip * 3 * H * W)
    if not args.skip_cost_volume:  # f1, f2, a gradient and a volume per level, with autograd's copies: x4
        volume = sum(4 * (2 * b * c * h * w + b * (2 * MAX_DISPLACEMENT + 1) ** 2 * h * w) * 4
                     for _, (b, c, h, w) in pyramid_shapes(args.size, args.batch))
        engine.check_size(H, W, 0, held_bytes=volume)


def run(args: argparse.Namespace) -> int:
    if args.batch < 1 or args.iters < 1 or args.warmup < 0 or (args.clip is not None and args.clip < 2):
        print("error: --batch and --iters must be at least 1, --warmup at least 0, --clip at least 2", file=sys.stderr)
        return 2
    try:
        engine = FlowEngine(name=args.engine, weights=args.weights, device=args.device, dtype=args.dtype,
                            flow_updates=args.flow_updates, scales=args.scales)
    except FlowEngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    device = engine.device
    H, W = args.size
    try:  # before any frame is allocated: sizes the engine cannot take, memory the device does not have
        check_memory(engine, args)
    except FlowInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result: dict = {
        "size": f"{W}x{H}", "batch": args.batch, "dtype": engine.dtype, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(), "iters": args.iters, "engine_config": engine.config(),
        "weights_hash": engine.weights_hash,
        "torch": torch.__version__,
    }
    print(f"flow_engine bench: {W}x{H}, batch {args.batch}, {engine.dtype}, {result['device_name']} ({device})")

    if not args.skip_engine:
        result["engine"] = bench_engine(engine, args.size, args.batch, args.iters, args.warmup)
        e = result["engine"]
        mem = f"peak GPU memory {e['peak_memory_mib']:.0f} MiB" if "peak_memory_mib" in e else f"peak RSS {e['peak_rss_mib']:.0f} MiB"
        print(f"engine: {e['pairs_per_s']:.2f} pairs/s ({e['ms_per_batch_median']:.1f} ms per batch of {args.batch}), {mem}")

    if args.clip:
        c = bench_clip(engine, args.size, args.clip, args.iters, args.warmup)
        result["pairs"], result["clip"], result["clip_speedup"] = c["pairs"], c["clip"], c["speedup"]
        print(f"{args.clip}-frame clips: {c['pairs']['pairs_per_s']:.2f} pairs/s as pairs, "
              f"{c['clip']['pairs_per_s']:.2f} pairs/s as a clip ({c['speedup']:.2f}x)")
    if args.skip_cost_volume:
        return _write_json(args.json, result)

    rows, note = bench_cost_volume(device, DTYPES[engine.dtype], args.size, args.batch, args.iters, args.warmup)
    result["cost_volume"] = rows
    result["cost_volume_note"] = note
    print(f"\ncost volume (d={MAX_DISPLACEMENT}), median ms" + (f" - {note}" if note else ""))
    cols = [k for k in rows[0] if k not in ("level", "shape", "dtype")]
    header = f"{'level':>5} {'B x C x h x w':>20} " + " ".join(f"{c:>22}" for c in cols)
    print(header)
    print("-" * len(header))
    for r in rows:
        shape = "x".join(str(v) for v in r["shape"])
        print(f"{r['level']:>5} {shape:>20} " + " ".join(f"{r[c]:>22.3f}" for c in cols))

    return _write_json(args.json, result)


def _write_json(path: Path | None, result: dict) -> int:
    if path is not None:
        if not write_output(path, json.dumps(result, indent=2)):
            return 2
        print(f"\nwrote {path}")
    return 0
