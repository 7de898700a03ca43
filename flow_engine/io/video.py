"""Video decoding with decord, with every failure turned into one clear ``VideoError``, and the
lists that name videos.

A "video" may also be a folder of frames (the mmaction2/denseflow ``rawframes`` layout):
:func:`probe`, :func:`read_frames` and :func:`iter_frames` read it when given a folder, so every
caller (precompute, the data module, classify, estimate) handles both the same way. Its frames
are the files named by ``frame_pattern``: a numbered pattern with one integer field
(default ``img_{:05d}.jpg``; also ``{:05d}.jpg``, ``frame_{:06d}.png``...), numbered
consecutively from 0 or 1, or a glob without a field (``*``, ``*.png``: the images matching it,
in name order). Files the pattern does not name (``x_00001.jpg`` flow, ``notes.txt``) are
ignored; a missing frame (a gap in the numbers), a frame that does not decode, or frames of
different sizes are a ``VideoError`` naming the frame. Frames are read with OpenCV and resized
like video frames (:func:`resize_frames`).

decord keeps decoder state (and, on long videos, memory) alive for as long as a
``VideoReader`` lives, and seeking far back and forth on variable-frame-rate files is
slow and occasionally inexact. So readers here are short-lived (one per call), frame
indices are read in ascending order and then put back in the order asked for. PyAV decodes
what decord mis-sizes.

A :class:`Video` is a path with the pattern of its frames: the value every reader takes, so the
pattern travels with the path from where it is known (a command's ``--frame-pattern``, a training
config's ``data.frame_pattern``) to every probe and decode (a video file ignores it).

:func:`list_videos` turns a folder, a list file or a single video into paths;
:func:`read_list_lines` is the one reader of list files (UTF-8, BOM stripped, comments skipped).
"""
from __future__ import annotations

import argparse
import fnmatch
import functools
import os
import re
import stat
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from flow_engine.errors import FlowEngineError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
DEFAULT_FRAME_PATTERN = "img_{:05d}.jpg"  # mmaction2 / denseflow rawframes
MAX_LIST_BYTES = 256 << 20  # a list file larger than this is not a list of videos


@dataclass(frozen=True)
class Video:
    """A video file or a frame folder (``path``), and the file names of a folder's frames (``frame_pattern``).

    ``os.fspath(video)`` and ``str(video)`` are the path, so a Video goes wherever a path does."""

    path: str
    frame_pattern: str = DEFAULT_FRAME_PATTERN

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path


def as_video(source: str | os.PathLike | Video, frame_pattern: str | None = None) -> Video:
    """``source`` as a :class:`Video`: a Video keeps its pattern unless ``frame_pattern`` is given; a path
    gets ``frame_pattern`` (default ``img_{:05d}.jpg``)."""
    if isinstance(source, Video):
        return source if frame_pattern is None else Video(source.path, frame_pattern)
    return Video(os.fspath(source), frame_pattern or DEFAULT_FRAME_PATTERN)


class ListFileError(FlowEngineError):
    """A list file that cannot be read as text: missing, not UTF-8, too large (names the file)."""


def read_list_lines(path: str | os.PathLike) -> list[tuple[int, str]]:
    """``(line number, stripped text)`` of a list file's lines, blank lines and ``#`` comments skipped.

    The file must be UTF-8 (a byte-order mark is stripped); anything else (UTF-16, a binary
    file given by mistake) is a :class:`ListFileError` naming the file.
    """
    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise ListFileError(f"{path}: not a regular file")
        if path.stat().st_size > MAX_LIST_BYTES:
            raise ListFileError(f"{path}: {path.stat().st_size} bytes is too large for a list file")
        data = path.read_bytes()
    except OSError as exc:
        raise ListFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ListFileError(f"{path}: the list is UTF-16; save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ListFileError(f"{path}: not a UTF-8 text list (byte {exc.start}: {data[exc.start:exc.start + 1]!r}); "
                            "save it as UTF-8") from None
    if "\x00" in text:
        raise ListFileError(f"{path}: contains NUL bytes: not a text list")
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((number, line))
    return out


def is_video_path(path: str | os.PathLike) -> bool:
    """Whether the name ends in one of :data:`VIDEO_EXTENSIONS` (case-insensitive)."""
    return str(path).lower().endswith(VIDEO_EXTENSIONS)


