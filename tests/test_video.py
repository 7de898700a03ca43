"""flow_engine.io.video: decord reading with clear errors, the PyAV fallback for widths decord mis-sizes,
and the lists that name videos."""
import os

import numpy as np
import pytest

from flow_engine.io.video import (
    ListFileError, VideoError, iter_frames, list_videos, probe, read_frames, read_list_lines, split_list_line,
)
from flow_engine.io.viz import write_video


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
    with pytest.raises(VideoError) as err:
        probe(bad)
    # the path once, and the decoder's words without decord's "[12:00:00] /src/video/video_reader.cc:83:" prefix
    assert str(err.value).count(str(tmp_path)) == 1 and ".cc:" not in str(err.value), str(err.value)


@pytest.mark.parametrize("width", [48, 64])
def test_out_of_range_index_is_a_clear_error(tmp_path, width):
    _ramp_video(tmp_path / "v.mp4", width=width)
    with pytest.raises(VideoError, match="out of range"):
        read_frames(tmp_path / "v.mp4", [0, 6])


# ----------------------------------------------------------------------------- hostile inputs


def test_list_files_are_utf8_with_the_bom_stripped_anything_else_a_clear_error(tmp_path):
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffa.mp4 0\n\n# comment\n  b c.mp4  \n".encode("utf-8"))
    assert read_list_lines(bom) == [(1, "a.mp4 0"), (4, "b c.mp4")]  # the first entry is not lost to the BOM
    assert [split_list_line(line) for _, line in read_list_lines(bom)] == [("a.mp4", "0"), ("b c.mp4", None)]
    for name, data, words in [
        ("utf16.txt", "a.mp4 0\n".encode("utf-16"), "the list is UTF-16; save it as UTF-8"),
        ("utf16be.txt", b"\xfe\xff" + "a.mp4 0\n".encode("utf-16-be"), "the list is UTF-16"),
        ("utf16_no_bom.txt", "a.mp4 0\n".encode("utf-16-le"), "contains NUL bytes"),
        ("latin1.txt", "caf\xe9.mp4 0\n".encode("latin-1"), r"not a UTF-8 text list \(byte 3: b'\\xe9'\)"),
    ]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ListFileError, match=rf"{name}: {words}"):
            read_list_lines(tmp_path / name)
    with pytest.raises(ListFileError, match="missing.txt: cannot read"):
        read_list_lines(tmp_path / "missing.txt")


def test_list_videos_takes_a_folder_a_list_or_one_video_file(tmp_path):
    _ramp_video(tmp_path / "v.mp4")
    assert list_videos(tmp_path / "v.mp4") == [tmp_path / "v.mp4"]  # not read as a list of names
    (tmp_path / "list.txt").write_text("v.mp4 1\n")
    assert list_videos(tmp_path / "list.txt") == [tmp_path / "v.mp4"]
    (tmp_path / "clip.bin").write_bytes(bytes(range(256)) * 40)  # binary, not a video name: a short clear error
    with pytest.raises(ListFileError, match=r"clip.bin: not a UTF-8 text list") as info:
        list_videos(tmp_path / "clip.bin")
    assert len(str(info.value)) < 200


@pytest.mark.timeout(60)
def test_symlink_loops_and_fifos_are_video_errors_that_never_block(tmp_path):
    loop = tmp_path / "loop.mp4"
    loop.symlink_to(loop.name)
    fifo = tmp_path / "fifo.mp4"
    os.mkfifo(fifo)
    with pytest.raises(VideoError, match=r"loop.mp4: cannot open \(Too many levels of symbolic links\)"):
        probe(loop)
    for call in (lambda: probe(fifo), lambda: read_frames(fifo), lambda: next(iter_frames(fifo))):
        with pytest.raises(VideoError, match="fifo.mp4: not a regular file"):
            call()
