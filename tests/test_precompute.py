"""precompute: tiny generated MP4s + bad files, a stand-in engine with a known answer, resume,
shards, SIGKILL mid-run, two processes on one cache."""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from actionflow import precompute as pc
from actionflow.__main__ import main as cli
from actionflow.flow_cache import CachedFlow, FlowCache, dequantize, quantize
from flow_engine.engine import FlowEngine
from flow_engine.io.video import VideoError, list_videos, read_frames

SIZE = (48, 64)  # (H, W) the tests compute flow at (the videos are 64x80: resized on decode)
BOUND = 20.0


class StandInEngine(FlowEngine):
    """A fast engine with a known answer: u = red change / 2 (often beyond the bound:
    exercises clipping), v = red of frame 1 * 30/255 - 15. Counts its calls. FlowEngine's
    ``stream`` serves it, as it serves the classical engines (``model`` None, the flow from
    ``predict_clips``: a window's pairs in one call)."""

    model = None
    name = "standin"
    weights_hash = "0123abcd"
    device = torch.device("cpu")
    dtype = "fp32"
    scales = None
    max_pixels_per_batch = 1 << 40

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.pairs = 0
        self._method = self

    def predict_clips(self, clips: torch.Tensor) -> torch.Tensor:
        """As FlowEngine calls its method: frames as floats in [0, 1], [N,T,3,H,W] -> [N,T-1,2,H,W]."""
        clips = (clips * 255).round().to(torch.uint8)
        N, T = clips.shape[:2]
        return self(clips[:, :-1].flatten(0, 1), clips[:, 1:].flatten(0, 1)).unflatten(0, (N, T - 1))

    def config(self) -> dict:
        return {"name": self.name, "weights_hash": self.weights_hash, "dtype": "float32", "device": "cpu"}

    def memory_needed(self, height: int, width: int, pairs: int = 1) -> int:
        """As FlowEngine asks its method: a pair's frames and flow, float32."""
        return pairs * height * width * 8 * 4

    def __call__(self, frames1: torch.Tensor, frames2: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay)
        self.pairs += frames1.shape[0]
        a, b = frames1[:, 0].float(), frames2[:, 0].float()
        return torch.stack([(b - a) / 2, a * 30 / 255 - 15], dim=1)


