"""A video may be a folder of frames (mmaction2/denseflow rawframes): flow_engine.io.video reads it like a
video file, and estimate, precompute, the data module and classify take it through that one reader."""
from __future__ import annotations

import os
import time

import cv2
import numpy as np
import pytest

from flow_engine.__main__ import main as flow_main
from flow_engine.io.flow_files import read_flow
from flow_engine.io.video import (
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
    from hostile_files import image_claiming

    (folder / "img_00004.jpg").write_bytes(image_claiming(".jpg", 20000, 20000))  # 629 bytes, 1.2 GB decoded
    with pytest.raises(VideoError, match="frame img_00004.jpg: image of 20000x20000 pixels is above the limit"):
        list(iter_frames(folder, chunk=2))


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
                      "--flo", "--engine", "dis"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["000000.flo", "000001.flo", "000002.flo"]
    assert abs(np.median(read_flow(out / "000001.flo")[0][10:-10, 10:-10, 0]) + 2.0) < 0.3
    assert "3 flow fields from 4 frames" in capsys.readouterr().out
    assert flow_main(["estimate", "--video", str(folder), "-o", str(out), "--flo", "--engine", "dis"]) == 1
    assert "no frames named img_{:05d}.jpg" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        flow_main(["estimate", "--frames", str(folder), "--frame-pattern", "{}{}", "-o", str(out), "--flo"])
    assert "one integer field" in capsys.readouterr().err


# ----------------------------------------------------------------------------- precompute, data module, classify


def test_precompute_caches_frame_folders_and_names_bad_frames(tmp_path, capsys):
    from test_precompute import SIZE, StandInEngine, args_for, cache_for

    from actionflow import precompute as pc
    from actionflow.flow_cache import CachedFlow

    rng = np.random.default_rng(1)
    root = tmp_path / "rawframes"
    good = [write_frames(root / "a" / f"v{i}", rng.integers(0, 255, (5 + i, 64, 80, 3), dtype=np.uint8), "{:05d}.png")
            for i in range(2)]
    gap = write_frames(root / "b" / "gap", ramp(5), "{:05d}.png")
    os.unlink(gap / "00002.png")
    mixed = write_frames(root / "b" / "mixed", ramp(4), "{:05d}.png")
    write_frames(mixed, ramp(1, 12, 16), "{:05d}.png", start=3)
    assert pc.run(args_for(root, tmp_path / "cache", "--frame-pattern", "{:05d}.png", "--codec", "png"), engine=StandInEngine()) == 1
    out = capsys.readouterr().out
    assert "videos: 2 computed, 0 skipped (already cached), 2 failed" in out
    assert f"FAILED {gap}: frame 00002.png is missing" in out
    assert f"FAILED {mixed}: frame 00003.png is 16x12 but frame 00001.png is 32x24" in out
    cache = cache_for(tmp_path / "cache")
    for folder in good:  # the flow of the folder's frames, resized to the cache's size like a video's
        frames = torch_frames(read_frames(folder, size=SIZE, frame_pattern="{:05d}.png"))
        want = StandInEngine()(frames[:-1], frames[1:]).numpy()
        with CachedFlow(cache.path_for(folder)) as c:
            assert c.num_flows == len(want)
            np.testing.assert_allclose(c.read(0, c.num_flows), want.clip(-20, 20), atol=20 / 127 / 2 + 1e-4)
    # resumable: unchanged folders are skipped; a rewritten frame makes its entry stale
    assert pc.run(args_for(good[0], tmp_path / "cache", "--frame-pattern", "{:05d}.png", "--codec", "png"), engine=StandInEngine()) == 0
    assert "0 computed, 1 skipped" in capsys.readouterr().out
    time.sleep(0.01)
    write_frames(good[0], rng.integers(0, 255, (1, 64, 80, 3), dtype=np.uint8), "{:05d}.png", start=2)
    assert cache.lookup(good[0]) is None
    assert pc.run(args_for(good[0], tmp_path / "cache", "--frame-pattern", "{:05d}.png", "--codec", "png"), engine=StandInEngine()) == 0
    assert "1 computed, 0 skipped" in capsys.readouterr().out


def torch_frames(frames: np.ndarray):
    import torch

    return torch.from_numpy(frames).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def rawframes(tmp_path_factory):
    """A rawframe dataset of the tiny moving squares: ``frames/<class>/<i>/{:05d}.jpg`` and mmaction2 lists."""
    from tiny_videos import render

    root = tmp_path_factory.mktemp("rawframes")
    lines = {"train": [], "val": []}
    for label, name in enumerate(("right", "left")):
        for i in range(3):
            write_frames(root / "frames" / name / str(i), render(name, frames=10, size=32, seed=10 * label + i), "{:05d}.jpg")
            lines["train" if i < 2 else "val"].append(f"frames/{name}/{i} 10 {label}")
    for split, entries in lines.items():
        (root / f"{split}.txt").write_text("\n".join(entries) + "\n")
    (root / "classes.txt").write_text("right\nleft\n")
    return root


def test_the_data_module_trains_on_rawframe_lists_with_cached_flow(rawframes, tmp_path, caplog):
    import logging

    from actionflow.data import ActionDataModule

    short = write_frames(tmp_path / "short", ramp(6, 32, 32), "{:05d}.jpg")  # the list says 10
    broken = write_frames(tmp_path / "broken", ramp(6, 32, 32), "{:05d}.jpg")
    os.unlink(broken / "00004.jpg")
    train = tmp_path / "train.txt"
    train.write_text((rawframes / "train.txt").read_text() + f"{short} 10 0\n{broken} 6 1\n")
    kw = dict(root=str(rawframes), train_list=str(train), val_list=str(rawframes / "val.txt"),
              test_list=str(rawframes / "val.txt"), class_index=str(rawframes / "classes.txt"), mode="flow",
              flow_source="cache", cache_dir=str(tmp_path / "cache"), flow_engine="dis", num_workers=0, size=(32, 32),
              crop_size=(32, 32), num_segments=2, flow_length=3, frame_pattern="{:05d}.jpg")
    dm = ActionDataModule(**kw)
    with caplog.at_level(logging.WARNING):
        dm.prepare_data()
        dm.setup("fit")
    assert dm.skipped == [f"{broken}: frame 00004.jpg is missing (5 frames of 00001.jpg..00006.jpg are there)"]
    assert (f"1 frame folder(s) hold fewer frames than their list says (the frames there are used): "
            f"{short} has 6 ({train}:5 says 10)") in caplog.text
    assert len(dm.clips["train"]) == 5 and [c.num_frames for c in dm.clips["train"]][-1] == 6
    val = dm.dataset("val")  # centre crops, no flip: the square moves 1 px per frame, right (0) or left (1)
    for index, clip in enumerate(dm.clips["val"]):
        flow = val[index]["flow"]  # [S, 2L, h, w]
        moving = flow.abs().amax(dim=1, keepdim=True).expand_as(flow)[:, 0::2] > 0.5
        median_x = flow[:, 0::2][moving].median().item()
        assert abs(median_x - (1.0 if clip.sample.label == 0 else -1.0)) < 0.35, (clip.sample.path, median_x)
    from actionflow.clips import BadVideo

    (tmp_path / "strict.txt").write_text(f"{short} 10 0\n")
    (tmp_path / "test.txt").write_text(f"{rawframes / 'frames/left/0'} 10 1\n")  # splits apart: strict allows no overlap
    strict = ActionDataModule(**{**kw, "train_list": str(tmp_path / "strict.txt"), "test_list": str(tmp_path / "test.txt"),
                                 "strict": True})
    with pytest.raises(BadVideo, match=r"1 frame folder\(s\) hold fewer frames .*\(data.strict is true\)"):
        strict.setup("fit")


def test_the_skip_summary_keeps_the_reason_a_folders_flow_failed(rawframes, tmp_path):
    """A middle frame that does not decode, or has another size, passes setup's probe (first and last frames)
    and fails the flow: the summary says why, not just that no flow was cached."""
    from actionflow.data import ActionDataModule

    unreadable = write_frames(tmp_path / "unreadable", ramp(6, 32, 32), "{:05d}.jpg")
    (unreadable / "00003.jpg").write_bytes(b"not a JPEG")
    mixed = write_frames(tmp_path / "mixed", ramp(6, 32, 32), "{:05d}.jpg")
    write_frames(mixed, ramp(1, 16, 16), "{:05d}.jpg", start=4)
    train = tmp_path / "train.txt"
    train.write_text((rawframes / "train.txt").read_text() + f"{unreadable} 6 0\n{mixed} 6 1\n")
    dm = ActionDataModule(root=str(rawframes), train_list=str(train), val_list=str(rawframes / "val.txt"),
                          test_list=str(rawframes / "val.txt"), class_index=str(rawframes / "classes.txt"), mode="flow",
                          cache_dir=str(tmp_path / "cache"), flow_engine="dis", num_workers=0, size=(32, 32),
                          crop_size=(32, 32), num_segments=2, flow_length=3, frame_pattern="{:05d}.jpg")
    dm.prepare_data()
    dm.setup("fit")
    assert dm.skipped == [f"{unreadable}: frame 00003.jpg: unreadable image (no header of a known format: "
                          "JPEG, PNG, WebP, TIFF, BMP, PPM/PGM, JPEG 2000, AVIF)",
                          f"{mixed}: frame 00004.jpg is 16x16 but frame 00001.jpg is 32x32: the frames of a folder "
                          "must share one size"]


def test_a_short_side_cache_reads_frame_folders_with_their_pattern(rawframes, tmp_path):
    """data.size as a short side probes each folder for its own size: with the folders' pattern, not the default."""
    from actionflow.data import ActionDataModule

    dm = ActionDataModule(root=str(rawframes), train_list=str(rawframes / "train.txt"), val_list=str(rawframes / "val.txt"),
                          test_list=str(rawframes / "val.txt"), class_index=str(rawframes / "classes.txt"), mode="flow",
                          cache_dir=str(tmp_path / "cache"), flow_engine="dis", num_workers=0, size=32, crop_size=(32, 32),
                          num_segments=2, flow_length=3, frame_pattern="{:05d}.jpg")
    dm.prepare_data()
    dm.setup("fit")
    assert dm.skipped == [] and len(dm.clips["train"]) == 4
    with dm.cache.open(dm.clips["train"][0].sample.path) as cached:
        assert (cached.num_flows, cached.height, cached.width) == (9, 32, 32)
        assert cached.header["video"]["frame_size"] == [32, 32]


def test_a_frame_that_fails_after_setup_drops_the_item_with_its_name(tmp_path, caplog):
    import logging

    from actionflow.annotations import Sample
    from actionflow.clips import Clip, VideoClips, collate

    folder = write_frames(tmp_path / "v", ramp(8))
    (folder / "img_00004.jpg").write_bytes(b"\xff\xd8 truncated")  # first and last frames (what setup probes) are fine
    assert probe(folder).num_frames == 8
    ds = VideoClips([Clip(Sample(str(folder), 0), 8, (24, 32))], "test", mode="two_stream", flow_source="online",
                    num_segments=2, flow_length=3, test_clips=1, crop_size=(24, 32))
    with caplog.at_level(logging.WARNING):
        batch = collate([ds[0]])
    assert int(batch["num_dropped"]) == 1
    assert f"skipping {folder}: frame img_00004.jpg: unreadable image" in caplog.text


def test_classify_takes_a_frame_folder(rawframes, tmp_path, capsys):
    import json

    import torch

    from actionflow.__main__ import main
    from actionflow.module import ActionRecognizer

    torch.manual_seed(0)
    model = ActionRecognizer(num_classes=2, class_names=["right", "left"], mode="two_stream", flow_length=3)
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "datamodule_hyper_parameters": {"size": [32, 32], "crop_size": [32, 32], "num_segments": 2,
                                                "test_clips": 1, "frame_pattern": "{:05d}.jpg"}}, ckpt)
    folder = rawframes / "frames" / "right" / "0"
    assert main(["classify", str(folder), "--ckpt", str(ckpt), "--json", "--device", "cpu",
                 "--flow-video", str(tmp_path / "flow.mp4")]) == 0  # the pattern comes from the checkpoint
    assert {r["label"] for r in json.loads(capsys.readouterr().out)["topk"]} == {"right", "left"}
    assert probe(tmp_path / "flow.mp4").num_frames == 9
    assert main(["classify", str(folder), "--ckpt", str(ckpt), "--frame-pattern", "img_{:05d}.jpg",
                 "--device", "cpu"]) == 1
    assert "no frames named img_{:05d}.jpg" in capsys.readouterr().err


