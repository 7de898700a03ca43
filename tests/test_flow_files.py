"""Flow file I/O: round trips, the real ground truth, PFM by hand, and every kind of malformed file."""
from __future__ import annotations

import struct
import time
import tracemalloc

import cv2
import numpy as np
import pytest
import torch
from hostile_files import image_claiming, png_bytes

from flow_engine.io.flow_files import (
    FlowFileError,
    flow_to_tensor,
    image_size,
    read_flo,
    read_flow,
    read_image,
    read_kitti_flow,
    read_pfm,
    tensor_to_flow,
    write_flo,
    write_flow,
    write_image,
    write_kitti_flow,
)


def random_flow(h: int = 17, w: int = 23, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    flow = rng.uniform(-100, 100, size=(h, w, 2)).astype(np.float32)
    valid = rng.random((h, w)) > 0.2
    return flow, valid


def flo_bytes(tag: float, width: int, height: int, n_floats: int | None = None) -> bytes:
    n = width * height * 2 if n_floats is None else n_floats
    return struct.pack("<fii", tag, width, height) + np.zeros(n, "<f4").tobytes()


# ----------------------------------------------------------------------------- .flo


def test_flo_round_trip_with_unknown_pixels(tmp_path):
    flow, valid = random_flow()
    path = tmp_path / "a.flo"
    write_flo(path, flow, valid)
    assert path.stat().st_size == 12 + 17 * 23 * 8
    back, back_valid = read_flo(path)
    assert back.dtype == np.float32 and back.shape == (17, 23, 2)
    np.testing.assert_array_equal(back_valid, valid)
    np.testing.assert_array_equal(back[valid], flow[valid])
    assert (back[~valid] == 0).all()


def test_flo_layout_is_the_middlebury_one(tmp_path):
    # Written by hand: 3 wide, 2 high, u = 10*x + y, v = -(10*x + y) at (x, y); pixel (2, 1) unknown.
    vals = []
    for y in range(2):
        for x in range(3):
            u = 1e10 if (x, y) == (2, 1) else 10 * x + y
            vals += [u, -(10 * x + y)]
    path = tmp_path / "hand.flo"
    path.write_bytes(struct.pack("<fii", 202021.25, 3, 2) + struct.pack("<12f", *vals))
    flow, valid = read_flo(path)
    assert flow.shape == (2, 3, 2)
    assert flow[1, 0].tolist() == [1.0, -1.0]
    assert flow[0, 2].tolist() == [20.0, -20.0]
    assert valid.sum() == 5 and not valid[1, 2] and flow[1, 2].tolist() == [0.0, 0.0]
    # write_flo produces exactly these bytes, with both components of the unknown pixel at 1e10
    out = tmp_path / "out.flo"
    write_flo(out, flow, valid)
    vals[-1] = 1e10
    assert out.read_bytes() == struct.pack("<fii", 202021.25, 3, 2) + struct.pack("<12f", *vals)


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("wrongtag.flo", flo_bytes(123.0, 4, 3), r"wrong tag 123 \(a \.flo file starts with 202021\.25\)"),
        ("negative.flo", flo_bytes(202021.25, -4, 3, n_floats=24), "non-positive"),
        ("zero.flo", flo_bytes(202021.25, 0, 3, n_floats=24), "non-positive"),
        ("absurd.flo", flo_bytes(202021.25, 100000, 100000, n_floats=8), "absurd"),
        ("truncated.flo", flo_bytes(202021.25, 4, 3, n_floats=23), "truncated"),
        ("trailing.flo", flo_bytes(202021.25, 4, 3, n_floats=25), "trailing"),
        ("empty.flo", b"", "empty"),
        ("short.flo", b"PIEH", "truncated header"),
    ],
)
def test_malformed_flo_raises_naming_the_file(tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(FlowFileError, match=problem) as info:
        read_flo(path)
    assert name in str(info.value) and info.value.path == str(path)
    assert isinstance(info.value, ValueError)


def test_huge_header_fails_fast_without_allocating(tmp_path):
    # 50000 x 50000 passes the sanity limit on each side but would need 20 GB: the size check must catch it.
    path = tmp_path / "huge.flo"
    path.write_bytes(flo_bytes(202021.25, 50000, 50000, n_floats=16))
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(FlowFileError, match="truncated"):
        read_flo(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert time.perf_counter() - start < 0.5
    assert peak < 1 << 20


def test_missing_file(tmp_path):
    with pytest.raises(FlowFileError, match="no such file"):
        read_flow(tmp_path / "nope.flo")


# ----------------------------------------------------------------------------- KITTI PNG


def test_kitti_round_trip_to_one_64th(tmp_path):
    flow, valid = random_flow(seed=1)
    path = tmp_path / "k.png"
    write_kitti_flow(path, flow, valid)
    back, back_valid = read_kitti_flow(path)
    assert back.dtype == np.float32 and back.shape == flow.shape
    np.testing.assert_array_equal(back_valid, valid)
    assert np.abs(back[valid] - flow[valid]).max() <= 1 / 128 + 1e-6
    assert (back[~valid] == 0).all()
    # Exactly representable values come back exactly.
    exact = np.round(flow * 64) / 64
    write_flow(path, exact, valid)
    np.testing.assert_array_equal(read_flow(path)[0][valid], exact[valid])


def test_kitti_channels_and_clipping(tmp_path):
    flow = np.array([[[1.5, -2.25], [1000.0, -1000.0]]], dtype=np.float32)
    path = tmp_path / "k.png"
    write_kitti_flow(path, flow)
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert bgr.dtype == np.uint16
    # pixel 0: R = 2^15 + 1.5*64, G = 2^15 - 2.25*64, B = 1
    assert bgr[0, 0].tolist() == [1, 32768 - 144, 32768 + 96]
    assert bgr[0, 1].tolist() == [1, 0, 65535]
    back, _ = read_kitti_flow(path)
    assert back[0, 1].tolist() == [(65535 - 32768) / 64, -512.0]


def test_kitti_rejects_8bit_and_grey_and_garbage(tmp_path):
    eight = tmp_path / "eight.png"
    cv2.imwrite(str(eight), np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(FlowFileError, match="16-bit") as info:
        read_kitti_flow(eight)
    assert "eight.png" in str(info.value)
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.zeros((4, 5), np.uint16))
    with pytest.raises(FlowFileError, match="3 channels"):
        read_flow(grey)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a png at all" * 10)
    with pytest.raises(FlowFileError, match="garbage.png"):
        read_flow(garbage)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(FlowFileError, match="empty"):
        read_flow(empty)


def test_png_size_is_checked_from_the_header_before_decoding(tmp_path):
    # 4100x4100 16-bit RGB: 300 KB on disk, 100 MB decoded, 200 MB as flow: above MAX_IMAGE_PIXELS (4096x4096)
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(4100, 4100))
    assert big.stat().st_size < 1 << 20
    tracemalloc.start()
    with pytest.raises(FlowFileError, match=r"big.png: PNG of 4100x4100 pixels is above the limit of 16777216"):
        read_flow(big)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1 << 20
    with pytest.raises(FlowFileError, match="above the limit"):
        read_image(big)
    # a header claiming 100000x100000 (OpenCV itself raises cv2.error on it) and one claiming 0 rows
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_bytes(100000, 100000, rows=1))
    with pytest.raises(FlowFileError, match="huge.png: header gives an absurd size 100000x100000"):
        read_flow(huge)
    flat = tmp_path / "flat.png"
    flat.write_bytes(png_bytes(16, 0))
    with pytest.raises(FlowFileError, match="flat.png: header gives a non-positive size"):
        read_flow(flat)
    # at the limit's side of the line a KITTI PNG still reads (and 16-bit RGBA is refused from its header)
    ok = tmp_path / "ok.png"
    ok.write_bytes(png_bytes(64, 48))
    flow, valid = read_flow(ok)
    assert flow.shape == (48, 64, 2) and not valid.any()
    rgba = tmp_path / "rgba.png"
    rgba.write_bytes(png_bytes(8, 8, colour=6))
    with pytest.raises(FlowFileError, match="rgba.png: KITTI flow PNGs have 3 channels, this one has 4"):
        read_flow(rgba)


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".bmp", ".tif", ".ppm"])
def test_every_image_format_is_sized_from_its_header_before_decoding(tmp_path, ext):
    # a few hundred bytes whose header says 4100x4100: a decoder that trusted it would allocate 50 MB
    # (and 3.5 GB for 3.4 KB of JPEG claiming 20000x20000)
    bomb = tmp_path / f"bomb{ext}"
    bomb.write_bytes(image_claiming(ext, 4100, 4100))
    assert bomb.stat().st_size < 4096
    with pytest.raises(FlowFileError, match=rf"bomb\{ext}: image of 4100x4100 pixels is above the limit of 16777216"):
        read_image(bomb)
    assert image_size(bomb, image_claiming(ext, 4096, 4096)) == (4096, 4096)  # the limit itself is allowed
    if ext != ".png":  # within the limit the same format reads, and as OpenCV reads it
        small = tmp_path / f"small{ext}"
        small.write_bytes(image_claiming(ext, 16, 16))
        assert np.array_equal(read_image(small), cv2.imread(str(small))[..., ::-1])
    other = tmp_path / f"other{ext}"  # a format whose size cannot be read first is not decoded either
    other.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 20000 +X 20000\n")
    with pytest.raises(FlowFileError, match="unreadable image \\(no header of a known format: JPEG, PNG"):
        read_image(other)


