"""``python -m actionflow cache verify|stats DIR``: check every checksum of a cache, or total it up;
``cache import|export``: TSN/denseflow flow JPEGs in and out (:mod:`~actionflow.flow_cache.tsn`)."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path

from actionflow.flow_cache import tsn
from actionflow.flow_cache.cache import cache_files, orphan_temp_files
from actionflow.flow_cache.codec import flo_bytes
from actionflow.flow_cache.entry import MAGIC, CacheError, CachedFlow


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cache_command", metavar="{verify,stats,import,export}", required=True)
    v = sub.add_parser("verify", help="Check every checksum of every cache file; exit 1 when any is bad.")
    v.add_argument("dir", type=Path, help="cache folder")
    v.add_argument("--delete-bad", action="store_true", help="delete bad flow caches (and temp files of dead writers); other .afc files are left alone")
    s = sub.add_parser("stats", help="Videos, flow frames and bytes in a cache, against the same flow as .flo.")
    s.add_argument("dir", type=Path, help="cache folder")
    s.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    tsn.add_arguments(sub)


def _carries_magic(path: Path) -> bool:
    """Whether ``path`` starts or ends with the cache's magic: a flow cache, even a damaged one
    (``.afc`` is also AIFF-C audio, which must never be taken for a bad cache and deleted)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC))
            f.seek(max(0, os.fstat(f.fileno()).st_size - len(MAGIC)))
            return head == MAGIC or f.read() == MAGIC
    except OSError:
        return False


def verify_dir(root: str | os.PathLike) -> tuple[int, int, list[tuple[Path, str]], list[Path]]:
    """(flow caches checked, flow frames checked, [(bad cache, reason)], [``.afc`` files that are not
    flow caches]) for every ``.afc`` under ``root``."""
    bad, foreign, frames = [], [], 0
    files = cache_files(root)
    for path in files:
        if not _carries_magic(path):
            foreign.append(path)
            continue
        try:
            with CachedFlow(path) as cached:
                problems = cached.verify()
                frames += cached.num_flows
        except CacheError as exc:
            problems = [exc.reason]
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            bad.append((path, problems[0] + more))
    return len(files) - len(foreign), frames, bad, foreign


def stats_dir(root: str | os.PathLike) -> dict:
    """Totals for the cache under ``root``; keys ``videos``, ``frames``, ``bytes``, ``flo_bytes`` and more."""
    videos = frames = size = flo = clipped = pixels = 0
    unreadable, engines, sizes, codecs = [], Counter(), Counter(), Counter()
    for path in cache_files(root):
        try:
            with CachedFlow(path) as c:
                videos += 1
                frames += c.num_flows
                size += c.file_size
                flo += flo_bytes(c.num_flows, c.height, c.width)
                clipped += int(c.clipped.sum())
                pixels += c.num_flows * c.height * c.width
                eng = c.header.get("engine") or {}
                engines[str(eng.get("name", eng.get("model", "?")))] += 1
                sizes[f"{c.height}x{c.width}"] += 1
                codec = c.header.get("codec") or {}
                codecs[f"{codec.get('name')}" + (f":{codec['quality']}" if codec.get("quality") else "")] += 1
        except CacheError as exc:
            unreadable.append({"path": str(path), "reason": exc.reason})
    return {
        "videos": videos,
        "frames": frames,
        "bytes": size,
        "flo_bytes": flo,
        "bytes_per_frame": size / frames if frames else 0.0,
        "ratio_vs_flo": flo / size if size else 0.0,
        "clipped_fraction": clipped / pixels if pixels else 0.0,
        "engines": dict(engines),
        "sizes": dict(sizes),
        "codecs": dict(codecs),
        "unreadable": unreadable,
    }


def _human(n: float) -> str:
    """Bytes in decimal units: 1234567 -> '1.2 MB'."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def run(args: argparse.Namespace) -> int:
    """``cache verify``: 0 when every flow cache is good, 1 when any is bad, 2 when DIR is not a folder
    (``--delete-bad`` deletes only files with the cache's magic; other ``.afc`` files are listed, never deleted).
    ``cache stats``: 0 (2 when DIR is not a folder)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.cache_command in ("import", "export"):
        return tsn.run(args)
    if not args.dir.is_dir():
        print(f"error: {args.dir} is not a folder", file=sys.stderr)
        return 2
    if args.cache_command == "stats":
        st = stats_dir(args.dir)
        if args.json:
            print(json.dumps(st, indent=2))
        else:
            print(f"videos          {st['videos']}")
            print(f"flow frames     {st['frames']}")
            print(f"bytes           {st['bytes']} ({_human(st['bytes'])}), {st['bytes_per_frame']:.0f} per frame")
            print(f"as .flo         {st['flo_bytes']} ({_human(st['flo_bytes'])}), {st['ratio_vs_flo']:.1f}x larger")
            print(f"clipped pixels  {100 * st['clipped_fraction']:.3f} %")
            print(f"engines {st['engines']}  sizes {st['sizes']}  codecs {st['codecs']}")
            for u in st["unreadable"]:
                print(f"unreadable      {u['path']}: {u['reason']}")
        return 0
    files, frames, bad, foreign = verify_dir(args.dir)
    for path in foreign:
        print(f"not a flow cache, left alone: {path}")
    for path, reason in bad:
        print(f"BAD {path}: {reason}")
        if args.delete_bad:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            print(f"  deleted {path}")
    orphans = orphan_temp_files(args.dir)
    if orphans:
        print(f"{len(orphans)} temp file(s) left by interrupted writers" + ("; deleted" if args.delete_bad else ""))
        if args.delete_bad:
            for tmp in orphans:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
    print(f"checked {files} file(s), {frames} flow frames: {len(bad)} bad")
    return 1 if bad else 0
