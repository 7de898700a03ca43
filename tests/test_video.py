"""flow_engine.video: decord reading with clear errors, and the PyAV fallback for widths decord mis-sizes."""
import numpy as np
import pytest

from flow_engine.video import VideoError, iter_frames, probe, read_frames
from flow_engine.viz import write_video


def _ramp_video(path, frames=6, height=48, width=48):
    """Frame t is a constant grey t*40 (so decoded frames are identifiable after compression)."""
    clip = np.stack([np.full((height, width, 3), 40 * t, np.uint8) for t in range(frames)])
    write_video(clip, path, fps=10)
    return clip


@pytest.mark.parametrize("width", [48, 64])  # 48: decord fails even at native size -> PyAV
def test_frames_come_back_in_the_order_asked(tmp_path, width):
    clip = _ramp_video(tmp_path / "v.mp4", width=width)
    got = read_frames(tmp_path / "v.mp4", [4, 1, 4])
    assert got.shape == (3, 48, width, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int).mean(axis=(1, 2, 3)) - clip[[4, 1, 4]].mean(axis=(1, 2, 3))).max() < 3
    chunks = list(iter_frames(tmp_path / "v.mp4", chunk=4, size=(32, 40)))
    assert [c.shape for c in chunks] == [(4, 32, 40, 3), (2, 32, 40, 3)]


def test_real_clip(shared_videos):
    info = probe(shared_videos / "ucf101_ApplyEyeMakeup.avi")
    assert (info.num_frames, info.height, info.width) == (164, 240, 320)
    assert read_frames(info.path, [0, 163], size=(120, 160)).shape == (2, 120, 160, 3)


@pytest.mark.parametrize("content", [b"", b"this is not a video at all" * 50])
def test_unreadable_files_raise_video_error_naming_the_file(tmp_path, content):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    with pytest.raises(VideoError, match="bad.mp4"):
        read_frames(bad)
    with pytest.raises(VideoError, match="no such file"):
        probe(tmp_path / "missing.mp4")


@pytest.mark.parametrize("width", [48, 64])
def test_out_of_range_index_is_a_clear_error(tmp_path, width):
    _ramp_video(tmp_path / "v.mp4", width=width)
    with pytest.raises(VideoError, match="out of range"):
        read_frames(tmp_path / "v.mp4", [0, 6])
