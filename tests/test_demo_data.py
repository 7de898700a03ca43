"""The demo dance dataset: deterministic rendering, each move's own motion, the file layout, idempotence, bad input."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from actionflow.__main__ import main
from actionflow.benchmarks.demo_data import MOVES, DemoDataError, RenderParams, generate_demo_dataset, render_clip
from flow_engine.io.video import probe

PLAIN = RenderParams(frames=16, size=96, background="plain", jitter=0.0, noise=0.0)


def test_same_seed_same_frames_other_seed_other_frames():
    params = RenderParams(frames=8, size=64, distractors=2)
    a = render_clip("kick", params, np.random.default_rng(7))
    b = render_clip("kick", params, np.random.default_rng(7))
    c = render_clip("kick", params, np.random.default_rng(8))
    assert a.shape == (8, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c).mean() > 5


def test_the_demo_renders_as_it_always_did():
    """The tempo and height settings (for actionflow.benchmarks.motion_data) leave the demo's frames as they were:
    the hash of these clips was taken with the code before those settings existed."""
    import hashlib

    digest = hashlib.sha256()
    for i, move in enumerate(MOVES):
        digest.update(render_clip(move, RenderParams(frames=8, size=64, distractors=2), np.random.default_rng(i)).tobytes())
    assert digest.hexdigest() == "e2e9b0fd4428bff7dbeaca594de2fa60531b7242c1b0bb264f37cc303c3ca72d"


def test_first_frame_does_not_depend_on_the_move():
    # the whole appearance is drawn the same way for every move, and every move starts at
    # the phase it would be frozen at: only the motion afterwards tells the moves apart
    params = RenderParams(frames=6, size=64)
    clips = {m: render_clip(m, params, np.random.default_rng(3)) for m in MOVES}
    for m in MOVES:
        assert np.array_equal(clips[m][0], clips["arm_wave"][0]), m
        if m != "arm_wave":
            assert not np.array_equal(clips[m][1:], clips["arm_wave"][1:]), m


def _masks(move: str, seed: int) -> np.ndarray:
    """Figure masks [T,H,W] on a black background (every figure colour is brighter than black)."""
    return render_clip(move, PLAIN, np.random.default_rng(seed)).max(axis=-1) > 0


def _centroids(masks: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[: masks.shape[1], : masks.shape[2]]
    area = masks.sum(axis=(1, 2))
    return np.stack([(masks * xs).sum(axis=(1, 2)) / area, (masks * ys).sum(axis=(1, 2)) / area], -1)


@pytest.mark.parametrize("move", MOVES)
def test_every_move_moves(move):
    for seed in range(3):
        masks = _masks(move, seed)
        assert masks.mean() > 0.03  # a figure is there
        changed = (masks[1:] != masks[:-1]).sum(axis=(1, 2))
        assert (changed > 0).mean() > 0.8, (seed, changed)
        assert changed.mean() > 0.02 * masks[0].size / 10, (seed, changed)


@pytest.mark.parametrize("move, axis", [("jump", 1), ("side_step", 0)])
def test_jump_moves_vertically_side_step_horizontally(move, axis):
    for seed in range(4):
        spread = _centroids(_masks(move, seed)).std(axis=0)  # (x, y) in pixels
        assert spread[axis] > 1.0 and spread[axis] > 2 * spread[1 - axis], (seed, spread)


def _changed_rows(masks: np.ndarray) -> np.ndarray:
    """Where frame-to-frame changes happen, as a fraction of the figure's height (0 = top, 1 = bottom)."""
    rows = np.flatnonzero(masks.any(axis=(0, 2)))
    top, bottom = rows.min(), rows.max()
    ys = np.nonzero(masks[1:] != masks[:-1])[1]
    return (ys - top) / (bottom - top)


def test_arm_wave_moves_the_upper_body_kick_both():
    # a kick lifts a leg (the lower 40 % of the figure) while the upper body leans away (the top)
    for seed in range(4):
        arm, kick = _changed_rows(_masks("arm_wave", seed)), _changed_rows(_masks("kick", seed))
        assert (arm > 0.6).mean() < 0.15 and (arm < 0.4).mean() > 0.4, seed
        assert (kick > 0.6).mean() > 0.3 and (kick < 0.4).mean() > 0.2, seed


def test_spin_changes_the_width_sway_moves_the_top():
    for seed in range(4):
        masks = _masks("spin", seed)
        cols = masks.any(axis=1)
        width = np.array([np.ptp(np.flatnonzero(c)) for c in cols])
        assert width.max() - width.min() > 0.25 * width.max(), (seed, width)

        masks = _masks("sway", seed)  # the upper body swings about the hips, the feet stay nearly put
        ys, xs = np.mgrid[: masks.shape[1], : masks.shape[2]]
        rows = np.flatnonzero(masks.any(axis=(0, 2)))
        height = rows.max() - rows.min()
        head = masks & (ys < rows.min() + 0.2 * height)
        feet = masks & (ys > rows.max() - 0.2 * height)
        x_head = (head * xs).sum(axis=(1, 2)) / head.sum(axis=(1, 2))
        x_feet = (feet * xs).sum(axis=(1, 2)) / feet.sum(axis=(1, 2))
        assert x_head.std() > 2.0 and x_head.std() > 1.5 * x_feet.std(), (seed, x_head.std(), x_feet.std())


