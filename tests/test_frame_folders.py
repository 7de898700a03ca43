"""A video may be a folder of frames (mmaction2/denseflow rawframes): flow_engine.video reads it like a
video file, and estimate, precompute, the data module and classify take it through that one reader."""
from __future__ import annotations

import os
import time

import cv2
import numpy as np
import pytest

from flow_engine.__main__ import main as flow_main
from flow_engine.io import read_flow
from flow_engine.video import (
    VideoError, check_frame_pattern, frame_files, iter_frames, list_videos, probe, read_frames, resize_frames,
    source_stat,
)

RAWFRAMES = "ucf101_applyeyemakeup_rawframes"


def write_frames(folder, frames: np.ndarray, pattern: str = "img_{:05d}.jpg", start: int = 1):
    """Write uint8 RGB ``frames`` as ``pattern`` files numbered from ``start``; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames, start):
        assert cv2.imwrite(str(folder / pattern.format(i)), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return folder


def ramp(n: int = 6, h: int = 24, w: int = 32) -> np.ndarray:
    """Frame t: a horizontal ramp plus 30*t, so every frame is identifiable and has structure."""
    x = np.linspace(0, 90, w)[None, :, None]
    return np.stack([np.broadcast_to(x + 30 * t, (h, w, 3)) for t in range(n)]).astype(np.uint8)


def test_the_shared_rawframes_folder_reads_like_its_video(shared_videos):
    folder = shared_videos / RAWFRAMES
    info = probe(folder)
    # 10 img_ frames; the x_/y_ flow JPEGs beside them are not frames
    assert (info.num_frames, info.height, info.width, info.fps) == (10, 240, 320, 0.0)
    frames = read_frames(folder).astype(np.float32)
    video = read_frames(shared_videos / "ucf101_ApplyEyeMakeup.avi", range(12)).astype(np.float32)
    # each JPEG frame is one of the clip's first frames (the AVI repeats frames, so match the nearest), in order
    diffs = np.abs(frames[:, None] - video[None]).mean(axis=(2, 3, 4))  # [10, 12]
    nearest = diffs.argmin(axis=1)
    assert diffs.min(axis=1).max() < 1.5 and np.all(np.diff(nearest) >= 0) and nearest[0] <= 1
    assert read_frames(folder, [9, 0, 9], size=(120, 160)).shape == (3, 120, 160, 3)
    assert [c.shape[0] for c in iter_frames(folder, chunk=4)] == [4, 4, 2]
    assert len(frame_files(folder, "x_{:05d}.jpg")) == 5  # the same reader lists other numbered files


@pytest.mark.parametrize("pattern, start", [("frame_{:06d}.png", 0), ("{:05d}.png", 1), ("img_{:d}.png", 1)])
def test_numbered_patterns_give_the_frames_in_number_order(tmp_path, pattern, start):
    clip = ramp(12)
    folder = write_frames(tmp_path / "v", clip, pattern, start)
    (folder / "notes.txt").write_text("not a frame: ignored")
    (folder / "Thumbs.db").write_bytes(b"\x00" * 100)
    assert probe(folder, pattern).num_frames == 12
    assert np.array_equal(read_frames(folder, [11, 2, 11], frame_pattern=pattern), clip[[11, 2, 11]])  # PNG: exact
    chunks = list(iter_frames(folder, chunk=5, size=(12, 16), frame_pattern=pattern))
    assert [c.shape for c in chunks] == [(5, 12, 16, 3), (5, 12, 16, 3), (2, 12, 16, 3)]
    assert np.array_equal(np.concatenate(chunks), resize_frames(clip, (12, 16)))  # resized like video frames
    if pattern == "img_{:d}.png":  # frame 10 sorts before frame 2 by name: numbers, not names, give the order
        assert [f.name for f in frame_files(folder, pattern)][:3] == ["img_1.png", "img_2.png", "img_3.png"]


def test_a_glob_pattern_takes_every_image_in_name_order(tmp_path):
    folder = write_frames(tmp_path / "v", ramp(3), "shot_{:02d}.png")
    (folder / "readme.md").write_text("ignored: not an image")
    assert [f.name for f in frame_files(folder, "*")] == ["shot_01.png", "shot_02.png", "shot_03.png"]
    assert np.array_equal(read_frames(folder, frame_pattern="*.png"), ramp(3))


def test_frame_patterns_are_checked():
    assert check_frame_pattern("frame_{:06d}.png") == "frame_{:06d}.png"
    for bad, words in [("{}_{}.jpg", "one integer field"), ("{:s}.jpg", "one integer field"),
                       ("{name}.jpg", "one integer field"), ("dir/{:05d}.jpg", "not a path"), ("img_{", "Single '{'")]:
        with pytest.raises(ValueError, match=words):
            check_frame_pattern(bad)


# ----------------------------------------------------------------------------- bad frame folders


def test_a_missing_frame_is_an_error_naming_it(tmp_path):
    folder = write_frames(tmp_path / "v", ramp(6))
    os.unlink(folder / "img_00003.jpg")
    for call in (lambda: probe(folder), lambda: read_frames(folder, [0]), lambda: next(iter_frames(folder))):
        with pytest.raises(VideoError, match=r"/v: frame img_00003.jpg is missing \(5 frames of img_00001.jpg..img_00006.jpg"):
            call()
    os.unlink(folder / "img_00001.jpg")
    os.unlink(folder / "img_00002.jpg")
    with pytest.raises(VideoError, match="frame img_00001.jpg is missing .the first frame is img_00004.jpg"):
        probe(folder)


def test_an_unreadable_frame_is_an_error_naming_it(tmp_path):
    folder = write_frames(tmp_path / "v", ramp(6))
    (folder / "img_00004.jpg").write_text("not a JPEG at all")
    with pytest.raises(VideoError, match=r"v: frame img_00004.jpg: unreadable image"):
        read_frames(folder, [1, 3])
    with pytest.raises(VideoError, match="frame img_00004.jpg: unreadable image"):
        list(iter_frames(folder, chunk=2))
    assert read_frames(folder, [0, 5]).shape == (2, 24, 32, 3)  # the other frames still read
    (folder / "img_00004.jpg").write_bytes(b"")
    with pytest.raises(VideoError, match="frame img_00004.jpg: empty file"):
        read_frames(folder, [3])


@pytest.mark.timeout(60)
def test_a_fifo_named_like_a_frame_never_blocks(tmp_path):
    folder = write_frames(tmp_path / "v", ramp(3))
    os.unlink(folder / "img_00002.jpg")
    os.mkfifo(folder / "img_00002.jpg")
    with pytest.raises(VideoError, match="frame img_00002.jpg is not a regular file"):
        read_frames(folder)


def test_frames_of_mixed_sizes_are_an_error_naming_the_odd_one(tmp_path):
    clip = ramp(6)
    folder = write_frames(tmp_path / "v", clip)
    write_frames(folder, ramp(1, 12, 16), start=6)  # the last frame is half the size
    with pytest.raises(VideoError, match=r"frame img_00006.jpg is 16x12 but frame img_00001.jpg is 32x24: "
                                         "the frames of a folder must share one size"):
        probe(folder)
    with pytest.raises(VideoError, match="frame img_00006.jpg is 16x12 but frame img_00001.jpg is 32x24"):
        list(iter_frames(folder, chunk=4, size=(24, 32)))  # resizing does not hide it
    with pytest.raises(VideoError, match="img_00006.jpg is 16x12 but frame img_00002.jpg"):
        read_frames(folder, [1, 5])


def test_a_folder_without_frames_is_a_clear_error(tmp_path):
    folder = write_frames(tmp_path / "v", ramp(2), "{:05d}.jpg")
    with pytest.raises(VideoError, match=r"no frames named img_\{:05d\}.jpg: img_00001.jpg... in this folder "
                                         r"\(set the frame pattern"):
        probe(folder)
    assert probe(folder, "{:05d}.jpg").num_frames == 2


def test_list_videos_finds_frame_folders_and_source_stat_sees_a_rewritten_frame(tmp_path):
    write_frames(tmp_path / "data" / "a" / "v1", ramp(2))
    write_frames(tmp_path / "data" / "b" / "v2", ramp(2))
    (tmp_path / "data" / "b" / "empty").mkdir()
    assert list_videos(tmp_path / "data") == [tmp_path / "data/a/v1", tmp_path / "data/b/v2"]
    assert list_videos(tmp_path / "data" / "a" / "v1") == [tmp_path / "data/a/v1"]  # one frame folder
    folder = tmp_path / "data" / "a" / "v1"
    before = source_stat(folder)
    time.sleep(0.01)
    write_frames(folder, ramp(1, 24, 40), start=2)  # same name, new content: the folder's own mtime stays
    assert source_stat(folder) != before


def test_estimate_reads_frame_folders_through_the_video_reader(tmp_path, capsys):
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)
    clip = np.stack([texture[:, 2 * t: 2 * t + 64] for t in range(4)])  # moves 2 px left per frame
    folder = write_frames(tmp_path / "v", clip, "frame_{:06d}.png", 0)
    out = tmp_path / "out"
    assert flow_main(["estimate", "--video", str(folder), "--frame-pattern", "frame_{:06d}.png", "-o", str(out),
                      "--flo", "--model", "dis"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["000000.flo", "000001.flo", "000002.flo"]
    assert abs(np.median(read_flow(out / "000001.flo")[0][10:-10, 10:-10, 0]) + 2.0) < 0.3
    assert "3 flow fields from 4 frames" in capsys.readouterr().out
    assert flow_main(["estimate", "--video", str(folder), "-o", str(out), "--flo", "--model", "dis"]) == 1
    assert "no frames named img_{:05d}.jpg" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        flow_main(["estimate", "--frames", str(folder), "--frame-pattern", "{}{}", "-o", str(out), "--flo"])
    assert "one integer field" in capsys.readouterr().err
