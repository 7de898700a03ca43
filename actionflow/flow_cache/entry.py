"""One cache file (``.afc``): all the flow frames of one video, their index and a JSON header.

Byte layout (little-endian)::

    MAGIC (8 bytes)
    payload 0 | payload 1 | ... | payload N-1        encoded frames, back to back
    header (UTF-8 JSON)                              format, engine, size, bound, codec, video...
    index (N x 20 bytes)                             u64 offset, u32 length, u32 crc32, u32 clipped
    footer (32 bytes)                                u64 meta offset, u32 header length,
                                                     u32 N, u32 crc32(header+index), u32 0, MAGIC

Payloads come first so a writer streams frames to disk as they are encoded; a reader
opens a file with one read of its tail (header + index + footer, a few KB) and then reads
only the frames asked for (consecutive frames are contiguous: one ``pread``). Every byte
is covered by a check: the two magics, the crc32 of header+index, the crc32 of each
payload, and the footer fields must add up to the file size. Every header field is checked
(types, ranges) on every open.

Version 2 keeps a JPEG's tables once, base64 in ``header["codec"]["tables"]``, and each payload
is that frame's scan data; version 1 files (a complete image per payload) read as before.
Version 3 adds ``header["levels"]``: ``"tsn"`` for flow imported from TSN/denseflow JPEGs, whose
values map to pixels differently (see codec). The writer records the lowest version that
describes a file (3 only for such entries), so version 2 readers still read every other entry,
and refuse the ones they would misread.

Writes are atomic: a hidden temp file in the same folder, fsync, ``os.replace``. A killed
writer leaves only ``.NAME.afc.PID.XXXX.tmp``, which readers ignore and which is removed by
the next writer of that video (or ``cache verify --delete-bad``).
"""
from __future__ import annotations

import base64
import contextlib
import datetime
import json
import math
import os
import secrets
import stat
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from actionflow.errors import ActionflowError
from actionflow.flow_cache.codec import (
    LEVEL_SCHEMES, ZERO_EXACT, decode_frame, dequantize, encode_frames, fits, parse_codec, quantize, split_jpeg,
    stack_flows,
)

MAGIC = b"\x89AFC\r\n\x1a\n"  # PNG-style: a text-mode copy or a truncation to 7 bits is caught
FORMAT = "actionflow-flow-cache"
FORMAT_VERSION = 3  # the newest version this reader knows (the writer writes 2 where 3 is not needed)
SUFFIX = ".afc"
MAX_SIDE = 8192  # px: flow of 8K video fits; a larger side in a header is crafted, not computed
MAX_TABLES_BASE64 = 1 << 16
FOOTER = struct.Struct("<QIIII8s")
INDEX_DTYPE = np.dtype([("offset", "<u8"), ("length", "<u4"), ("crc32", "<u4"), ("clipped", "<u4")])
TAIL_READ = 1 << 16  # one read of the file's last 64 KB holds header + index of ~3000 flows


