"""Compute optical flow for many videos and store it in the compressed flow cache.

``python -m actionflow precompute --videos DIR|LIST --cache DIR [--engine pwcnet] [--size 340x256] ...``

Videos may be frame folders (``--frame-pattern``, default ``img_{:05d}.jpg``): see ``flow_engine.io.video``.

Pipeline: decord decodes chunks of frames, resized on decode to ``--size``, in background
threads (``--decoders`` videos at once: the one in the engine and the next); the engine
computes flow for ``--batch`` consecutive pairs at a time on its device (a classical OpenCV
engine spreads those pairs over ``--workers`` processes, in order); the flow is
quantised to uint8 *on that device* (a quarter of the float bytes cross to the host); a
pool of ``--workers`` threads encodes frames (OpenCV releases the GIL, so threads run in
parallel without pickling frames to processes) while the next batch is computed; the main
thread appends encoded frames to the video's temp file, renamed into place when complete.
On a big GPU, decoding is the likely limit: run several processes on one GPU
(``--shard i/N --device cuda:0``, or torchrun with more processes than GPUs); the locks
make that safe.

Resumable and shardable: videos with a complete, matching entry whose frame checksums all
pass are skipped (a flipped byte means recompute; ``--no-verify`` trusts the index alone); ``--shard I/N`` (or ``RANK``/``WORLD_SIZE``
from torchrun, with ``LOCAL_RANK`` picking the GPU) takes videos ``i % N == I`` of the
sorted list. Processes sharing a cache folder take a per-video ``flock``, so none
computes a video another is computing; a killed process loses only its video in flight.

Exit code: 0 when every video is cached, 1 when any failed (each listed with its reason
in the summary), 2 for bad arguments (no videos found, unknown engine...).
"""
from __future__ import annotations

import argparse
import logging
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from actionflow.flow_cache import (
    DEFAULT_BOUND,
    DEFAULT_SIZE,
    CacheError,
    CachedFlow,
    CacheWriter,
    FlowCache,
    VideoLock,
    codec_arg,
    codec_name,
    encode_frames,
    flo_bytes,
    positive_pixels,
    quantize,
)
from flow_engine.engine import ENGINES, LEARNED_ENGINES, FlowEngine
from flow_engine.commands.args import add_engine_argument, parse_size_or_side, positive_int
from flow_engine.models.pwcnet import FlowInputError
from flow_engine.io.video import (
    DEFAULT_FRAME_PATTERN, ListFileError, Video, VideoError, as_video, frame_pattern_arg, iter_frames, list_videos,
)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------ video lists


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask: what a batch scheduler granted)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def shard(videos: list[Path], index: int, count: int) -> list[Path]:
    """Videos ``i % count == index`` of the sorted list (every video in exactly one shard)."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: index must be in 0..{count - 1}")
    return [v for i, v in enumerate(sorted(videos, key=str)) if i % count == index]


def parse_shard(text: str) -> tuple[int, int]:
    """``"1/4"`` -> (1, 4)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shard {text!r} must be I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"shard {text!r}: need 0 <= I < N")
    return i, n


# --------------------------------------------------------------------------- one video


class Prefetch:
    """Iterate ``it`` in a background thread started now, up to ``depth`` items ahead, so that
    decoding overlaps the engine. Errors of ``it`` reach the consumer; ``close()`` stops the
    thread and closes ``it`` (freeing the decoder)."""

    _END = object()
    DEPTH = 2

    def __init__(self, it: Iterator, depth: int = DEPTH):
        self._it = it
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        threading.Thread(target=self._produce, daemon=True, name="decode").start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._it:
                if not self._put((item, None)):
                    return
            self._put((self._END, None))
        except BaseException as exc:
            self._put((self._END, exc))
        finally:
            if hasattr(self._it, "close"):
                self._it.close()

    def __iter__(self) -> Iterator:
        while True:
            item, exc = self._queue.get()
            if item is self._END:
                if exc is not None:
                    raise exc
                return
            yield item

    def close(self) -> None:
        self._stop.set()


