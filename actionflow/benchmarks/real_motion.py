"""The real-footage benchmark: clips of real people moving, labelled by how the footage moves.

``python -m actionflow real-motion OUT --source ../shared/data/video_real`` cuts the 30 real
clips of ``../shared/data/video_real`` (dance, sports, exercise, everyday actions, crowds; any
size, 10 to 60 fps) into short clips of three classes that only motion tells apart: how fast the
footage plays.

- ``normal``: 16 frames at the base rate, 15 frames per second of real time (1.0 s);
- ``fast``: 16 frames at twice that speed, every second base frame (2.0 s of real time);
- ``faster``: 16 frames at four times that speed, every fourth base frame (4.0 s).

Every class is drawn from the same videos, so a single frame says little about the label (the
RGB stream can only guess): the motion between frames decides, and not its size alone, since
people move at every speed (a slow yoga pose played fast is still slower than a breakdance played
normally). Frames are resampled from each video's own frame rate to the base rate, so a 60 fps
dance and a 10 fps breakdance move as fast per frame as they did in reality. Clips keep their
video's aspect ratio (portrait phone videos, landscape broadcast) at a short side of 128 px.
Videos shorter than a ``faster`` clip (4.0 s; ten of the thirty) give ``normal`` and ``fast``
clips only. (An earlier version had a ``reverse`` class, the footage played backwards: a small
network on a few hundred clips could not tell it from ``normal`` at all, so it measured nothing.)

Splits are by video, so test clips come from videos never seen in training (and that the
shipped PWC-Net weights were not distilled on either, ``configs/flow/distill_videos.txt``):
:data:`TEST_VIDEOS` (6 videos, 2 of them dance), :data:`VAL_VIDEOS` (4), the other 20 train.
With the defaults: 247 training, 60 validation and 90 test clips. Layout as the demo's:
``OUT/videos/<class>/<video>_<i>.mp4``, ``train.txt``/``val.txt``/``test.txt`` (``path label``),
``classes.txt``, and ``meta.json`` (written last: a complete set is not rebuilt).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from actionflow.benchmarks.demo_data import claim_folder
from actionflow.errors import ActionflowError
from flow_engine.io.video import VideoError, decode_size, iter_frames, list_videos, probe
from flow_engine.io.viz import write_video

log = logging.getLogger(__name__)

CLASSES = ("normal", "fast", "faster")
BASE_FPS = 15.0
SPEEDS = {"normal": 1, "fast": 2, "faster": 4}  # base frames per clip frame
TEST_VIDEOS = ("vibeold_dance_duo", "unianimate_dance_indoor", "gvhmr_tennis", "askanything_yoga",
               "sam2_kids_jumping_on_bed", "tokenflow_woman_running")
VAL_VIDEOS = ("mimicmotion_tiktok_dance_b", "askanything_hitting_baseball", "sam2_pouring_coffee", "alphapose_street_crowd")
VERSION = 2


class RealMotionError(ActionflowError, ValueError):
    """A source folder or setting the benchmark cannot be built from."""


def split_of(video: Path) -> str:
    """train, val or test: fixed by the video's name, so every build splits alike."""
    return "test" if video.stem in TEST_VIDEOS else "val" if video.stem in VAL_VIDEOS else "train"


def base_rate_frames(frames: np.ndarray, fps: float) -> np.ndarray:
    """Frames [T,H,W,3] at ``fps`` resampled (nearest frame) to :data:`BASE_FPS`."""
    count = int((len(frames) - 1) * BASE_FPS / fps) + 1
    index = np.minimum(np.round(np.arange(count) * fps / BASE_FPS).astype(int), len(frames) - 1)
    return frames[index]


