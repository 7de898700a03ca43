"""TSN/denseflow flow JPEGs in and out of the flow cache (``cache import`` / ``cache export``), and training
on imported flow (``data.imported_flow``) without ever serving another engine's entries in its place."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from actionflow.__main__ import main
from actionflow.flow_cache import (
    IMPORTED_ENGINE, CachedFlow, CacheMismatch, FlowCache, cache_files, tsn_levels,
)
from actionflow.flow_cache.tsn import export_names, import_tsn

RAWFRAMES = "ucf101_applyeyemakeup_rawframes"


def cli(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["cache", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out + out.err


def tsn_jpegs(folder, n: int = 5) -> list[np.ndarray]:
    """The decoded x and y JPEGs of a flow folder: [x1, y1, x2, y2, ...] uint8."""
    return [cv2.imread(str(folder / f"{a}_{i:05d}.jpg"), cv2.IMREAD_GRAYSCALE) for i in range(1, n + 1) for a in "xy"]


def write_tsn(folder, flows: np.ndarray, bound: float = 20.0, naming=("x_{:05d}.png", "y_{:05d}.png")):
    """Write float flows ``[N,2,H,W]`` as TSN grey images numbered from 1 (PNG by default: exact levels)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (u, v) in enumerate(tsn_levels(flows, bound), 1):
        assert cv2.imwrite(str(folder / naming[0].format(i)), u) and cv2.imwrite(str(folder / naming[1].format(i)), v)
    return folder