def _frames_to_tensor(frames: np.ndarray, device):
    """uint8 ``[t,H,W,3]`` RGB -> uint8 ``[t,3,H,W]`` on ``device``."""
    t = torch.from_numpy(frames)
    if t.device != torch.device(device):
        t = t.pin_memory() if torch.device(device).type == "cuda" else t
        t = t.to(device, non_blocking=True)
    return t.permute(0, 3, 1, 2)


def write_video_entry(
    video: str | os.PathLike,
    cache: FlowCache,
    engine,
    batch: int = 32,
    pool: Executor | None = None,
    max_pending: int = 8,
    frames: Prefetch | None = None,
    header: dict | None = None,
    frame_pattern: str | None = None,
) -> CacheWriter:
    """Compute and write ``video``'s entry (no locking: the caller holds the video's lock).

    ``frames``: the video's decoded chunks when the caller started decoding already (else
    decoded here; a frame folder's frames are the files its pattern names: see ``as_video``); ``header``:
    ``cache.header_for(video)`` taken before decoding began.
    Returns the committed writer (``.path``, ``.num_flows``, ``.bytes_written``). Raises
    VideoError for unreadable videos and videos with fewer than two frames; nothing is left
    behind on any error.
    """
    device = torch.device(getattr(engine, "device", "cpu"))
    video = as_video(video, frame_pattern)  # the pattern travels with the video from here on
    if header is None:
        header = _header(cache, video)
    h, w = header["height"], header["width"]  # the video's own size in a short-side cache
    if frames is None:
        check_size(engine, h, w, batch)
        frames = Prefetch(iter_frames(video, chunk=batch, size=(h, w)))
    own_pool = pool is None
    pool = pool or ThreadPoolExecutor(max_workers=2, thread_name_prefix="encode")
    pending: deque[tuple[Future, np.ndarray]] = deque()

    def drain(until: int) -> None:
        while len(pending) > until or (pending and pending[0][0].done()):
            fut, clipped = pending.popleft()
            for payload, c in zip(fut.result(), clipped):
                writer.add(payload, int(c))

    def checked(chunks):
        for chunk in chunks:
            if chunk.shape[1:3] != (h, w):
                raise VideoError(video, f"decoded frames are {chunk.shape[1]}x{chunk.shape[2]}, not {h}x{w}")
            yield _frames_to_tensor(chunk, device)

    try:
        with CacheWriter(cache.path_for(video), header) as writer:
            for flow in engine.stream(checked(frames), batch):
                if tuple(flow.shape[1:]) != (2, h, w):
                    raise RuntimeError(f"engine {getattr(engine, 'name', engine)!r} returned flow of shape "
                                       f"{tuple(flow.shape)} for pairs of {h}x{w} frames")
                # uint8 on the engine's device: a quarter of the bytes cross to the host
                q, clipped = quantize(flow, cache.bound)
                pending.append((pool.submit(encode_frames, q.cpu().numpy(), cache.codec), clipped.cpu().numpy()))
                drain(max_pending)
            drain(0)
            if writer.num_flows == 0:
                raise VideoError(video, "fewer than 2 frames: no flow to compute")
    finally:
        frames.close()
        for fut, _ in pending:
            fut.cancel()
        if own_pool:
            pool.shutdown(wait=True)
    return writer


def check_size(engine, height: int, width: int, batch: int, decoding: int = 1) -> None:
    """FlowInputError, before a frame is decoded, unless ``engine`` takes frames of ``height`` x ``width`` px
    and memory holds a pass of ``batch`` pairs with ``decoding`` videos' chunks decoded ahead."""
    engine.check_size(height, width, batch, held_bytes=decoding * (Prefetch.DEPTH + 1) * batch * 3 * height * width)


def _header(cache: FlowCache, video: str | os.PathLike | Video) -> dict:
    """The new entry's header, with the video's size and mtime as they are now; VideoError when it is missing."""
    try:
        return cache.header_for(video)
    except FileNotFoundError:
        raise VideoError(video, "no such file") from None
    except OSError as exc:
        raise VideoError(video, f"cannot stat ({exc.strerror})") from None


