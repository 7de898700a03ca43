"""Benchmark the flow cache on real clips: size, round-trip error, read speed, precompute speed.

``python -m actionflow bench-cache --videos ../shared/data/video [--size 340x256] [--engine dis] [--json OUT]``

For every video of ``--videos`` the engine's flow (default DIS on CPU: real, noisy flow,
harder to compress than PWC-Net's smooth flow) is computed at ``--size`` and measured as:

- bytes per flow frame: our cache file vs ``.flo`` (12 + 8*H*W bytes) vs the two-JPEG layout
  of TSN/denseflow (x and y each a grey JPEG, value = 255*(v+20)/40 clipped, quality 95);
- round-trip end-point error over pixels whose flow is inside the bound, for both;
- read throughput in flow frames/s: random clips of L=5 stacked flows (``read_stacked``), as a
  two-stream data loader reads them, in one process and in 2 worker processes;
- precompute end to end (decode, flow, quantise, encode, write) in flow frames/s;
- optionally other codecs on a subsample (``--codecs jpeg:90,png,webp``).

Numbers depend on the machine and its load (the load average is recorded in the JSON).
"""
from __future__ import annotations

import argparse
import fractions
import json
import logging
import multiprocessing
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from actionflow.flow_cache import (
    DEFAULT_BOUND,
    LEVELS,
    CachedFlow,
    FlowCache,
    codec_arg,
    codec_name,
    dequantize,
    encode_frames,
    flo_bytes,
    parse_codec,
    positive_pixels,
    quantize,
    split_jpeg,
)
from actionflow.precompute import precompute
from flow_engine.commands.args import (
    add_engine_argument, output_file, parse_size_or_side, positive_int, positive_number, write_output,
)
from flow_engine.engine import ENGINES, FlowEngine
from flow_engine.io.video import iter_frames, list_videos

log = logging.getLogger(__name__)

TARGETS = {"ratio_vs_flo": 70.0, "epe": 0.1, "read_frames_per_s": 2000.0}


def frame_count(text: str) -> int:
    """``--max-frames``: 0 (every frame) or at least 2 (one flow)."""
    value = positive_int(text) if text.strip() != "0" else 0
    if value == 1:
        raise argparse.ArgumentTypeError("1 frame gives no flow: 0 (every frame) or at least 2")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--videos", type=Path, required=True, help="folder or list of videos, e.g. ../shared/data/video")
    parser.add_argument("--size", type=parse_size_or_side, default=(256, 340), help="WIDTHxHEIGHT of the flow (default 340x256)")
    add_engine_argument(parser, "dis", ENGINES)
    parser.add_argument("--weights", default=None, help="PWC-Net weights (with --engine pwcnet)")
    parser.add_argument("--device", default="auto", help="engine device (default auto)")
    parser.add_argument("--bound", type=positive_pixels, default=DEFAULT_BOUND, help="quantisation bound in pixels (default 20)")
    parser.add_argument("--codec", type=codec_arg, default=codec_name(), help=f"the cache's codec (default {codec_name()}, the cache's own)")
    parser.add_argument("--codecs", default="", help="also compare these codecs on every 10th flow, e.g. jpeg:90,png,webp:95,avif:90; "
                        "hevc:CRF codes whole videos along time with H.265 (e.g. hevc:10)")
    parser.add_argument("--max-frames", type=frame_count, default=0, help="use at most this many frames per video (0: all)")
    parser.add_argument("--clip", type=positive_int, default=5, help="flows per random read (L, default 5)")
    parser.add_argument("--seconds", type=positive_number, default=3.0, help="how long each read-throughput run lasts (default 3)")
    parser.add_argument("--workers", type=positive_int, default=2,
                        help="worker processes in the parallel read test, and a classical engine's flow processes "
                             "(precompute is timed with 1 and with this many; default 2)")
    parser.add_argument("--json", type=output_file, default=None, help="write the results as JSON here")
    parser.add_argument("--keep", type=Path, default=None, help="build the caches in this folder and keep them")


