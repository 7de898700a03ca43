"""Reading and writing optical-flow files and images.

Flow files:

- Middlebury ``.flo``: float32 tag 202021.25, int32 width, int32 height, then (u, v)
  interleaved row-major, all little-endian. Values with |u| or |v| > 1e9 mean "unknown".
- KITTI 16-bit PNG: u = (R - 2^15) / 64, v = (G - 2^15) / 64 pixels, valid = B > 0.
- PFM (FlyingThings3D): float32, 1 or 3 channels, rows stored bottom-to-top, the sign
  of the scale gives the byte order (negative = little-endian).

In memory a flow field is float32 ``[H, W, 2]`` in pixels (u right, v down) with a bool
``[H, W]`` valid mask; unknown pixels hold 0. Every malformed file raises
:class:`FlowFileError`, whose message names the file and the problem.
"""
from __future__ import annotations

import os
import struct
from io import BytesIO
from pathlib import Path

import cv2
import imagesize
import numpy as np
import torch

from flow_engine.errors import FlowEngineError

FLO_TAG = 202021.25
FLO_UNKNOWN_THRESHOLD = 1e9  # |u| or |v| above this means "unknown" (Middlebury convention)
FLO_UNKNOWN_VALUE = 1e10
MAX_SIDE = 1 << 16  # a width or height beyond this is a corrupt header, not an image
# An image file's size says nothing of its decoded size (840 KB of PNG can decode to 12000x12000x3
# 16-bit, ~9 GB once converted; 3.4 KB of JPEG to 20000x20000x3, 3.5 GB): every image read (frames,
# KITTI PNGs, cached flow frames, teacher labels) above this many pixels (e.g. 4096x4096) is
# refused from its header, before anything is decoded.
MAX_IMAGE_PIXELS = 1 << 24
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # IHDR colour type -> channels as decoded (palette: 1 index)
KITTI_OFFSET = 2.0**15
KITTI_SCALE = 64.0

PathLike = str | os.PathLike