def split_list_line(line: str) -> tuple[str, str | None]:
    """``"path label"`` -> (path, label); a line that is one path (it may hold spaces and ends
    in a video extension) -> (line, None)."""
    parts = line.rsplit(maxsplit=1)
    if len(parts) == 2 and not is_video_path(parts[1]):
        return parts[0], parts[1]
    return line, None


def list_videos(spec: str | os.PathLike, frame_pattern: str = DEFAULT_FRAME_PATTERN) -> list[Path]:
    """Videos named by ``spec``, sorted and unique: a folder (searched recursively for
    :data:`VIDEO_EXTENSIONS` and for frame folders: folders holding a file ``frame_pattern`` names),
    a single video file, or a text list with one path per line, optionally followed by a label
    (paths relative to the list's folder)."""
    spec = Path(spec)
    if spec.is_dir():
        found = []
        for folder, _, files in os.walk(spec):
            found += [Path(folder) / f for f in files if is_video_path(f) and (Path(folder) / f).is_file()]
            if any(is_frame_name(f, frame_pattern) for f in files):
                found.append(Path(folder))
    elif spec.is_file() and is_video_path(spec):
        found = [spec]
    elif spec.is_file():
        found = []
        for _, line in read_list_lines(spec):
            path = Path(split_list_line(line)[0])
            found.append(path if path.is_absolute() else spec.parent / path)
    else:
        raise FileNotFoundError(f"{spec}: no such folder, video or list file")
    return sorted(set(found), key=str)


class VideoError(FlowEngineError, RuntimeError):
    """A video that cannot be read: missing, empty, corrupt, truncated or not a video."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    path: str
    num_frames: int
    fps: float
    height: int
    width: int


def scaled_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H, W) with the shorter side ``short_side`` px and the aspect ratio kept (sides rounded to even px)."""
    scale = short_side / min(height, width)
    return max(2, round(height * scale / 2) * 2), max(2, round(width * scale / 2) * 2)


def decode_size(height: int, width: int, size: int | Sequence[int]) -> tuple[int, int]:
    """The size (H, W) a ``height`` x ``width`` video is decoded at: ``size`` = (H, W) as given,
    or an int, the short side in px with the video's aspect ratio kept (mmaction2's
    ``Resize(scale=(-1, S))``)."""
    if isinstance(size, (int, np.integer)):
        return scaled_size(height, width, int(size))
    return int(size[0]), int(size[1])


def _open(path: str | os.PathLike, size: tuple[int, int] | None = None, num_threads: int = 1):
    """A decord VideoReader resized on decode to ``size`` = (H, W), or VideoError."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VideoError(path, "no such file") from None
    except OSError as exc:  # a symlink loop (ELOOP), no permission...: this video is skipped, not the run
        raise VideoError(path, f"cannot open ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the decoder for ever
        raise VideoError(path, "not a regular file (a FIFO, device or folder)")
    if st.st_size == 0:
        raise VideoError(path, "empty file")
    import decord  # imported here: it is slow to import and not every command needs it

    kwargs = {"num_threads": num_threads}
    if size is not None:
        kwargs.update(height=int(size[0]), width=int(size[1]))
    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), **kwargs)
    except Exception as exc:  # decord raises its own DECORDError and plain RuntimeErrors
        raise VideoError(path, f"cannot open as a video ({_short(exc, path)})") from None
    if len(reader) == 0:
        raise VideoError(path, "no video frames")
    return reader


def _short(exc: BaseException, path: str | os.PathLike | None = None) -> str:
    """The first line of a decoder's message, without decord's "[time] source.cc:line:" prefix, and with the
    video named by its file name (the error names its path already)."""
    text = str(exc).strip().splitlines()
    if not text:
        return type(exc).__name__
    line = re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", text[0])
    return (line.replace(os.fspath(path), os.path.basename(path)) if path else line)[:200]


def probe(video: str | os.PathLike | Video, frame_pattern: str | None = None) -> VideoInfo:
    """Frame count, frame rate and size of a video, without decoding it. A frame folder's
    first and last frames are decoded (their sizes must agree); its frame rate is 0.0 (unknown).
    ``frame_pattern``: see :func:`as_video`."""
    video = as_video(video, frame_pattern)
    path = video.path
    if os.path.isdir(path):
        return _probe_folder(path, video.frame_pattern)
    reader = _open(path)
    h, w = _frame_shape(reader, path)
    return VideoInfo(os.fspath(path), len(reader), float(reader.get_avg_fps() or 0.0), h, w)


def _frame_shape(reader, path) -> tuple[int, int]:
    try:
        h, w = reader.next().shape[:2]
        reader.seek(0)
    except Exception as exc:
        raise VideoError(path, f"first frame does not decode ({_short(exc, path)})") from None
    return int(h), int(w)


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``[T,h,w,3]`` -> ``[T,H,W,3]`` (``size`` = (H, W)) with OpenCV (area when shrinking,
    bilinear when growing); unchanged when already that size."""
    H, W = int(size[0]), int(size[1])
    if frames.shape[1:3] == (H, W):
        return frames
    interp = cv2.INTER_AREA if H * W < frames.shape[1] * frames.shape[2] else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (W, H), interpolation=interp) for f in frames])


