"""Video decoding with decord, with every failure turned into one clear ``VideoError``, and the
lists that name videos.

decord keeps decoder state (and, on long videos, memory) alive for as long as a
``VideoReader`` lives, and seeking far back and forth on variable-frame-rate files is
slow and occasionally inexact. So readers here are short-lived (one per call), frame
indices are read in ascending order and then put back in the order asked for. PyAV decodes
what decord mis-sizes.

:func:`list_videos` turns a folder, a list file or a single video into paths;
:func:`read_list_lines` is the one reader of list files (UTF-8, BOM stripped, comments skipped).
"""
from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts")
MAX_LIST_BYTES = 256 << 20  # a list file larger than this is not a list of videos


class ListFileError(ValueError):
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


def list_videos(spec: str | os.PathLike) -> list[Path]:
    """Videos named by ``spec``, sorted and unique: a folder (searched recursively for
    :data:`VIDEO_EXTENSIONS`), a single video file, or a text list with one path per line,
    optionally followed by a label (paths relative to the list's folder)."""
    spec = Path(spec)
    if spec.is_dir():
        found = [p for p in spec.rglob("*") if is_video_path(p) and p.is_file()]
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


class VideoError(RuntimeError):
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
        raise VideoError(path, f"cannot open as a video ({_short(exc)})") from None
    if len(reader) == 0:
        raise VideoError(path, "no video frames")
    return reader


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def probe(path: str | os.PathLike) -> VideoInfo:
    """Frame count, frame rate and size of a video, without decoding it."""
    reader = _open(path)
    h, w = _frame_shape(reader, path)
    return VideoInfo(os.fspath(path), len(reader), float(reader.get_avg_fps() or 0.0), h, w)


def _frame_shape(reader, path) -> tuple[int, int]:
    try:
        h, w = reader.next().shape[:2]
        reader.seek(0)
    except Exception as exc:
        raise VideoError(path, f"first frame does not decode ({_short(exc)})") from None
    return int(h), int(w)


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``[T,h,w,3]`` -> ``[T,H,W,3]`` (``size`` = (H, W)) with OpenCV (area when shrinking,
    bilinear when growing); unchanged when already that size."""
    import cv2

    H, W = int(size[0]), int(size[1])
    if frames.shape[1:3] == (H, W):
        return frames
    interp = cv2.INTER_AREA if H * W < frames.shape[1] * frames.shape[2] else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (W, H), interpolation=interp) for f in frames])


def read_frames(
    path: str | os.PathLike,
    indices: Sequence[int] | np.ndarray | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Frames ``indices`` (all when None) as uint8 RGB ``[T,H,W,3]``, resized to ``size`` = (H, W) on decode.

    Indices may repeat and come in any order; they must lie in ``[0, num_frames)``.
    """
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
    import av

    buf: list[np.ndarray] = []
    try:
        with av.open(os.fspath(path)) as container:
            for frame in container.decode(video=0):
                buf.append(frame.to_ndarray(format="rgb24"))
                if len(buf) == chunk:
                    yield resize_frames(np.stack(buf), size) if size else np.stack(buf)
                    buf = []
    except av.FFmpegError as exc:
        raise VideoError(path, f"decoding failed ({_short(exc)})") from None
    if buf:
        yield resize_frames(np.stack(buf), size) if size else np.stack(buf)


def _read_frames(path, indices, size) -> np.ndarray:
    reader = _open(path, size)
    n = len(reader)
    idx = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise VideoError(path, "no frame indices asked for")
    if idx.min() < 0 or idx.max() >= n:
        raise VideoError(path, f"frame index out of range: asked for {idx.min()}..{idx.max()}, video has {n} frames")
    unique, inverse = np.unique(idx, return_inverse=True)
    try:
        frames = reader.get_batch(unique.tolist()).asnumpy()
    except Exception as exc:
        raise VideoError(path, f"decoding failed ({_short(exc)})") from None
    finally:
        del reader
    return frames[inverse]


def iter_frames(
    path: str | os.PathLike, chunk: int = 64, size: tuple[int, int] | None = None
) -> Iterator[np.ndarray]:
    """Decode a whole video in order, ``chunk`` frames at a time, as uint8 RGB ``[t,H,W,3]`` arrays.

    Sequential decoding (no seeking), so memory stays bounded by one chunk however long the video.
    A file that stops decoding part-way raises VideoError naming the frame.
    """
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
                raise VideoError(path, f"decoding failed at frames {start}..{stop - 1} ({_short(exc)})") from None
    finally:
        del reader