class FlowFileError(FlowEngineError):
    """A flow or image file that cannot be read or written; ``.path`` names it."""

    def __init__(self, path: PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


# ----------------------------------------------------------------------------- helpers


def _file_size(path: PathLike) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        raise FlowFileError(path, "no such file") from None
    except OSError as e:
        raise FlowFileError(path, f"cannot read ({e.strerror or e})") from None


def _check_flow_array(path: PathLike, flow: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Validates a flow to be written; returns (float32 [H,W,2], bool [H,W])."""
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2 or flow.shape[0] == 0 or flow.shape[1] == 0:
        raise FlowFileError(path, f"flow to write must be [H,W,2], got shape {flow.shape}")
    flow = flow.astype(np.float32, copy=False)
    if valid is None:
        valid = np.ones(flow.shape[:2], dtype=bool)
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != flow.shape[:2]:
        raise FlowFileError(path, f"valid mask shape {valid.shape} does not match flow {flow.shape[:2]}")
    return flow, valid & np.isfinite(flow).all(axis=2)


def _check_dims(path: PathLike, width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise FlowFileError(path, f"header gives a non-positive size {width}x{height}")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise FlowFileError(path, f"header gives an absurd size {width}x{height} (corrupt file?)")


def _check_pixels(path: PathLike, width: int, height: int, kind: str = "image") -> None:
    _check_dims(path, width, height)
    if width * height > MAX_IMAGE_PIXELS:
        raise FlowFileError(path, f"{kind} of {width}x{height} pixels is above the limit of {MAX_IMAGE_PIXELS} pixels "
                                  "(flow_engine.io.flow_files.MAX_IMAGE_PIXELS)")


def image_size(path: PathLike, data: bytes | None = None) -> tuple[int, int]:
    """(width, height) in pixels from an image's header, nothing decoded: JPEG, PNG, WebP, TIFF, BMP,
    PPM/PGM, JPEG 2000, AVIF... (what ``imagesize`` reads). ``data``: the image's bytes when they are
    in memory (``path`` then only names it). FlowFileError when no such header is found, or its size
    is not positive or above :data:`MAX_IMAGE_PIXELS`: call this before any decoder sees the bytes."""
    try:
        if data is None:
            with open(path, "rb") as f:
                width, height = imagesize.get(f, exif_rotation=False)
        else:
            width, height = imagesize.get(BytesIO(data), exif_rotation=False)
    except OSError as e:
        raise FlowFileError(path, f"cannot read ({e.strerror or e})") from None
    except Exception as e:  # a header that imagesize's parser trips over (struct.error, ValueError...)
        raise FlowFileError(path, f"unreadable image (corrupt header: {type(e).__name__})") from None
    if (width, height) == (-1, -1):
        raise FlowFileError(path, "unreadable image (no header of a known format: "
                                  "JPEG, PNG, WebP, TIFF, BMP, PPM/PGM, JPEG 2000, AVIF)")
    _check_pixels(path, width, height)
    return width, height


# ----------------------------------------------------------------------------- .flo


def read_flo(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads a Middlebury ``.flo`` file: flow float32 [H,W,2] (pixels) and valid bool [H,W]."""
    size = _file_size(path)
    if size == 0:
        raise FlowFileError(path, "empty file")
    if size < 12:
        raise FlowFileError(path, f"truncated header ({size} bytes, a .flo header is 12)")
    with open(path, "rb") as f:
        header = f.read(12)
        tag = np.frombuffer(header, dtype="<f4", count=1)[0]
        if tag != np.float32(FLO_TAG):
            raise FlowFileError(path, f"wrong tag {float(tag):g} (a .flo file starts with {FLO_TAG}); not a .flo file")
        width, height = (int(x) for x in np.frombuffer(header, dtype="<i4", count=2, offset=4))
        _check_dims(path, width, height)
        # Compare with the real size before reading so a corrupt header never allocates.
        expected = 12 + width * height * 2 * 4
        if size < expected:
            raise FlowFileError(path, f"truncated: header says {width}x{height} ({expected} bytes), file has {size}")
        if size > expected:
            raise FlowFileError(path, f"{size - expected} bytes of trailing data after the {width}x{height} flow")
        data = np.fromfile(f, dtype="<f4", count=width * height * 2)
    flow = data.reshape(height, width, 2).astype(np.float32)
    valid = (np.abs(flow) <= FLO_UNKNOWN_THRESHOLD).all(axis=2)  # NaN compares False: unknown too
    flow[~valid] = 0.0
    return flow, valid


def write_flo(path: PathLike, flow: np.ndarray, valid: np.ndarray | None = None) -> None:
    """Writes flow [H,W,2] (pixels) as Middlebury ``.flo``; pixels not valid are written unknown (1e10)."""
    flow, valid = _check_flow_array(path, flow, valid)
    out = flow.astype("<f4", copy=True)
    out[~valid] = FLO_UNKNOWN_VALUE
    height, width = flow.shape[:2]
    try:
        with open(path, "wb") as f:
            f.write(np.array([FLO_TAG], dtype="<f4").tobytes())
            f.write(np.array([width, height], dtype="<i4").tobytes())
            f.write(out.tobytes())
    except OSError as e:
        raise FlowFileError(path, f"cannot write ({e.strerror or e})") from None


# ----------------------------------------------------------------------------- KITTI PNG


def read_png_header(path: PathLike) -> tuple[int, int, int, int]:
    """(width, height, bit depth, channels) from a PNG's IHDR chunk, without decoding it.

    Raises FlowFileError for a file that is not a PNG and for one above :data:`MAX_IMAGE_PIXELS`
    pixels, so that nothing is allocated for a decompression bomb.
    """
    if _file_size(path) == 0:
        raise FlowFileError(path, "empty file")
    with open(path, "rb") as f:
        head = f.read(33)  # signature (8), IHDR length + type (8), IHDR data (13), crc (4)
    if len(head) < 33 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise FlowFileError(path, "not a PNG file (no PNG signature and IHDR header)")
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    if colour not in PNG_CHANNELS:
        raise FlowFileError(path, f"corrupt PNG header (colour type {colour})")
    _check_pixels(path, width, height, "PNG")
    return width, height, depth, PNG_CHANNELS[colour]


def read_kitti_flow(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads a KITTI 16-bit PNG flow: flow float32 [H,W,2] (pixels) and valid bool [H,W] (B > 0)."""
    _, _, depth, channels = read_png_header(path)  # before decoding: bounded memory, clear errors
    if depth != 16:
        raise FlowFileError(path, f"KITTI flow PNGs are 16-bit, this one is {depth}-bit")
    if channels != 3:
        raise FlowFileError(path, f"KITTI flow PNGs have 3 channels, this one has {channels}")
    try:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise FlowFileError(path, f"unreadable PNG ({str(e).strip().splitlines()[-1][:200]})") from None
    if img is None or img.dtype != np.uint16 or img.ndim != 3 or img.shape[2] != 3:
        raise FlowFileError(path, "unreadable image (corrupt PNG data)")
    # OpenCV gives BGR: B = valid, G = v, R = u.
    flow = (img[:, :, [2, 1]].astype(np.float32) - KITTI_OFFSET) / KITTI_SCALE
    valid = img[:, :, 0] > 0
    flow[~valid] = 0.0
    return flow, valid


def write_kitti_flow(path: PathLike, flow: np.ndarray, valid: np.ndarray | None = None) -> None:
    """Writes flow [H,W,2] as a KITTI 16-bit PNG: rounded to 1/64 px, clipped to [-512, 511.98] px."""
    flow, valid = _check_flow_array(path, flow, valid)
    encoded = np.clip(np.rint(np.nan_to_num(flow).astype(np.float64) * KITTI_SCALE + KITTI_OFFSET), 0, 65535).astype(np.uint16)
    encoded[~valid] = int(KITTI_OFFSET)
    bgr = np.dstack([valid.astype(np.uint16), encoded[:, :, 1], encoded[:, :, 0]])
    try:
        ok = cv2.imwrite(str(path), bgr)
    except cv2.error as e:
        raise FlowFileError(path, f"cannot write PNG ({e})") from None
    if not ok:
        raise FlowFileError(path, "cannot write PNG (bad folder or suffix?)")


# ----------------------------------------------------------------------------- PFM


def read_pfm(path: PathLike) -> np.ndarray:
    """Reads a PFM file: float32 [H,W] ("Pf") or [H,W,3] ("PF"), top row first."""
    size = _file_size(path)
    if size == 0:
        raise FlowFileError(path, "empty file")
    with open(path, "rb") as f:
        head = f.read(256)
        # Header: "PF"|"Pf", width, height, scale, separated by whitespace; one whitespace byte precedes the data.
        tokens: list[bytes] = []
        pos = 0
        while len(tokens) < 4:
            while pos < len(head) and head[pos : pos + 1].isspace():
                pos += 1
            start = pos
            while pos < len(head) and not head[pos : pos + 1].isspace():
                pos += 1
            if pos == start or pos >= len(head):
                raise FlowFileError(path, "not a PFM file (incomplete header)")
            tokens.append(head[start:pos])
        pos += 1  # the single whitespace byte after the scale
        kind = tokens[0]
        if kind not in (b"PF", b"Pf"):
            raise FlowFileError(path, f"not a PFM file (starts with {kind[:8]!r}, expected 'PF' or 'Pf')")
        try:
            width, height, scale = int(tokens[1]), int(tokens[2]), float(tokens[3])
        except ValueError:
            raise FlowFileError(path, f"bad PFM header {b' '.join(tokens)[:60]!r}") from None
        _check_dims(path, width, height)
        if scale == 0 or not np.isfinite(scale):
            raise FlowFileError(path, f"bad PFM scale {scale} (its sign gives the byte order)")
        channels = 3 if kind == b"PF" else 1
        expected = pos + width * height * channels * 4
        if size < expected:
            raise FlowFileError(path, f"truncated: header says {width}x{height}x{channels} ({expected} bytes), file has {size}")
        if size > expected:
            raise FlowFileError(path, f"{size - expected} bytes of trailing data after the {width}x{height}x{channels} PFM")
        f.seek(pos)
        data = np.fromfile(f, dtype="<f4" if scale < 0 else ">f4", count=width * height * channels)
    shape = (height, width, channels) if channels == 3 else (height, width)
    return np.ascontiguousarray(data.reshape(shape)[::-1]).astype(np.float32)


# ----------------------------------------------------------------------------- dispatch


def read_flow(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads a flow file by suffix (.flo, .png = KITTI, .pfm): float32 [H,W,2] pixels, valid bool [H,W]."""
    suffix = Path(path).suffix.lower()
    if suffix == ".flo":
        return read_flo(path)
    if suffix == ".png":
        return read_kitti_flow(path)
    if suffix == ".pfm":
        data = read_pfm(path)
        if data.ndim != 3:
            raise FlowFileError(path, "single-channel PFM (disparity?), flow PFMs have 3 channels")
        flow = np.ascontiguousarray(data[:, :, :2])
        valid = np.isfinite(flow).all(axis=2)
        flow[~valid] = 0.0
        return flow, valid
    raise FlowFileError(path, f"unknown flow file suffix {suffix!r} (expected .flo, .png or .pfm)")


def write_flow(path: PathLike, flow: np.ndarray, valid: np.ndarray | None = None) -> None:
    """Writes flow [H,W,2] (pixels) by suffix: .flo (Middlebury) or .png (KITTI 16-bit)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".flo":
        write_flo(path, flow, valid)
    elif suffix == ".png":
        write_kitti_flow(path, flow, valid)
    else:
        raise FlowFileError(path, f"cannot write flow as {suffix!r} (expected .flo or .png)")


# ----------------------------------------------------------------------------- torch


def flow_to_tensor(flow: np.ndarray) -> torch.Tensor:
    """Numpy flow [H,W,2] -> float32 tensor [2,H,W]."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(flow, dtype=np.float32).transpose(2, 0, 1)))


def tensor_to_flow(flow: torch.Tensor) -> np.ndarray:
    """Tensor [2,H,W] (any device) -> float32 numpy flow [H,W,2]."""
    return np.ascontiguousarray(flow.detach().float().cpu().numpy().transpose(1, 2, 0))


# ----------------------------------------------------------------------------- images


def read_image(path: PathLike) -> np.ndarray:
    """Reads an image (PNG/PPM/JPG...) as uint8 RGB [H,W,3]; grey images are promoted to 3 channels.
    Its size is read from its header first (:func:`image_size`): a decompression bomb is refused
    before anything is allocated for it."""
    if _file_size(path) == 0:
        raise FlowFileError(path, "empty file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FlowFileError(path, f"cannot read ({e.strerror or e})") from None
    image_size(path, data)  # the same bytes the decoder gets: no swap between the check and the decoding
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:
        raise FlowFileError(path, f"unreadable image ({str(e).strip().splitlines()[-1][:200]})") from None
    if bgr is None:
        raise FlowFileError(path, "unreadable image (unknown format or corrupt)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_image(path: PathLike, rgb: np.ndarray) -> None:
    """Writes a uint8 RGB [H,W,3] image; the format follows the suffix (.png, .jpg, ...)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise FlowFileError(path, f"image to write must be uint8 [H,W,3], got {rgb.dtype} {rgb.shape}")
    try:
        ok = cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    except cv2.error as e:
        raise FlowFileError(path, f"cannot write image ({e})") from None
    if not ok:
        raise FlowFileError(path, "cannot write image (bad folder or suffix?)")