def smooth_flow(n: int = 3, h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / 8.0
    return np.stack([np.stack([a * np.sin(x + p), b * np.cos(y - p)]) for a, b, p in rng.uniform(-12, 12, (n, 3))]
                    ).astype(np.float32)


# ----------------------------------------------------------------------------- the shared TV-L1 flow


def test_the_shared_tvl1_flow_imports_exactly_and_exports_within_one_level(shared_videos, tmp_path, capsys):
    source = shared_videos / RAWFRAMES
    code, out = cli(capsys, "import", "--tsn", source, "--cache", tmp_path / "cache")
    assert code == 0 and "imported 1 folder(s), 5 flow frames; 0 failed" in out
    [entry] = cache_files(tmp_path / "cache")
    jpegs = tsn_jpegs(source)
    with CachedFlow(entry) as c:
        assert (c.num_flows, c.height, c.width, c.bound, c.levels, c.header["version"]) == (5, 240, 320, 20.0, "tsn", 3)
        assert c.header["engine"] == IMPORTED_ENGINE
        assert c.header["import"] == {"format": "tsn", "source": os.path.realpath(source), "bound": 20.0,
                                      "naming": ["x_{:05d}.jpg", "y_{:05d}.jpg"], "engine": "unknown"}
        assert c.header["video"]["path"] == os.path.realpath(source)  # the frame folder's entry
        levels = 255 * (c.read(0, 5).reshape(10, 240, 320) + 20) / 40  # back to the JPEGs' convention
    for got, want in zip(levels, jpegs):
        assert np.abs(got - want).max() < 0.01  # kept as they were: well within the one grey level asked for
    assert cli(capsys, "verify", tmp_path / "cache")[0] == 0
    code, out = cli(capsys, "import", "--tsn", source, "--cache", tmp_path / "cache")
    assert code == 0 and "imported 0 folder(s), 0 flow frames, 1 skipped (imported already)" in out

    code, out = cli(capsys, "export", tmp_path / "cache", "--tsn", tmp_path / "out")
    assert code == 0 and "exported 1 folder(s), 5 flow frames; 0 failed" in out
    folder = tmp_path / "out" / RAWFRAMES
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{a}_{i:05d}.jpg" for i in range(1, 6) for a in "xy")
    for got, want in zip(tsn_jpegs(folder), jpegs):
        assert np.abs(got.astype(int) - want).max() <= 1


# ----------------------------------------------------------------------------- generated flow folders


def test_namings_bounds_and_folders_of_folders(tmp_path, capsys):
    flows = smooth_flow()
    write_tsn(tmp_path / "flow" / "a" / "v1", flows, 15.0)
    write_tsn(tmp_path / "flow" / "b" / "v2", flows[:2], 15.0, ("flow_x_{:05d}.png", "flow_y_{:05d}.png"))
    code, out = cli(capsys, "import", "--tsn", tmp_path / "flow", "--cache", tmp_path / "c", "--bound", "15",
                    "--naming", "x_{:05d}.png,y_{:05d}.png")
    assert code == 0 and "imported 1 folder(s), 3 flow frames" in out  # --naming: only that naming
    code, out = cli(capsys, "import", "--tsn", tmp_path / "flow", "--cache", tmp_path / "c2", "--bound", "15",
                    "--naming", "flow_x_{:05d}.png,flow_y_{:05d}.png")
    assert code == 0 and "imported 1 folder(s), 2 flow frames" in out
    cache = FlowCache(tmp_path / "c", IMPORTED_ENGINE, accept_imported=True)
    with cache.open(tmp_path / "flow" / "a" / "v1") as c:
        assert c.bound == 15.0
        # PNG levels are exact: the flow comes back within half a TSN level (B/255) of what was written
        assert np.abs(c.read(0, 3) - flows).max() <= 15.0 / 255 + 1e-5


def test_the_flow_x_naming_is_found_without_being_named(tmp_path):
    write_tsn(tmp_path / "v", smooth_flow(2), naming=("flow_x_{:05d}.jpg", "flow_y_{:05d}.jpg"))
    summary = import_tsn(tmp_path / "v", tmp_path / "c")
    assert (len(summary.done), summary.frames, summary.failed) == (1, 2, [])


def test_videos_option_attaches_flow_to_videos(tmp_path, capsys):
    write_tsn(tmp_path / "flow" / "jump" / "v1", smooth_flow(2), naming=("x_{:05d}.jpg", "y_{:05d}.jpg"))
    write_tsn(tmp_path / "flow" / "jump" / "v2", smooth_flow(2), naming=("x_{:05d}.jpg", "y_{:05d}.jpg"))
    (tmp_path / "videos" / "jump").mkdir(parents=True)
    (tmp_path / "videos" / "jump" / "v1.avi").write_bytes(b"a video: never decoded by an import")
    code, out = cli(capsys, "import", "--tsn", tmp_path / "flow", "--cache", tmp_path / "c", "--videos", tmp_path / "videos")
    assert code == 1
    assert f"FAILED {tmp_path / 'flow/jump/v2'}: no video {tmp_path / 'videos/jump/v2'}.* (mp4/avi/" in out
    cache = FlowCache(tmp_path / "c", IMPORTED_ENGINE, accept_imported=True)
    assert cache.lookup(tmp_path / "videos" / "jump" / "v1.avi") is not None


@pytest.mark.parametrize("damage, words", [
    (lambda f: os.unlink(f / "y_00002.jpg"), "{f}/y_00002.jpg: missing, the other half of x_00002.jpg's pair"),
    (lambda f: os.unlink(f / "x_00003.jpg"), "{f}/x_00003.jpg: missing, the other half of y_00003.jpg's pair"),
    (lambda f: [os.unlink(f / "x_00002.jpg"), os.unlink(f / "y_00002.jpg")], "{f}: frame x_00002.jpg is missing"),
    (lambda f: (f / "y_00003.jpg").write_text("not a JPEG"), "{f}/y_00003.jpg: unreadable image"),
    (lambda f: (f / "x_00001.jpg").write_bytes(b""), "{f}/x_00001.jpg: empty file"),
    (lambda f: cv2.imwrite(str(f / "x_00003.jpg"), np.zeros((12, 16), np.uint8)),
     "{f}/x_00003.jpg: 16x12 where x_00001.jpg is 32x24: the flow of a folder must share one size"),
])
def test_bad_flow_folders_fail_by_name_and_the_others_import(tmp_path, capsys, damage, words):
    good = write_tsn(tmp_path / "flow" / "good", smooth_flow(), naming=("x_{:05d}.jpg", "y_{:05d}.jpg"))
    bad = write_tsn(tmp_path / "flow" / "bad", smooth_flow(), naming=("x_{:05d}.jpg", "y_{:05d}.jpg"))
    damage(bad)
    code, out = cli(capsys, "import", "--tsn", tmp_path / "flow", "--cache", tmp_path / "c")
    assert code == 1 and f"FAILED {bad}: " + words.format(f=bad) in out
    assert "imported 1 folder(s), 3 flow frames; 1 failed" in out
    assert [p.name.split("-")[0] for p in cache_files(tmp_path / "c")] == ["good"]  # nothing half-written for bad
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.endswith(".tmp")]
    assert good.is_dir()