def compute_flows(engine, video: Path, size: tuple[int, int], max_frames: int = 0, batch: int = 16) -> tuple[np.ndarray, float, float]:
    """The engine's float flow of ``video`` (its first ``max_frames`` frames; 0: all) at ``size``:
    (float32 ``[T-1,2,H,W]`` pixels, seconds decoding, seconds in the engine)."""
    decode_s, used = 0.0, 0

    def chunks():
        nonlocal decode_s, used
        frames_iter = iter_frames(video, chunk=batch, size=size)
        while not (max_frames and used >= max_frames):
            t = time.perf_counter()
            frames = next(frames_iter, None)
            decode_s += time.perf_counter() - t
            if frames is None:
                return
            if max_frames:
                frames = frames[: max_frames - used]
            used += len(frames)
            yield frames

    t0 = time.perf_counter()
    out = [f.cpu().numpy() for f in engine.stream(chunks(), batch)]
    return np.concatenate(out), decode_s, time.perf_counter() - t0 - decode_s


def epe_inside(got: np.ndarray, want: np.ndarray, bound: float) -> tuple[float, int]:
    """(sum of end-point errors, pixel count) over pixels of ``want`` [N,2,H,W] inside the bound."""
    inside = (np.abs(want) <= bound).all(axis=1)
    err = np.sqrt(((got - want) ** 2).sum(axis=1))[inside]
    return float(err.sum(dtype=np.float64)), int(inside.sum())


def two_jpeg(flows: np.ndarray, bound: float = 20.0) -> tuple[int, int, np.ndarray]:
    """The TSN/denseflow layout: x and y as two grey JPEGs per flow (OpenCV default quality 95).

    Returns (payload bytes, bytes on disk with 4 KiB blocks, decoded flows float32 [N,2,H,W])."""
    q = np.clip(np.rint((flows + bound) * (255.0 / (2 * bound))), 0, 255).astype(np.uint8)
    size = disk = 0
    decoded = np.empty_like(q)
    for i in range(len(q)):
        for c in range(2):
            ok, buf = cv2.imencode(".jpg", q[i, c], [cv2.IMWRITE_JPEG_QUALITY, 95])
            size += len(buf)
            disk += -(-len(buf) // 4096) * 4096
            decoded[i, c] = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return size, disk, decoded.astype(np.float32) * np.float32(2 * bound / 255.0) - np.float32(bound)


def _read_loop(paths: list[str], counts: list[int], clip: int, seconds: float, seed: int) -> tuple[int, float, float]:
    """Random clip reads for ``seconds``: returns (flow frames read, wall seconds, CPU seconds)."""
    entries = [CachedFlow(p) for p in paths]
    rng = random.Random(seed)
    weights = [max(0, n - clip + 1) for n in counts]
    frames, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            i = rng.choices(range(len(entries)), weights)[0]
            start = rng.randrange(counts[i] - clip + 1)
            entries[i].read_stacked(start, clip)
            frames += clip
    return frames, time.perf_counter() - t0, time.process_time() - c0


def read_throughput(paths: list[Path], counts: list[int], clip: int, seconds: float, workers: int) -> dict:
    """Flow frames/s of random ``clip``-flow stacked reads: one process, and ``workers`` processes.

    ``*_per_cpu_s`` divide by CPU time instead of wall time: what the same processes would read
    with a core each to themselves (this machine is shared, so wall-clock rates understate it)."""
    args = ([str(p) for p in paths], counts, clip)
    single_frames, single_s, single_cpu = _read_loop(*args, seconds, 0)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers) as pool:
        t0 = time.perf_counter()
        results = pool.starmap(_read_loop, [(*args, seconds, s + 1) for s in range(workers)])
        wall = time.perf_counter() - t0
    total = sum(r[0] for r in results)
    return {
        "single_process_frames_per_s": single_frames / single_s,
        "single_process_frames_per_cpu_s": single_frames / single_cpu,
        f"{workers}_workers_frames_per_s": total / max(r[1] for r in results),
        f"{workers}_workers_frames_per_cpu_s": sum(r[0] / r[2] for r in results),
        f"{workers}_workers_wall_s": wall,
    }