def cut_clips(base: np.ndarray, clips_per_class: int, frames: int) -> dict[str, list[np.ndarray]]:
    """``clips_per_class`` clips of ``frames`` frames per class from base-rate frames [N,H,W,3],
    starts evenly spread over the video (fewer when the video is too short for a fast clip)."""
    out: dict[str, list[np.ndarray]] = {c: [] for c in CLASSES}
    for cls in CLASSES:
        step = SPEEDS[cls]
        span = (frames - 1) * step + 1
        room = len(base) - span
        if room < 0:
            continue
        starts = sorted({int(round(i * room / max(clips_per_class - 1, 1))) for i in range(clips_per_class)})
        out[cls] += [base[s : s + span : step] for s in starts]
    return out


def build(out: str | Path, source: str | Path, clips_per_class: int = 5, frames: int = 16,
          short_side: int = 128) -> Path:
    """Write the benchmark into ``out`` (see the module docstring); returns ``out``. Videos that
    cannot be decoded are skipped and named in the log; an existing complete build is kept."""
    out, source = Path(out), Path(source)
    if clips_per_class < 1 or frames < 4 or not 32 <= short_side <= 4096:  # every clip is decoded at that size
        raise RealMotionError("clips_per_class >= 1, frames >= 4 and a short_side of 32..4096 px are needed")
    if not source.is_dir():
        raise RealMotionError(f"{source}: no such folder (the real clips live in ../shared/data/video_real)")
    meta = {"version": VERSION, "classes": list(CLASSES), "base_fps": BASE_FPS, "speeds": SPEEDS, "clips_per_class": clips_per_class,
            "frames": frames, "short_side": short_side, "test_videos": list(TEST_VIDEOS), "val_videos": list(VAL_VIDEOS)}
    meta_path = out / "meta.json"
    if meta_path.is_file():
        try:
            found = json.loads(meta_path.read_text())
            if {k: v for k, v in found.items() if k in meta} == meta and found.get("complete", True):
                log.info("%s already holds the real-motion benchmark with these settings", out)
                return out
        except (ValueError, AttributeError):
            pass
    claim_folder(out, "speeds", "the real-motion benchmark", RealMotionError)
    videos = list_videos(source)
    if not videos:
        raise RealMotionError(f"{source}: no videos")
    out.mkdir(parents=True, exist_ok=True)  # until the end, the folder is a benchmark that is not complete
    meta_path.write_text(json.dumps({**meta, "complete": False}, indent=2) + "\n")
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    skipped, sources = [], {}
    for video in videos:
        try:
            info = probe(video)
            size = decode_size(info.height, info.width, short_side)
            decoded = np.concatenate(list(iter_frames(video, 64, size)))
        except VideoError as exc:
            log.warning("skipped %s", exc)
            skipped.append(str(exc))
            continue
        clips = cut_clips(base_rate_frames(decoded, info.fps or BASE_FPS), clips_per_class, frames)
        split = split_of(video)
        sources[video.name] = {"split": split, "fps": info.fps, "frames": info.num_frames, "size": list(size),
                               "clips": {c: len(v) for c, v in clips.items()}}
        for label, cls in enumerate(CLASSES):
            for i, clip in enumerate(clips[cls]):
                rel = f"videos/{cls}/{video.stem}_{i}.mp4"
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                write_video(list(clip), out / rel, fps=BASE_FPS)
                lines[split].append(f"{rel} {label}")
    for split, entries in lines.items():
        if not entries:
            raise RealMotionError(f"no {split} clips could be made from {source}")
        (out / f"{split}.txt").write_text("\n".join(entries) + "\n")
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    meta.update(sources=sources, skipped=skipped, counts={k: len(v) for k, v in lines.items()})
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    log.info("real-motion benchmark in %s: %s clips (train/val/test), %d videos skipped", out,
             "/".join(str(len(v)) for v in lines.values()), len(skipped))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="output folder (e.g. data/real_motion)")
    parser.add_argument("--source", type=Path, required=True, help="folder of real clips, e.g. ../shared/data/video_real")
    parser.add_argument("--clips-per-class", type=int, default=5, help="clips of each class per video (default 5)")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    parser.add_argument("--short-side", type=int, default=128, help="short side of the clips in px (default 128)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = build(args.out, args.source, args.clips_per_class, args.frames, args.short_side)
    except RealMotionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0