def test_frame_indices_out_of_range_are_an_error(tmp_path):
    folder = write_frames(tmp_path / "v", ramp(4))
    with pytest.raises(VideoError, match=r"frame index out of range: asked for 0..4, folder has 4 frames"):
        read_frames(folder, [0, 4])


def test_the_frame_pattern_travels_with_the_video_into_a_short_side_cache(tmp_path, capsys):
    """A short-side cache probes each video for its size (FlowCache.header_for): a frame folder named
    otherwise than img_{:05d}.jpg is probed with its own pattern, from the command line and from a Video."""
    from test_precompute import StandInEngine

    from actionflow import precompute as pc
    from actionflow.flow_cache import CachedFlow, FlowCache
    from flow_engine.io.video import Video

    folder = write_frames(tmp_path / "rawframes" / "v", ramp(5, 24, 32), "{:05d}.png")
    cache = FlowCache(tmp_path / "cache", StandInEngine().config(), size=16, bound=20.0, codec="png")
    assert cache.frame_size(Video(str(folder), "{:05d}.png")) == (16, 22)  # short side 16 of 24x32, sides even
    with pytest.raises(VideoError, match="no frames"):
        cache.header_for(str(folder))  # a bare path: the default pattern names none of its files
    argv = ["--videos", str(tmp_path / "rawframes"), "--cache", str(tmp_path / "cache"), "--size", "16",
            "--frame-pattern", "{:05d}.png", "--codec", "png", "--no-progress"]
    import argparse

    parser = argparse.ArgumentParser()
    pc.add_arguments(parser)
    assert pc.run(parser.parse_args(argv), engine=StandInEngine()) == 0
    assert "videos: 1 computed" in capsys.readouterr().out
    with CachedFlow(cache.path_for(folder)) as c:
        assert (c.height, c.width, c.num_flows) == (16, 22, 4) and c.header["video"]["frame_size"] == [24, 32]
