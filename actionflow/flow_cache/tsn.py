"""TSN/denseflow flow JPEGs in and out of the cache.

``python -m actionflow cache import --tsn DIR --cache C [--bound 20] [--naming x_{:05d}.jpg,y_{:05d}.jpg]``
``python -m actionflow cache export C --tsn OUT [--bound B] [--naming ...] [--quality 95]``

denseflow (and TSN's extractors before it) write one folder per video holding two grey JPEGs per
flow frame, ``x_00001.jpg`` / ``y_00001.jpg`` (or ``flow_x_00001.jpg`` / ``flow_y_00001.jpg``),
numbered from 1, whose values are ``255 * (v + B) / 2B`` (B = 20 px usually), clipped to [0, 255].

Import: every folder under DIR (DIR itself included) holding such files becomes one entry. Its
values are kept as they are (header ``levels: "tsn"``, format version 3: converting them to the
cache's zero-exact levels would merge two of their levels), stored with a lossless codec by default,
so reading an entry back gives exactly ``j * 2B/255 - B``. The header records that the flow came
from an import (engine ``imported``, its real engine unknown), the bound, the naming and the source
folder. The entry belongs to the folder itself (the dataset item when frames and flow share a
folder, as denseflow writes them), or with ``--videos VDIR`` to the video ``VDIR/<same relative
path>.<ext>``. A folder already imported from the same source, unchanged, is skipped.

Export: every entry of a cache becomes a folder ``OUT/<its video's path relative to the videos'
common folder, without extension>`` of ``x_{:05d}.jpg`` / ``y_{:05d}.jpg`` from 1 (JPEG quality 95, as
denseflow), ready for mmaction2's ``RawframeDataset`` with ``modality='Flow'``. Nothing is written
outside OUT; a folder holding an earlier export's flow files is refused unless ``--overwrite``, which
removes them first (mmaction2 counts the x files: a stale one would be read as flow).

Bad input is a failure of that folder or entry, named in the summary (exit 1), never a traceback:
half a pair missing, a gap in the numbers, a JPEG that does not decode, frames of different sizes.
"""
from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from actionflow.errors import ActionflowError
from actionflow.flow_cache.cache import IMPORTED_ENGINE, FlowCache, cache_files
from actionflow.flow_cache.codec import DEFAULT_BOUND, TSN, encode_frames, parse_codec, positive_pixels, tsn_levels
from actionflow.flow_cache.entry import CacheError, CachedFlow, CacheWriter
from flow_engine.commands.args import output_folder
from flow_engine.io.flow_files import FlowFileError, read_image
from flow_engine.io.video import (
    VIDEO_EXTENSIONS, VideoError, check_frame_pattern, frame_files, is_frame_name, is_video_path, numbered_files,
)

log = logging.getLogger(__name__)

DEFAULT_NAMING = ("x_{:05d}.jpg", "y_{:05d}.jpg")
NAMINGS = (DEFAULT_NAMING, ("flow_x_{:05d}.jpg", "flow_y_{:05d}.jpg"))  # tried in turn when --naming is not given
IMPORT_CODEC = "webp"  # lossless: an import adds no error to the JPEGs' values


class TsnError(ActionflowError, ValueError):
    """A flow folder or file that cannot be imported or exported; the message names it."""


def parse_naming(text: str) -> tuple[str, str]:
    """``"x_{:05d}.jpg,y_{:05d}.jpg"`` -> the x and y file-name patterns (one integer field each)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or parts[0] == parts[1]:
        raise ValueError(f"naming {text!r} must be two different patterns X,Y such as x_{{:05d}}.jpg,y_{{:05d}}.jpg")
    for part in parts:
        check_frame_pattern(part)
        if "{" not in part:
            raise ValueError(f"naming {text!r}: {part!r} needs a number field such as {{:05d}}")
    return parts[0], parts[1]


def _naming_arg(text: str) -> tuple[str, str]:
    try:
        return parse_naming(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# ------------------------------------------------------------------------------------ import


def find_flow_folders(root: str | os.PathLike, namings=NAMINGS) -> list[tuple[Path, tuple[str, str]]]:
    """(folder, naming) of every folder under ``root`` (itself included) holding an x or y flow file
    of one of ``namings`` (the first that fits), sorted."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for naming in namings:
            if any(is_frame_name(f, naming[0]) or is_frame_name(f, naming[1]) for f in files):
                found.append((Path(folder), naming))
                break
    return sorted(found, key=lambda item: str(item[0]))