def compare_codecs(flows_by_video: list[np.ndarray], codecs: list[str], bound: float, clip: int = 5,
                   seconds: float = 3.0) -> list[dict]:
    """Bytes per frame, round-trip EPE and decode time of each codec on every 10th flow.

    Image codecs code each flow frame alone (a JPEG's tables counted once per video, as the cache
    stores them). ``hevc:CRF`` codes each video's quantised flow planes along time with H.265
    through PyAV (a keyframe every 8 frames, no B-frames) on all its flows; its row adds the
    rate of random ``clip``-flow reads (decoding from the keyframe before each clip) in one process.
    """
    rows = []
    for spec in codecs:
        if spec.startswith("hevc"):
            rows.append(_hevc_row(flows_by_video, spec, bound, clip, seconds))
            continue
        codec = parse_codec(spec)
        total, frames, err, pixels, enc, dec_s = 0, 0, 0.0, 0, 0.0, 0.0
        for flows in flows_by_video:
            sample = flows[::10]
            q, _ = quantize(sample, bound)
            h, w = sample.shape[2:]
            t0 = time.perf_counter()
            payloads = encode_frames(q, codec)
            enc += time.perf_counter() - t0
            t0 = time.perf_counter()
            dec = np.stack([cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_GRAYSCALE).reshape(2, h, w) for p in payloads])
            dec_s += time.perf_counter() - t0
            e, n = epe_inside(dequantize(dec, bound), sample, bound)
            err, pixels = err + e, pixels + n
            tables = len(split_jpeg(payloads[0])[0]) if codec["name"] == "jpeg" else 0
            total += sum(len(p) for p in payloads) - tables * (len(payloads) - 1)
            frames += len(payloads)
        per = total / frames
        rows.append({"codec": spec, "bytes_per_frame": per, "ratio_vs_flo": (12 + 8 * h * w) / per, "epe": err / pixels,
                     "encode_ms": 1e3 * enc / frames, "decode_ms": 1e3 * dec_s / frames})
    return rows


HEVC_GOP = 8


def _hevc_row(flows_by_video: list[np.ndarray], spec: str, bound: float, clip: int, seconds: float) -> dict:
    """The ``hevc:CRF`` row of :func:`compare_codecs` (see there)."""
    import av  # PyAV only for the video-codec comparison

    crf = spec.partition(":")[2] or "10"
    coded, err, pixels, frames, enc = [], 0.0, 0, 0, 0.0
    for flows in flows_by_video:
        q = np.ascontiguousarray(quantize(flows, bound)[0])
        n, _, h, w = q.shape
        t0 = time.perf_counter()
        cc = av.CodecContext.create("libx265", "w")
        cc.width, cc.height, cc.pix_fmt, cc.time_base = w, 2 * h, "gray", fractions.Fraction(1, 25)
        cc.options = {"crf": crf, "preset": "medium",
                      "x265-params": f"keyint={HEVC_GOP}:min-keyint={HEVC_GOP}:bframes=0:log-level=error"}
        packets = []
        for i, plane in enumerate(q.reshape(n, 2 * h, w)):
            frame = av.VideoFrame.from_ndarray(plane, format="gray")
            frame.pts = i
            packets += [bytes(p) for p in cc.encode(frame)]
        packets += [bytes(p) for p in cc.encode(None)]
        enc += time.perf_counter() - t0
        planes = _hevc_decode(packets, 0, n)
        e, m = epe_inside(dequantize(planes.reshape(n, 2, h, w), bound), flows, bound)
        err, pixels, frames = err + e, pixels + m, frames + n
        coded.append(packets)
    rng, read, t0 = random.Random(0), 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        packets = coded[rng.randrange(len(coded))]
        start = rng.randrange(max(1, len(packets) - clip))
        read += len(_hevc_decode(packets, start, min(clip, len(packets) - start)))
    per = sum(len(p) for packets in coded for p in packets) / frames
    return {"codec": spec, "bytes_per_frame": per, "ratio_vs_flo": (12 + 8 * h * w) / per, "epe": err / pixels,
            "encode_ms": 1e3 * enc / frames, "random_read_frames_per_s": read / (time.perf_counter() - t0)}


