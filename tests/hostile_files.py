"""Files an attacker would hand the project, shared by the tests that check each is refused."""
from __future__ import annotations

import builtins
import struct
import zlib
from pathlib import Path

import torch


class _CreatesMarker:
    """Unpickling this calls ``open(marker, "w")``: the file appears only if the unpickler runs code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def code_running_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint-shaped file (state_dict, hyper_parameters) whose plain ``torch.load`` creates ``marker``."""
    torch.save({"state_dict": {"model.conv1a.0.weight": _CreatesMarker(marker)}, "hyper_parameters": {},
                "global_step": 1}, path)
    return path


def png_bytes(width: int, height: int, depth: int = 16, colour: int = 2, rows: int | None = None) -> bytes:
    """A PNG whose header says ``width`` x ``height`` and whose data are ``rows`` rows of zeros
    (default: all of them), compressed: a few hundred KB can decode to gigabytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    row = bytes(1 + width * channels * depth // 8)  # filter byte 0, then the samples
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row) for _ in range(height if rows is None else rows)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def image_claiming(ext: str, width: int, height: int) -> bytes:
    """A small image of format ``ext`` (.jpg .png .webp .bmp .tif .ppm) whose header says ``width`` x ``height``:
    its data are those of a 16x16 image, so a decoder that trusts the header allocates for the claimed size."""
    import cv2
    import numpy as np

    if ext == ".png":
        return png_bytes(width, height, depth=8, rows=1)
    if ext == ".ppm":
        return b"P6\n%d %d\n255\n" % (width, height) + bytes(16 * 16 * 3)
    ok, buf = cv2.imencode(ext, np.full((16, 16, 3), 128, np.uint8), [cv2.IMWRITE_WEBP_QUALITY, 80] if ext == ".webp" else [])
    data = bytearray(buf.tobytes())
    if ext == ".jpg":  # the frame header (SOF0): FF C0, length, precision, height, width
        at = data.index(b"\xff\xc0") + 5
        data[at: at + 4] = struct.pack(">HH", height, width)
    elif ext == ".webp":  # lossy VP8: 14-bit width and height after the key frame's start code
        at = data.index(b"\x9d\x01\x2a") + 3
        data[at: at + 4] = struct.pack("<HH", width, height)
    elif ext == ".bmp":  # BITMAPINFOHEADER: int32 width, height
        data[18:26] = struct.pack("<ii", width, height)
    elif ext == ".tif":  # the first IFD's ImageWidth (256) and ImageLength (257) entries
        ifd = struct.unpack("<I", data[4:8])[0]
        for i in range(struct.unpack("<H", data[ifd: ifd + 2])[0]):
            at = ifd + 2 + 12 * i
            tag, kind = struct.unpack("<HH", data[at: at + 4])
            if tag in (256, 257):
                value = width if tag == 256 else height
                data[at + 8: at + 12] = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
    else:
        raise ValueError(ext)
    return bytes(data)
