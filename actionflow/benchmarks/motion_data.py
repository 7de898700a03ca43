"""Generated motion for pre-training the temporal stream: the demo's dancers at known tempi.

``python -m actionflow motion-data OUT [--task tempo|speed] [--clips-per-class 40] [--size 128] [--seed 0]``
writes clips of the demo's stick-figure dancers (:mod:`actionflow.benchmarks.demo_data`: random
proportions, colours, photo or procedural backgrounds, camera jitter, noise, up to two background
dancers), each main dancer 0.3 to 0.9 of the frame high (:data:`HEIGHT`: the same motion is a few
pixels or many), labelled by how fast they move. Unlimited, licence-free data that shares nothing with
the real-footage benchmark's videos, so a stream pre-trained on it may be cross-validated on all of them.

- ``tempo`` (30 classes): a move (one of the demo's six) at one octave of tempo, 0.25 to 8 times the
  demo's speed (:data:`OCTAVES`; the clip's tempo log-uniform within its octave): the network must tell
  how fast a move is done, at any size. The shipped ``model.flow_init: motion`` was trained on it.
- ``speed`` (the benchmark's 3 classes): every clip index draws a move and a *natural* tempo
  (:data:`TEMPO`, log-uniform 0.25 to 2 times the demo's), then is rendered at 1, 2 and 4 times that
  (``normal``, ``fast``, ``faster``: :data:`actionflow.benchmarks.real_motion.SPEEDS`), so a normal
  clip may move faster than a faster one, as on real footage.

Layout as the demo's (``train.py --data.root OUT`` reads it): ``OUT/videos/<class>/<class>_<i>.mp4``,
``classes.txt``, ``train.txt``/``val.txt``/``test.txt`` (80/10/10 % of each class's clips, by index: in
the speed task a clip and its faster versions share a split), ``meta.json`` (written last: a complete
set with the same settings is not rebuilt; a folder holding anything else is refused, not overwritten).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from actionflow.benchmarks.demo_data import (
    MAX_SIZE, MIN_SIZE, MOVES, RenderParams, claim_folder, render_clip, run_jobs, write_clip,
)
from actionflow.benchmarks.real_motion import BASE_FPS, CLASSES, SPEEDS
from actionflow.errors import ActionflowError

log = logging.getLogger(__name__)

VERSION = 1
TASKS = ("tempo", "speed")
TEMPO = (0.25, 2.0)  # speed task: natural tempo range, log-uniform, in units of the demo's speed
OCTAVES = 5  # tempo task: tempi TEMPO[0] * 2**k .. 2**(k+1), k < OCTAVES: 0.25 to 8 times the demo's
HEIGHT = (0.3, 0.9)  # main dancer's height range, fraction of the frame
VAL_FRACTION = 0.1
TEST_FRACTION = 0.1


class MotionDataError(ActionflowError, ValueError):
    """Settings the motion generator cannot use."""


@dataclass(frozen=True)
class _Job:
    path: str
    task: str
    label: int
    seed: int
    index: int
    params: RenderParams


def task_classes(task: str) -> list[str]:
    """Class names of ``task``: ``<move>_x<lowest tempo of the octave>`` (tempo), or the benchmark's speeds."""
    if task not in TASKS:
        raise MotionDataError(f"task must be one of {TASKS}, got {task!r}")
    return [f"{m}_x{TEMPO[0] * 2 ** k:g}" for m in MOVES for k in range(OCTAVES)] if task == "tempo" else list(CLASSES)


def clip_settings(seed: int, index: int) -> tuple[str, float, np.random.Generator]:
    """Speed task: (move, natural tempo, random stream of the rest) of clip ``index``, the same for every
    class, so the clips of one index differ only in speed."""
    rng = np.random.default_rng([seed, 7_919, index])
    move = str(rng.choice(MOVES))
    tempo = float(np.exp(rng.uniform(np.log(TEMPO[0]), np.log(TEMPO[1]))))
    return move, tempo, rng


