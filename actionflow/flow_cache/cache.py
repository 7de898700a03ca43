"""A folder of cache entries for one flow configuration (engine, weights, size, bound).

The entry of a video is ``<stem>-<10 hex of sha1(absolute path)>.afc``; its header records
the engine's identity, the flow size and bound, and the video's size and mtime, so an entry
made by another engine, other weights, another size or bound, or from a changed video is
reported (:class:`CacheMismatch`) and recomputed, never served.

Entries imported from TSN/denseflow JPEGs (``cache import``, :mod:`~actionflow.flow_cache.tsn`)
carry ``header["import"]`` and the engine name ``imported`` (its real engine is unknown): a cache
serves them only when built with ``accept_imported`` (training: ``data.imported_flow``), at their
own size and bound, and never in place of another engine's entries.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from actionflow.flow_cache.codec import DEFAULT_BOUND, parse_codec
from actionflow.flow_cache.entry import (
    FORMAT, MAX_SIDE, SUFFIX, CacheError, CachedFlow, CacheMismatch, CacheWriter,
)
from actionflow.flow_cache.lock import VideoLock, lock_is_held
from flow_engine.io.video import Video, decode_size, probe, source_stat

DEFAULT_SIZE = (256, 340)  # (H, W): the two-stream convention, 340x256 frames
# Keys of an engine config that do not change the flow enough to invalidate a cache.
IGNORED_CONFIG_KEYS = frozenset({"device", "dtype"})
IMPORTED_ENGINE = {"name": "imported", "source_engine": "unknown"}  # the engine of an imported entry


def _normalise(config: dict) -> dict:
    """A JSON round trip, so a requested config compares equal to what a header stored."""
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def video_identity(video: str | os.PathLike) -> dict:
    """Absolute path, size in bytes and mtime (ns) of a video (of a frame folder: its files' total
    bytes and newest mtime): what a cache entry was built from."""
    path = Path(os.path.realpath(video))  # not Path.resolve(): it raises RuntimeError on a symlink loop
    size, mtime_ns = source_stat(path)
    return {"path": str(path), "size": size, "mtime_ns": mtime_ns}


class FlowCache:
    """A folder of ``.afc`` files for one flow configuration.

    Args:
        root: cache folder (created on first write).
        engine_config: the engine's ``FlowEngine.config()`` (at least its name and weights
            hash). Every key given, except ``device`` and ``dtype``, must equal the stored one.
        size: the size the flow is computed at (frames are resized to it on decode): (H, W) in
            pixels for every video, or an int, the short side in pixels, each video keeping its
            aspect ratio (its entry then records the video's own frame size, and the flow size
            follows from it).
        bound: quantisation bound B in pixels.
        codec: codec for new entries (``"jpeg:95"``...); readers decode any codec.
        check_video: compare the video's current size and mtime with the stored ones
            (turn off to read a cache whose videos are not present).
        accept_imported: serve imported entries (``cache import``: engine unknown) as this
            engine's flow, at their own size and bound; refused (CacheMismatch) otherwise.

    The file of a video is ``<stem>-<10 hex of sha1(absolute path)>.afc``. Keep one folder per
    configuration: an entry built by another engine, weights, size or bound, or from an
    older version of the video, is reported (:class:`CacheMismatch`) and never served.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        engine_config: dict,
        size: tuple[int, int] | int = DEFAULT_SIZE,
        bound: float = DEFAULT_BOUND,
        codec: str | dict | None = None,
        check_video: bool = True,
        accept_imported: bool = False,
    ):
        self.root = Path(root)
        self.accept_imported = accept_imported
        self.engine_config = _normalise(dict(engine_config))
        self.size: tuple[int, int] | int = int(size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
        self.bound = float(bound)
        self.codec = parse_codec(codec)
        self.check_video = check_video
        if not (math.isfinite(self.bound) and self.bound > 0):  # NaN passes a plain <= 0 test
            raise ValueError(f"bound must be a positive, finite number of pixels, got {bound}")
        sides = (self.size,) if isinstance(self.size, int) else self.size
        if not all(1 <= side <= MAX_SIDE for side in sides):
            raise ValueError(f"size {self.size}: each side must be 1..{MAX_SIDE} px")

    def __repr__(self) -> str:
        return f"FlowCache({str(self.root)!r}, engine={self.engine_config.get('name', self.engine_config.get('model'))!r}, size={self.size}, bound={self.bound})"

    def path_for(self, video: str | os.PathLike) -> Path:
        """Where the entry of ``video`` lives (whether or not it exists)."""
        absolute = Path(os.path.realpath(video))  # as video_identity: a symlink loop is the video's error, later
        digest = hashlib.sha1(str(absolute).encode("utf-8")).hexdigest()[:10]
        return self.root / f"{absolute.stem}-{digest}{SUFFIX}"

    def lock_for(self, video: str | os.PathLike) -> VideoLock:
        """The per-video lock held while computing its entry."""
        path = self.path_for(video)
        return VideoLock(path.with_name(path.name + ".lock"))

    def frame_size(self, video: str | os.PathLike | Video) -> tuple[int, int]:
        """(H, W) in pixels the flow of ``video`` is computed at (a short-side cache probes the video: a frame
        folder as its :class:`~flow_engine.io.video.Video` names its frames)."""
        if not isinstance(self.size, int):
            return self.size
        info = probe(video)
        return decode_size(info.height, info.width, self.size)

    def _expected_size(self, header: dict) -> tuple[int, int] | None:
        if not isinstance(self.size, int):
            return self.size
        native = (header.get("video") or {}).get("frame_size")
        if not (isinstance(native, list) and len(native) == 2 and all(isinstance(v, int) and v > 0 for v in native)):
            return None
        return decode_size(native[0], native[1], self.size)

    def header_for(self, video: str | os.PathLike | Video) -> dict:
        """The header a new entry for ``video`` gets (``num_flows`` is added by the writer).

        A short-side cache records the video's own frame size ``video.frame_size`` [H, W] (probed
        here, a frame folder as its :class:`~flow_engine.io.video.Video` names its frames: VideoError
        when the video does not open)."""
        identity = video_identity(video)
        if isinstance(self.size, int):
            info = probe(video)
            identity["frame_size"] = [info.height, info.width]
        height, width = self._expected_size({"video": identity})
        return {
            "format": FORMAT,
            "engine": self.engine_config,
            "height": height,
            "width": width,
            "short_side": self.size if isinstance(self.size, int) else None,
            "bound": self.bound,
            "codec": self.codec,
            "layout": "one grey image [2H,W] per flow: u rows above v rows",
            "quantization": "q = round(f * 127 / bound) + 127 clipped to [0, 254]; f = (q - 127) * bound / 127",
            "video": identity,
        }

    def writer(self, video: str | os.PathLike | Video) -> CacheWriter:
        """A writer for ``video``'s entry; the video's size and mtime are recorded now (before decoding)."""
        return CacheWriter(self.path_for(video), self.header_for(video))

    def check(self, cached: CachedFlow, video: str | os.PathLike) -> None:
        """Raise :class:`CacheMismatch` naming what differs when ``cached`` is not this config's entry for ``video``."""
        h = cached.header
        problems = []
        stored = h.get("engine") or {}
        if "import" in h:  # size and bound are its own: readers resize and rescale to theirs
            if not self.accept_imported:
                problems.append(f"flow imported from {h['import'].get('source')!r} (engine unknown), not computed by "
                                f"{self.engine_config.get('name')!r}; to use it as that engine's flow set "
                                "data.imported_flow to that engine's name")
        else:
            for key, want in self.engine_config.items():
                if key in IGNORED_CONFIG_KEYS:
                    continue
                if key not in stored or stored[key] != want:
                    problems.append(f"engine {key} is {stored.get(key)!r}, want {want!r}")
            want = self._expected_size(h)
            if want is None:
                problems.append(f"made for size {cached.height}x{cached.width}, not for short side {self.size}")
            elif (cached.height, cached.width) != want:
                problems.append(f"size is {cached.height}x{cached.width}, want {want[0]}x{want[1]}")
            if cached.bound != self.bound:
                problems.append(f"bound is {cached.bound:g}, want {self.bound:g}")
        if self.check_video:
            try:
                now = video_identity(video)
            except OSError as exc:
                raise CacheError(cached.path, f"cannot check against video {video} ({exc.strerror})") from None
            then = h.get("video") or {}
            if then.get("size") != now["size"] or then.get("mtime_ns") != now["mtime_ns"]:
                problems.append(f"video {now['path']} changed since the entry was built "
                                f"(size {then.get('size')} -> {now['size']}, mtime_ns {then.get('mtime_ns')} -> {now['mtime_ns']})")
        if problems:
            raise CacheMismatch(cached.path, "stale entry: " + "; ".join(problems))

    def open(self, video: str | os.PathLike) -> CachedFlow:
        """The entry of ``video``, checked against this config; CacheError / CacheMismatch / CacheCorrupt otherwise."""
        cached = CachedFlow(self.path_for(video))
        try:
            self.check(cached, video)
        except BaseException:
            cached.close()
            raise
        return cached

    def lookup(self, video: str | os.PathLike, verify: bool = False) -> Path | None:
        """The entry's path when it exists, is complete and matches (and, with ``verify``, passes every checksum)."""
        try:
            with self.open(video) as cached:
                if verify and cached.verify(decode=False):
                    return None
                return cached.path
        except CacheError:
            return None

    def remove_temp_files(self, video: str | os.PathLike) -> int:
        """Delete leftovers of killed writers of ``video`` (call while holding its lock). Returns how many."""
        path = self.path_for(video)
        removed = 0
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed += 1
        return removed


def cache_files(root: str | os.PathLike) -> list[Path]:
    """Every ``.afc`` file under ``root``, sorted."""
    return sorted(p for p in Path(root).rglob(f"*{SUFFIX}") if p.is_file())


def orphan_temp_files(root: str | os.PathLike) -> list[Path]:
    """Temp files of writers that are no longer alive (their video's lock is free)."""
    out = []
    for tmp in Path(root).rglob(f".*{SUFFIX}.*.tmp"):
        final_name = tmp.name[1:].split(f"{SUFFIX}.", 1)[0] + SUFFIX
        if not lock_is_held(tmp.with_name(final_name + ".lock")):
            out.append(tmp)
    return sorted(out)
