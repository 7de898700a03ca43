"""Dataset readers on tiny fixtures of each published layout, written with flow_engine.io.flow_files."""
from pathlib import Path

import numpy as np
import pytest
import torch

from flow_engine.io import flow_files as io
from flow_engine.data.datasets import KITTI, DatasetError, FlowCases, FlyingChairs, FlyingThings3D, Sintel, make_dataset

H, W = 6, 10


def frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def known_flow(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 5, (H, W, 2)).astype(np.float32)


def write_pfm(path: Path, data: np.ndarray) -> None:
    """A 3-channel little-endian PFM, rows bottom-to-top, written by hand."""
    h, w, _ = data.shape
    with open(path, "wb") as f:
        f.write(f"PF\n{w} {h}\n-1.0\n".encode())
        f.write(np.ascontiguousarray(data[::-1], dtype="<f4").tobytes())


def check_item(item, img1: np.ndarray, flow: np.ndarray, valid: np.ndarray | None = None) -> None:
    a, b, f, v = item
    assert a.dtype == torch.uint8 and a.shape == (3, H, W) and b.shape == (3, H, W)
    assert np.array_equal(a.permute(1, 2, 0).numpy(), img1)
    assert f.shape == (2, H, W) and f.dtype == torch.float32 and v.shape == (H, W) and v.dtype == torch.bool
    valid = np.ones((H, W), bool) if valid is None else valid
    assert np.array_equal(v.numpy(), valid)
    np.testing.assert_allclose(f.permute(1, 2, 0).numpy()[valid], flow[valid], atol=1 / 64)


def test_flying_chairs_with_split_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(1, 4):
        io.write_image(data / f"{i:05d}_img1.ppm", frame(i))
        io.write_image(data / f"{i:05d}_img2.ppm", frame(10 + i))
        io.write_flo(data / f"{i:05d}_flow.flo", known_flow(i))
    (tmp_path / "FlyingChairs_train_val.txt").write_text("1\n2\n1\n")
    train, val = FlyingChairs(tmp_path, "train"), FlyingChairs(tmp_path, "val")
    assert len(train) == 2 and len(val) == 1 and len(FlyingChairs(tmp_path, "all")) == 3
    assert train.names == ["chairs_00001", "chairs_00003"]
    check_item(train[1], frame(3), known_flow(3))
    check_item(val[0], frame(2), known_flow(2))
    (tmp_path / "FlyingChairs_train_val.txt").write_text("1\n2\n")
    with pytest.raises(DatasetError, match="FlyingChairs_train_val.txt"):
        FlyingChairs(tmp_path, "train")


def test_flying_chairs_missing_frame_names_the_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    io.write_flo(data / "00001_flow.flo", known_flow(0))
    io.write_image(data / "00001_img1.ppm", frame(0))
    ds = FlyingChairs(tmp_path, "all")
    with pytest.raises(io.FlowFileError, match="00001_img2.ppm"):
        ds[0]


def test_flying_things_pfm_both_directions(tmp_path):
    seq = Path("TRAIN/A/0000")
    frames = tmp_path / "frames_cleanpass" / seq / "left"
    future = tmp_path / "optical_flow" / seq / "into_future" / "left"
    past = tmp_path / "optical_flow" / seq / "into_past" / "left"
    for d in (frames, future, past):
        d.mkdir(parents=True)
    for n in (6, 7, 8):
        io.write_image(frames / f"{n:04d}.png", frame(n))
        third = np.zeros((H, W, 1), np.float32)
        write_pfm(future / f"OpticalFlowIntoFuture_{n:04d}_L.pfm", np.concatenate([known_flow(n), third], 2))
        write_pfm(past / f"OpticalFlowIntoPast_{n:04d}_L.pfm", np.concatenate([-known_flow(n), third], 2))
    ds = FlyingThings3D(tmp_path, "TRAIN", "clean")
    assert len(ds) == 2
    check_item(ds[0], frame(6), known_flow(6))
    check_item(ds[1], frame(7), known_flow(7))
    both = FlyingThings3D(tmp_path, "TRAIN", "clean", direction="both")
    assert len(both) == 4
    check_item(both[1], frame(7), -known_flow(7))  # frame 7 -> 6 uses IntoPast_0007
    with pytest.raises(DatasetError, match="frames_finalpass"):
        FlyingThings3D(tmp_path, "TRAIN", "final")