def render_speed_clip(speed: int, params: RenderParams, seed: int, index: int) -> np.ndarray:
    """Speed task: clip ``index`` played ``speed`` times faster than its natural tempo, uint8 RGB [T, S, S, 3]."""
    move, tempo, rng = clip_settings(seed, index)
    return render_clip(move, replace(params, tempo=tempo * speed), rng)


def render_tempo_clip(label: int, params: RenderParams, seed: int, index: int) -> np.ndarray:
    """Tempo task: clip ``index`` of class ``label``, its move at a tempo log-uniform within its octave."""
    move, octave = MOVES[label // OCTAVES], label % OCTAVES
    rng = np.random.default_rng([seed, 104_729, label, index])
    tempo = TEMPO[0] * 2 ** (octave + rng.uniform())
    return render_clip(move, replace(params, tempo=tempo), rng)


def _make(job: _Job) -> str:
    if job.task == "speed":
        frames = render_speed_clip(SPEEDS[CLASSES[job.label]], job.params, job.seed, job.index)
    else:
        frames = render_tempo_clip(job.label, job.params, job.seed, job.index)
    return write_clip(frames, job.path, BASE_FPS)


def generate(out: str | Path, task: str = "tempo", clips_per_class: int = 40, frames: int = 16, size: int = 128,
             seed: int = 0, workers: int | None = None) -> Path:
    """Write the set into ``out`` (see the module docstring); a complete set with these settings is kept as it is."""
    out = Path(out)
    classes = task_classes(task)
    if clips_per_class < 10 or frames < 4 or not MIN_SIZE <= size <= MAX_SIZE or size % 2:
        raise MotionDataError(f"need clips_per_class >= 10, frames >= 4 and an even size in {MIN_SIZE}..{MAX_SIZE} px; "
                              f"got {clips_per_class}, {frames}, {size}")
    meta = {"version": VERSION, "task": task, "classes": classes, "clips_per_class": clips_per_class, "frames": frames,
            "size": size, "seed": seed, "tempo": list(TEMPO), "octaves": OCTAVES, "height": list(HEIGHT)}
    try:
        found = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):
        found = None
    if found == meta:
        log.info("%s already holds the motion set with these settings", out)
        return out
    claim_folder(out, "octaves", "a motion set", MotionDataError)
    started = time.perf_counter()
    params = RenderParams(frames=frames, size=size, distractors=2, height=HEIGHT)
    jobs, lines = [], {"train": [], "val": [], "test": []}
    n_val, n_test = round(clips_per_class * VAL_FRACTION), round(clips_per_class * TEST_FRACTION)
    try:
        out.mkdir(parents=True, exist_ok=True)  # until the end, the folder is a motion set that is not complete
        (out / "meta.json").write_text(json.dumps({**meta, "complete": False}, indent=1) + "\n")
        for label, name in enumerate(classes):
            folder = out / "videos" / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(clips_per_class):
                rel = f"videos/{name}/{name}_{i}.mp4"
                jobs.append(_Job(str(out / rel), task, label, seed, i, params))
                split = "val" if i < n_val else "test" if i < n_val + n_test else "train"
                lines[split].append(f"{rel} {label}")
        run_jobs(_make, jobs, workers)
        (out / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
        for split, entries in lines.items():
            (out / f"{split}.txt").write_text("".join(f"{e}\n" for e in entries))
        (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    except OSError as exc:
        raise MotionDataError(f"{out}: cannot write the motion set ({exc})") from None
    log.info("wrote %d clips to %s in %.0f s", len(jobs), out, time.perf_counter() - started)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="output folder (e.g. data/motion_tempo)")
    parser.add_argument("--task", choices=TASKS, default="tempo", help="labels: tempo (a move at an octave of tempo: "
                        "30 classes, default) or speed (the real-footage benchmark's 1x/2x/4x)")
    parser.add_argument("--clips-per-class", type=int, default=40, help="clips of each class (default 40)")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    parser.add_argument("--size", type=int, default=128, help="frame side in px, even (default 128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPUs, at most 4)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        out = generate(args.out, args.task, args.clips_per_class, args.frames, args.size, args.seed, args.workers)
    except ActionflowError as exc:  # DemoDataError from writing a clip too
        print(f"motion-data: error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0