def precompute_video(
    video: str | os.PathLike,
    cache: FlowCache,
    engine,
    size: tuple[int, int] | None = None,
    batch: int = 32,
    pool: Executor | None = None,
    verify: bool = False,
    frame_pattern: str | None = None,
) -> Path:
    """Make sure ``video`` has a valid entry in ``cache`` and return its path.

    Computes it with ``engine`` (``FlowEngine``-like: ``frames1, frames2 [B,3,H,W] uint8 ->
    [B,2,H,W]`` pixels) unless a matching entry exists; waits while another process holds the
    video's lock and reuses what it wrote. ``size`` defaults to (and must equal) ``cache.size``.
    ``pool`` encodes frames (a private 2-thread pool when None). Raises VideoError for
    unreadable videos.
    """
    if size is not None and (size if isinstance(size, int) else tuple(size)) != cache.size:
        raise ValueError(f"size {size} differs from the cache's {cache.size}")
    path = cache.lookup(video, verify=verify)
    if path is not None:
        return path
    with cache.lock_for(video):
        path = cache.lookup(video, verify=verify)
        if path is not None:
            return path
        cache.remove_temp_files(video)
        return write_video_entry(video, cache, engine, batch=batch, pool=pool, frame_pattern=frame_pattern).path


# ---------------------------------------------------------------------------- many videos


@dataclass
class Summary:
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    flows: int = 0  # flow frames computed in this run
    bytes: int = 0  # bytes written in this run
    cached_flows: int = 0  # flow frames in the entries of this shard (computed now or before)
    cached_bytes: int = 0
    flo_bytes: int = 0  # what cached_flows take as .flo
    seconds: float = 0.0


@dataclass
class _Claim:
    """A video this process has locked and started decoding."""

    video: Path
    lock: VideoLock
    header: dict
    frames: Prefetch


