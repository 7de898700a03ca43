"""The real-footage benchmark builder: time resampling, clip speeds, splits by video, a complete build."""
from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_videos import render, write_mp4

from actionflow.__main__ import main as cli
from actionflow.annotations import load_splits
from actionflow.benchmarks.real_motion import (
    BASE_FPS, CLASSES, SPEEDS, TEST_VIDEOS, VAL_VIDEOS, RealMotionError, base_rate_frames, build, cut_clips, split_of,
)
from flow_engine.io.video import probe, read_frames


def _numbered(n: int) -> np.ndarray:
    """Frames whose pixel value is their index: which source frame a clip holds is readable."""
    return np.arange(n, dtype=np.uint8)[:, None, None, None].repeat(4, 1).repeat(4, 2).repeat(3, 3)


def test_base_rate_resampling_keeps_real_time():
    frames = _numbered(61)  # 2 s at 30 fps
    base = base_rate_frames(frames, 30.0)
    assert len(base) == 31 and list(base[:4, 0, 0, 0]) == [0, 2, 4, 6]  # every other frame: 15 fps
    assert list(base_rate_frames(frames[:21], 10.0)[:4, 0, 0, 0]) == [0, 1, 1, 2]  # 10 fps: frames repeat
    assert BASE_FPS == 15.0


def test_clip_speeds_and_counts():
    base = _numbered(100)
    clips = cut_clips(base, clips_per_class=3, frames=16)
    for cls in CLASSES:
        assert len(clips[cls]) == 3 and all(c.shape == (16, 4, 4, 3) for c in clips[cls])
        steps = {int(d) for c in clips[cls] for d in np.diff(c[:, 0, 0, 0].astype(int))}
        assert steps == {SPEEDS[cls]}
    assert clips["faster"][-1][-1, 0, 0, 0] == 99  # starts spread over the whole video
    short = cut_clips(base[:40], clips_per_class=3, frames=16)  # 40 base frames: no room for a 61-frame span
    assert short["faster"] == [] and len(short["normal"]) == 3


def test_splits_are_fixed_by_video_name(tmp_path):
    assert {split_of(tmp_path / f"{v}.mp4") for v in TEST_VIDEOS} == {"test"}
    assert {split_of(tmp_path / f"{v}.mp4") for v in VAL_VIDEOS} == {"val"}
    assert split_of(tmp_path / "anything_else.mp4") == "train"
    assert not set(TEST_VIDEOS) & set(VAL_VIDEOS)


def test_a_build_from_generated_sources(tmp_path):
    source = tmp_path / "source"
    write_mp4(source / f"{TEST_VIDEOS[0]}.mp4", render("right", frames=70, size=64), fps=15)
    write_mp4(source / f"{VAL_VIDEOS[0]}.mp4", render("down", frames=70, size=64), fps=15)
    write_mp4(source / "train_clip.mp4", np.ascontiguousarray(render("left", frames=140, size=80)[:, :, :64]), fps=30)  # portrait
    (source / "broken.mp4").write_bytes(b"\x00" * 100)
    out = tmp_path / "bench"
    assert cli(["real-motion", str(out), "--source", str(source), "--clips-per-class", "2", "--short-side", "48"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["counts"] == {"train": 6, "val": 6, "test": 6} and len(meta["skipped"]) == 1
    splits = load_splits(str(out), str(out / "train.txt"), str(out / "val.txt"), str(out / "test.txt"))
    assert splits.classes == list(CLASSES)
    train = [s for s in splits.train]
    assert all(probe(s.path).num_frames == 16 for s in train)
    assert probe(train[0].path).height == 60 and probe(train[0].path).width == 48  # short side 48, aspect kept
    faster = next(s for s in train if s.label == CLASSES.index("faster"))
    moved = np.abs(read_frames(faster.path)[1:].astype(int) - read_frames(faster.path)[:-1]).mean()
    normal = next(s for s in train if s.label == CLASSES.index("normal"))
    assert moved > np.abs(read_frames(normal.path)[1:].astype(int) - read_frames(normal.path)[:-1]).mean()
    # a complete build with the same settings is kept as it is
    before = (out / "train.txt").stat().st_mtime_ns
    assert build(out, source, clips_per_class=2, short_side=48) == out and (out / "train.txt").stat().st_mtime_ns == before
    assert cli(["real-motion", str(tmp_path / "x"), "--source", str(tmp_path / "nowhere")]) == 2


def test_the_help_names_the_classes_the_benchmark_has():
    from actionflow.__main__ import COMMANDS

    help_text = COMMANDS["real-motion"][1]
    assert help_text.split("(")[1].rstrip(").").split(": ")[1].split(" / ") == list(CLASSES)


def test_sizes_no_clip_is_cut_at_are_errors(tmp_path, capsys):
    for flag, value in (("--short-side", "100000"), ("--short-side", "16"), ("--frames", "0")):
        assert cli(["real-motion", str(tmp_path / "out"), "--source", str(tmp_path), flag, value]) == 2
        assert "a short_side of 32..4096 px are needed" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_someone_s_dataset_is_refused_and_an_incomplete_build_is_not_kept(tmp_path):
    source = tmp_path / "source"
    write_mp4(source / f"{TEST_VIDEOS[0]}.mp4", render("right", frames=70, size=64), fps=15)
    write_mp4(source / f"{VAL_VIDEOS[0]}.mp4", render("down", frames=70, size=64), fps=15)
    write_mp4(source / "train_clip.mp4", render("left", frames=70, size=64), fps=15)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train.txt").write_text("videos/salsa_1.mp4 0\n")
    with pytest.raises(RealMotionError, match="not the real-motion benchmark"):
        build(mine, source, clips_per_class=2, short_side=48)
    assert (mine / "train.txt").read_text() == "videos/salsa_1.mp4 0\n"
    out = tmp_path / "bench"
    build(out, source, clips_per_class=2, short_side=48)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "complete": False}))  # killed half way
    (out / "test.txt").unlink()
    assert build(out, source, clips_per_class=2, short_side=48) == out
    assert (out / "test.txt").is_file() and "complete" not in json.loads((out / "meta.json").read_text())