def test_bad_import_arguments_are_errors_before_any_work(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, out = cli(capsys, "import", "--tsn", tmp_path / "empty", "--cache", tmp_path / "c")
    assert code == 2 and "no flow files named x_{:05d}.jpg,y_{:05d}.jpg or flow_x_{:05d}.jpg,flow_y_{:05d}.jpg" in out
    assert cli(capsys, "import", "--tsn", tmp_path / "nope", "--cache", tmp_path / "c")[0] == 2
    for flag, value, words in [("--bound", "0", "must be a positive, finite number of pixels"),
                               ("--bound", "nan", "must be a positive, finite number of pixels"),
                               ("--naming", "x_{:05d}.jpg", "must be two different patterns"),
                               ("--naming", "x.jpg,y.jpg", "needs a number field")]:
        with pytest.raises(SystemExit):
            cli(capsys, "import", "--tsn", tmp_path / "empty", "--cache", tmp_path / "c", flag, value)
        assert words in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


# ----------------------------------------------------------------------------- export of computed flow


def test_export_of_computed_entries_names_folders_after_their_videos(tmp_path, capsys):
    flows = smooth_flow(4)
    cache = FlowCache(tmp_path / "c", {"name": "dis"}, size=(24, 32), codec="png")
    videos = []
    for rel in ("jump/v1.mp4", "spin/v2.avi", "spin/v2.mp4"):  # the last exports to the same name as the second
        video = tmp_path / "videos" / rel
        video.parent.mkdir(parents=True, exist_ok=True)
        video.write_bytes(rel.encode())
        with cache.writer(video) as w:
            w.add_flows(flows)
        videos.append(video)
    assert export_names([str(v) for v in videos[:2]]) == [Path("jump/v1"), Path("spin/v2")]
    code, out = cli(capsys, "export", tmp_path / "c", "--tsn", tmp_path / "out", "--naming", "flow_x_{:05d}.jpg,flow_y_{:05d}.jpg")
    assert code == 1 and "exported 2 folder(s), 8 flow frames; 1 failed" in out
    # which of spin/v2.avi and spin/v2.mp4 comes first follows the entries' names: the other one fails, by name
    assert sum(f"{v} exports to spin/v2, as " in out for v in videos[1:]) == 1
    want = tsn_levels(flows, 20.0)  # [4, 2, H, W]: what denseflow would have written for this flow
    for name in ("jump/v1", "spin/v2"):
        for i in range(4):
            for a, axis in enumerate("xy"):
                got = cv2.imread(str(tmp_path / "out" / name / f"flow_{axis}_{i + 1:05d}.jpg"), cv2.IMREAD_GRAYSCALE)
                assert np.abs(got.astype(int) - want[i, a]).max() <= 2  # quantisation (half a level) + JPEG 95


def _computed_entry(tmp_path, rel: str, flows: np.ndarray):
    cache = FlowCache(tmp_path / "c", {"name": "dis"}, size=(24, 32), codec="png")
    video = tmp_path / "vv" / rel
    video.parent.mkdir(parents=True, exist_ok=True)
    video.write_bytes(rel.encode())
    with cache.writer(video) as w:
        w.add_flows(flows)
    return cache.path_for(video)


@pytest.mark.parametrize("crafted, words", [
    ("/x/vv/../ESCAPED/clip.mp4", "header video path '/x/vv/../ESCAPED/clip.mp4' is not an absolute path without '.' or '..' parts"),
    ("ESCAPED/clip.mp4", "header video path 'ESCAPED/clip.mp4' is not an absolute path"),
    (123, "header video path '123' is not an absolute path"),
])
def test_header_paths_are_data_checked_on_read_and_export_stays_inside_out(tmp_path, capsys, crafted, words):
    import json

    from test_flow_cache import with_header

    good = _computed_entry(tmp_path, "b.mp4", smooth_flow(2))
    bad = _computed_entry(tmp_path, "a.mp4", smooth_flow(2))
    with CachedFlow(bad) as c:
        header = c.header
    with_header(bad, json.dumps({**header, "video": {**header["video"], "path": crafted}}).encode())
    code, out = cli(capsys, "verify", tmp_path / "c")
    assert code == 1 and f"BAD {bad}: {words}" in out and f"BAD {good}" not in out
    code, out = cli(capsys, "export", tmp_path / "c", "--tsn", tmp_path / "out" / "OUT")
    assert code == 1 and f"FAILED {bad}: {words}" in out and "Traceback" not in out
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.jpg"))
    assert written == ["out/OUT/b/x_00001.jpg", "out/OUT/b/x_00002.jpg", "out/OUT/b/y_00001.jpg", "out/OUT/b/y_00002.jpg"]


def test_export_never_follows_a_symlink_out_of_its_folder(tmp_path, capsys):
    _computed_entry(tmp_path, "b.mp4", smooth_flow(2))
    _computed_entry(tmp_path, "c.mp4", smooth_flow(2))
    (tmp_path / "OUT").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "OUT" / "b").symlink_to(tmp_path / "elsewhere")
    code, out = cli(capsys, "export", tmp_path / "c", "--tsn", tmp_path / "OUT")
    assert code == 1 and f"would export to {tmp_path / 'elsewhere'}, outside {tmp_path / 'OUT'}" in out
    assert not any((tmp_path / "elsewhere").iterdir()) and len(list((tmp_path / "OUT" / "c").iterdir())) == 4