def precompute(
    videos: list[Path | Video],
    cache: FlowCache,
    engine,
    batch: int = 32,
    workers: int = 4,
    decoders: int = 2,
    verify: bool = True,
    progress: bool = True,
    frame_pattern: str | None = None,
) -> Summary:
    """Cache every video of ``videos`` (see module doc); failures are recorded, never raised.
    Frame folders among them are read as their pattern names their frames (a :class:`Video`'s own, or
    ``frame_pattern`` for every one: see ``as_video``).

    ``decoders`` videos are decoded at once (the one in the engine and the next ones), so a
    new video's first frames are ready when the previous one ends. Videos locked by another
    process are left for last and then waited for; they are computed here only if that
    process did not finish them.
    """
    if batch < 1:  # here, not per video: range(0, n, 0) would fail every one of them
        raise ValueError(f"batch must be at least 1, got {batch}")
    summary = Summary()
    t0 = time.perf_counter()
    bar = tqdm(total=len(videos), unit="video", disable=not progress, dynamic_ncols=True)

    def account(path: Path) -> None:
        try:
            with CachedFlow(path) as c:
                summary.cached_flows += c.num_flows
                summary.cached_bytes += c.file_size
                summary.flo_bytes += flo_bytes(c.num_flows, c.height, c.width)
        except CacheError as exc:  # removed or replaced meanwhile by another process: totals only
            log.debug("not counted: %s", exc)

    def skip(video: Path) -> None:
        summary.skipped.append(video)
        account(cache.path_for(video))
        _update(bar, summary, t0)

    def fail(video: Path, reason: str) -> None:
        summary.failed.append((video, reason))
        _update(bar, summary, t0)

    def claim(video: Path, blocking: bool) -> bool:
        """Skip a cached video, or lock it and start decoding it; False when another process holds it."""
        if cache.lookup(video, verify=verify) is not None:
            skip(video)
            return True
        lock = cache.lock_for(video)
        if not lock.acquire(blocking=blocking):
            return False
        if cache.lookup(video, verify=verify) is not None:  # finished by another process meanwhile
            lock.release()
            skip(video)
            return True
        try:
            header = _header(cache, as_video(video, frame_pattern))
            check_size(engine, header["height"], header["width"], batch, max(1, decoders))
        except VideoError as exc:
            lock.release()
            log.warning("skipping %s", exc)
            fail(video, exc.reason)
            return True
        except FlowInputError as exc:  # a size the engine cannot take, or memory would not hold
            lock.release()
            log.warning("skipping %s: %s", video, exc)
            fail(video, str(exc))
            return True
        cache.remove_temp_files(video)
        frames = iter_frames(as_video(video, frame_pattern), chunk=batch, size=(header["height"], header["width"]))
        ahead.append(_Claim(video, lock, header, Prefetch(frames)))
        return True

    def compute(c: _Claim) -> None:
        try:
            writer = write_video_entry(c.video, cache, engine, batch=batch, pool=pool, frames=c.frames, header=c.header)
        except VideoError as exc:
            log.warning("skipping %s", exc)
            fail(c.video, exc.reason)
            return
        except FlowInputError as exc:
            log.warning("skipping %s: %s", c.video, exc)
            fail(c.video, str(exc))
            return
        except Exception as exc:  # an engine or codec failure on one video must not end the run
            log.exception("failed on %s", c.video)
            fail(c.video, f"{type(exc).__name__}: {exc}")
            return
        finally:
            c.frames.close()
            c.lock.release()
        summary.done.append(c.video)
        summary.flows += writer.num_flows
        summary.bytes += writer.bytes_written
        account(writer.path)
        _update(bar, summary, t0)

    todo, busy, ahead = deque(videos), [], deque()
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="encode") as pool:
        try:
            while todo or ahead:
                while todo and len(ahead) < max(1, decoders):
                    video = todo.popleft()
                    if not claim(video, blocking=False):
                        busy.append(video)  # another process is on it: come back at the end
                if ahead:
                    compute(ahead.popleft())
            for video in busy:  # wait for the other process; take over only if it did not finish
                claim(video, blocking=True)
                if ahead:
                    compute(ahead.popleft())
        finally:  # interrupted: stop decoders, free locks (the temp files go with the next writer)
            for c in ahead:
                c.frames.close()
                c.lock.release()
    bar.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _update(bar, summary: Summary, t0: float) -> None:
    """One more video handled: advance the bar, show flow frames/s and bytes written."""
    elapsed = max(time.perf_counter() - t0, 1e-9)
    bar.update(1)
    bar.set_postfix(flows_per_s=f"{summary.flows / elapsed:.0f}", written=f"{summary.bytes / 1e6:.1f}MB",
                    failed=len(summary.failed), refresh=False)


def print_summary(summary: Summary, out=None) -> None:
    """The end-of-run table: videos done / skipped / failed (with reasons), bytes against .flo."""
    s, out = summary, out or sys.stdout
    rate = s.flows / s.seconds if s.seconds else 0.0
    print(f"videos: {len(s.done)} computed, {len(s.skipped)} skipped (already cached), {len(s.failed)} failed", file=out)
    print(f"flow frames computed: {s.flows} in {s.seconds:.1f} s ({rate:.1f} frames/s), {s.bytes / 1e6:.2f} MB written", file=out)
    if s.cached_bytes:
        print(f"cache for these videos: {s.cached_flows} flow frames, {s.cached_bytes / 1e6:.2f} MB "
              f"({s.cached_bytes / max(s.cached_flows, 1):.0f} B/frame); as .flo {s.flo_bytes / 1e6:.1f} MB "
              f"= {s.flo_bytes / s.cached_bytes:.1f}x larger", file=out)
    for video, reason in s.failed:
        print(f"FAILED {video}: {reason}", file=out)