def _hevc_decode(packets: list[bytes], start: int, count: int) -> np.ndarray:
    """Frames ``start .. start+count-1`` of an H.265 stream (one packet per frame), decoded from the keyframe before."""
    import av  # PyAV only for the video-codec comparison

    ctx = av.CodecContext.create("hevc", "r")
    out = []
    for data in packets[start - start % HEVC_GOP : start + count]:
        out += [f.to_ndarray() for f in ctx.decode(av.Packet(data))]
    out += [f.to_ndarray() for f in ctx.decode(None)]
    return np.stack(out[start % HEVC_GOP : start % HEVC_GOP + count])


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; 0 when every target is met, 1 otherwise, 2 on bad input."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        videos = list_videos(args.videos)
        engine = FlowEngine(name=args.engine, weights=args.weights, device=args.device)
        codec = parse_codec(args.codec)
        extra = [c for c in args.codecs.split(",") if c]
        for c in extra:
            if not c.startswith("hevc"):
                parse_codec(c)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not videos:
        print(f"error: no videos in {args.videos}", file=sys.stderr)
        return 2
    h, w = args.size
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        work = args.keep or Path(tmp)
        # 1. precompute end to end (decode, flow, quantise, encode, write); a classical engine
        #    with 1 and with --workers processes, in this one run
        if args.max_frames:
            log.info("--max-frames limits only the size/EPE/read figures; precompute timing uses whole videos")
        precompute_fps = {}
        for n in ([1, args.workers] if engine.model is None and args.workers > 1 else [engine.workers]):
            eng = engine if n == engine.workers else FlowEngine(name=args.engine, workers=n)
            cache = FlowCache(work / f"precompute_{n}", eng.config(), size=args.size, bound=args.bound, codec=codec)
            summary = precompute(videos, cache, eng, batch=16, workers=max(2, n), progress=False)
            if summary.failed:
                for v, reason in summary.failed:
                    print(f"FAILED {v}: {reason}", file=sys.stderr)
                return 2
            precompute_fps[n] = summary.flows / summary.seconds

        # 2. float flow once per video, written to a cache of its own for exact error measurement
        exact = FlowCache(work / "exact", engine.config(), size=args.size, bound=args.bound, codec=codec)
        flows_by_video, paths, counts = [], [], []
        cache_bytes = flo = tj_bytes = tj_disk = 0
        err_cache = err_tj = err_q = 0.0
        pixels = 0
        decode_s = engine_s = 0.0
        for video in videos:
            flows, dec, eng = compute_flows(engine, video, args.size, args.max_frames)
            decode_s, engine_s = decode_s + dec, engine_s + eng
            with exact.writer(video) as wr:
                wr.add_flows(flows)
            with CachedFlow(exact.path_for(video)) as c:
                e, n = epe_inside(c.read(0, c.num_flows), flows, args.bound)
                cache_bytes += c.file_size
            err_cache += e
            pixels += n
            size, disk, decoded = two_jpeg(flows, args.bound)
            e2, _ = epe_inside(decoded, flows, args.bound)
            err_tj += e2
            err_q += epe_inside(dequantize(quantize(flows, args.bound)[0], args.bound), flows, args.bound)[0]
            tj_bytes, tj_disk = tj_bytes + size, tj_disk + disk
            flo += flo_bytes(len(flows), h, w)
            flows_by_video.append(flows)
            paths.append(exact.path_for(video))
            counts.append(len(flows))
        frames = sum(counts)
        q, _ = quantize(np.concatenate([f[:50] for f in flows_by_video]), args.bound)
        t0 = time.perf_counter()
        encode_frames(q, codec)
        encode_fps = len(q) / (time.perf_counter() - t0)
        files = sorted(p.name for p in (work / "exact").iterdir())

        # 3. read throughput
        if args.clip > max(counts):
            print(f"error: --clip {args.clip} is longer than every video's flow (the longest has {max(counts)} flows)",
                  file=sys.stderr)
            return 2
        reads = read_throughput(paths, counts, args.clip, args.seconds, args.workers)
        codecs = compare_codecs(flows_by_video, extra, args.bound, args.clip, args.seconds) if extra else []

    results = {
        "machine": f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end",
        "engine": engine.config(),
        "device": str(engine.device),
        "size_hw": [h, w],
        "bound": args.bound,
        "codec": codec,
        "videos": [str(v) for v in videos],
        "flow_frames": frames,
        "files_in_cache": len(files),
        "one_file_per_video": len(files) == len(videos),
        "cache_bytes": cache_bytes,
        "cache_bytes_per_frame": cache_bytes / frames,
        "flo_bytes_per_frame": flo / frames,
        "ratio_vs_flo": flo / cache_bytes,
        "two_jpeg_bytes_per_frame": tj_bytes / frames,
        "two_jpeg_disk_bytes_per_frame": tj_disk / frames,
        "two_jpeg_files": 2 * frames,
        "ratio_two_jpeg_vs_cache": tj_bytes / cache_bytes,
        "epe_cache": err_cache / pixels,
        "epe_two_jpeg": err_tj / pixels,
        "epe_quantisation_only": err_q / pixels,
        "epe_quantisation_bound": args.bound / (2 * LEVELS) * np.sqrt(2),
        "read_clip_length": args.clip,
        **reads,
        "precompute_frames_per_s": max(precompute_fps.values()),
        "precompute_frames_per_s_by_workers": {str(k): v for k, v in precompute_fps.items()},
        "precompute_frames": summary.flows,
        "decode_frames_per_s": (frames + len(videos)) / decode_s,
        "engine_frames_per_s": frames / engine_s,
        "encode_frames_per_s_one_thread": encode_fps,
        "codecs": codecs,
    }
    parallel = reads[f"{args.workers}_workers_frames_per_s"]
    checks = {
        f"at least {TARGETS['ratio_vs_flo']:.0f}x smaller than .flo": results["ratio_vs_flo"] >= TARGETS["ratio_vs_flo"],
        f"round-trip EPE <= {TARGETS['epe']} px inside the bound": results["epe_cache"] <= TARGETS["epe"],
        f">= {TARGETS['read_frames_per_s']:.0f} flow frames/s read with {args.workers} workers": parallel >= TARGETS["read_frames_per_s"],
        "one file per video": results["one_file_per_video"],
    }
    results["targets_met"] = checks
    print_report(results, args.workers)
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    if args.json and not write_output(args.json, json.dumps(results, indent=2, default=str)):
        return 2
    return 0 if all(checks.values()) else 1