def read_frames(
    video: str | os.PathLike | Video,
    indices: Sequence[int] | np.ndarray | None = None,
    size: tuple[int, int] | None = None,
    frame_pattern: str | None = None,
) -> np.ndarray:
    """Frames ``indices`` (all when None) as uint8 RGB ``[T,H,W,3]``, resized to ``size`` = (H, W) on decode.

    Indices may repeat and come in any order; they must lie in ``[0, num_frames)``.
    ``video`` may be a frame folder (frames named by its pattern, see :func:`as_video`).
    """
    video = as_video(video, frame_pattern)
    path = video.path
    if os.path.isdir(path):
        return _read_folder(path, indices, size, video.frame_pattern)
    try:
        return _read_frames(path, indices, size)
    except VideoError as exc:
        if not _decord_size_bug(exc):
            raise
    if indices is None:
        return np.concatenate(list(_pyav_chunks(path, 256, size)))
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0 or idx.min() < 0:
        raise VideoError(path, "frame indices must be non-negative and not empty")
    wanted, inverse = np.unique(idx, return_inverse=True)
    kept, seen = [], 0  # stream, keeping only the frames asked for: memory stays bounded on long videos
    for chunk in _pyav_chunks(path, 64, size):
        local = wanted[(wanted >= seen) & (wanted < seen + len(chunk))] - seen
        kept += list(chunk[local])
        seen += len(chunk)
        if seen > wanted[-1]:
            break
    if len(kept) < len(wanted):
        raise VideoError(path, f"frame index out of range: asked for up to {wanted[-1]}, video has {seen} frames")
    return np.stack(kept)[inverse]


def _decord_size_bug(exc: VideoError) -> bool:
    # decord mis-sizes frames of some widths (8, 12, 16, 24, 48, 72 ... px, at their native size
    # too: "from_size == to_size" in DECORDArrayCopyFromTo); such files decode fine with PyAV.
    return "DECORDArrayCopyFromTo" in exc.reason


def _pyav_chunks(path: str | os.PathLike, chunk: int, size: tuple[int, int] | None) -> Iterator[np.ndarray]:
    """Sequential decoding with PyAV (the fallback for what decord cannot decode), ``chunk`` frames at a time."""
    import av  # PyAV only for the files decord mis-sizes

    buf: list[np.ndarray] = []
    try:
        with av.open(os.fspath(path)) as container:
            for frame in container.decode(video=0):
                buf.append(frame.to_ndarray(format="rgb24"))
                if len(buf) == chunk:
                    yield resize_frames(np.stack(buf), size) if size else np.stack(buf)
                    buf = []
    except av.FFmpegError as exc:
        raise VideoError(path, f"decoding failed ({_short(exc, path)})") from None
    if buf:
        yield resize_frames(np.stack(buf), size) if size else np.stack(buf)


def _unique_indices(path, indices, n: int, what: str = "video") -> tuple[np.ndarray, np.ndarray]:
    """(ascending unique indices, inverse) of ``indices`` (all ``n`` when None), checked to lie in ``[0, n)``."""
    idx = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise VideoError(path, "no frame indices asked for")
    if idx.min() < 0 or idx.max() >= n:
        raise VideoError(path, f"frame index out of range: asked for {idx.min()}..{idx.max()}, {what} has {n} frames")
    return np.unique(idx, return_inverse=True)


def _read_frames(path, indices, size) -> np.ndarray:
    reader = _open(path, size)
    unique, inverse = _unique_indices(path, indices, len(reader))
    try:
        frames = reader.get_batch(unique.tolist()).asnumpy()
    except Exception as exc:
        raise VideoError(path, f"decoding failed ({_short(exc, path)})") from None
    finally:
        del reader
    return frames[inverse]


