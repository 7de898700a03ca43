"""Middlebury colour coding: hand-computed wheel colours, masking, normalisation, torch agreement, MP4 writing, CLI."""
from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from flow_engine.__main__ import main
from flow_engine.io.flow_files import read_image, write_flo
from flow_engine.io.viz import (
    color_wheel_legend,
    flow_to_color,
    flow_to_color_torch,
    make_color_wheel,
    write_video,
)


def test_wheel_segments():
    wheel = make_color_wheel()
    assert wheel.shape == (55, 3)
    assert wheel[0].tolist() == [255, 0, 0]  # red
    assert wheel[15].tolist() == [255, 255, 0]  # yellow
    assert wheel[21].tolist() == [0, 255, 0]  # green
    assert wheel[25].tolist() == [0, 255, 255]  # cyan
    assert wheel[36].tolist() == [0, 0, 255]  # blue
    assert wheel[49].tolist() == [255, 0, 255]  # magenta
    assert wheel[7].tolist() == [255, 119, 0]  # floor(255 * 7 / 15)
    assert wheel[54].tolist() == [255, 0, 43]  # 255 - floor(255 * 5 / 6)


# Worked out by hand from the wheel: hue index fk = (atan2(-v,-u)/pi + 1)/2 * 54, linear blend of
# wheel[floor(fk)] and the next entry, then floor. Image axes: u right, v down.
COMPASS = {
    (1, 0): (255, 0, 0),  # right: fk = 0 -> red
    (1, 1): (255, 114, 0),  # down-right: fk = 6.75 -> G = .25*102 + .75*119 = 114.75
    (0, 1): (255, 229, 0),  # down: fk = 13.5 -> G = (221 + 238)/2 = 229.5
    (-1, 1): (32, 255, 0),  # down-left: fk = 20.25 -> R = .75*43 + .25*0 = 32.25
    (-1, 0): (0, 209, 255),  # left: fk = 27 -> G = 255 - floor(255*2/11) = 209
    (-1, -1): (0, 52, 255),  # up-left: fk = 33.75 -> G = .25*70 + .75*47 = 52.75
    (0, -1): (88, 0, 255),  # up: fk = 40.5 -> R = (78 + 98)/2 = 88
    (1, -1): (220, 0, 255),  # up-right: fk = 47.25 -> R = .75*215 + .25*235 = 220
}


@pytest.mark.parametrize("direction", list(COMPASS))
def test_compass_colours_at_full_magnitude(direction):
    flow = np.array([[direction]], dtype=np.float32) * 3.0
    assert flow_to_color(flow)[0, 0].tolist() == list(COMPASS[direction])
    # torch gives the same
    t = torch.from_numpy(flow.transpose(2, 0, 1)[None].copy())
    assert flow_to_color_torch(t)[0, :, 0, 0].tolist() == list(COMPASS[direction])


def test_saturation_and_normalisation():
    flow = np.zeros((1, 3, 2), np.float32)
    flow[0, 1] = (2, 0)
    flow[0, 2] = (4, 0)
    rgb = flow_to_color(flow)  # normalised by the frame's max, 4 px
    assert rgb[0, 0].tolist() == [255, 255, 255]  # still = white
    assert rgb[0, 1].tolist() == [255, 127, 127]  # half: 255 - 0.5*255 = 127.5
    assert rgb[0, 2].tolist() == [255, 0, 0]
    rgb = flow_to_color(flow, max_flow=2.0)
    assert rgb[0, 1].tolist() == [255, 0, 0]
    assert rgb[0, 2].tolist() == [191, 0, 0]  # beyond max_flow: 0.75 * 255 = 191.25
    # max_flow makes the colour independent of the rest of the frame
    other = flow.copy()
    other[0, 2] = (40, 0)
    np.testing.assert_array_equal(flow_to_color(other, max_flow=8)[0, :2], flow_to_color(flow, max_flow=8)[0, :2])
    with pytest.raises(ValueError, match="max_flow"):
        flow_to_color(flow, max_flow=0)


def test_unknown_pixels_are_black_and_ignored_by_the_normaliser():
    flow = np.zeros((2, 2, 2), np.float32)
    flow[0, 0] = (1, 0)
    flow[0, 1] = (1000, 0)  # unknown: must not shrink the others
    flow[1, 0] = (np.nan, 0)
    valid = np.array([[True, False], [True, True]])
    rgb = flow_to_color(flow, valid)
    assert rgb[0, 1].tolist() == [0, 0, 0] and rgb[1, 0].tolist() == [0, 0, 0]
    assert rgb[0, 0].tolist() == [255, 0, 0]
    assert rgb[1, 1].tolist() == [255, 255, 255]


def test_torch_matches_numpy_on_random_batches():
    rng = np.random.default_rng(0)
    flows = rng.normal(0, 5, size=(3, 40, 50, 2)).astype(np.float32)
    flows[1] *= 10  # frames with different maxima
    valid = rng.random((3, 40, 50)) > 0.1
    t = torch.from_numpy(flows.transpose(0, 3, 1, 2).copy())
    for max_flow in (None, 7.5):
        out = flow_to_color_torch(t, max_flow=max_flow, valid=torch.from_numpy(valid))
        assert out.dtype == torch.uint8 and out.shape == (3, 3, 40, 50)
        for b in range(3):
            np.testing.assert_array_equal(out[b].permute(1, 2, 0).numpy(), flow_to_color(flows[b], valid[b], max_flow))
    # without a mask: all pixels known
    np.testing.assert_array_equal(flow_to_color_torch(t)[2].permute(1, 2, 0).numpy(), flow_to_color(flows[2]))