def test_png_with_a_good_header_and_broken_data_is_a_clear_error(tmp_path):
    broken = tmp_path / "broken.png"
    data = png_bytes(64, 48)
    broken.write_bytes(data[:60])  # header intact, compressed rows cut short
    with pytest.raises(FlowFileError, match="broken.png: unreadable"):
        read_flow(broken)


# ----------------------------------------------------------------------------- PFM


@pytest.mark.parametrize("little_endian", [True, False])
def test_pfm_by_hand_both_endiannesses(tmp_path, little_endian):
    h, w = 2, 3
    # Stored bottom row first: the file's first row is the image's last row.
    image = np.arange(h * w * 3, dtype=np.float32).reshape(h, w, 3)
    stored = image[::-1]
    fmt = "<" if little_endian else ">"
    scale = b"-1.0" if little_endian else b"1.0"
    path = tmp_path / "hand.pfm"
    path.write_bytes(b"PF\n3 2\n" + scale + b"\n" + stored.astype(fmt + "f4").tobytes())
    data = read_pfm(path)
    assert data.dtype == np.float32 and data.shape == (2, 3, 3)
    np.testing.assert_array_equal(data, image)
    flow, valid = read_flow(path)
    np.testing.assert_array_equal(flow, image[:, :, :2])
    assert valid.all()


