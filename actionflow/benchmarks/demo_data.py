"""The bundled demo dataset: short videos of 2-D stick figures dancing one of six moves.

Each clip shows one articulated figure (head, torso, upper/lower arms and legs, drawn as
anti-aliased filled shapes) over a photo or textured background, with camera jitter, noise
and H.264 compression. The class is the move the figure dances: ``arm_wave``, ``spin``,
``jump``, ``side_step``, ``kick`` or ``sway``.

The dataset is built so that **motion says everything and appearance nothing**. Every
move adds its own offsets to the joint angles and body position, as a function of a phase
angle. In a clip of class ``m`` the phase of move ``m`` advances with time; the phases of
all the other moves are frozen at random values. A move frozen at a random phase and a
move seen at a random frame have the same distribution, so the pose in a single frame has
exactly the same distribution whatever the class. Appearance (colours, sizes, body
proportions, position, background, noise) is drawn the same way for every class, and the
random numbers are drawn in the same order whatever the class. So with one seed, the clips
of two classes differ only in which move is animated. An RGB model on single frames can
only guess, while a model on a few stacked optical flows can see the move.

Layout written by ``generate_demo_dataset`` (and ``python -m actionflow demo-data OUT``)::

    OUT/videos/<class>/<class>_<i>.mp4   H.264 yuv420p clips, ``frames`` frames of size x size
    OUT/classes.txt                      one class name per line; the line number is its index
    OUT/train.txt, val.txt, test.txt     lines "videos/<class>/<class>_<i>.mp4 <class_index>",
                                         stratified by class
    OUT/meta.json                        generation parameters, written last (marks completion)
"""
from __future__ import annotations

import argparse
import functools
import inspect
import json
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from actionflow.benchmarks.demo_figure import FIGURE_HEIGHT, MOVE_OFFSETS, MOVES, Body, dark, dance_pose, random_body, skeleton
from actionflow.errors import ActionflowError

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # bump when rendering changes, so that cached datasets are regenerated
MIN_SIZE = 32
MAX_SIZE = 2048  # px: a procedural clip larger than this is a typo (16 frames of 2048x2048 are 200 MB already)
# the default set (600 clips of 16 frames at 112 px): large enough for the temporal stream to reach
# its targets, small enough to generate, cache and train on in the default run's 10 CPU minutes
DEFAULT_CLIPS_PER_CLASS = 100
DEFAULT_FRAMES = 16
SPLITS = ("train", "val", "test")


class DemoDataError(ActionflowError, ValueError):
    """Bad parameters for the demo dataset (unknown class, odd or too small size, ...)."""


@dataclass(frozen=True)
class RenderParams:
    """How to render one clip.

    frames: clip length in frames; size: frame height = width in pixels (even, for yuv420p);
    background: "random" (photo crops or procedural textures) or "plain" (black, for tests);
    jitter: standard deviation of the per-frame camera translation in pixels (integer steps);
    noise: maximum standard deviation of the added Gaussian pixel noise, in grey levels;
    distractors: maximum number of smaller, fainter background dancers (any move);
    tempo: speed of every dancer's move (1: the demo's periods of 12 to 24 frames; 2: twice as fast; it
    draws nothing, so one seed gives the same figure at every tempo);
    height: range of the main dancer's standing height, as a fraction of the frame.
    """

    frames: int = DEFAULT_FRAMES
    size: int = 112
    background: str = "random"
    jitter: float = 1.0
    noise: float = 4.0
    distractors: int = 0
    tempo: float = 1.0
    height: tuple[float, float] = (0.62, 0.8)


def _fix(p: np.ndarray) -> tuple[int, int]:
    """Pixel coordinates as the fixed-point integers that OpenCV's ``shift=4`` draws at sub-pixel precision."""
    return int(round(p[0] * 16)), int(round(p[1] * 16))


