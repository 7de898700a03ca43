"""Tiny generated action videos for the end-to-end tests: a textured square on a textured
background moving right, left, down or up (the class), written as MP4 with PyAV.

Appearance is drawn the same way for every class, so only motion tells classes apart.
"""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np

CLASSES = ("right", "left", "down", "up")
DIRECTION = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}  # (dy, dx)


def render(direction: str, frames: int = 16, size: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 RGB ``[frames, size, size, 3]``: a textured square (5/16 of the frame) moving
    ``size / 32`` px per frame in ``direction``, wrapping around the frame if it runs out."""
    rng = np.random.default_rng(seed)
    side, step = size * 5 // 16, max(1, size // 32)
    background = rng.integers(40, 110, (size, size, 3), dtype=np.uint8)
    texture = rng.integers(120, 255, (side, side, 3), dtype=np.uint8)
    dy, dx = (step * d for d in DIRECTION[direction])
    room = size - side
    out = np.repeat(background[None], frames, axis=0)
    for t in range(frames):
        y = (room // 2 + dy * (t - frames // 2)) % (room + 1)
        x = (room // 2 + dx * (t - frames // 2)) % (room + 1)
        out[t, y : y + side, x : x + side] = texture
    return out


def write_mp4(path: Path, frames: np.ndarray, fps: int = 15) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "18"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def make_dataset(root: Path, per_class: int = 4, frames: int = 16, size: int = 64, classes=CLASSES) -> Path:
    """``root/videos/<class>/<class>_<i>.mp4`` plus ``train.txt`` (first half of each class), ``val.txt``,
    ``test.txt`` (one quarter each; lines ``videos/... <index>``) and ``classes.txt``."""
    lines = {"train": [], "val": [], "test": []}
    for label, name in enumerate(classes):
        for i in range(per_class):
            rel = f"videos/{name}/{name}_{i}.mp4"
            write_mp4(root / rel, render(name, frames, size, seed=1000 * label + i))
            split = "train" if i < per_class // 2 else ("val" if i < 3 * per_class // 4 else "test")
            lines[split].append(f"{rel} {label}")
    for split, entries in lines.items():
        (root / f"{split}.txt").write_text("\n".join(entries) + "\n")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root
