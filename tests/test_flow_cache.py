"""The flow cache file: exact round trips, random access, mismatch detection, atomicity, checksums, CLI."""
from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import re
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import torch

from actionflow import flow_cache
from actionflow.__main__ import main as cli
from actionflow.flow_cache import (
    CacheCorrupt,
    CacheError,
    CacheMismatch,
    CachedFlow,
    CacheWriter,
    FlowCache,
    VideoLock,
    dequantize,
    quantize,
    stack_flows,
)

H, W, N, B = 48, 64, 9, 20.0
ENGINE = {"name": "standin", "weights_hash": "abc123", "dtype": "float32", "device": "cpu"}


def synthetic_flow(n: int = N, h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-smooth flow ``[n,2,h,w]`` (smooth background, a moving block, out-of-bound
    strips of known size) and the number of out-of-bound pixels per frame."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    flows = np.empty((n, 2, h, w), np.float32)
    clipped = np.zeros(n, np.int64)
    for i in range(n):
        flows[i, 0] = 15 * np.sin(x / 13 + i) + 0.3 * i
        flows[i, 1] = 12 * np.cos(y / 11 - i) - 0.2 * i
        flows[i, :, h // 4 + i: h // 2 + i, w // 3: w // 2 + 3] = np.array([8.0, -5.0])[:, None, None]
        # frame i: i rows with u = +30, i columns with v = -25 (overlapping at a corner)
        flows[i, 0, :i, :] = 30.0
        flows[i, 1, :, :i] = -25.0
        clipped[i] = i * w + i * h - i * i
    return flows, clipped


@pytest.fixture
def video(tmp_path):
    """A stand-in 'video' file: the cache only stats it (size, mtime)."""
    path = tmp_path / "videos" / "clip.mp4"
    path.parent.mkdir()
    path.write_bytes(b"not really a video, but it has a size and an mtime")
    return path


def make_cache(root, codec="png", **kw) -> FlowCache:
    args = dict(engine_config=ENGINE, size=(H, W), bound=B, codec=codec)
    args.update(kw)
    return FlowCache(root, **args)


def write_entry(cache: FlowCache, video, flows: np.ndarray):
    with cache.writer(video) as w:
        w.add_flows(flows)
    return cache.path_for(video)


def test_quantize_numpy_and_torch_agree_and_count_clipped():
    flows, clipped = synthetic_flow()
    q_np, c_np = quantize(flows, B)
    q_t, c_t = quantize(torch.from_numpy(flows), B)
    assert q_np.dtype == np.uint8 and np.array_equal(q_np, q_t.numpy())
    assert np.array_equal(c_np, clipped) and np.array_equal(c_t.numpy(), clipped)
    # zero-centred: -B -> 0, 0 -> 127 exactly, +B -> 254, beyond clips
    q, c = quantize(np.array([-B, B + 5, B, 0.0], np.float32).reshape(1, 2, 1, 2), B)  # pixels (-B, B), (B+5, 0)
    assert q.ravel().tolist() == [0, 254, 254, 127] and c.tolist() == [1]
    assert dequantize(q, B).ravel().tolist() == [-B, B, B, 0.0]  # still pixels come back exactly still


@pytest.mark.parametrize("codec", ["png", "webp"])
def test_lossless_round_trip_is_within_half_a_step(tmp_path, video, codec):
    flows, clipped = synthetic_flow()
    cache = make_cache(tmp_path / "cache", codec=codec)
    path = write_entry(cache, video, flows)
    with cache.open(video) as c:
        assert (c.num_flows, c.height, c.width) == (N, H, W)
        got = c.read(0, N)
        assert got.dtype == np.float32 and got.shape == (N, 2, H, W)
        assert np.array_equal(c.clipped, clipped)
    inside = np.abs(flows) <= B
    assert np.abs(got - flows)[inside].max() <= B / 254 + 1e-5  # half a quantisation step
    assert np.all(got[flows > B] == B) and np.all(got[flows < -B] == -B)
    assert CachedFlow(path).header["codec"]["name"] == codec


def test_default_codec_adds_little_to_the_quantisation_error(tmp_path, video):
    """JPEG q90 on small piecewise-smooth flow with hard out-of-bound edges (its worst case):
    a few hundredths of a pixel over the quantisation error, no wild values."""
    flows, _ = synthetic_flow()
    cache = make_cache(tmp_path / "cache", codec=None)  # the default: JPEG quality 90
    write_entry(cache, video, flows)
    with cache.open(video) as c:
        assert {k: c.header["codec"][k] for k in ("name", "quality")} == {"name": "jpeg", "quality": 90}
        got = c.read(0, N)
    inside = (np.abs(flows) <= B).all(axis=1)
    epe = np.sqrt(((got - flows) ** 2).sum(axis=1))[inside]
    quantisation_only = np.sqrt(((dequantize(quantize(flows, B)[0], B) - flows) ** 2).sum(axis=1))[inside]
    # Hard ±bound steps are JPEG's worst case (ringing): still under a tenth of a pixel over quantisation.
    assert epe.mean() - quantisation_only.mean() < 0.1, (epe.mean(), quantisation_only.mean())
    assert epe.max() < 3.0  # next to a 40 px step, never more than a few px


def test_jpeg_tables_are_stored_once_per_file_and_version_1_files_still_read(tmp_path, video):
    import base64
    import json
    import struct
    import zlib

    from actionflow.flow_cache import FORMAT_VERSION, MAGIC, encode_frames, split_jpeg

    flows, clipped = synthetic_flow()
    cache = make_cache(tmp_path / "cache", codec="jpeg:90")
    path = write_entry(cache, video, flows)
    full = encode_frames(quantize(flows, B)[0], {"name": "jpeg", "quality": 90})
    tables = split_jpeg(full[0])[0]
    with CachedFlow(path) as c:
        # version 3 only adds TSN levels (imports): computed entries stay version 2, readable by version 2 readers
        assert c.header["version"] == 2 and FORMAT_VERSION == 3
        assert base64.b64decode(c.header["codec"]["tables"]) == tables and len(tables) > 250
        assert list(c.index["length"]) == [len(f) - len(tables) - 2 for f in full]  # scan data only, no EOI
        v2 = c.read(0, N)
    # A version 1 file, written here byte by byte from the documented layout: whole JPEGs as payloads.
    old = tmp_path / "old.afc"
    header = dict(CachedFlow(path).header, version=1, codec={"name": "jpeg", "quality": 90})
    body, rows, offset = b"", [], len(MAGIC)
    for payload, n_clipped in zip(full, clipped):
        rows.append(struct.pack("<QIII", offset, len(payload), zlib.crc32(payload), int(n_clipped)))
        body, offset = body + payload, offset + len(payload)
    meta = json.dumps(header).encode() + b"".join(rows)
    old.write_bytes(MAGIC + body + meta + struct.pack("<QIIII8s", offset, len(meta) - 20 * N, N, zlib.crc32(meta), 0, MAGIC))
    with CachedFlow(old) as c:
        assert c.header["version"] == 1 and c.verify() == []
        assert np.array_equal(c.read(0, N), v2)  # the same pixels as the version 2 file
        assert c.file_size > path.stat().st_size + (N - 2) * len(tables)  # the tables once instead of N times


def test_default_codec_meets_the_epe_target_on_real_flow(tmp_path, video, shared_videos):
    """The target: round-trip EPE <= 0.1 px inside the bound, on real DIS flow at 340x256."""
    from flow_engine.io.video import read_frames
    from flow_engine.models.classical import classical_flow

    frames = read_frames(shared_videos / "ucf101_ApplyEyeMakeup.avi", range(0, 40, 5), size=(256, 340))
    flows = np.stack([classical_flow("dis", a, b) for a, b in zip(frames[:-1], frames[1:])]).transpose(0, 3, 1, 2)
    cache = FlowCache(tmp_path / "cache", ENGINE, size=(256, 340), bound=B)
    write_entry(cache, video, flows)
    with cache.open(video) as c:
        got = c.read(0, len(flows))
        size = c.file_size
    inside = (np.abs(flows) <= B).all(axis=1)
    epe = np.sqrt(((got - flows) ** 2).sum(axis=1))[inside].mean()
    assert epe <= 0.1, epe
    assert size * 50 <= len(flows) * (12 + 8 * 256 * 340), size  # at least 50x smaller than .flo


def test_random_access_equals_slice_of_full_read(tmp_path, video):
    flows, _ = synthetic_flow()
    cache = make_cache(tmp_path / "cache", codec=None)
    write_entry(cache, video, flows)
    with cache.open(video) as c:
        full = c.read(0, N)
        for start, count in [(0, 1), (3, 4), (N - 1, 1), (2, N - 2), (5, 0)]:
            assert np.array_equal(c.read(start, count), full[start: start + count])
        with pytest.raises(IndexError, match="flows 7..9"):
            c.read(7, 3)
        with pytest.raises(IndexError):
            c.read(-1, 2)


def test_read_stacked_interleaves_x_and_y(tmp_path, video):
    flows, _ = synthetic_flow()
    cache = make_cache(tmp_path / "cache")
    write_entry(cache, video, flows)
    with cache.open(video) as c:
        part = c.read(2, 5)
        stacked = c.read_stacked(2, 5)
    assert stacked.shape == (10, H, W)
    for i in range(5):
        assert np.array_equal(stacked[2 * i], part[i, 0]) and np.array_equal(stacked[2 * i + 1], part[i, 1])
    t = stack_flows(torch.from_numpy(part))
    assert isinstance(t, torch.Tensor) and torch.equal(t, torch.from_numpy(stacked))
    with pytest.raises(ValueError):
        stack_flows(part[:, 0])


def test_mismatched_entries_are_detected_never_served(tmp_path, video):
    flows, _ = synthetic_flow()
    root = tmp_path / "cache"
    write_entry(make_cache(root), video, flows)
    assert make_cache(root).lookup(video) is not None
    # device and dtype do not change what the entry means
    assert make_cache(root, engine_config={**ENGINE, "device": "cuda:3", "dtype": "float16"}).lookup(video)
    for other, what in [
        (make_cache(root, engine_config={**ENGINE, "name": "dis"}), "engine name"),
        (make_cache(root, engine_config={**ENGINE, "weights_hash": "fff"}), "engine weights_hash"),
        (make_cache(root, size=(H, W + 8)), f"size is {H}x{W}, want {H}x{W + 8}"),
        (make_cache(root, bound=10.0), "bound is 20"),
    ]:
        assert other.lookup(video) is None
        with pytest.raises(CacheMismatch, match=what):
            other.open(video)
    # the video changed after the entry was built
    st = os.stat(video)
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert make_cache(root).lookup(video) is None
    with pytest.raises(CacheMismatch, match="changed since"):
        make_cache(root).open(video)
    assert make_cache(root, check_video=False).lookup(video) is not None
    # and no entry at all
    with pytest.raises(CacheError, match="no such cache file"):
        make_cache(tmp_path / "elsewhere").open(video)


def test_a_crash_mid_write_leaves_no_file(tmp_path, video):
    flows, _ = synthetic_flow()
    cache = make_cache(tmp_path / "cache")
    path = cache.path_for(video)
    with pytest.raises(RuntimeError, match="boom"):
        with cache.writer(video) as w:
            w.add_flows(flows[:4])
            assert w.tmp_path.exists() and not path.exists()
            raise RuntimeError("boom")
    assert not path.exists() and list(path.parent.iterdir()) == []
    # a crash while rewriting an entry leaves the old one intact
    write_entry(cache, video, flows)
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with cache.writer(video) as w:
            w.add_flows(flows[:2])
            raise RuntimeError("boom")
    assert path.read_bytes() == before and [p.name for p in path.parent.iterdir()] == [path.name]


def test_every_flipped_byte_is_caught(tmp_path, video):
    flows, _ = synthetic_flow(n=3, h=8, w=8)
    cache = FlowCache(tmp_path / "cache", ENGINE, size=(8, 8), bound=B, codec="png")
    path = write_entry(cache, video, flows)
    good = path.read_bytes()
    fd = os.open(path, os.O_RDWR)
    for pos in range(len(good)):
        os.pwrite(fd, bytes([good[pos] ^ 0x10]), pos)  # flip a bit in place, put it back after
        try:
            with CachedFlow(path) as c:
                problems = c.verify()
                if problems:
                    with pytest.raises(CacheCorrupt, match="checksum mismatch in flow frame"):
                        c.read(0, 3)
        except CacheError:
            problems = ["open failed"]
        assert problems, f"flipped byte {pos} of {len(good)} went unnoticed"
        os.pwrite(fd, good[pos: pos + 1], pos)
    os.close(fd)
    path.write_bytes(good[:-1])  # truncated
    with pytest.raises(CacheCorrupt, match="footer"):
        CachedFlow(path)


def test_read_names_file_and_frame_on_checksum_failure(tmp_path, video):
    flows, _ = synthetic_flow()
    cache = make_cache(tmp_path / "cache")
    path = write_entry(cache, video, flows)
    with CachedFlow(path) as c:
        offset = int(c.index["offset"][4]) + 50
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    with cache.open(video) as c:  # header and index are intact: it opens
        assert np.array_equal(c.read(0, 4), dequantize(quantize(flows[:4], B)[0], B))
        with pytest.raises(CacheCorrupt, match=rf"{path.name}.*flow frame 4"):
            c.read(3, 2)


def test_long_index_beyond_the_first_read(tmp_path, video, monkeypatch):
    monkeypatch.setattr(flow_cache.entry, "TAIL_READ", 64)  # the header + index no longer fit in one read
    flows, _ = synthetic_flow()
    cache = make_cache(tmp_path / "cache")
    write_entry(cache, video, flows)
    with cache.open(video) as c:
        assert c.num_flows == N and np.abs(c.read(0, N) - np.clip(flows, -B, B)).max() <= B / 254 + 1e-5


def _child_read(c: CachedFlow, conn) -> None:
    conn.send(c.read(1, 3))


def test_cached_flow_pickles_and_reads_after_fork(tmp_path, video):
    flows, _ = synthetic_flow()
    cache = make_cache(tmp_path / "cache")
    write_entry(cache, video, flows)
    c = cache.open(video)
    want = c.read(1, 3)
    clone = pickle.loads(pickle.dumps(c))
    assert clone._fd is None and np.array_equal(clone.read(1, 3), want)
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child_read, args=(c, child))
    proc.start()
    got = parent.recv()
    proc.join(10)
    assert proc.exitcode == 0 and np.array_equal(got, want)
    assert np.array_equal(c.read(1, 3), want)  # the parent's descriptor still works


def test_newer_format_version_is_refused(tmp_path, video):
    flows, _ = synthetic_flow(n=2)
    path = tmp_path / "x.afc"
    with CacheWriter(path, {**make_cache(tmp_path).header_for(video), "version": 99}) as w:
        w.add_flows(flows)
    with pytest.raises(CacheError, match="version 99"):
        CachedFlow(path)


def test_lock_excludes_and_dies_with_its_holder(tmp_path):
    lock_path = tmp_path / "v.afc.lock"
    a, b = VideoLock(lock_path), VideoLock(lock_path)
    assert a.acquire(blocking=False)
    assert not b.acquire(blocking=False) and flow_cache.lock_is_held(lock_path)
    a.release()
    assert not lock_path.exists() and b.acquire(blocking=False)
    b.release()
    # a holder killed with SIGKILL releases the lock (the kernel drops flocks on exit)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", str(lock_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert not a.acquire(blocking=False)
    finally:
        holder.kill()
        holder.wait()
    assert a.acquire(blocking=False)
    a.release()


def test_cache_cli_verify_delete_bad_and_stats(tmp_path, capsys):
    root = tmp_path / "cache"
    videos = []
    flows, _ = synthetic_flow()
    for name in ("a", "b", "c"):
        v = tmp_path / f"{name}.mp4"
        v.write_bytes(name.encode() * 10)
        videos.append(v)
        write_entry(make_cache(root), v, flows)
    assert cli(["cache", "verify", str(root)]) == 0
    assert "checked 3 file(s), 27 flow frames: 0 bad" in capsys.readouterr().out

    bad = make_cache(root).path_for(videos[1])
    data = bytearray(bad.read_bytes())
    data[100] ^= 1
    bad.write_bytes(bytes(data))
    orphan = root / f".{bad.name}.12345.abcd.tmp"  # left by a killed writer
    orphan.write_bytes(b"partial")
    assert cli(["cache", "verify", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"BAD {bad}: checksum mismatch in flow frame 0" in out and "1 bad" in out
    assert bad.exists() and orphan.exists()
    assert cli(["cache", "verify", str(root), "--delete-bad"]) == 1
    assert not bad.exists() and not orphan.exists()
    capsys.readouterr()
    assert cli(["cache", "verify", str(root)]) == 0
    capsys.readouterr()

    assert cli(["cache", "stats", str(root), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    size = sum(p.stat().st_size for p in root.glob("*.afc"))
    assert (st["videos"], st["frames"], st["bytes"]) == (2, 18, size)
    assert st["flo_bytes"] == 18 * (12 + 8 * H * W)
    assert cli(["cache", "stats", str(root)]) == 0
    assert "flow frames     18" in capsys.readouterr().out
    assert cli(["cache", "verify", str(tmp_path / "missing")]) == 2


def test_open_is_cheap(tmp_path, video):
    """Opening reads the tail only: far faster than reading the frames."""
    flows, _ = synthetic_flow(n=40, h=64, w=80)
    cache = FlowCache(tmp_path / "cache", ENGINE, size=(64, 80), bound=B)
    write_entry(cache, video, flows)
    t = time.perf_counter()
    for _ in range(20):
        cache.open(video).close()
    per_open = (time.perf_counter() - t) / 20
    assert per_open < 0.01, per_open


# ----------------------------------------------------------------------------- hostile files


def with_header(path, header_text: bytes) -> None:
    """Replace the header of the cache file at ``path`` by ``header_text``, with checksums and footer
    made to match: what an attacker (not a bit flip) would write."""
    data = path.read_bytes()
    meta_offset, header_len, n, _, _, magic = flow_cache.entry.FOOTER.unpack(data[-flow_cache.entry.FOOTER.size:])
    index = data[meta_offset + header_len: -flow_cache.entry.FOOTER.size]
    meta = header_text + index
    footer = flow_cache.entry.FOOTER.pack(meta_offset, len(header_text), n, zlib.crc32(meta), 0, magic)
    path.write_bytes(data[:meta_offset] + meta + footer)


@pytest.mark.parametrize("change, reason", [
    (lambda h: [1, 2], "header is not a JSON object (a JSON list)"),
    (lambda h: "text", "header is not a JSON object (a JSON str)"),
    (lambda h: {**h, "bound": "20"}, "header bound '20' is not a positive, finite number of pixels"),
    (lambda h: {**h, "bound": float("nan")}, "header bound nan is not a positive"),
    (lambda h: {**h, "bound": float("inf")}, "header bound inf is not a positive"),
    (lambda h: {**h, "bound": 0}, "header bound 0 is not a positive"),
    (lambda h: {**h, "bound": -1.0}, "header bound -1.0 is not a positive"),
    (lambda h: {**h, "height": 100000, "width": 100000}, "header height 100000 is not a whole number of pixels in 1..8192"),
    (lambda h: {**h, "width": "64"}, "header width '64' is not a whole number"),
    (lambda h: {**h, "num_flows": "9"}, "header says '9' flows, index has 9"),
    (lambda h: {**h, "engine": ["dis"]}, "header engine is not a JSON object"),
    (lambda h: {**h, "codec": "png"}, "header codec is not a JSON object"),
    (lambda h: {**h, "import": "tsn"}, "header import is not a JSON object"),
    (lambda h: {**h, "levels": "linear"}, "header levels 'linear' is none of zero_exact, tsn"),
    (lambda h: {**h, "version": "1"}, "unsupported format 'actionflow-flow-cache' version '1'"),
])
def test_crafted_headers_are_bad_in_verify_stats_and_reads(tmp_path, video, capsys, change, reason):
    root = tmp_path / "cache"
    cache = make_cache(root)
    flows, _ = synthetic_flow()
    path = write_entry(cache, video, flows)
    with CachedFlow(path) as c:
        header = dict(c.header)
    with_header(path, json.dumps(change(header)).encode())
    with pytest.raises(CacheError, match=re.escape(reason)):
        CachedFlow(path)
    assert cache.lookup(video) is None  # never served: recomputed by precompute or training
    assert cli(["cache", "verify", str(root)]) == 1
    assert f"BAD {path}: {reason}" in capsys.readouterr().out
    assert cli(["cache", "stats", str(root), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert (st["videos"], st["frames"], st["flo_bytes"]) == (0, 0, 0)
    assert [u["path"] for u in st["unreadable"]] == [str(path)] and reason in st["unreadable"][0]["reason"]


def test_frames_and_tables_claiming_another_size_are_refused_before_decoding(tmp_path, video, monkeypatch):
    import base64
    import struct

    from hostile_files import image_claiming

    from actionflow.flow_cache import MAGIC, codec

    decoded = []
    real = codec.cv2.imdecode
    monkeypatch.setattr(codec.cv2, "imdecode", lambda *a: decoded.append(1) or real(*a))
    flows, _ = synthetic_flow()
    path = write_entry(make_cache(tmp_path / "cache", codec="jpeg:90"), video, flows)
    header = dict(CachedFlow(path).header)
    # JPEG tables (stored once per file) whose frame header says 20000x20000: refused when the file opens
    bomb_tables = codec.split_jpeg(image_claiming(".jpg", 20000, 20000))[0]
    with_header(path, json.dumps({**header, "codec": {**header["codec"], "tables": base64.b64encode(bomb_tables).decode()}}).encode())
    with pytest.raises(CacheCorrupt, match=r"header codec tables are not those of a 96x64 JPEG"):
        CachedFlow(path)
    # a complete image as a frame's payload (format version 1, other codecs), claiming 4100x4100: never decoded
    good = codec.encode_frames(quantize(flows[:1], B)[0], {"name": "png", "quality": None})[0]
    payloads = [good, image_claiming(".png", 4100, 4100), image_claiming(".jpg", 4100, 4100)]
    meta_header = json.dumps({**header, "version": 1, "num_flows": 3, "codec": {"name": "png", "quality": None}}).encode()
    body, rows, offset = b"", b"", len(MAGIC)
    for payload in payloads:
        rows += struct.pack("<QIII", offset, len(payload), zlib.crc32(payload), 0)
        body, offset = body + payload, offset + len(payload)
    crafted = tmp_path / "crafted.afc"
    meta = meta_header + rows
    crafted.write_bytes(MAGIC + body + meta + struct.pack("<QIIII8s", offset, len(meta_header), 3, zlib.crc32(meta), 0, MAGIC))
    decoded.clear()
    with CachedFlow(crafted) as c:
        assert c.verify() == ["flow frame 1 does not decode to a 96x64 image", "flow frame 2 does not decode to a 96x64 image"]
        assert len(decoded) == 1  # the good frame only
        assert c.read(0, 1).shape == (1, 2, H, W)
        with pytest.raises(CacheCorrupt, match="flow frame 2 does not decode to a 96x64 image"):
            c.read(2, 1)


def test_bound_and_size_of_a_cache_are_validated(tmp_path):
    for bound in (float("nan"), float("inf"), 0.0, -1.0):
        with pytest.raises(ValueError, match="bound must be a positive, finite number of pixels"):
            make_cache(tmp_path, bound=bound)
    with pytest.raises(ValueError, match="each side must be 1..8192 px"):
        make_cache(tmp_path, size=(100000, 64))


def test_verify_delete_bad_deletes_only_damaged_flow_caches(tmp_path, capsys):
    root = tmp_path / "cache"
    flows, _ = synthetic_flow(n=3)
    paths = []
    for name in ("a", "b", "c"):
        v = tmp_path / f"{name}.mp4"
        v.write_bytes(name.encode() * 10)
        paths.append(write_entry(make_cache(root), v, flows))
    head, tail = paths[0], paths[1]
    head.write_bytes(b"\x00" + head.read_bytes()[1:])  # start magic damaged: the footer still says flow cache
    tail.write_bytes(tail.read_bytes()[:-40])  # footer lost: the start magic still says flow cache
    song = root / "song.afc"  # AIFF-C audio shares the suffix
    song.write_bytes(b"FORM\x00\x00\x00\x2eAIFCFVER\x00\x00\x00\x04\xa2\x80\x51\x40COMM" + bytes(30))
    empty = root / "empty.afc"
    empty.write_bytes(b"")
    assert cli(["cache", "verify", str(root), "--delete-bad"]) == 1
    out = capsys.readouterr().out
    assert f"not a flow cache, left alone: {song}" in out and f"not a flow cache, left alone: {empty}" in out
    assert f"BAD {head}: bad magic at start of file" in out and f"BAD {tail}: " in out
    assert "checked 3 file(s), 3 flow frames: 2 bad" in out
    assert not head.exists() and not tail.exists() and paths[2].exists()
    assert song.read_bytes().startswith(b"FORM") and empty.exists()
    assert cli(["cache", "verify", str(root)]) == 0  # what is left: one good cache and two foreign files
    assert "checked 1 file(s), 3 flow frames: 0 bad" in capsys.readouterr().out