def write_video(path: Path, frames: int = 12, height: int = 64, width: int = 80, phase: int = 0) -> Path:
    """An H.264 MP4 of a pattern moving 2 px right per frame."""
    import av

    y, x = np.mgrid[0:height, 0:width]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            grey = 128 + 100 * np.sin((x - 2 * t + phase) / 5.0) * np.cos(y / 7.0)
            rgb = np.stack([grey, np.roll(grey, 3, 1), 255 - grey], -1).clip(0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def good_videos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("good")
    (folder / "sub").mkdir()
    return [write_video(folder / "a.mp4", 12), write_video(folder / "sub" / "b.mp4", 9, phase=5),
            write_video(folder / "c.mp4", 12, phase=9), write_video(folder / "d.mp4", 10, phase=2),
            write_video(folder / "e.mp4", 11, phase=13), write_video(folder / "f.mp4", 12, phase=4)]


@pytest.fixture
def mixed_folder(tmp_path, good_videos) -> tuple[Path, list[Path], dict[str, str]]:
    """Two good videos plus every kind of bad input: name -> expected words of the reason."""
    folder = tmp_path / "videos"
    folder.mkdir()
    good = []
    for v in good_videos[:2]:
        (folder / v.name).write_bytes(v.read_bytes())
        good.append(folder / v.name)
    data = good_videos[0].read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("this is not a video\n" * 20)
    (folder / "corrupt.avi").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    write_video(folder / "single.mp4", frames=1)
    (folder / "notes.txt").write_text("not a video extension: ignored")
    bad = {"truncated.mp4": "", "empty.mp4": "empty", "text.mp4": "", "corrupt.avi": "", "single.mp4": "fewer than 2 frames"}
    return folder, good, bad


def args_for(videos, cache, *extra: str):
    import argparse

    parser = argparse.ArgumentParser()
    pc.add_arguments(parser)
    return parser.parse_args(["--videos", str(videos), "--cache", str(cache), "--size", f"{SIZE[1]}x{SIZE[0]}",
                              "--batch", "4", "--workers", "2", "--no-progress", *extra])


def cache_for(root, codec="png") -> FlowCache:
    return FlowCache(root, StandInEngine().config(), size=SIZE, bound=BOUND, codec=codec)


def expected_flow(video: Path) -> np.ndarray:
    frames = torch.from_numpy(read_frames(video, size=SIZE)).permute(0, 3, 1, 2)
    return StandInEngine()(frames[:-1], frames[1:]).numpy()


def test_precompute_caches_good_videos_and_lists_bad_ones(mixed_folder, tmp_path, capsys):
    folder, good, bad = mixed_folder
    cache_dir = tmp_path / "cache"
    rc = pc.run(args_for(folder, cache_dir, "--codec", "png"), engine=StandInEngine())
    out = capsys.readouterr().out
    assert rc == 1  # some failed
    assert "videos: 2 computed, 0 skipped (already cached), 5 failed" in out
    for name, words in bad.items():
        line = next(line for line in out.splitlines() if line.startswith(f"FAILED {folder / name}:"))
        assert words in line, line
    cache = cache_for(cache_dir)
    for video in good:
        want = expected_flow(video)
        with cache.open(video) as c:
            # lossless codec: exactly the engine's flow, quantised; clipped counts exact
            q, clipped = quantize(want, BOUND)
            assert c.num_flows == len(want) and np.array_equal(c.read(0, c.num_flows), dequantize(q, BOUND))
            assert np.array_equal(c.clipped, clipped) and clipped.sum() > 0
            assert c.header["video"]["path"] == str(video.resolve())
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted(cache.path_for(v).name for v in good)
    assert cli(["cache", "verify", str(cache_dir)]) == 0


def test_resume_skips_and_stale_or_corrupt_entries_are_recomputed(good_videos, tmp_path, capsys):
    videos = good_videos[:3]
    listing = tmp_path / "list.txt"
    listing.write_text("# video label\n" + "".join(f"{os.path.relpath(v, tmp_path)} {i}\n" for i, v in enumerate(videos)))
    cache_dir = tmp_path / "cache"
    engine = StandInEngine()
    assert pc.run(args_for(listing, cache_dir), engine=engine) == 0
    computed = engine.pairs
    assert computed == sum(len(read_frames(v)) - 1 for v in videos)
    cache = cache_for(cache_dir)
    stamps = {v: cache.path_for(v).stat().st_mtime_ns for v in videos}
    capsys.readouterr()

    assert pc.run(args_for(listing, cache_dir), engine=engine) == 0
    assert engine.pairs == computed  # nothing recomputed
    assert "0 computed, 3 skipped" in capsys.readouterr().out
    assert all(cache.path_for(v).stat().st_mtime_ns == stamps[v] for v in videos)

    # a flipped byte: a plain rerun checks every frame checksum, catches it and recomputes
    bad = cache.path_for(videos[1])
    data = bytearray(bad.read_bytes())
    data[20] ^= 0xFF
    bad.write_bytes(bytes(data))
    assert pc.run(args_for(listing, cache_dir), engine=engine) == 0
    assert "1 computed, 2 skipped" in capsys.readouterr().out
    assert cli(["cache", "verify", str(cache_dir)]) == 0

    # a corrupt entry removed by `cache verify --delete-bad` is recomputed by a plain rerun
    data = bytearray(bad.read_bytes())
    data[30] ^= 0xFF
    bad.write_bytes(bytes(data))
    assert cli(["cache", "verify", str(cache_dir), "--delete-bad"]) == 1
    assert not bad.exists()
    capsys.readouterr()
    assert pc.run(args_for(listing, cache_dir), engine=engine) == 0
    assert "1 computed, 2 skipped" in capsys.readouterr().out

    # another bound makes every entry stale: recomputed, not reused
    assert pc.run(args_for(listing, cache_dir, "--bound", "10"), engine=engine) == 0
    assert "3 computed, 0 skipped" in capsys.readouterr().out
    assert CachedFlow(cache.path_for(videos[0])).bound == 10.0


def test_list_files_and_shards(good_videos, tmp_path, monkeypatch, capsys):
    listing = tmp_path / "lists" / "train.txt"
    listing.parent.mkdir()
    lines = [f"{os.path.relpath(good_videos[0], listing.parent)} dance", str(good_videos[1]), "", "# comment",
             f"{os.path.relpath(good_videos[2], listing.parent)}"]
    listing.write_text("\n".join(lines) + "\n")
    assert list_videos(listing) == sorted([listing.parent / os.path.relpath(good_videos[0], listing.parent),
                                              good_videos[1], listing.parent / os.path.relpath(good_videos[2], listing.parent)], key=str)
    folder = good_videos[0].parent
    assert [v.name for v in list_videos(folder)] == ["a.mp4", "c.mp4", "d.mp4", "e.mp4", "f.mp4", "b.mp4"]

    videos = list_videos(folder)
    for n in (1, 2, 4):
        parts = [pc.shard(videos, i, n) for i in range(n)]
        assert sorted(sum(parts, []), key=str) == videos  # every video in exactly one shard
        assert all(parts[i] == videos[i::n] for i in range(n))
    with pytest.raises(ValueError):
        pc.shard(videos, 2, 2)

    # --shard 1/2 caches only its half; RANK/WORLD_SIZE (torchrun) then does the other half
    cache_dir = tmp_path / "cache"
    cache = cache_for(cache_dir)
    assert pc.run(args_for(folder, cache_dir, "--shard", "1/2"), engine=StandInEngine()) == 0
    assert [cache.lookup(v) is not None for v in videos] == [i % 2 == 1 for i in range(len(videos))]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert pc.run(args_for(folder, cache_dir), engine=StandInEngine()) == 0
    assert all(cache.lookup(v) is not None for v in videos)
    assert "3 computed, 0 skipped" in capsys.readouterr().out


def test_precompute_video_reuses_and_errors(good_videos, tmp_path):
    cache = cache_for(tmp_path / "cache", codec="jpeg:95")
    engine = StandInEngine()
    path = pc.precompute_video(good_videos[1], cache, engine, size=SIZE, batch=3)
    assert path == cache.path_for(good_videos[1]) and engine.pairs == 8
    assert pc.precompute_video(good_videos[1], cache, engine) == path and engine.pairs == 8  # reused
    with pytest.raises(VideoError, match="no such file"):
        pc.precompute_video(tmp_path / "missing.mp4", cache, engine)
    with pytest.raises(ValueError, match="size"):
        pc.precompute_video(good_videos[1], cache, engine, size=(32, 32))
    assert sorted(p.name for p in cache.root.iterdir()) == [path.name]  # no lock or temp files left


# ---- other processes: SIGKILL mid-run, two processes on one cache. Forked (not spawned) so
# that no test pays for a fresh interpreter importing torch.


def _child(videos: Path, cache: Path, delay: float, log: Path) -> None:
    torch.set_num_threads(1)
    with open(log, "w") as f:
        sys.stdout = sys.stderr = f
        rc = pc.run(args_for(videos, cache), engine=StandInEngine(delay=delay))
        f.flush()
    os._exit(rc)


def fork_precompute(videos: Path, cache: Path, delay: float, log: Path):
    import multiprocessing

    proc = multiprocessing.get_context("fork").Process(target=_child, args=(videos, cache, delay, log))
    proc.start()
    return proc


def test_sigkill_mid_run_loses_only_the_video_in_flight(good_videos, tmp_path, capsys):
    folder = good_videos[0].parent
    cache_dir = tmp_path / "cache"
    proc = fork_precompute(folder, cache_dir, delay=0.25, log=tmp_path / "log")  # ~3 batches a video: ~0.75 s each
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not list(cache_dir.glob("*.afc")):
            assert proc.is_alive(), (tmp_path / "log").read_text()
            time.sleep(0.05)
        time.sleep(0.3)  # well into the next video
        assert list(cache_dir.glob(".*.tmp")), "expected a video in flight"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.join(10)
    assert proc.exitcode == -signal.SIGKILL
    done = list(cache_dir.glob("*.afc"))
    assert 1 <= len(done) < len(good_videos)
    assert cli(["cache", "verify", str(cache_dir)]) == 0
    assert "0 bad" in capsys.readouterr().out
    assert pc.run(args_for(folder, cache_dir), engine=StandInEngine()) == 0
    assert f"{len(good_videos) - len(done)} computed, {len(done)} skipped" in capsys.readouterr().out
    assert len(list(cache_dir.glob("*.afc"))) == len(good_videos)
    assert not [p for p in cache_dir.iterdir() if p.suffix in (".tmp", ".lock")]  # the killed run's temp file is gone
    assert cli(["cache", "verify", str(cache_dir)]) == 0


def test_two_processes_on_one_cache_compute_each_video_once(good_videos, tmp_path):
    folder = good_videos[0].parent
    cache_dir = tmp_path / "cache"
    logs = [tmp_path / f"log{i}" for i in range(2)]
    procs = [fork_precompute(folder, cache_dir, 0.05, log) for log in logs]
    for p in procs:
        p.join(120)
    outs = [log.read_text() for log in logs]
    assert [p.exitcode for p in procs] == [0, 0], outs
    counts = [re.search(r"videos: (\d+) computed, (\d+) skipped", o) for o in outs]
    assert sum(int(m.group(1)) for m in counts) == len(good_videos), outs  # each video computed by exactly one
    assert all(int(m.group(1)) + int(m.group(2)) == len(good_videos) for m in counts)
    assert len(list(cache_dir.glob("*.afc"))) == len(good_videos)
    assert cli(["cache", "verify", str(cache_dir)]) == 0


def test_cli_with_the_real_dis_engine(mixed_folder, tmp_path, capsys):
    folder, good, bad = mixed_folder
    cache_dir = tmp_path / "cache"
    rc = cli(["precompute", "--videos", str(folder), "--cache", str(cache_dir), "--engine", "dis",
              "--size", "64x48", "--batch", "4", "--workers", "2", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 1, out  # the bad files fail, the run goes on
    assert f"2 computed, 0 skipped (already cached), {len(bad)} failed" in out
    assert cli(["cache", "stats", str(cache_dir), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["videos"] == 2 and stats["frames"] == 11 + 8 and stats["engines"] == {"dis": 2}
    assert stats["bytes"] * 10 < stats["flo_bytes"]
    # an engine that cannot be built is a clear error (exit 2), not a traceback
    assert cli(["precompute", "--videos", str(folder), "--cache", str(cache_dir), "--engine", "dis", "--weights", "x.pt"]) == 2
    assert "takes no weights" in capsys.readouterr().err


def test_bench_cache_runs_and_reports(good_videos, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = cli(["bench-cache", "--videos", str(good_videos[0].parent), "--size", "64x48", "--engine", "dis",
              "--seconds", "0.2", "--codecs", "png,jpeg:90,hevc:12", "--json", str(out)])
    r = json.loads(out.read_text())
    assert rc == (0 if all(r["targets_met"].values()) else 1)
    assert r["files_in_cache"] == len(good_videos) and r["one_file_per_video"]
    assert r["flow_frames"] == sum(len(read_frames(v)) - 1 for v in good_videos)
    assert r["flo_bytes_per_frame"] == 12 + 8 * 48 * 64 and r["ratio_vs_flo"] > 5
    assert r["epe_cache"] < 0.15 and r["epe_two_jpeg"] < 0.15
    assert r["codecs"][0]["codec"] == "png" and r["codecs"][0]["epe"] <= 20 / 255 * np.sqrt(2)
    assert r["codecs"][1]["codec"] == "jpeg:90" and r["codecs"][1]["epe"] < 0.15
    hevc = r["codecs"][2]
    assert hevc["codec"] == "hevc:12" and hevc["random_read_frames_per_s"] > 0 and hevc["epe"] < 0.5
    assert r["single_process_frames_per_s"] > 0 and r["2_workers_frames_per_s"] > 0
    assert set(r["precompute_frames_per_s_by_workers"]) == {"1", "2"}  # a classical engine: 1 and 2 flow processes
    text = capsys.readouterr().out
    assert "this cache (.afc)" in text and "precompute with 1 flow worker" in text


def test_size_is_width_x_height_like_every_other_command():
    from flow_engine.commands.args import parse_size, parse_size_or_side

    assert parse_size_or_side("340x256") == parse_size("340x256") == (256, 340)


# ---- hostile and broken inputs


def test_one_video_file_and_bom_lists_are_valid_videos_a_utf16_list_a_clear_error(good_videos, tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    assert pc.run(args_for(good_videos[0], cache_dir), engine=StandInEngine()) == 0  # a video, not a list
    assert "1 computed, 0 skipped" in capsys.readouterr().out
    assert cache_for(cache_dir).lookup(good_videos[0]) is not None
    bom = tmp_path / "bom.txt"
    bom.write_bytes(("\ufeff" + "".join(f"{v} {i}\n" for i, v in enumerate(good_videos[1:3]))).encode("utf-8"))
    assert pc.run(args_for(bom, cache_dir), engine=StandInEngine()) == 0
    assert "2 computed, 0 skipped" in capsys.readouterr().out  # the first line is not lost to the BOM
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes(f"{good_videos[3]} 0\n".encode("utf-16"))
    assert pc.run(args_for(utf16, cache_dir), engine=StandInEngine()) == 2
    assert f"error: {utf16}: the list is UTF-16; save it as UTF-8" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_symlink_loops_and_fifos_are_named_skips_that_never_block(good_videos, tmp_path, capsys):
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "loop.mp4").symlink_to("loop.mp4")
    os.mkfifo(folder / "fifo.mp4")
    listing = tmp_path / "list.txt"
    listing.write_text(f"v/loop.mp4 0\nv/fifo.mp4 0\n{good_videos[0]} 1\n")
    cache_dir = tmp_path / "cache"
    cache = cache_for(cache_dir)
    cache_dir.mkdir()
    os.mkfifo(cache.path_for(good_videos[0]))  # something planted where the good video's entry goes
    engine = StandInEngine()
    assert pc.run(args_for(listing, cache_dir, "--codec", "png"), engine=engine) == 1
    out = capsys.readouterr().out
    assert "videos: 1 computed, 0 skipped (already cached), 2 failed" in out
    assert f"FAILED {folder / 'loop.mp4'}: cannot stat (Too many levels of symbolic links)" in out
    assert f"FAILED {folder / 'fifo.mp4'}: not a regular file" in out
    with cache.open(good_videos[0]) as c:  # the FIFO was replaced by a good entry
        assert c.num_flows == 11 and c.verify() == []


def test_sizes_an_engine_cannot_take_are_refused_before_any_work(good_videos, tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    for size, words in (("8x8", "dis needs frames of at least 16 px a side, got 8x8"),
                        ("12", "dis needs frames of at least 16 px a side, got 12x12"),
                        ("8000x8000", "GiB is available")):
        assert cli(["precompute", "--videos", str(good_videos[0]), "--cache", str(cache_dir), "--engine", "dis",
                    "--size", size, "--batch", "100000"]) == 2, size
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err
    assert not any(cache_dir.iterdir())
    # a short side is checked per video, before it is decoded: the video fails by name, the run goes on
    summary = pc.precompute([good_videos[0]], FlowCache(cache_dir, {"name": "dis"}, size=4000), engine_for("dis"),
                            batch=100000, progress=False)
    [(video, reason)] = summary.failed
    assert video == good_videos[0] and "GiB is available" in reason and not any(cache_dir.glob("*.afc"))


def engine_for(name: str):
    from flow_engine.engine import FlowEngine

    return FlowEngine(name)


@pytest.mark.parametrize("flag, value, words", [
    ("--bound", "nan", "must be a positive, finite number of pixels, got 'nan'"),
    ("--bound", "inf", "must be a positive, finite number of pixels"),
    ("--bound", "0", "must be a positive, finite number of pixels"),
    ("--bound", "-1", "must be a positive, finite number of pixels"),
    ("--bound", "wide", "'wide' is not a number"),
    ("--batch", "0", "must be at least 1, got 0"),
    ("--batch", "-1", "must be at least 1, got -1"),
    ("--workers", "0", "must be at least 1"),
    ("--decoders", "0", "must be at least 1"),
    ("--flow-updates", "0", "must be at least 1"),
])
def test_numeric_arguments_are_checked_before_any_work(good_videos, tmp_path, capsys, flag, value, words):
    cache_dir = tmp_path / "cache"
    with pytest.raises(SystemExit) as info:
        cli(["precompute", "--videos", str(good_videos[0]), "--cache", str(cache_dir), "--engine", "dis", flag, value])
    assert info.value.code == 2
    assert f"argument {flag}: {words}" in capsys.readouterr().err
    assert not cache_dir.exists()  # nothing was computed, not even the folder
    with pytest.raises(ValueError, match="batch must be at least 1"):
        pc.precompute([good_videos[0]], cache_for(cache_dir), StandInEngine(), batch=0, progress=False)


def test_the_codec_defaults_are_the_caches_own():
    """precompute and bench-cache write what the training data module's cache writes: one constant, DEFAULT_CODEC."""
    import argparse

    from actionflow.benchmarks import cache as bench_cache
    from actionflow.flow_cache import DEFAULT_CODEC, codec_name, parse_codec

    for module in (pc, bench_cache):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        assert parse_codec(parser.get_default("codec")) == DEFAULT_CODEC == FlowCache("c", {"name": "dis"}).codec
        assert f"default {codec_name()}" in parser.format_help().replace("\n", " ").replace("  ", " ")
    assert codec_name() == "jpeg:90" and codec_name({"name": "webp", "quality": None}) == "webp"


@pytest.mark.parametrize("flag, value, words", [
    ("--workers", "0", "must be at least 1, got 0"), ("--clip", "0", "must be at least 1, got 0"),
    ("--max-frames", "-3", "must be at least 1, got -3"), ("--max-frames", "1", "1 frame gives no flow"),
    ("--seconds", "nan", "must be a positive, finite number"), ("--bound", "0", "must be a positive, finite number"),
])
def test_bench_cache_arguments_are_checked_when_parsed(flag, value, words, capsys):
    with pytest.raises(SystemExit) as exc:
        cli(["bench-cache", "--videos", "none", flag, value])
    assert exc.value.code == 2 and f"argument {flag}: {words}" in capsys.readouterr().err