# ---------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--videos", required=True, type=Path,
                        help="folder of videos and frame folders (recursive), one frame folder, or a list file (path [label] per line)")
    parser.add_argument("--frame-pattern", type=frame_pattern_arg, default=DEFAULT_FRAME_PATTERN, metavar="PATTERN",
                        help="file names of a frame folder's frames (default img_{:05d}.jpg; e.g. {:05d}.jpg, frame_{:06d}.png, *.png)")
    parser.add_argument("--cache", required=True, type=Path, help="cache folder (one per engine/size/bound)")
    add_engine_argument(parser, "pwcnet", ENGINES)
    parser.add_argument("--weights", default=None, help="weights file (default: PWC-Net's shipped ones, torchvision's for RAFT)")
    parser.add_argument("--flow-updates", type=positive_int, metavar="N", help="RAFT's refinements per pair (default 12)")
    parser.add_argument("--size", type=parse_size_or_side, default=DEFAULT_SIZE, help="WIDTHxHEIGHT the flow is computed at, or one number: the short side, each video keeping its aspect ratio (default 340x256)")
    parser.add_argument("--bound", type=positive_pixels, default=DEFAULT_BOUND, help="quantisation bound in pixels (default 20)")
    parser.add_argument("--codec", type=codec_arg, default=codec_name(),
                        help=f"frame codec: jpeg[:Q], png, webp (lossless) or webp:Q, avif[:Q], jp2 (default {codec_name()}, the cache's)")
    parser.add_argument("--workers", type=positive_int, default=available_cores(),
                        help="processes for a classical engine's flow, and threads encoding frames (default: the cores available)")
    parser.add_argument("--batch", type=positive_int, default=32, help="frame pairs per engine call (default 32)")
    parser.add_argument("--decoders", type=positive_int, default=2, help="videos decoded at once, each in a thread (default 2)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (auto uses LOCAL_RANK under torchrun)")
    parser.add_argument("--dtype", default="auto", help="engine dtype: auto (bf16 on CUDA, else fp32), fp32, bf16, fp16")
    parser.add_argument("--shard", type=parse_shard, default=None, help="I/N: this process takes videos i %% N == I (default RANK/WORLD_SIZE or 0/1)")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip existing entries without checking their frame checksums (default: check; crc32 only, cheap)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _shard_from_env() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def make_engine(args: argparse.Namespace):
    """The real ``FlowEngine`` the arguments ask for."""
    classical = args.engine not in LEARNED_ENGINES
    # device "auto" under torchrun: LOCAL_RANK's GPU (modulo: several processes per GPU work too)
    return FlowEngine(name=args.engine, weights=args.weights, device=args.device, dtype=args.dtype,
                      flow_updates=args.flow_updates, workers=args.workers if classical else 1)


def run(args: argparse.Namespace, engine=None) -> int:
    """Run the precompute command; ``engine`` replaces the one the arguments name (tests)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        videos = list_videos(args.videos, args.frame_pattern)
    except (FileNotFoundError, OSError, ListFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not videos:
        print(f"error: no videos found in {args.videos}", file=sys.stderr)
        return 2
    try:
        args.cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: cannot create cache folder {args.cache} ({exc.strerror})", file=sys.stderr)
        return 2
    if not os.access(args.cache, os.W_OK | os.X_OK):
        print(f"error: cache folder {args.cache} is not writable", file=sys.stderr)
        return 2
    index, count = args.shard if args.shard is not None else _shard_from_env()
    try:
        mine = shard(videos, index, count)
        codec = args.codec
        if engine is None:
            engine = make_engine(args)
        cache = FlowCache(args.cache, engine.config(), size=args.size, bound=args.bound, codec=codec)
        if isinstance(cache.size, int):  # each video's own size: its memory is checked before it is decoded
            engine.check_size(cache.size, cache.size, 0)
        else:
            check_size(engine, *cache.size, args.batch, args.decoders)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:  # FlowInputError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = f"short side {cache.size}" if isinstance(cache.size, int) else f"{cache.size[1]}x{cache.size[0]}"
    log.info("shard %d/%d: %d of %d videos; engine %s on %s; flow at %s, bound %g, codec %s -> %s",
             index, count, len(mine), len(videos), getattr(engine, "name", "?"), getattr(engine, "device", "?"),
             size, cache.bound, cache.codec, cache.root)
    summary = precompute(mine, cache, engine, batch=args.batch, workers=args.workers, decoders=args.decoders,
                         verify=args.verify, progress=not args.no_progress, frame_pattern=args.frame_pattern)
    print_summary(summary)
    return 1 if summary.failed else 0