def print_report(r: dict, workers: int) -> None:
    h, w = r["size_hw"]
    print(f"flow cache benchmark: {len(r['videos'])} videos, {r['flow_frames']} flows at {w}x{h} (WxH), "
          f"engine {r['engine'].get('name')} on {r['device']}, codec {r['codec']}; {r['machine']}")
    print(f"{'layout':<28}{'bytes/frame':>12}{'vs .flo':>9}{'EPE px':>9}{'files':>8}")
    print(f"{'.flo':<28}{r['flo_bytes_per_frame']:>12.0f}{1:>9.1f}{0:>9.3f}{r['flow_frames']:>8}")
    print(f"{'two JPEGs per frame (q95)':<28}{r['two_jpeg_bytes_per_frame']:>12.0f}"
          f"{r['flo_bytes_per_frame'] / r['two_jpeg_bytes_per_frame']:>9.1f}{r['epe_two_jpeg']:>9.3f}{r['two_jpeg_files']:>8}")
    print(f"{'  (on disk, 4 KiB blocks)':<28}{r['two_jpeg_disk_bytes_per_frame']:>12.0f}"
          f"{r['flo_bytes_per_frame'] / r['two_jpeg_disk_bytes_per_frame']:>9.1f}")
    print(f"{'this cache (.afc)':<28}{r['cache_bytes_per_frame']:>12.0f}{r['ratio_vs_flo']:>9.1f}{r['epe_cache']:>9.3f}{r['files_in_cache']:>8}")
    print(f"(8-bit quantisation alone: EPE {r['epe_quantisation_only']:.3f} px, at most {r['epe_quantisation_bound']:.3f} px per pixel)")
    for c in r["codecs"]:
        speed = (f"random {r['read_clip_length']}-flow reads {c['random_read_frames_per_s']:.0f} frames/s (1 process)"
                 if "random_read_frames_per_s" in c else f"decode {c['decode_ms']:.2f} ms")
        print(f"  codec {c['codec']:<10} {c['bytes_per_frame']:>8.0f} B/frame  {c['ratio_vs_flo']:>6.1f}x  EPE {c['epe']:.4f}  "
              f"encode {c['encode_ms']:.2f} ms  {speed}")
    print(f"read, random clips of {r['read_clip_length']} stacked flows, flow frames/s: "
          f"{r['single_process_frames_per_s']:.0f} in 1 process, {r[f'{workers}_workers_frames_per_s']:.0f} with {workers} worker "
          f"processes (per CPU-second: {r['single_process_frames_per_cpu_s']:.0f} and {r[f'{workers}_workers_frames_per_cpu_s']:.0f})")
    print(f"precompute end to end (decode, flow, encode, write): {r['precompute_frames_per_s']:.1f} flow frames/s "
          f"({r['precompute_frames']} frames); parts alone: decode {r['decode_frames_per_s']:.0f} frames/s, "
          f"engine {r['engine_frames_per_s']:.1f} flows/s, encode {r['encode_frames_per_s_one_thread']:.0f} frames/s per thread")
    by = r["precompute_frames_per_s_by_workers"]
    if len(by) > 1:
        one, (n, many) = by["1"], max(((int(k), v) for k, v in by.items()), key=lambda kv: kv[0])
        print(f"precompute with 1 flow worker: {one:.1f} flow frames/s; with {n}: {many:.1f} ({many / one:.2f}x)")