def flow_pairs(folder: Path, naming: tuple[str, str]) -> list[tuple[Path, Path]]:
    """The (x, y) files of a flow folder in order; TsnError naming the file when a pair lacks a half
    or a number is missing."""
    xs, ys = (numbered_files(folder, n) for n in naming)
    for number in sorted(set(xs) ^ set(ys)):
        have, lacking = (xs[number], naming[1]) if number in xs else (ys[number], naming[0])
        raise TsnError(f"{folder / lacking.format(number)}: missing, the other half of {have}'s pair")
    try:
        return list(zip(frame_files(folder, naming[0]), frame_files(folder, naming[1])))
    except VideoError as exc:
        raise TsnError(str(exc)) from None


def _read_grey(path: Path) -> np.ndarray:
    """A flow JPEG as uint8 ``[H,W]``; TsnError naming it when it cannot be one."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the decoder
            raise TsnError(f"{path}: not a regular file")
        rgb = read_image(path)
    except OSError as exc:
        raise TsnError(f"{path}: cannot open ({exc.strerror})") from None
    except FlowFileError as exc:
        raise TsnError(str(exc)) from None
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)  # exact for grey JPEGs: their three channels are equal


def _video_for(folder: Path, root: Path, videos: Path) -> Path:
    """The video ``videos/<folder relative to root>.<ext>`` that a flow folder belongs to."""
    rel = folder.relative_to(root)
    stem = videos / (rel if rel.parts else Path(folder.name))
    for ext in VIDEO_EXTENSIONS:
        for candidate in (stem.with_name(stem.name + ext), stem.with_name(stem.name + ext.upper())):
            if candidate.is_file():
                return candidate
    raise TsnError(f"no video {stem}.* ({'/'.join(e[1:] for e in VIDEO_EXTENSIONS)}) to attach its flow to")


def import_folder(folder: Path, naming: tuple[str, str], cache: FlowCache, key: Path, bound: float) -> CacheWriter | None:
    """Write ``folder``'s flow JPEGs as the entry of ``key`` (a frame folder or video) in ``cache``; None when
    an unchanged import of it is there already. TsnError naming the file on bad input."""
    pairs = flow_pairs(folder, naming)
    source = os.path.realpath(folder)
    if _imported_already(cache, key, source, bound):
        return None
    x0 = _read_grey(pairs[0][0])
    header = {
        **cache.header_for(key),
        "engine": dict(IMPORTED_ENGINE),
        "height": int(x0.shape[0]),
        "width": int(x0.shape[1]),
        "bound": bound,
        "levels": TSN,
        "quantization": "TSN grey levels j = round(255 * (f + bound) / (2 * bound)) in [0, 255]; f = j * 2 * bound / 255 - bound",
        "import": {"format": "tsn", "source": source, "naming": list(naming), "bound": bound, "engine": "unknown"},
    }
    with cache.lock_for(key):
        cache.remove_temp_files(key)
        with CacheWriter(cache.path_for(key), header) as writer:
            for x_path, y_path in pairs:
                x, y = _read_grey(x_path), _read_grey(y_path)
                for path, img in ((x_path, x), (y_path, y)):
                    if img.shape != x0.shape:
                        raise TsnError(f"{path}: {img.shape[1]}x{img.shape[0]} where {pairs[0][0].name} is "
                                       f"{x0.shape[1]}x{x0.shape[0]}: the flow of a folder must share one size")
                q = np.stack([x, y])[None]
                clipped = int(((q == 0) | (q == 255)).any(axis=1).sum())  # at the bound: clipped when extracted
                writer.add(encode_frames(q, writer.header["codec"])[0], clipped)
    return writer


def _imported_already(cache: FlowCache, key: Path, source: str, bound: float) -> bool:
    """Whether ``key``'s entry is an import of ``source`` with ``bound``, and neither changed since."""
    try:
        with CachedFlow(cache.path_for(key)) as old:
            cache.check(old, key)  # the folder's (or video's) size and mtime are still those recorded
            return old.header["import"].get("source") == source and old.bound == bound
    except (CacheError, OSError):
        return False


@dataclass
class Summary:
    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    frames: int = 0