def iter_frames(
    video: str | os.PathLike | Video, chunk: int = 64, size: tuple[int, int] | None = None,
    frame_pattern: str | None = None,
) -> Iterator[np.ndarray]:
    """Decode a whole video in order, ``chunk`` frames at a time, as uint8 RGB ``[t,H,W,3]`` arrays.

    Sequential decoding (no seeking), so memory stays bounded by one chunk however long the video.
    A file that stops decoding part-way raises VideoError naming the frame. ``video`` may be a
    frame folder (frames named by its pattern, see :func:`as_video`).
    """
    video = as_video(video, frame_pattern)
    path = video.path
    if os.path.isdir(path):
        yield from _iter_folder(path, chunk, size, video.frame_pattern)
        return
    try:
        yield from _iter_frames(path, chunk, size)
        return
    except VideoError as exc:
        if not (_decord_size_bug(exc) and exc.reason.startswith("decoding failed at frames 0..")):
            raise
    yield from _pyav_chunks(path, chunk, size)


def _iter_frames(path, chunk, size) -> Iterator[np.ndarray]:
    reader = _open(path, size)
    n = len(reader)
    try:
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            try:
                yield reader.get_batch(list(range(start, stop))).asnumpy()
            except Exception as exc:
                raise VideoError(path, f"decoding failed at frames {start}..{stop - 1} ({_short(exc, path)})") from None
    finally:
        del reader


# ----------------------------------------------------------------------------- frame folders


def check_frame_pattern(pattern: str) -> str:
    """``pattern`` when it names frames: a file name with one integer field (``img_{:05d}.jpg``)
    or a glob without a field (``*.png``); ValueError saying why otherwise."""
    _frame_regex(pattern)
    return pattern


