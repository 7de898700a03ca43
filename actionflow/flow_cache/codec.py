"""Flow frames as bytes: 8-bit quantisation within a bound, and image codecs for the quantised planes.

Quantisation: with bound ``B`` (default ±20 px, the two-stream convention),
``q = round(f * 127 / B) + 127`` clipped to [0, 254], so ``f = (q - 127) * B / 127`` on
reading. Unlike TSN's ``255 * (f + B) / 2B`` (which puts zero between two levels, so still
pixels come back 0.08 px off), zero flow is exactly representable: static backgrounds stay
exactly static. Values beyond ±B clip; the number of clipped pixels (either component
beyond B) is kept per frame. The round-trip error inside the bound is at most half a step
per component (B/254 = 0.079 px), plus what a lossy codec adds.

Flow imported from TSN/denseflow JPEGs keeps their levels (``levels: "tsn"`` in its header):
``j = 255 * (f + B) / 2B`` rounded, j in [0, 255], so ``f = j * 2B/255 - B`` on reading. Converting
them to the levels above would merge two of their 256 levels (127 and 128, around zero: the most
common values); kept as they are, an import reads back exactly and exports to the same values.

Each flow frame ``[2,H,W]`` is one grey image ``[2H,W]`` (u rows above v rows) encoded with
an OpenCV image codec (default JPEG quality 90 with the standard Huffman tables). A JPEG's
header (quantisation and Huffman tables, frame and scan headers: ~330 bytes, a tenth of a
small frame) is the same for every frame of a file, so :func:`split_jpeg` cuts it off and the
file stores it once (format version 2); :func:`decode_frame` puts it back.
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np

from flow_engine.commands.args import positive_number

DEFAULT_BOUND = 20.0
LEVELS = 127  # quantisation steps on each side of zero: q in [0, 254], zero exact
# header "levels": how stored uint8 values map to pixels (an entry without the key uses the first)
ZERO_EXACT, TSN = "zero_exact", "tsn"
LEVEL_SCHEMES = (ZERO_EXACT, TSN)

# codec name -> (file extension for cv2.imencode, default quality or None = lossless)
CODECS: dict[str, tuple[str, int | None]] = {
    "jpeg": (".jpg", 90),
    "png": (".png", None),
    "webp": (".webp", None),
    "avif": (".avif", 90),
    "jp2": (".jp2", None),
}
DEFAULT_CODEC = {"name": "jpeg", "quality": 90}


def positive_pixels(text: str) -> float:
    """``"20"`` -> 20.0 px; NaN, infinity, zero or a negative number is an argument error (they would quantise to garbage)."""
    return positive_number(text, "pixels")


def codec_arg(text: str) -> str:
    """An argparse ``type`` for ``--codec``: ``"jpeg:90"``... checked (:func:`parse_codec`), so a bad codec is an
    argument error before any work."""
    try:
        parse_codec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def parse_codec(spec: str | dict | None) -> dict:
    """``"jpeg"``, ``"jpeg:90"``, ``"webp"`` (lossless), ``"webp:95"``, ``"png"``... -> ``{"name", "quality"}``."""
    if spec is None:
        return dict(DEFAULT_CODEC)
    if isinstance(spec, dict):
        name, quality = spec.get("name"), spec.get("quality")
    else:
        name, _, q = str(spec).partition(":")
        quality = None
        if q:
            try:
                quality = int(q)
            except ValueError:
                raise ValueError(f"codec {spec!r}: quality must be an integer, e.g. jpeg:95") from None
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}; choose from {', '.join(CODECS)}")
    if quality is None:
        quality = CODECS[name][1]
    if quality is not None and not 1 <= int(quality) <= 100:
        raise ValueError(f"codec {name}: quality {quality} is outside 1..100")
    return {"name": name, "quality": None if quality is None else int(quality)}


def codec_name(codec: str | dict | None = None) -> str:
    """A codec as written on command lines: ``"jpeg:90"``, ``"webp"`` (lossless); None: the default."""
    codec = parse_codec(codec)
    return codec["name"] + ("" if codec["quality"] is None else f":{codec['quality']}")


def _imencode_args(codec: dict) -> tuple[str, list[int]]:
    name, quality = codec["name"], codec.get("quality")
    ext = CODECS[name][0]
    if name == "jpeg":  # standard Huffman tables (no per-frame optimisation): the same in every frame, stored once
        return ext, [cv2.IMWRITE_JPEG_QUALITY, quality]
    if name == "png":
        return ext, [cv2.IMWRITE_PNG_COMPRESSION, 6]
    if name == "webp":  # quality above 100 selects lossless WebP
        return ext, [cv2.IMWRITE_WEBP_QUALITY, 101 if quality is None else quality]
    if name == "avif":
        return ext, [cv2.IMWRITE_AVIF_QUALITY, 100 if quality is None else quality]
    return ext, [cv2.IMWRITE_JPEG2000_COMPRESSION_X1000, 1000 if quality is None else 10 * quality]


def encode_frames(q: np.ndarray, codec: dict | None = None) -> list[bytes]:
    """Encode quantised flow ``uint8 [N,2,H,W]`` as N complete images ``[2H,W]`` (u above v).
    Thread-safe, GIL-free. (:class:`CacheWriter` stores a JPEG's tables once per file.)"""
    codec = parse_codec(codec)
    ext, params = _imencode_args(codec)
    q = np.ascontiguousarray(q)
    n, _, h, w = q.shape
    out = []
    for frame in q.reshape(n, 2 * h, w):
        ok, buf = cv2.imencode(ext, frame, params)
        if not ok:
            raise RuntimeError(f"cv2.imencode failed for codec {codec}")
        out.append(buf.tobytes())
    return out


# ------------------------------------------------------------------------ quantisation


def quantize(flow, bound: float = DEFAULT_BOUND):
    """Flow ``[N,2,H,W]`` in pixels (torch on any device, or numpy) -> (uint8 q ``[N,2,H,W]``, int clipped ``[N]``),
    of the same kind as the input.

    ``clipped[i]`` counts the pixels of frame i with ``|u| > bound`` or ``|v| > bound``.
    With torch the work stays on the flow's device, so a GPU ships 1 byte per value to the host.
    """
    import torch  # the cache itself needs no torch: only tensors from the device come here

    if isinstance(flow, np.ndarray):
        q, clipped = quantize(torch.from_numpy(np.asarray(flow, dtype=np.float32)), bound)
        return q.numpy(), clipped.numpy()
    scale = LEVELS / bound
    flow = torch.nan_to_num(flow.float(), nan=0.0)
    clipped = (flow.abs() > bound).any(dim=1).sum(dim=(1, 2))
    q = (flow * scale).round_().clamp_(-LEVELS, LEVELS).add_(LEVELS).to(torch.uint8)
    return q, clipped


def dequantize(q: np.ndarray, bound: float = DEFAULT_BOUND, levels: str = ZERO_EXACT) -> np.ndarray:
    """uint8 quantised flow -> float32 pixels, ``(q - 127) * B/127`` (``levels="tsn"``: ``q * 2B/255 - B``),
    in one vectorised pass."""
    step = bound / LEVELS if levels == ZERO_EXACT else 2 * bound / 255
    out = np.multiply(q, np.float32(step), dtype=np.float32)
    out -= np.float32(bound)
    return out


def tsn_levels(flow: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """Flow in pixels -> the TSN/denseflow grey levels ``round(255 * (f + B) / 2B)`` clipped to [0, 255], uint8."""
    j = (np.asarray(flow, dtype=np.float32) + np.float32(bound)) * np.float32(255 / (2 * bound))
    return np.clip(np.rint(j), 0, 255).astype(np.uint8)


def stack_flows(flows):
    """``[L,2,H,W]`` -> ``[2L,H,W]`` ordered x1,y1,x2,y2,... (the two-stream input). numpy or torch; no copy."""
    if flows.ndim != 4 or flows.shape[1] != 2:
        raise ValueError(f"expected flows [L,2,H,W], got shape {tuple(flows.shape)}")
    return flows.reshape(flows.shape[0] * 2, *flows.shape[2:])


# ----------------------------------------------------------------------------- shared JPEG tables

SOI, EOI, SOS = b"\xff\xd8", b"\xff\xd9", b"\xff\xda"


def split_jpeg(jpeg: bytes) -> tuple[bytes, bytes]:
    """(header, scan) of a baseline JPEG: everything up to and including the start-of-scan segment
    (SOI, tables, frame header), and the entropy-coded data without the final EOI marker."""
    if not jpeg.startswith(SOI) or not jpeg.endswith(EOI):
        raise ValueError("not a complete JPEG (no SOI/EOI markers)")
    i = 2
    while i + 4 <= len(jpeg):  # walk the marker segments: table bytes may contain FF DA by chance
        marker, length = jpeg[i : i + 2], int.from_bytes(jpeg[i + 2 : i + 4], "big")
        if marker[0] != 0xFF or length < 2:
            break
        i += 2 + length
        if marker == SOS:
            return jpeg[:i], jpeg[i:-2]
    raise ValueError("JPEG without a start-of-scan segment")


def fits(image: bytes, height: int, width: int) -> bool:
    """Whether the header of an encoded image (or of JPEG tables) gives a ``[2H,W]`` flow frame; nothing is
    decoded, so a crafted frame claiming gigapixels is refused before a decoder allocates for it."""
    from flow_engine.io.flow_files import FlowFileError, image_size  # flow_files imports torch: the cache needs none

    try:
        return image_size("flow frame", image) == (width, 2 * height)
    except FlowFileError:
        return False


def decode_frame(payload: bytes | memoryview, height: int, width: int, tables: bytes | None = None) -> np.ndarray | None:
    """One stored flow frame -> uint8 ``[2H,W]`` (None when it does not decode to that size).

    ``payload`` is a complete image (any codec, format version 1), whose header is checked before it
    is decoded, or, with ``tables``, a JPEG's scan data whose header the file keeps once (the caller
    checks the tables with :func:`fits` once per file).
    """
    data = bytes(payload)
    if tables is not None and not data.startswith(SOI):  # scan data never starts with a marker
        data = tables + data + EOI
    elif not fits(data, height, width):
        return None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None or img.shape != (2 * height, width):
        return None
    return img


def flo_bytes(frames: int, height: int, width: int) -> int:
    """Bytes the same flow takes as Middlebury ``.flo`` files: 12-byte header + 2 float32 per pixel."""
    return frames * (12 + 8 * height * width)