def draw_figure(img: np.ndarray, joints: dict[str, np.ndarray], body: Body, yaw: float, head_radius: float) -> None:
    """Draw one frame of a figure into ``img`` (uint8 [H,W,3], in place).

    joints: [2] pixel positions ("torso": [4,2]); body.limb: limb thickness in pixels;
    yaw: radians, decides which side is nearer the camera; head_radius: pixels.
    """
    thick = max(2, int(round(body.limb)))

    def limb(a: str, b: str, colour, width: int) -> None:
        cv2.line(img, _fix(joints[a]), _fix(joints[b]), dark(colour), width + 2, cv2.LINE_AA, 4)
        cv2.line(img, _fix(joints[a]), _fix(joints[b]), colour, width, cv2.LINE_AA, 4)

    def side(s: str, part: str) -> None:
        colour = body.colours[f"{part}_{s}"]
        if part == "arm":
            limb(f"shoulder_{s}", f"elbow_{s}", colour, thick)
            limb(f"elbow_{s}", f"hand_{s}", colour, thick)
        else:
            leg = thick + 1
            limb(f"hip_{s}", f"knee_{s}", colour, leg)
            limb(f"knee_{s}", f"foot_{s}", colour, leg)

    # the side turned away from the camera is drawn first, hidden behind the torso
    far, near = ("l", "r") if np.sin(yaw) > 0 else ("r", "l")
    side(far, "arm")
    side(far, "leg")
    torso = np.array([_fix(p) for p in joints["torso"]], dtype=np.int32)
    cv2.fillConvexPoly(img, torso, body.colours["torso"], cv2.LINE_AA, 4)
    cv2.polylines(img, [torso], True, dark(body.colours["torso"]), 1, cv2.LINE_AA, 4)
    limb("neck", "head", body.colours["torso"], thick)
    radius = int(round(head_radius * 16))
    cv2.circle(img, _fix(joints["head"]), radius + 16, dark(body.colours["head"]), -1, cv2.LINE_AA, 4)
    cv2.circle(img, _fix(joints["head"]), radius, body.colours["head"], -1, cv2.LINE_AA, 4)
    side(near, "leg")
    side(near, "arm")