def frame_pattern_arg(text: str) -> str:
    """:func:`check_frame_pattern` as an argparse ``type``: a bad pattern is an argument error saying why."""
    try:
        return check_frame_pattern(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@functools.lru_cache(maxsize=64)
def _frame_regex(pattern: str) -> re.Pattern | None:
    """The regex of a numbered pattern's file names (one group: the number), None for a glob."""
    if not pattern or "/" in pattern or os.sep in pattern:
        raise ValueError(f"frame pattern {pattern!r} must be a file name (e.g. img_{{:05d}}.jpg), not a path")
    try:
        parts = list(string.Formatter().parse(pattern))
    except ValueError as exc:
        raise ValueError(f"frame pattern {pattern!r}: {exc}") from None
    fields = [(field, spec, conv) for _, field, spec, conv in parts if field is not None]
    if not fields:
        return None
    field, spec, conv = fields[0]
    if len(fields) > 1 or field not in ("", "0") or conv or (spec and not re.fullmatch(r"0?[1-9]?[0-9]?d", spec)):
        raise ValueError(f"frame pattern {pattern!r} must hold one integer field such as {{:05d}} or {{:d}}")
    regex, seen = "", False
    for literal, field_name, _, _ in parts:
        regex += re.escape(literal)
        if field_name is not None and not seen:
            regex, seen = regex + "([0-9]+)", True
    return re.compile(regex)


def _frame_number(name: str, pattern: str) -> int | None:
    """The number of a frame ``name`` that ``pattern`` (numbered) spells exactly, else None."""
    m = _frame_regex(pattern).fullmatch(name)
    if m is None or len(m.group(1)) > 9:
        return None
    number = int(m.group(1))
    return number if pattern.format(number) == name else None  # img_1.jpg is not img_{:05d}.jpg


def is_frame_name(name: str, pattern: str = DEFAULT_FRAME_PATTERN) -> bool:
    """Whether a file called ``name`` is a frame under ``pattern``."""
    if _frame_regex(pattern) is None:
        return fnmatch.fnmatchcase(name, pattern) and name.lower().endswith(IMAGE_EXTENSIONS)
    return _frame_number(name, pattern) is not None


def numbered_files(folder: str | os.PathLike, pattern: str) -> dict[int, str]:
    """{number: file name} of the entries of ``folder`` that the numbered ``pattern`` names exactly."""
    out = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            number = _frame_number(entry.name, pattern)
            if number is not None:
                out[number] = entry.name
    return out


def frame_files(folder: str | os.PathLike, pattern: str = DEFAULT_FRAME_PATTERN) -> list[Path]:
    """The frames of a frame folder, in order; VideoError (naming the folder and the frame) when it has
    none, a numbered sequence does not start at 0 or 1, or a number in it is missing."""
    folder = Path(folder)
    glob = _frame_regex(pattern) is None
    try:
        if glob:
            with os.scandir(folder) as entries:
                numbered = dict(enumerate(sorted(e.name for e in entries if is_frame_name(e.name, pattern))))
        else:
            numbered = numbered_files(folder, pattern)
    except OSError as exc:
        raise VideoError(folder, f"cannot list the frame folder ({exc.strerror or exc})") from None
    if not numbered:
        example = pattern if glob else f"{pattern}: {pattern.format(1)}..."
        raise VideoError(folder, f"no frames named {example} in this folder (set the frame pattern if they are named otherwise)")
    if glob:
        return [folder / numbered[i] for i in range(len(numbered))]
    first, last = min(numbered), max(numbered)
    if first > 1:
        raise VideoError(folder, f"frame {pattern.format(1)} is missing (the first frame is {numbered[first]}; "
                                 "frames are numbered from 0 or 1)")
    if len(numbered) != last - first + 1:
        gap = next(i for i in range(first, last + 1) if i not in numbered)
        raise VideoError(folder, f"frame {pattern.format(gap)} is missing "
                                 f"({len(numbered)} frames of {numbered[first]}..{numbered[last]} are there)")
    return [folder / numbered[i] for i in range(first, last + 1)]


def source_stat(path: str | os.PathLike) -> tuple[int, int]:
    """(bytes, mtime in ns) of a video file; for a frame folder, of its files together (total bytes,
    newest mtime), so a rewritten frame shows. OSError when it cannot be read."""
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size, st.st_mtime_ns
    size, mtime = 0, st.st_mtime_ns  # the folder's own mtime: a frame removed or renamed
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_file():
                est = entry.stat()
                size, mtime = size + est.st_size, max(mtime, est.st_mtime_ns)
    return size, mtime


def _read_frame(path: Path) -> np.ndarray:
    """One frame file as uint8 RGB ``[H,W,3]``; VideoError naming its folder and the frame."""
    from flow_engine.io.flow_files import FlowFileError, read_image  # io imports torch: only frame folders need it

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the reader for ever
            raise VideoError(path.parent, f"frame {path.name} is not a regular file")
        return read_image(path)
    except OSError as exc:
        raise VideoError(path.parent, f"frame {path.name}: cannot open ({exc.strerror or exc})") from None
    except FlowFileError as exc:
        raise VideoError(path.parent, f"frame {path.name}: {exc.problem}") from None


def _same_size(frames: list[np.ndarray], files: list[Path], first: tuple[np.ndarray, Path] | None = None) -> None:
    """VideoError naming the first frame whose size differs from the reference (``first``, else frame 0)."""
    ref, ref_file = first if first is not None else (frames[0], files[0])
    for frame, file in zip(frames, files):
        if frame.shape != ref.shape:
            raise VideoError(file.parent, f"frame {file.name} is {frame.shape[1]}x{frame.shape[0]} but frame "
                                          f"{ref_file.name} is {ref.shape[1]}x{ref.shape[0]}: the frames of a "
                                          "folder must share one size")


def _probe_folder(path, pattern: str) -> VideoInfo:
    files = frame_files(path, pattern)
    ends = [files[0], files[-1]] if len(files) > 1 else files[:1]
    frames = [_read_frame(f) for f in ends]
    _same_size(frames, ends)
    h, w = frames[0].shape[:2]
    return VideoInfo(os.fspath(path), len(files), 0.0, int(h), int(w))


def _read_folder(path, indices, size, pattern: str) -> np.ndarray:
    files = frame_files(path, pattern)
    unique, inverse = _unique_indices(path, indices, len(files), "folder")
    chosen = [files[i] for i in unique]
    frames = [_read_frame(f) for f in chosen]
    _same_size(frames, chosen)
    stacked = np.stack(frames)
    return (resize_frames(stacked, size) if size else stacked)[inverse]


def _iter_folder(path, chunk: int, size, pattern: str) -> Iterator[np.ndarray]:
    files = frame_files(path, pattern)
    first = None
    for start in range(0, len(files), chunk):
        part = files[start: start + chunk]
        frames = [_read_frame(f) for f in part]
        if first is None:
            first = (frames[0], part[0])
        _same_size(frames, part, first)
        stacked = np.stack(frames)
        yield resize_frames(stacked, size) if size else stacked