class CacheError(ActionflowError, RuntimeError):
    """A cache entry that cannot be used: missing, unreadable, or of a newer format."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class CacheMismatch(CacheError):
    """A valid cache entry built for something else (engine, weights, size, bound, or an older video)."""


class CacheCorrupt(CacheError):
    """A cache file whose bytes fail a check (magic, checksum, sizes): never served."""


def _pread_exact(fd: int, n: int, offset: int, path: Path) -> bytes:
    data = os.pread(fd, n, offset)
    if len(data) != n:
        raise CacheCorrupt(path, f"truncated: wanted {n} bytes at offset {offset}, got {len(data)}")
    return data


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def clean_absolute_path(value: Any) -> bool:
    """Whether ``value`` is a path as :func:`os.path.realpath` gives it: a string, absolute, without NUL
    and without ``.`` or ``..`` parts (so no folder built from it climbs out of its parent)."""
    if not (isinstance(value, str) and value.startswith("/") and "\x00" not in value):
        return False
    return not any(part in (".", "..") for part in value.split("/"))


def check_header(header: Any, path: Path, num_flows: int) -> None:
    """Raise :class:`CacheError` (unknown format or version) or :class:`CacheCorrupt` unless
    ``header`` is a JSON object whose fields have this format's types and sane ranges: every open
    goes through here, so verify, stats and training never act on a crafted header."""
    if not isinstance(header, dict):
        raise CacheCorrupt(path, f"header is not a JSON object (a JSON {type(header).__name__})")
    version = header.get("version")
    if header.get("format") != FORMAT or not (_number(version) and version == int(version)) or version > FORMAT_VERSION:
        raise CacheError(path, f"unsupported format {header.get('format')!r} version {version!r} "
                               f"(this reader knows {FORMAT} version {FORMAT_VERSION})")
    if header.get("num_flows") != num_flows or not _number(header.get("num_flows")):
        raise CacheCorrupt(path, f"header says {header.get('num_flows')!r} flows, index has {num_flows}")
    for key in ("height", "width"):
        side = header.get(key)
        if not (_number(side) and side == int(side) and 1 <= side <= MAX_SIDE):
            raise CacheCorrupt(path, f"header {key} {side!r} is not a whole number of pixels in 1..{MAX_SIDE}")
    bound = header.get("bound")
    if not (_number(bound) and math.isfinite(bound) and bound > 0):
        raise CacheCorrupt(path, f"header bound {bound!r} is not a positive, finite number of pixels")
    for key in ("engine", "codec", "video", "import"):
        if not isinstance(header.get(key, {}), dict):
            raise CacheCorrupt(path, f"header {key} is not a JSON object")
    for key, field in (("video", "path"), ("import", "source")):  # paths are data: export builds folder names of them
        value = header.get(key, {}).get(field)
        if value is not None and not clean_absolute_path(value):
            raise CacheCorrupt(path, f"header {key} {field} {str(value)[:80]!r} is not an absolute path without "
                                     "'.' or '..' parts (as the writer records it)")
    if header.get("levels", ZERO_EXACT) not in LEVEL_SCHEMES:
        raise CacheCorrupt(path, f"header levels {str(header.get('levels'))[:40]!r} is none of {', '.join(LEVEL_SCHEMES)}")
    tables = header.get("codec", {}).get("tables")
    if tables is not None and not (isinstance(tables, str) and len(tables) <= MAX_TABLES_BASE64):
        raise CacheCorrupt(path, "header codec tables are not a short base64 string")


class CachedFlow:
    """One cache file, opened for reading: ``num_flows`` flows of ``[2,H,W]`` pixels.

    Opening reads only the tail (header + index). Frames are read with ``pread`` on a file
    descriptor opened lazily per process, so instances can be pickled into DataLoader
    workers (the descriptor is not pickled) or used after a fork.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None
        self._pid: int | None = None
        self._load()

    # -- opening
    def _load(self) -> None:
        path = self.path
        try:  # O_NONBLOCK: opening a FIFO planted at this path would otherwise wait for a writer for ever
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise CacheError(path, "no such cache file") from None
        except OSError as exc:
            raise CacheError(path, f"cannot open ({exc.strerror})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CacheError(path, "not a regular file")
            size = st.st_size
            if size < len(MAGIC) + FOOTER.size:
                raise CacheCorrupt(path, f"too short ({size} bytes) to be a cache file")
            tail_start = max(0, size - TAIL_READ)
            tail = _pread_exact(fd, size - tail_start, tail_start, path)
            meta_offset, header_len, n, meta_crc, reserved, magic = FOOTER.unpack(tail[-FOOTER.size:])
            if magic != MAGIC or reserved != 0:
                raise CacheCorrupt(path, "no valid footer (incomplete or not a flow cache file)")
            meta_len = header_len + n * INDEX_DTYPE.itemsize
            if meta_offset < len(MAGIC) or meta_offset + meta_len + FOOTER.size != size:
                raise CacheCorrupt(path, "footer sizes do not add up to the file size")
            if meta_offset >= tail_start:
                meta = tail[meta_offset - tail_start: -FOOTER.size]
            else:  # a very long video: its index did not fit in the first read
                meta = _pread_exact(fd, meta_len, meta_offset, path)
            if zlib.crc32(meta) != meta_crc:
                raise CacheCorrupt(path, "header/index checksum mismatch")
            head = tail[: len(MAGIC)] if tail_start == 0 else _pread_exact(fd, len(MAGIC), 0, path)
            if head != MAGIC:
                raise CacheCorrupt(path, "bad magic at start of file")
        except BaseException:
            os.close(fd)
            raise
        try:
            header = json.loads(meta[:header_len].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            os.close(fd)
            raise CacheCorrupt(path, f"header is not valid JSON ({exc})") from None
        try:
            check_header(header, path, n)
        except CacheError:
            os.close(fd)
            raise
        index = np.frombuffer(meta, dtype=INDEX_DTYPE, offset=header_len, count=n)
        ends = index["offset"].astype(np.int64) + index["length"]
        starts = np.concatenate([[len(MAGIC)], ends[:-1]]) if n else np.zeros(0, np.int64)
        if n and (np.any(index["offset"] != starts) or ends[-1] != meta_offset) or (not n and meta_offset != len(MAGIC)):
            os.close(fd)
            raise CacheCorrupt(path, "index offsets are not contiguous")
        previous = getattr(self, "header", None)
        if previous is not None and any(previous[k] != header[k] for k in ("num_flows", "height", "width", "bound")):
            os.close(fd)
            raise CacheError(path, "file was replaced by a different one since it was opened")
        try:
            tables = header.get("codec", {}).get("tables")
            self._tables = None if tables is None else base64.b64decode(tables, validate=True)
        except ValueError:
            os.close(fd)
            raise CacheCorrupt(path, "header codec tables are not valid base64") from None
        if self._tables is not None and not fits(self._tables, int(header["height"]), int(header["width"])):
            os.close(fd)
            raise CacheCorrupt(path, f"header codec tables are not those of a {2 * header['height']}x{header['width']} JPEG")
        self.header: dict[str, Any] = header
        self.index = index
        self.num_flows = n
        self.height = int(header["height"])
        self.width = int(header["width"])
        self.bound = float(header["bound"])
        self.levels = header.get("levels", ZERO_EXACT)
        self.file_size = size
        self._ident = (st.st_dev, st.st_ino)
        self._set_fd(fd)

    def _set_fd(self, fd: int | None) -> None:
        self._fd, self._pid = fd, (os.getpid() if fd is not None else None)

    def _file(self) -> int:
        """This process's descriptor; a forked or unpickled copy opens its own."""
        if self._fd is None or self._pid != os.getpid():
            self._fd = None  # an inherited descriptor belongs to the parent: leave it alone
            self._load()
        return self._fd

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._set_fd(None)

    def __enter__(self) -> CachedFlow:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fd"] = state["_pid"] = None
        state["index"] = self.index.copy()  # frombuffer views of bytes pickle fine, but own the memory
        return state

    def __len__(self) -> int:
        return self.num_flows

    def __repr__(self) -> str:
        return f"CachedFlow({str(self.path)!r}, num_flows={self.num_flows}, size={self.height}x{self.width})"

    @property
    def clipped(self) -> np.ndarray:
        """Pixels per flow frame that were beyond the bound and got clipped, int ``[num_flows]``."""
        return self.index["clipped"].astype(np.int64)

    # -- reading
    def read_quantized(self, start: int, count: int) -> np.ndarray:
        """Flows ``start .. start+count-1`` as stored, uint8 ``[count,2,H,W]`` (checksums verified)."""
        start, count = int(start), int(count)
        if start < 0 or count < 0 or start + count > self.num_flows:
            raise IndexError(f"{self.path}: flows {start}..{start + count - 1} asked for, file has 0..{self.num_flows - 1}")
        h, w = self.height, self.width
        out = np.empty((count, 2, h, w), dtype=np.uint8)
        if count == 0:
            return out
        rows = self.index[start: start + count]
        base = int(rows["offset"][0])
        data = memoryview(_pread_exact(self._file(), int(rows["offset"][-1]) + int(rows["length"][-1]) - base, base, self.path))
        for i, (offset, length, crc, _) in enumerate(rows.tolist()):
            payload = data[offset - base: offset - base + length]
            if zlib.crc32(payload) != crc:
                raise CacheCorrupt(self.path, f"checksum mismatch in flow frame {start + i}")
            img = decode_frame(payload, h, w, self._tables)
            if img is None:
                raise CacheCorrupt(self.path, f"flow frame {start + i} does not decode to a {2 * h}x{w} image")
            out[i] = img.reshape(2, h, w)
        return out

    def read(self, start: int, count: int) -> np.ndarray:
        """Flows ``start .. start+count-1`` as float32 ``[count,2,H,W]`` in pixels (u, v)."""
        return dequantize(self.read_quantized(start, count), self.bound, self.levels)

    def read_stacked(self, start: int, length: int) -> np.ndarray:
        """``length`` consecutive flows as float32 ``[2*length,H,W]``: x1,y1,x2,y2,... (two-stream input)."""
        return stack_flows(self.read(start, length))

    def verify(self, decode: bool = True) -> list[str]:
        """Check every frame's checksum and (with ``decode``) that it decodes; returns the problems found (empty = good)."""
        problems = []
        fd = self._file()
        for i, (offset, length, crc, _) in enumerate(self.index.tolist()):
            payload = os.pread(fd, length, offset)
            if len(payload) != length or zlib.crc32(payload) != crc:
                problems.append(f"checksum mismatch in flow frame {i}")
                continue
            if not decode:
                continue
            if decode_frame(payload, self.height, self.width, self._tables) is None:
                problems.append(f"flow frame {i} does not decode to a {2 * self.height}x{self.width} image")
        return problems




class CacheWriter:
    """Write one cache file atomically: frames go to a hidden temp file; ``commit`` renames it into place.

    Use as a context manager: leaving the block normally commits, an exception aborts
    (the temp file is removed and no final file appears)::

        with CacheWriter(path, header) as w:
            w.add_flows(flows)          # float [N,2,H,W] pixels, or w.add(payload, clipped)

    ``header`` must hold ``height``, ``width`` and ``bound``; ``num_flows`` and ``created`` are filled in.
    """

    def __init__(self, path: str | os.PathLike, header: dict):
        self.path = Path(path)
        self.header = dict(header)
        self.header.setdefault("format", FORMAT)
        self.header.setdefault("version", 2 if self.header.get("levels", ZERO_EXACT) == ZERO_EXACT else 3)
        self.header["codec"] = parse_codec(self.header.get("codec"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_path = self.path.parent / f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        self._file = open(self.tmp_path, "xb")
        self._file.write(MAGIC)
        self._offset = len(MAGIC)
        self._rows: list[tuple[int, int, int, int]] = []
        self._tables: bytes | None = None
        self.bytes_written = len(MAGIC)
        self.done = False

    @property
    def num_flows(self) -> int:
        return len(self._rows)

    def add(self, payload: bytes, clipped: int = 0) -> None:
        """Append one encoded flow frame (from :func:`encode_frames`). A JPEG whose tables equal the
        file's (the first frame's) is stored as its scan data alone."""
        if self.header["codec"]["name"] == "jpeg":
            tables, scan = split_jpeg(payload)
            if self._tables is None:
                self._tables = tables
            if tables == self._tables:
                payload = scan
        self._file.write(payload)
        self._rows.append((self._offset, len(payload), zlib.crc32(payload), int(clipped)))
        self._offset += len(payload)
        self.bytes_written += len(payload)

    def add_flows(self, flows, clipped: Sequence[int] | None = None) -> None:
        """Quantise, encode and append float flows ``[N,2,H,W]`` in pixels (numpy or torch; zero-exact levels)."""
        if self.header.get("levels", ZERO_EXACT) != ZERO_EXACT:
            raise ValueError(f"{self.path}: add_flows quantises to zero-exact levels; this entry stores {self.header['levels']}")
        h, w = int(self.header["height"]), int(self.header["width"])
        if tuple(flows.shape[1:]) != (2, h, w):
            raise ValueError(f"{self.path}: flows of shape {tuple(flows.shape)} do not match [N,2,{h},{w}]")
        q, counted = quantize(flows, float(self.header["bound"]))
        if not isinstance(q, np.ndarray):
            q, counted = q.cpu().numpy(), counted.cpu().numpy()
        counts = counted if clipped is None else clipped
        for payload, c in zip(encode_frames(q, self.header["codec"]), counts):
            self.add(payload, int(c))

    def commit(self) -> Path:
        """Write header + index + footer, fsync, and atomically rename to the final path."""
        n = len(self._rows)
        self.header["num_flows"] = n
        self.header["clipped_total"] = int(sum(r[3] for r in self._rows))
        self.header.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        if self._tables is not None:
            self.header["codec"] = {**self.header["codec"], "tables": base64.b64encode(self._tables).decode("ascii")}
        header = json.dumps(self.header, sort_keys=True).encode("utf-8")
        index = np.array(self._rows, dtype=INDEX_DTYPE).tobytes() if n else b""
        meta = header + index
        self._file.write(meta)
        self._file.write(FOOTER.pack(self._offset, len(header), n, zlib.crc32(meta), 0, MAGIC))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp_path, self.path)
        _fsync_dir(self.path.parent)
        self.bytes_written += len(meta) + FOOTER.size
        self.done = True
        return self.path

    def abort(self) -> None:
        """Drop everything written so far (the final path is never touched)."""
        with contextlib.suppress(Exception):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp_path)

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (the directory entry); best effort where directories cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