def test_pfm_grey(tmp_path):
    path = tmp_path / "grey.pfm"
    image = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    path.write_bytes(b"Pf\n2 2\n-1\n" + image[::-1].astype("<f4").tobytes())
    np.testing.assert_array_equal(read_pfm(path), image)
    with pytest.raises(FlowFileError, match="single-channel"):
        read_flow(path)


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"garbage that is not a pfm file at all", "not a PFM"),
        (b"PF\n3 2\n-1.0\n" + b"\0" * 10, "truncated"),
        (b"PF\n3 2\n-1.0\n" + b"\0" * 80, "trailing"),
        (b"PF\n3 x\n-1.0\n" + b"\0" * 72, "bad PFM header"),
        (b"PF\n3 2\n0\n" + b"\0" * 72, "scale"),
        (b"PF\n-3 2\n-1\n" + b"\0" * 72, "non-positive"),
        (b"PF\n100000 100000\n-1\n" + b"\0" * 72, "absurd"),
        (b"PF", "incomplete"),
        (b"", "empty"),
    ],
)
def test_malformed_pfm(tmp_path, content, problem):
    path = tmp_path / "bad.pfm"
    path.write_bytes(content)
    with pytest.raises(FlowFileError, match=problem) as info:
        read_pfm(path)
    assert "bad.pfm" in str(info.value)


# ----------------------------------------------------------------------------- dispatch, torch, images


def test_unknown_suffix(tmp_path):
    path = tmp_path / "flow.xyz"
    path.write_bytes(b"123")
    with pytest.raises(FlowFileError, match="suffix"):
        read_flow(path)
    with pytest.raises(FlowFileError, match="cannot write"):
        write_flow(path, np.zeros((2, 2, 2), np.float32))


def test_write_rejects_bad_shapes(tmp_path):
    with pytest.raises(FlowFileError, match=r"\[H,W,2\]"):
        write_flow(tmp_path / "a.flo", np.zeros((4, 4, 3)))
    with pytest.raises(FlowFileError, match="valid mask"):
        write_flow(tmp_path / "a.flo", np.zeros((4, 4, 2)), np.ones((4, 5), bool))


def test_tensor_helpers():
    flow, _ = random_flow(5, 7)
    t = flow_to_tensor(flow)
    assert t.dtype == torch.float32 and t.shape == (2, 5, 7)
    assert t[0, 3, 4] == flow[3, 4, 0] and t[1, 3, 4] == flow[3, 4, 1]
    np.testing.assert_array_equal(tensor_to_flow(t), flow)


def test_image_round_trip_rgb_order_and_grey(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 200  # red
    write_image(tmp_path / "red.png", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "red.png"), rgb)
    assert cv2.imread(str(tmp_path / "red.png"))[0, 0].tolist() == [0, 0, 200]  # BGR on disk
    cv2.imwrite(str(tmp_path / "grey.png"), np.full((3, 5), 77, np.uint8))
    grey = read_image(tmp_path / "grey.png")
    assert grey.shape == (3, 5, 3) and (grey == 77).all()
    (tmp_path / "bad.jpg").write_bytes(b"nope" * 20)
    with pytest.raises(FlowFileError, match="bad.jpg"):
        read_image(tmp_path / "bad.jpg")
    with pytest.raises(FlowFileError, match="uint8"):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.float32))


# ----------------------------------------------------------------------------- the real ground truth


def test_reads_the_shared_ground_truth(shared_flow_cases):
    cases = sorted(p for p in shared_flow_cases.iterdir() if p.is_dir())
    assert len(cases) >= 10
    for case in cases:
        flow, valid = read_flow(case / "flow.flo")
        frame = read_image(next(case.glob("frame1.*")))
        assert flow.dtype == np.float32 and flow.ndim == 3 and flow.shape[2] == 2
        assert flow.shape[:2] == frame.shape[:2], case.name
        assert valid.dtype == bool and valid.mean() > 0.5, case.name
        assert np.isfinite(flow).all()
        mag = np.linalg.norm(flow[valid], axis=1)
        assert 0.01 < mag.mean() < 200 and mag.max() < 1000, case.name
