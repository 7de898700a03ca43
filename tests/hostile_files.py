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