def test_cli_writes_the_layout(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo-data", str(out), "--classes", "jump,spin,sway", "--clips-per-class", "5", "--frames", "6",
            "--size", "48", "--workers", "2", "--val-frac", "0.2", "--test-frac", "0.2"]
    assert main(argv) == 0
    assert "3 classes" in capsys.readouterr().out
    assert (out / "classes.txt").read_text().splitlines() == ["jump", "spin", "sway"]
    seen = set()
    for split, per_class in (("train", 3), ("val", 1), ("test", 1)):
        lines = [line.split() for line in (out / f"{split}.txt").read_text().splitlines()]
        labels = [int(label) for _, label in lines]
        assert sorted(labels) == sorted(list(range(3)) * per_class), split
        for path, label in lines:
            name = ["jump", "spin", "sway"][int(label)]
            assert path.startswith(f"videos/{name}/{name}_") and path.endswith(".mp4")
            info = probe(out / path)
            assert (info.num_frames, info.height, info.width) == (6, 48, 48), path
            assert info.fps == pytest.approx(15.0)
            seen.add(path)
    assert len(seen) == 15  # the splits are disjoint and cover every clip
    assert len(list((out / "videos").rglob("*.mp4"))) == 15
    meta = json.loads((out / "meta.json").read_text())
    assert meta["classes"] == ["jump", "spin", "sway"] and meta["clips_per_class"] == 5


def test_idempotent_and_regenerates_when_incomplete_or_different(tmp_path):
    out = tmp_path / "demo"
    kwargs = dict(classes=["kick", "arm_wave"], clips_per_class=4, frames=4, size=32, workers=1)
    generate_demo_dataset(out, **kwargs)
    clip = out / "videos" / "kick" / "kick_3.mp4"
    stamp = clip.stat().st_mtime_ns
    started = time.perf_counter()
    assert generate_demo_dataset(out, **kwargs) == out
    assert time.perf_counter() - started < 0.5
    assert clip.stat().st_mtime_ns == stamp  # nothing rewritten

    clip.unlink()  # incomplete: regenerated
    generate_demo_dataset(out, **kwargs)
    assert clip.is_file()

    generate_demo_dataset(out, **{**kwargs, "clips_per_class": 3})  # other parameters: regenerated
    assert not clip.exists()  # the stale clip is gone
    assert len((out / "train.txt").read_text().splitlines()) == 2 * (3 - 1 - 1)
    assert json.loads((out / "meta.json").read_text())["clips_per_class"] == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(classes=["jump", "moonwalk"]), "moonwalk"),
        (dict(classes=[]), "unknown class"),
        (dict(classes=["jump", "jump"]), "repeat"),
        (dict(size=30), "size"),
        (dict(size=65), "even"),
        (dict(size=100000), r"in 32..2048"),  # 30 GB of frames per clip: refused, not attempted
        (dict(frames=1), "frames"),
        (dict(clips_per_class=2, val_frac=0.5, test_frac=0.5), "no training clip"),
        (dict(val_frac=1.5), "fractions"),
    ],
)
def test_bad_arguments_raise_clear_errors(tmp_path, kwargs, message):
    with pytest.raises(DemoDataError, match=message):
        generate_demo_dataset(tmp_path / "demo", **kwargs)
    assert not (tmp_path / "demo").exists()  # nothing written


def test_cli_reports_bad_arguments(tmp_path, capsys):
    assert main(["demo-data", str(tmp_path / "d"), "--classes", "jump,twerk"]) == 2
    assert "twerk" in capsys.readouterr().err
    with pytest.raises(DemoDataError, match="unknown move"):
        render_clip("twerk", PLAIN, np.random.default_rng(0))


def test_unwritable_output_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(DemoDataError, match="exists and is not a folder"):
        generate_demo_dataset(blocker, clips_per_class=3, frames=2, size=32, workers=1)
    with pytest.raises(DemoDataError, match="cannot write"):
        generate_demo_dataset(blocker / "demo", clips_per_class=3, frames=2, size=32, workers=1)


def test_someone_s_dataset_is_refused_and_an_interrupted_demo_is_rebuilt(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train.txt").write_text("videos/salsa_1.mp4 0\n")
    with pytest.raises(DemoDataError, match="not a demo dataset"):
        generate_demo_dataset(mine, classes=["kick", "jump"], clips_per_class=4, frames=4, size=32, workers=1)
    assert (mine / "train.txt").read_text() == "videos/salsa_1.mp4 0\n" and sorted(p.name for p in mine.iterdir()) == ["train.txt"]
    assert main(["demo-data", str(mine), "--clips-per-class", "4", "--frames", "4", "--size", "32"]) == 2
    assert "not a demo dataset" in capsys.readouterr().err
    # a build killed half way leaves its meta.json marked incomplete: the next run rebuilds it, not refuses it
    out = tmp_path / "demo"
    kwargs = dict(classes=["kick", "jump"], clips_per_class=4, frames=4, size=32, workers=1)
    generate_demo_dataset(out, **kwargs)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    (out / "train.txt").unlink()
    generate_demo_dataset(out, **kwargs)
    assert json.loads((out / "meta.json").read_text()) == meta and (out / "train.txt").is_file()
