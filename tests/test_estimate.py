"""The estimate CLI: frame pairs (.flo, KITTI .png), folders of frames, a real video, and bad input."""
from __future__ import annotations

import numpy as np
import pytest

from flow_engine.__main__ import main
from flow_engine.io.flow_files import read_flow, write_image


def textured(h: int, w: int, shift: int = 0, seed: int = 0) -> np.ndarray:
    """A smooth random texture (uint8 RGB [h,w,3]) whose content is moved right by ``shift`` px."""
    import cv2

    rng = np.random.default_rng(seed)
    big = rng.integers(0, 255, (h, w + 16, 3), dtype=np.uint8)
    big = cv2.GaussianBlur(big, (0, 0), 2.0)
    big = cv2.normalize(big, None, 0, 255, cv2.NORM_MINMAX)
    return np.ascontiguousarray(big[:, 8 - shift : 8 - shift + w])


@pytest.fixture
def pair(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    write_image(a, textured(64, 80))
    write_image(b, textured(64, 80, shift=3))
    return a, b


def test_pair_to_flo_and_kitti_png_with_dis(pair, tmp_path):
    out = tmp_path / "flow.flo"
    assert main(["estimate", str(pair[0]), str(pair[1]), "-o", str(out), "--engine", "dis"]) == 0
    flow, valid = read_flow(out)
    assert flow.shape == (64, 80, 2) and valid.all()
    inner = flow[12:-12, 12:-12]
    assert abs(np.median(inner[..., 0]) - 3.0) < 0.3 and abs(np.median(inner[..., 1])) < 0.3
    png = tmp_path / "flow.png"
    assert main(["estimate", str(pair[0]), str(pair[1]), "-o", str(png), "--engine", "dis"]) == 0
    kitti, _ = read_flow(png)
    np.testing.assert_allclose(kitti, flow, atol=1 / 64 + 1e-6)  # KITTI stores 1/64 px steps


def test_the_old_model_flag_still_names_the_engine_with_a_deprecation_message(pair, tmp_path, capsys):
    new, old = tmp_path / "new.flo", tmp_path / "old.flo"
    assert main(["estimate", str(pair[0]), str(pair[1]), "-o", str(new), "--engine", "dis"]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert main(["estimate", str(pair[0]), str(pair[1]), "-o", str(old), "--model", "dis"]) == 0
    assert "--model is deprecated; use --engine" in capsys.readouterr().err
    np.testing.assert_array_equal(read_flow(old)[0], read_flow(new)[0])


def test_pair_with_pwcnet_random_weights_and_resize(pair, tmp_path, capsys):
    out = tmp_path / "sub" / "flow.flo"
    assert main(["estimate", str(pair[0]), str(pair[1]), "-o", str(out), "--device", "cpu", "--size", "40x32"]) == 0
    flow, _ = read_flow(out)
    assert flow.shape == (32, 40, 2) and np.isfinite(flow).all()


def test_frames_folder_to_flo_png_and_mp4(tmp_path):
    import av

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(4):
        write_image(folder / f"img_{i:03d}.png", textured(48, 64, shift=2 * i))
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    mp4 = tmp_path / "flow.mp4"
    args = ["estimate", "--frames", str(folder), "-o", str(out), "--flo", "--png", "--mp4", str(mp4),
            "--engine", "dis", "--batch", "2"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"img_{i:03d}.{s}" for i in range(3) for s in ("flo", "png")]
    for i in range(3):
        flow, _ = read_flow(out / f"img_{i:03d}.flo")
        assert abs(np.median(flow[10:-10, 10:-10, 0]) - 2.0) < 0.3
    with av.open(str(mp4)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 3


def test_video_limited_frames(shared_videos, tmp_path, capsys):
    video = shared_videos / "unlabeled_340x256.mp4"
    out = tmp_path / "dis"
    assert main(["estimate", "--video", str(video), "--max-frames", "4", "-o", str(out), "--flo", "--engine", "dis"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["000000.flo", "000001.flo", "000002.flo"]
    flow, _ = read_flow(out / "000000.flo")
    assert flow.shape == (256, 340, 2)
    # PWC-Net (random weights) on CPU at a small size, batches of 2 pairs across chunk borders
    out = tmp_path / "pwc"
    args = ["estimate", "--video", str(video), "--max-frames", "4", "-o", str(out), "--flo", "--device", "cpu",
            "--batch", "2", "--size", "64x48"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == names
    assert read_flow(out / "000002.flo")[0].shape == (48, 64, 2)
    assert "3 flow fields from 4 frames" in capsys.readouterr().out


def test_bad_input_gives_clear_errors(pair, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert main(["estimate", str(pair[0]), str(corrupt), "-o", str(tmp_path / "f.flo"), "--engine", "dis"]) == 1
    assert "corrupt.png" in capsys.readouterr().err

    video = tmp_path / "broken.mp4"
    video.write_bytes(b"\x00" * 1000)
    assert main(["estimate", "--video", str(video), "-o", str(tmp_path / "o"), "--flo", "--engine", "dis"]) == 1
    assert "broken.mp4: cannot open as a video" in capsys.readouterr().err

    small = tmp_path / "small.png"
    write_image(small, textured(32, 40))
    assert main(["estimate", str(pair[0]), str(small), "-o", str(tmp_path / "f.flo"), "--engine", "dis"]) == 1
    assert "80x64 but" in capsys.readouterr().err

    assert main(["estimate", str(pair[0]), str(pair[1]), "-o", str(tmp_path / "f.txt")]) == 2
    assert "must end in .flo or .png" in capsys.readouterr().err
    assert main(["estimate", "--frames", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "nothing to write" in capsys.readouterr().err
    assert main(["estimate", "--frames", str(tmp_path / "absent"), "-o", str(tmp_path / "o"), "--flo"]) == 1
    assert "no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["estimate", str(pair[0]), str(pair[1]), "-o", str(tmp_path / "f.flo"), "--size", "big"])
    # what an engine cannot take: frames below its smallest side, a size memory would not hold
    tiny = tmp_path / "tiny.png"
    write_image(tiny, textured(8, 8))
    assert main(["estimate", str(tiny), str(tiny), "-o", str(tmp_path / "f.flo"), "--engine", "dis"]) == 1
    assert "error: dis needs frames of at least 16 px a side, got 8x8" in capsys.readouterr().err
    assert main(["estimate", str(pair[0]), str(pair[1]), "-o", str(tmp_path / "f.flo"), "--size", "10x10", "--engine", "dis"]) == 2
    assert "error: --size 10x10: dis needs frames of at least 16 px" in capsys.readouterr().err
    assert main(["estimate", "--video", str(video), "-o", str(tmp_path / "o"), "--flo", "--size", "60000x60000",
                 "--engine", "farneback"]) == 2
    assert "GiB is available" in capsys.readouterr().err
    assert main(["estimate", "--video", str(video), "-o", str(pair[0]), "--flo"]) == 2  # a file where the folder goes
    assert f"error: -o {pair[0]}: {pair[0]} is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["estimate", "--video", str(video), "-o", str(tmp_path / "o"), "--mp4", str(tmp_path / "f.mp4"), "--fps", "0"])