def import_tsn(root: str | os.PathLike, cache_dir: str | os.PathLike, bound: float = DEFAULT_BOUND,
               naming: tuple[str, str] | None = None, codec: str = IMPORT_CODEC,
               videos: str | os.PathLike | None = None) -> Summary:
    """Import every flow folder under ``root`` into the cache folder ``cache_dir`` (see the module doc);
    a bad folder is recorded in the summary's ``failed``, never raised."""
    root = Path(root)
    cache = FlowCache(cache_dir, IMPORTED_ENGINE, bound=bound, codec=codec, accept_imported=True)
    summary = Summary()
    for folder, folder_naming in find_flow_folders(root, [naming] if naming else NAMINGS):
        try:
            key = folder if videos is None else _video_for(folder, root, Path(videos))
            writer = import_folder(folder, folder_naming, cache, key, bound)
        except TsnError as exc:
            log.warning("not imported: %s", exc)
            summary.failed.append((folder, str(exc)))
            continue
        except OSError as exc:  # a cache folder that cannot be written, a folder gone meanwhile
            summary.failed.append((folder, f"{exc.strerror or exc}"))
            continue
        if writer is None:
            summary.skipped.append(folder)
        else:
            summary.done.append(folder)
            summary.frames += writer.num_flows
    return summary


# ------------------------------------------------------------------------------------ export


def export_names(videos: list[str]) -> list[Path]:
    """Output folder of each video path: relative to their common folder, without a video extension."""
    paths = [Path(v) for v in videos]
    common = Path(os.path.commonpath(paths)) if len(paths) > 1 else paths[0].parent
    if common in paths:  # one video folder inside another: keep the outer one's name
        common = common.parent
    out = []
    for p in paths:
        rel = p.relative_to(common)
        out.append(rel.with_name(rel.stem) if is_video_path(rel) else rel)
    return out


def export_entry(cached: CachedFlow, folder: Path, naming: tuple[str, str] = DEFAULT_NAMING,
                 bound: float | None = None, quality: int = 95, chunk: int = 64) -> int:
    """Write an entry's flow as TSN JPEGs ``folder/x_00001.jpg``... (``bound``: the entry's own when None);
    returns the pairs written."""
    bound = cached.bound if bound is None else bound
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, cached.num_flows, chunk):
        levels = tsn_levels(cached.read(start, min(chunk, cached.num_flows - start)), bound)
        for i, pair in enumerate(levels, start + 1):  # numbered from 1, as denseflow
            for pattern, img in zip(naming, pair):
                path = folder / pattern.format(i)
                try:
                    written = cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, quality])
                except cv2.error:
                    written = False
                if not written:
                    raise TsnError(f"{path}: cannot write (not a folder, or a suffix OpenCV does not write)")
    return cached.num_flows


def export_tsn(cache_dir: str | os.PathLike, out: str | os.PathLike, naming: tuple[str, str] = DEFAULT_NAMING,
               bound: float | None = None, quality: int = 95, overwrite: bool = False) -> Summary:
    """Export every entry of ``cache_dir`` under ``out`` (see the module doc); bad entries are recorded, never raised.

    Every file written lies inside ``out`` (a folder that would resolve outside it, through a symlink, fails
    that entry). A target folder already holding flow files of ``naming`` (an earlier export) is a TsnError
    before anything is written, unless ``overwrite``: then its numbered flow files are removed first, so
    no stale flow outlives the export (other files, such as frames, are left alone).
    """
    summary = Summary()
    entries: list[tuple[Path, str]] = []
    for path in cache_files(cache_dir):
        try:
            with CachedFlow(path) as cached:  # its header's video path was checked on opening
                entries.append((path, (cached.header.get("video") or {}).get("path") or str(path.with_suffix(""))))
        except CacheError as exc:
            summary.failed.append((path, exc.reason))
    if not entries:
        return summary
    out = Path(out)
    plan: list[tuple[Path, Path]] = []
    taken: dict[Path, Path] = {}
    for (path, video), name in zip(entries, export_names([video for _, video in entries])):
        target = out / name
        if name in taken:
            summary.failed.append((path, f"{video} exports to {name}, as {taken[name]} does already"))
        elif not _inside(target, out):
            summary.failed.append((path, f"{video} would export to {os.path.realpath(target)}, outside {out}"))
        else:
            taken[name] = path
            plan.append((path, target))
    stale = [target for _, target in plan if _flow_files(target, naming)]
    if stale and not overwrite:
        raise TsnError(f"{len(stale)} target folder(s) hold flow files already (first: {stale[0]}): an older export "
                       "would leave stale flow behind; pass --overwrite to replace their flow files, or export to an "
                       "empty folder")
    for path, target in plan:
        try:
            with CachedFlow(path) as cached:
                for old in _flow_files(target, naming):
                    old.unlink()
                summary.frames += export_entry(cached, target, naming, bound, quality)
        except (CacheError, TsnError) as exc:
            summary.failed.append((path, str(exc)))
            continue
        except OSError as exc:
            summary.failed.append((path, f"cannot write under {out} ({exc.strerror or exc})"))
            continue
        summary.done.append(target)
    return summary