# --------------------------------------------------------------------------- backgrounds
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "brick", "grass", "gravel",
          "hubble_deep_field", "immunohistochemistry", "moon", "cat", "page", "text", "clock")


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as uint8 RGB (bundled with scikit-image, no download)."""
    import skimage.data  # scikit-image loads slowly: only for the backgrounds, in the workers

    img = np.asarray(getattr(skimage.data, name)())
    if img.dtype != np.uint8:
        img = (img > 0).astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def random_background(side: int, rng: np.random.Generator) -> np.ndarray:
    """A uint8 RGB [side,side,3] background: a random crop of a photo, or a procedural texture."""
    kind = rng.choice(["photo", "blobs", "stripes"], p=[0.5, 0.25, 0.25])
    if kind == "photo":
        img = _photo(str(rng.choice(PHOTOS)))
        h, w = img.shape[:2]
        crop = int(rng.uniform(0.25, 0.9) * min(h, w))
        y0, x0 = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        out = cv2.resize(img[y0 : y0 + crop, x0 : x0 + crop], (side, side), interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            out = out[:, ::-1]
        out = out[..., rng.permutation(3)].astype(np.float32)
        out *= rng.uniform(0.6, 1.15, size=3).astype(np.float32)
    else:
        if kind == "blobs":
            k = int(rng.integers(3, 9))
            grid = rng.uniform(0, 255, size=(k, k, 3)).astype(np.float32)
            out = cv2.resize(grid, (side, side), interpolation=cv2.INTER_CUBIC)
        else:
            yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
            angle = rng.uniform(0, np.pi)
            freq = rng.uniform(0.08, 0.4)
            wave = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle)))
            if rng.random() < 0.5:  # a checkerboard-like product of two waves
                wave = wave * np.sin(freq * (-xx * np.sin(angle) + yy * np.cos(angle)))
            a, b = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
            out = a + (b - a) * (0.5 + 0.5 * wave[..., None])
        grain = cv2.GaussianBlur(rng.normal(0, rng.uniform(4, 16), size=(side, side, 3)).astype(np.float32), (0, 0), 1.0)
        out = out + grain
    return np.clip(out, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- clips
@dataclass
class Dancer:
    """One figure ready to draw: joints [T,2] (torso [T,4,2]) in pixels, body, yaw [T], opacity."""

    joints: dict[str, np.ndarray]
    body: Body
    yaw: np.ndarray
    head_radius: float
    alpha: float


def _dancer(move: str, frames: int, size: int, rng: np.random.Generator, height: tuple[float, float],
            tempo: float = 1.0) -> Dancer:
    pose = dance_pose(move, frames, rng, tempo)
    body = random_body(rng)
    scale = rng.uniform(*height) * size / FIGURE_HEIGHT  # pixels per body unit
    feet = np.array([rng.uniform(0.4, 0.6) * size, rng.uniform(0.86, 0.95) * size])
    joints = {name: p * scale + feet for name, p in skeleton(pose, body).items()}
    body = Body(**{**asdict(body), "limb": body.limb * scale})  # limb thickness now in pixels
    return Dancer(joints, body, pose["yaw"], body.head * scale, 1.0)


def render_clip(move: str, params: RenderParams, rng: np.random.Generator) -> np.ndarray:
    """Render one clip of a figure dancing ``move``: uint8 RGB [frames, size, size, 3].

    Everything random (pose, proportions, colours, placement, background, jitter, noise)
    comes from ``rng``, drawn in the same order for every move, so the same seed gives the
    same frames.
    """
    if move not in MOVE_OFFSETS:
        raise DemoDataError(f"unknown move {move!r}; known: {', '.join(MOVES)}")
    T, S = params.frames, params.size
    margin = int(np.ceil(3 * params.jitter))
    main = _dancer(move, T, S, rng, params.height, params.tempo)
    dancers = []
    for _ in range(int(rng.integers(0, params.distractors + 1))):
        extra = _dancer(str(rng.choice(MOVES)), T, S, rng, (0.25, 0.4), params.tempo)
        extra.alpha = rng.uniform(0.35, 0.6)
        offset = np.array([rng.uniform(-0.35, 0.35), rng.uniform(-0.45, 0.0)]) * S  # further back, higher up
        extra.joints = {name: p + offset for name, p in extra.joints.items()}
        dancers.append(extra)
    dancers.append(main)  # drawn last, in front
    if params.background == "plain":
        background = np.zeros((S + 2 * margin, S + 2 * margin, 3), np.uint8)
    else:
        background = random_background(S + 2 * margin, rng)
    shifts = np.clip(np.round(rng.normal(0, params.jitter, size=(T, 2))), -margin, margin).astype(int)
    sigma = rng.uniform(0.25, 1.0) * params.noise

    out = np.empty((T, S, S, 3), np.uint8)
    for t in range(T):
        dx, dy = shifts[t]
        frame = background[margin + dy : margin + dy + S, margin + dx : margin + dx + S].copy()
        camera = np.array([-dx, -dy], dtype=np.float64)  # the camera moves, so the scene moves the other way
        for dancer in dancers:
            layer = frame if dancer.alpha >= 1 else frame.copy()
            draw_figure(layer, {k: v[t] + camera for k, v in dancer.joints.items()}, dancer.body,
                        float(dancer.yaw[t]), dancer.head_radius)
            if layer is not frame:
                frame = cv2.addWeighted(layer, dancer.alpha, frame, 1 - dancer.alpha, 0)
        out[t] = frame
    if sigma > 0:
        noisy = out.astype(np.float32) + sigma * rng.standard_normal(out.shape, dtype=np.float32)
        out = np.clip(noisy, 0, 255).astype(np.uint8)
    return out


# --------------------------------------------------------------------------- files
@dataclass(frozen=True)
class _Job:
    path: str
    move: str
    index: int
    seed: int
    params: RenderParams
    fps: float


def _clip_rng(seed: int, move: str, index: int) -> np.random.Generator:
    """The random stream of clip ``index`` of ``move``: independent of the other clips and of the class list."""
    return np.random.default_rng([seed, MOVES.index(move), index])


def write_clip(frames: np.ndarray, path: str | os.PathLike, fps: float) -> str:
    """Write uint8 RGB ``frames`` [T, H, W, 3] as an MP4, atomically: a crash leaves no truncated file under ``path``."""
    from flow_engine.io.viz import write_video  # imported here: it imports torch, and only writing needs it

    path = Path(path)
    partial = path.with_suffix(".part.mp4")  # write_video picks the container from the extension
    try:
        write_video(frames, partial, fps)
        os.replace(partial, path)
    except Exception as exc:  # PyAV/FFmpeg errors are not all OSErrors
        raise DemoDataError(f"{path}: cannot write the clip ({type(exc).__name__}: {exc})") from None
    return str(path)


def _make_clip(job: _Job) -> str:
    """Render and write one clip of the demo set."""
    return write_clip(render_clip(job.move, job.params, _clip_rng(job.seed, job.move, job.index)), job.path, job.fps)


def _init_worker() -> None:
    cv2.setNumThreads(1)  # the pool already runs one clip per core


def run_jobs(make: Callable[[Any], str], jobs: Sequence[Any], workers: int | None = None) -> None:
    """``make(job)`` for every job (each renders and writes one clip), on ``workers`` processes
    (default: one per CPU, at most 4; ``make`` and the jobs must pickle)."""
    workers = workers or min(4, os.cpu_count() or 1)
    if workers > 1 and len(jobs) > 1:
        # forkserver, not fork: the caller may already run threads (data loaders, OpenMP, W&B) whose
        # locks a forked child inherits held, and then waits on forever
        ctx = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
            list(pool.map(make, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        for job in jobs:
            make(job)


def _check(classes: Sequence[str], clips_per_class: int, frames: int, size: int, fps: float,
           val_frac: float, test_frac: float, distractors: int) -> None:
    unknown = [c for c in classes if c not in MOVE_OFFSETS]
    if not classes or unknown:
        raise DemoDataError(f"unknown class(es) {unknown or classes!r}; choose from {', '.join(MOVES)}")
    if len(set(classes)) != len(classes):
        raise DemoDataError(f"classes repeat: {', '.join(classes)}")
    if not MIN_SIZE <= size <= MAX_SIZE or size % 2:
        raise DemoDataError(f"size must be an even number of pixels in {MIN_SIZE}..{MAX_SIZE} (H.264 yuv420p), got {size}")
    if frames < 2:
        raise DemoDataError(f"frames must be >= 2 (optical flow needs frame pairs), got {frames}")
    if fps <= 0:
        raise DemoDataError(f"fps must be > 0, got {fps}")
    if distractors < 0:
        raise DemoDataError(f"distractors must be >= 0, got {distractors}")
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1):
        raise DemoDataError(f"val and test fractions must lie in [0, 1), got {val_frac}, {test_frac}")
    n_val, n_test = split_sizes(clips_per_class, val_frac, test_frac)
    if clips_per_class - n_val - n_test < 1:
        raise DemoDataError(
            f"{clips_per_class} clips per class leave no training clip after {n_val} val + {n_test} test clips"
        )


def check_settings(**settings) -> None:
    """Raise :class:`DemoDataError` for settings :func:`generate_demo_dataset` would refuse (TypeError
    for a setting it does not have), without generating anything."""
    args = inspect.signature(generate_demo_dataset).bind("out", **settings)
    args.apply_defaults()
    a = args.arguments
    _check(list(a["classes"]), a["clips_per_class"], a["frames"], a["size"], a["fps"], a["val_frac"], a["test_frac"],
           a["distractors"])


def split_sizes(clips_per_class: int, val_frac: float, test_frac: float) -> tuple[int, int]:
    """(val, test) clips per class; the rest are for training."""
    return int(round(clips_per_class * val_frac)), int(round(clips_per_class * test_frac))


def claim_folder(out: Path, marker: str, what: str, error: type[Exception]) -> None:
    """Refuse to generate ``what`` into ``out`` when it holds files but no ``meta.json`` with the key ``marker`` (the
    generator's own, complete or not): it is someone's dataset or another benchmark, whose lists would be overwritten."""
    if out.exists() and not out.is_dir():
        raise error(f"{out}: exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    try:
        found = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):
        found = None
    if not (isinstance(found, dict) and marker in found):
        raise error(f"{out}: holds files that are not {what} (no meta.json of its generator); name an empty or new folder")


def _is_complete(out: Path, meta: dict) -> bool:
    try:
        if json.loads((out / "meta.json").read_text()) != meta:
            return False
        for split in SPLITS:
            for line in (out / f"{split}.txt").read_text().splitlines():
                if not (out / line.split()[0]).is_file():
                    return False
    except (OSError, ValueError, IndexError):
        return False
    return True


def _write_dataset(out: Path, meta: dict, workers: int | None) -> int:
    """Render and write every clip, then the lists, then meta.json; returns the number of clips."""
    classes, clips_per_class, seed = meta["classes"], meta["clips_per_class"], meta["seed"]

    out.mkdir(parents=True, exist_ok=True)  # until the end, the folder is a demo set that is not complete
    (out / "meta.json").write_text(json.dumps({**meta, "complete": False}, indent=1) + "\n")
    params = RenderParams(frames=meta["frames"], size=meta["size"], distractors=meta["distractors"])
    jobs = []
    for name in classes:
        folder = out / "videos" / name
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f"{name}_*.mp4"):  # clips of an earlier, different dataset
            stale.unlink()
        jobs += [_Job(str(folder / f"{name}_{i}.mp4"), name, i, seed, params, meta["fps"]) for i in range(clips_per_class)]
    run_jobs(_make_clip, jobs, workers)

    # fixed stratified splits: a seeded permutation of each class's clips
    n_val, n_test = split_sizes(clips_per_class, meta["val_frac"], meta["test_frac"])
    lines: dict[str, list[str]] = {s: [] for s in SPLITS}
    rng = np.random.default_rng([seed, 1_000_003])
    for label, name in enumerate(classes):
        order = rng.permutation(clips_per_class)
        parts = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
        for split, idx in parts.items():
            lines[split] += [f"videos/{name}/{name}_{i}.mp4 {label}" for i in sorted(idx)]
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    for split in SPLITS:
        (out / f"{split}.txt").write_text("".join(f"{line}\n" for line in lines[split]))
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return len(jobs)


def generate_demo_dataset(
    out: str | os.PathLike,
    classes: Sequence[str] = MOVES,
    clips_per_class: int = DEFAULT_CLIPS_PER_CLASS,
    frames: int = DEFAULT_FRAMES,
    size: int = 112,
    seed: int = 0,
    fps: float = 15.0,
    val_frac: float = 0.2,
    test_frac: float = 0.2,
    distractors: int = 0,
    workers: int | None = None,
) -> Path:
    """Write the demo dance dataset into ``out`` (layout in the module docstring); returns ``out``.

    Idempotent: when ``out`` already holds a complete dataset made with the same parameters
    (its ``meta.json``, written last, says so) nothing is done. An incomplete one, or one
    made with other parameters, is regenerated (only its own files are overwritten or
    removed). ``workers`` processes render and encode clips in parallel (default: one per
    CPU, at most 4). Bad parameters raise DemoDataError.
    """
    out = Path(out)
    classes = list(classes)
    _check(classes, clips_per_class, frames, size, fps, val_frac, test_frac, distractors)
    meta = {
        "generator_version": GENERATOR_VERSION, "classes": classes, "clips_per_class": clips_per_class,
        "frames": frames, "size": size, "seed": seed, "fps": fps, "val_frac": val_frac,
        "test_frac": test_frac, "distractors": distractors,
    }
    if _is_complete(out, meta):
        log.info("%s already holds the demo dataset with these parameters", out)
        return out
    claim_folder(out, "generator_version", "a demo dataset", DemoDataError)

    started = time.perf_counter()
    try:
        count = _write_dataset(out, meta, workers)
    except OSError as exc:  # unwritable folder, full disk, ...
        raise DemoDataError(f"{out}: cannot write the demo dataset ({exc})") from exc
    log.info("wrote %d clips (%d classes x %d, %d frames of %dx%d) to %s in %.1f s", count, len(classes),
             clips_per_class, frames, size, size, out, time.perf_counter() - started)
    return out


# --------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--classes", default=",".join(MOVES), help="comma-separated moves (default: all six)")
    parser.add_argument("--clips-per-class", type=int, default=DEFAULT_CLIPS_PER_CLASS)
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="frames per clip")
    parser.add_argument("--size", type=int, default=112, help="frame height = width in pixels (even)")
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-frac", type=float, default=0.2)
    parser.add_argument("--test-frac", type=float, default=0.2)
    parser.add_argument("--distractors", type=int, default=0, help="at most this many faint background dancers per clip")
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (default: CPUs, at most 4)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    started = time.perf_counter()
    try:
        out = generate_demo_dataset(
            args.out, classes, args.clips_per_class, args.frames, args.size, args.seed, args.fps,
            args.val_frac, args.test_frac, args.distractors, args.workers,
        )
    except DemoDataError as exc:
        print(f"demo-data: error: {exc}", file=sys.stderr)
        return 2
    counts = {s: len((out / f"{s}.txt").read_text().splitlines()) for s in SPLITS}
    print(f"{out}: {len(classes)} classes, " + ", ".join(f"{n} {s}" for s, n in counts.items())
          + f" clips ({time.perf_counter() - started:.1f} s)")
    return 0