def test_sintel_training_and_test(tmp_path):
    for split in ("training", "test"):
        for scene in ("alley_1", "bamboo_2"):
            d = tmp_path / split / "clean" / scene
            d.mkdir(parents=True)
            for n in (1, 2, 3):
                io.write_image(d / f"frame_{n:04d}.png", frame(n))
    for scene in ("alley_1", "bamboo_2"):
        d = tmp_path / "training" / "flow" / scene
        d.mkdir(parents=True)
        for n in (1, 2):
            io.write_flo(d / f"frame_{n:04d}.flo", known_flow(n))
    train = Sintel(tmp_path, "training", "clean")
    assert len(train) == 4 and train.has_flow
    assert train.names[0] == "sintel_clean_alley_1_0001"
    check_item(train[1], frame(2), known_flow(2))
    test = Sintel(tmp_path, "test", "clean")
    assert len(test) == 4 and not test.has_flow
    _, _, f, v = test[0]
    assert not v.any() and not f.any()
    assert len(Sintel(tmp_path, "training", "clean", scenes=["bamboo_2"])) == 2
    with pytest.raises(DatasetError, match="final"):
        Sintel(tmp_path, "training", "final")


@pytest.mark.parametrize("year,folder", [(2015, "image_2"), (2012, "colored_0")])
def test_kitti_sparse_flow(tmp_path, year, folder):
    images = tmp_path / "training" / folder
    flows = tmp_path / "training" / "flow_occ"
    images.mkdir(parents=True)
    flows.mkdir(parents=True)
    valid = np.random.default_rng(0).random((H, W)) > 0.4
    for i in range(2):
        io.write_image(images / f"{i:06d}_10.png", frame(i))
        io.write_image(images / f"{i:06d}_11.png", frame(i + 5))
        io.write_kitti_flow(flows / f"{i:06d}_10.png", known_flow(i), valid)
    ds = KITTI(tmp_path, year)
    assert ds.sparse and len(ds) == 2
    check_item(ds[1], frame(1), known_flow(1), valid)
    assert make_dataset("kitti", tmp_path, year=year).names == [f"kitti{year}_000000", f"kitti{year}_000001"]


def test_cases_layout_and_errors(tmp_path):
    for name, suffix in (("a", ".png"), ("b", ".ppm")):
        d = tmp_path / name
        d.mkdir()
        io.write_image(d / f"frame1{suffix}", frame(1))
        io.write_image(d / f"frame2{suffix}", frame(2))
        io.write_flo(d / "flow.flo", known_flow(3))
    ds = FlowCases(tmp_path)
    assert ds.names == ["a", "b"]
    check_item(ds[1], frame(1), known_flow(3))
    assert FlowCases(tmp_path, names=["b"]).names == ["b"]
    with pytest.raises(DatasetError, match="no such cases: zz"):
        FlowCases(tmp_path, names=["zz"])
    (tmp_path / "b" / "flow.flo").write_bytes(b"not a flow file")
    with pytest.raises(io.FlowFileError, match="flow.flo"):
        ds[1]
    with pytest.raises(DatasetError, match="no such|missing folder"):
        FlowCases(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="no cases frame pairs"):
        FlowCases(tmp_path / "a")
    with pytest.raises(DatasetError, match="unknown dataset"):
        make_dataset("middlebury", tmp_path)


def test_mismatched_flow_size_is_an_error(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    io.write_image(d / "frame1.png", frame(1))
    io.write_image(d / "frame2.png", frame(2))
    io.write_flo(d / "flow.flo", np.zeros((H + 1, W, 2), np.float32))
    with pytest.raises(DatasetError, match="flow is"):
        FlowCases(tmp_path)[0]


def test_shared_cases_read(shared_flow_cases):
    ds = FlowCases(shared_flow_cases)
    assert len(ds) == 13
    img1, img2, flow, valid = ds[0]
    assert img1.shape[0] == 3 and flow.shape[1:] == img1.shape[1:] and valid.any()


def test_eval_cli_scores_a_benchmark_layout(tmp_path, capsys):
    import json

    from flow_engine.__main__ import main

    scene = tmp_path / "training" / "clean" / "alley_1"
    flows = tmp_path / "training" / "flow" / "alley_1"
    scene.mkdir(parents=True)
    flows.mkdir(parents=True)
    for n in (1, 2, 3):
        io.write_image(scene / f"frame_{n:04d}.png", frame(n))
    for n in (1, 2):
        io.write_flo(flows / f"frame_{n:04d}.flo", known_flow(n))
    out = tmp_path / "scores.json"
    assert main(["eval", "--dataset", "sintel", "--root", str(tmp_path), "--engine", "zero", "--no-progress", "--json", str(out)]) == 0
    scores = json.loads(out.read_text())
    assert list(scores["cases"]) == ["sintel_clean_alley_1_0001", "sintel_clean_alley_1_0002"]
    expected = np.linalg.norm(known_flow(2), axis=2).mean()
    assert scores["cases"]["sintel_clean_alley_1_0002"]["epe"] == pytest.approx(expected, rel=1e-5)
    assert main(["eval", "--dataset", "kitti", "--root", str(tmp_path), "--engine", "zero", "--no-progress"]) == 1
    assert "missing folder" in capsys.readouterr().err
    assert main(["eval", "--dataset", "sintel", "--engine", "zero"]) == 1
    assert "--root" in capsys.readouterr().err
