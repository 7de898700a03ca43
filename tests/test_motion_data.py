"""Generated motion for pre-training the temporal stream: a tempo is a faster clock, a speed class is the same clip
with the clock sped up, tempo classes that move as fast as their names say, the layout train.py reads, bad settings."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from actionflow.__main__ import main
from actionflow.annotations import load_splits
from actionflow.benchmarks.demo_data import MOVES, RenderParams, render_clip
from actionflow.benchmarks.motion_data import (
    OCTAVES, MotionDataError, clip_settings, generate, render_speed_clip, render_tempo_clip, task_classes,
)
from actionflow.benchmarks.real_motion import CLASSES
from flow_engine.io.video import probe, read_frames

PLAIN = RenderParams(frames=16, size=64, background="plain", jitter=0.0, noise=0.0)


@pytest.mark.parametrize("move", MOVES)
def test_a_tempo_of_two_is_every_other_frame(move):
    slow = render_clip(move, PLAIN, np.random.default_rng(5))
    fast = render_clip(move, replace(PLAIN, frames=8, tempo=2.0), np.random.default_rng(5))
    assert np.array_equal(fast, slow[::2])


def test_speed_classes_are_one_clip_with_a_faster_clock():
    for index in range(3):
        base = render_speed_clip(1, replace(PLAIN, frames=13), seed=0, index=index)
        assert np.array_equal(render_speed_clip(2, replace(PLAIN, frames=7), seed=0, index=index), base[::2])
        assert np.array_equal(render_speed_clip(4, replace(PLAIN, frames=4), seed=0, index=index), base[::4])
    tempos = [clip_settings(0, i)[1] for i in range(200)]
    assert 0.25 <= min(tempos) < 0.35 and 1.6 < max(tempos) <= 2.0  # log-uniform over the whole range
    assert len({clip_settings(0, i)[0] for i in range(50)}) == len(MOVES)


def test_tempo_classes():
    names = task_classes("tempo")
    assert len(names) == len(MOVES) * OCTAVES == 30 and names[:2] == [f"{MOVES[0]}_x0.25", f"{MOVES[0]}_x0.5"]
    assert names[OCTAVES - 1] == f"{MOVES[0]}_x4" and task_classes("speed") == list(CLASSES)
    with pytest.raises(MotionDataError, match="task must be one of"):
        task_classes("colour")

    def motion(label: int) -> float:  # mean change between frames, over a few clips of a class
        return float(np.mean([np.abs(np.diff(render_tempo_clip(label, replace(PLAIN, frames=6), 0, i).astype(int), axis=0)).mean()
                              for i in range(4)]))

    spin = MOVES.index("spin") * OCTAVES
    assert motion(spin) < motion(spin + 2) < motion(spin + 3)  # 0.25-0.5x < 1-2x < 2-4x the demo's speed


def test_a_generated_set(tmp_path):
    out = tmp_path / "motion"
    assert main(["motion-data", str(out), "--task", "speed", "--clips-per-class", "10", "--frames", "6", "--size", "48",
                 "--workers", "1"]) == 0
    splits = load_splits(str(out))
    assert splits.classes == list(CLASSES)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 3, 3)
    for split in (splits.train, splits.val, splits.test):  # a clip's three speeds share its split
        indices = [s.path.rsplit("_", 1)[1] for s in split]
        assert all(indices.count(i) == 3 for i in indices)
    clip = splits.train[0].path
    assert probe(clip).num_frames == 6 and probe(clip).width == 48
    moved = {c: np.mean([np.abs(np.diff(read_frames(s.path).astype(int), axis=0)).mean()
                         for s in splits.train if s.label == c]) for c in range(3)}
    assert moved[0] < moved[1] < moved[2]  # a faster clock moves more between frames, on average
    meta = (out / "meta.json").stat().st_mtime_ns
    generate(out, "speed", clips_per_class=10, frames=6, size=48, workers=1)  # complete: kept
    assert (out / "meta.json").stat().st_mtime_ns == meta and json.loads((out / "meta.json").read_text())["size"] == 48
    generate(out, "speed", clips_per_class=10, frames=6, size=48, seed=1, workers=1)  # its own set, other settings: rebuilt
    assert json.loads((out / "meta.json").read_text())["seed"] == 1
    mine = tmp_path / "my_dataset"  # someone's dataset (or another benchmark): its lists must survive
    mine.mkdir()
    (mine / "train.txt").write_text("videos/a.mp4 0\n")
    assert main(["motion-data", str(mine), "--task", "speed", "--clips-per-class", "10", "--frames", "6", "--size", "48"]) == 2
    assert (mine / "train.txt").read_text() == "videos/a.mp4 0\n" and not (mine / "videos").exists()
    with pytest.raises(MotionDataError, match="even size"):
        generate(tmp_path / "bad", size=33)
    assert main(["motion-data", str(tmp_path / "bad"), "--clips-per-class", "2"]) == 2
    (tmp_path / "file").write_text("x")
    assert main(["motion-data", str(tmp_path / "file"), "--clips-per-class", "10"]) == 2