def test_export_refuses_an_older_export_unless_asked_to_overwrite_it(tmp_path, capsys):
    _computed_entry(tmp_path, "good.mp4", smooth_flow(5))
    target = tmp_path / "OUT" / "good"
    target.mkdir(parents=True)
    for i in range(1, 10):  # an older export of 9 flows, beside the frames denseflow keeps in the same folder
        for name in (f"x_{i:05d}.jpg", f"y_{i:05d}.jpg", f"img_{i:05d}.jpg"):
            (target / name).write_bytes(b"old")
    before = {p.name: p.stat().st_mtime_ns for p in target.iterdir()}
    code, out = cli(capsys, "export", tmp_path / "c", "--tsn", tmp_path / "OUT")
    assert code == 2 and f"1 target folder(s) hold flow files already (first: {target})" in out and "--overwrite" in out
    assert {p.name: p.stat().st_mtime_ns for p in target.iterdir()} == before  # nothing touched
    code, out = cli(capsys, "export", tmp_path / "c", "--tsn", tmp_path / "OUT", "--overwrite")
    assert code == 0 and "exported 1 folder(s), 5 flow frames; 0 failed" in out
    assert sorted(p.name for p in target.glob("[xy]_*.jpg")) == [f"{a}_{i:05d}.jpg" for a in "xy" for i in range(1, 6)]
    assert len(list(target.glob("img_*.jpg"))) == 9  # the frames are not flow: left alone
    assert all(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) is not None for p in target.glob("[xy]_*.jpg"))


# ----------------------------------------------------------------------------- serving imported flow