def test_legend():
    legend = color_wheel_legend(64)
    assert legend.shape == (64, 64, 3) and legend.dtype == np.uint8
    assert legend[0, 0].tolist() == [0, 0, 0]  # outside the disc
    assert (legend[31:33, 31:33] > 240).all()  # centre nearly white
    assert legend[32, 63].tolist()[0] > 240 and legend[32, 63].tolist()[2] < 60  # right edge red
    assert legend[0, 32].tolist()[2] == 255  # top edge (flow up) blue/violet


def test_write_video_pads_odd_sizes_and_reads_back(tmp_path):
    frames = [np.full((21, 33, 3), (40 * i, 100, 200), np.uint8) for i in range(5)]
    path = tmp_path / "v.mp4"
    assert write_video(iter(frames), path, fps=10) == 5
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 5
    assert decoded[0].shape == (22, 34, 3)
    assert abs(float(decoded[3][5:15, 5:25].mean(axis=(0, 1))[0]) - 120) < 8  # colours survive
    with pytest.raises(ValueError, match="no frames"):
        write_video([], tmp_path / "empty.mp4")
    with pytest.raises(ValueError, match="differs"):
        write_video([frames[0], np.zeros((10, 10, 3), np.uint8)], tmp_path / "bad.mp4")


def test_viz_cli_writes_pngs_video_legend_and_reports_bad_files(tmp_path, capsys):
    rng = np.random.default_rng(0)
    inputs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_flo(tmp_path / name / "flow.flo", rng.normal(size=(12, 16, 2)))
        inputs.append(tmp_path / name / "flow.flo")
    bad = tmp_path / "bad.flo"
    bad.write_bytes(b"garbage!" * 3)
    out = tmp_path / "out"
    argv = ["viz", str(inputs[0]), str(bad), str(inputs[1]), "-o", str(out), "--video", str(out / "v.mp4"), "--fps", "5", "--max-flow", "3", "--legend"]
    assert main(argv) == 1  # the bad file makes it fail, after doing the good ones
    err = capsys.readouterr().err
    assert "bad.flo" in err and "wrong tag" in err
    assert sorted(p.name for p in out.glob("*.png")) == ["a_flow.png", "b_flow.png", "legend.png"]
    assert read_image(out / "a_flow.png").shape == (12, 16, 3)
    with av.open(str(out / "v.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 2
    assert main(["viz", str(inputs[0]), "-o", str(out)]) == 0
    assert (out / "flow.png").exists()


def test_viz_cli_refuses_png_bombs_from_their_header(tmp_path, capsys):
    from hostile_files import png_bytes

    bomb, claim = tmp_path / "bomb.png", tmp_path / "claim.png"
    bomb.write_bytes(png_bytes(4100, 4100))  # 300 KB that decode to 100 MB of 16-bit RGB
    claim.write_bytes(png_bytes(100000, 100000, rows=1))  # a header OpenCV raises cv2.error on
    write_flo(tmp_path / "good.flo", np.ones((8, 8, 2)))
    assert main(["viz", str(bomb), str(claim), str(tmp_path / "good.flo"), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "bomb.png: PNG of 4100x4100 pixels is above the limit" in err and "claim.png: header gives an absurd size" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good.png"]


def test_viz_cli_on_real_ground_truth(shared_flow_cases, tmp_path):
    flo = shared_flow_cases / "sintel_clean_alley_1_0001" / "flow.flo"
    assert main(["viz", str(flo), "-o", str(tmp_path)]) == 0
    rgb = read_image(tmp_path / "flow.png")
    assert rgb.shape == (436, 1024, 3)
    assert rgb.std() > 5  # a real picture, not a flat field


def test_write_video_falls_back_to_mpeg4_without_libx264(tmp_path, monkeypatch):
    monkeypatch.setattr(av, "codecs_available", set(av.codecs_available) - {"libx264"})
    path = tmp_path / "v.mp4"
    assert write_video((np.full((16, 16, 3), 128, np.uint8) for _ in range(3)), path, fps=25) == 3
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
        assert sum(1 for _ in container.decode(video=0)) == 3


def test_bad_frame_rates_and_output_folders_are_argument_errors(tmp_path, capsys):
    write_flo(tmp_path / "a.flo", np.ones((8, 8, 2)))
    for extra, words in ((["--video", str(tmp_path / "v.mp4"), "--fps", "0"], "argument --fps: must be a positive, finite number, got '0'"),
                         (["--video", str(tmp_path / "v.mp4"), "--fps", "nan"], "argument --fps: must be a positive, finite number"),
                         (["-o", str(tmp_path / "a.flo")], "a.flo is a file, not a folder")):
        with pytest.raises(SystemExit) as exc:
            main(["viz", str(tmp_path / "a.flo"), "-o", str(tmp_path / "out"), *extra])
        assert exc.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "v.mp4").exists()