def _inside(target: Path, out: Path) -> bool:
    """Whether ``target`` resolves (symlinks followed) to a folder strictly inside ``out``."""
    root = os.path.realpath(out)
    return os.path.realpath(target).startswith(root.rstrip(os.sep) + os.sep)


def _flow_files(folder: Path, naming: tuple[str, str]) -> list[Path]:
    """The numbered x and y files of ``naming`` in ``folder`` (none when it is not a folder)."""
    if not folder.is_dir():
        return []
    return [folder / name for pattern in naming for name in numbered_files(folder, pattern).values()]


# ---------------------------------------------------------------------------------------- CLI


def add_arguments(sub) -> None:
    """The ``import`` and ``export`` sub-commands of ``python -m actionflow cache``."""
    i = sub.add_parser("import", help="Import TSN/denseflow flow JPEGs (x_00001.jpg, y_00001.jpg ...) into a cache.")
    i.add_argument("--tsn", required=True, type=Path, metavar="DIR", help="a flow folder, or a folder of them (any depth)")
    i.add_argument("--cache", required=True, type=Path, help="cache folder to import into")
    i.add_argument("--bound", type=positive_pixels, default=DEFAULT_BOUND, help="the JPEGs' bound in pixels (default 20)")
    i.add_argument("--naming", type=_naming_arg, default=None, metavar="X,Y",
                   help="x and y file names (default: x_{:05d}.jpg,y_{:05d}.jpg, else flow_x_{:05d}.jpg,flow_y_{:05d}.jpg)")
    i.add_argument("--codec", default=IMPORT_CODEC, help="codec of the entries (default webp: lossless)")
    i.add_argument("--videos", type=Path, default=None, metavar="VDIR",
                   help="attach each folder's flow to the video VDIR/<its path under DIR>.<ext> (default: to the folder itself)")
    e = sub.add_parser("export", help="Export a cache as TSN/denseflow flow JPEGs (for mmaction2's RawframeDataset).")
    e.add_argument("dir", type=Path, help="cache folder")
    e.add_argument("--tsn", required=True, type=output_folder, metavar="OUT", help="output folder")
    e.add_argument("--bound", type=positive_pixels, default=None, help="bound of the JPEGs in pixels (default: each entry's, 20)")
    e.add_argument("--naming", type=_naming_arg, default=DEFAULT_NAMING, metavar="X,Y",
                   help="x and y file names (default x_{:05d}.jpg,y_{:05d}.jpg)")
    e.add_argument("--quality", type=int, default=95, choices=range(1, 101), metavar="1..100",
                   help="JPEG quality (default 95, denseflow's)")
    e.add_argument("--overwrite", action="store_true",
                   help="replace the flow files of an earlier export in the target folders (default: refuse them)")


def _print_summary(summary: Summary, verb: str) -> int:
    for path, reason in summary.failed:
        print(f"FAILED {path}: {reason}")
    skipped = f", {len(summary.skipped)} skipped (imported already)" if summary.skipped else ""
    print(f"{verb} {len(summary.done)} folder(s), {summary.frames} flow frames{skipped}; {len(summary.failed)} failed")
    return 1 if summary.failed else 0


def run(args: argparse.Namespace) -> int:
    """``cache import``: 0 when every flow folder was imported (or was already), 1 when any failed, 2 for
    bad arguments or no flow folders. ``cache export``: 0, 1 when any entry failed, 2 for bad arguments or
    target folders holding an earlier export's flow (without ``--overwrite``)."""
    if args.cache_command == "export":
        if not args.dir.is_dir():
            print(f"error: {args.dir} is not a folder", file=sys.stderr)
            return 2
        try:
            summary = export_tsn(args.dir, args.tsn, args.naming, args.bound, args.quality, args.overwrite)
        except TsnError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return _print_summary(summary, "exported")
    if not args.tsn.is_dir():
        print(f"error: {args.tsn} is not a folder", file=sys.stderr)
        return 2
    if args.videos is not None and not args.videos.is_dir():
        print(f"error: --videos {args.videos} is not a folder", file=sys.stderr)
        return 2
    try:
        parse_codec(args.codec)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not find_flow_folders(args.tsn, [args.naming] if args.naming else NAMINGS):
        names = " or ".join(",".join(n) for n in ([args.naming] if args.naming else NAMINGS))
        print(f"error: no flow files named {names} under {args.tsn}", file=sys.stderr)
        return 2
    summary = import_tsn(args.tsn, args.cache, args.bound, args.naming, args.codec, args.videos)
    return _print_summary(summary, "imported")