def test_imported_entries_are_served_only_when_accepted_and_never_stand_in_for_another_engine(tmp_path):
    folder = write_tsn(tmp_path / "v", smooth_flow(), naming=("x_{:05d}.jpg", "y_{:05d}.jpg"))
    import_tsn(folder, tmp_path / "c")
    refusing = FlowCache(tmp_path / "c", {"name": "tvl1"}, size=(64, 64))
    with pytest.raises(CacheMismatch, match=r"flow imported from .*\(engine unknown\), not computed by 'tvl1'; to use it "
                                            "as that engine's flow set data.imported_flow"):
        refusing.open(folder)
    accepting = FlowCache(tmp_path / "c", {"name": "tvl1"}, size=(64, 64), accept_imported=True)
    with accepting.open(folder) as c:  # its own size and bound
        assert (c.num_flows, c.height, c.width) == (3, 24, 32)
    # an entry a real engine computed stays that engine's: accepting imports changes nothing for it
    other = tmp_path / "w"
    shutil.copytree(folder, other)
    with FlowCache(tmp_path / "c", {"name": "dis"}, size=(24, 32)).writer(other) as w:
        w.add_flows(smooth_flow())
    with pytest.raises(CacheMismatch, match="engine name is 'dis', want 'tvl1'"):
        accepting.open(other)


def test_training_reads_imported_flow_with_data_imported_flow(tmp_path, capsys):
    from tiny_videos import render

    from actionflow.data import ActionDataModule, DataConfigError

    lines = []
    for label, name in enumerate(("right", "left")):
        for i in range(3):
            folder = tmp_path / "frames" / name / str(i)
            folder.mkdir(parents=True)
            for t, frame in enumerate(render(name, frames=6, size=32, seed=i), 1):
                cv2.imwrite(str(folder / f"img_{t:05d}.jpg"), frame)
            # denseflow's flow beside the frames, at half the size: a constant (3, -2) px there
            flow = np.broadcast_to(np.array([3.0, -2.0], np.float32)[None, :, None, None], (5, 2, 16, 16))
            write_tsn(folder, flow)
            lines.append(f"frames/{name}/{i} 6 {label}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    assert cli(capsys, "import", "--tsn", tmp_path / "frames", "--cache", tmp_path / "cache",
               "--naming", "x_{:05d}.png,y_{:05d}.png")[0] == 0
    kw = dict(root=str(tmp_path), train_list=str(tmp_path / "list.txt"), mode="flow", flow_source="cache",
              cache_dir=str(tmp_path / "cache"), cache_missing="error", flow_engine="tvl1", num_workers=0,
              size=(32, 32), crop_size=(32, 32), num_segments=2, flow_length=2, val_fraction=0.34, test_fraction=0.34)
    with pytest.raises(DataConfigError, match="6 video.s. have no usable flow"):  # imported flow is not tvl1's unasked
        ActionDataModule(**kw).prepare_data()
    with pytest.raises(DataConfigError, match="data.imported_flow is 'dis' but data.flow_engine is 'tvl1'"):
        ActionDataModule(**kw, imported_flow="dis")
    dm = ActionDataModule(**kw, imported_flow="tvl1")
    dm.prepare_data()  # nothing missing, nothing computed
    dm.setup("fit")
    assert dm.skipped == [] and all(c.num_frames == 6 for c in dm.clips["train"])
    item = dm.dataset("val")[0]
    # the stored levels (3.06, -1.96 px), x2 from 16 to 32 px, then the centre box (28 of 32 px) back to 32
    u, v = (tsn_levels(np.array([3.0, -2.0]), 20.0).astype(float) * 40 / 255 - 20) * 2 * 32 / 28
    assert item["flow"].shape == (2, 4, 32, 32)
    np.testing.assert_allclose(item["flow"][:, 0::2, 8:-8, 8:-8], u, atol=1e-4)
    np.testing.assert_allclose(item["flow"][:, 1::2, 8:-8, 8:-8], v, atol=1e-4)
