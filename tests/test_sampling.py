"""TSN snippet sampling: known answers for val / test, train starts inside their segments, looping."""
from __future__ import annotations

import numpy as np
import pytest

from actionflow.sampling import snippet_frames, snippet_starts


def test_val_takes_segment_centres():
    # 30 frames, 3 segments of 10 frames: centres 5, 15, 25
    assert snippet_starts(30, 3, span=1, phase="val").tolist() == [[5, 15, 25]]
    # snippets of 6 frames (L=5 flows) fit at starts 0..24: 25 positions, segments of 8.33
    assert snippet_starts(30, 3, span=6, phase="val").tolist() == [[4, 12, 20]]


def test_test_clips_are_evenly_spaced_in_each_segment():
    # 2 clips: at 1/4 and 3/4 of each 10-frame segment
    assert snippet_starts(30, 3, span=1, phase="test", num_clips=2).tolist() == [[2, 12, 22], [7, 17, 27]]
    five = snippet_starts(100, 2, span=1, phase="test", num_clips=5)
    assert five.tolist() == [[5, 55], [15, 65], [25, 75], [35, 85], [45, 95]]
    # one test clip is the validation clip
    assert (snippet_starts(77, 3, 6, "test", 1) == snippet_starts(77, 3, 6, "val")).all()


def test_train_starts_are_random_within_their_segment():
    rng = np.random.default_rng(0)
    draws = np.concatenate([snippet_starts(36, 3, span=7, phase="train", rng=rng) for _ in range(2000)])
    # 30 valid starts (0..29), segments [0,10), [10,20), [20,30)
    for k in range(3):
        col = draws[:, k]
        assert col.min() == 10 * k and col.max() == 10 * k + 9
        assert len(np.unique(col)) == 10  # every start of the segment gets drawn
    assert not (draws[:1000] == draws[1000:]).all()


def test_short_videos_are_looped():
    starts = snippet_starts(4, 3, span=6, phase="train")
    assert starts.tolist() == [[0, 0, 0]]
    assert snippet_frames(starts, 6, 4).tolist() == [[[0, 1, 2, 3, 0, 1]] * 3]
    assert snippet_starts(4, 3, span=6, phase="test", num_clips=2).shape == (2, 3)


def test_fewer_frames_than_segments_repeats_frames():
    assert snippet_starts(2, 3, span=1, phase="val").tolist() == [[0, 1, 1]]
    assert snippet_starts(1, 3, span=1, phase="val").tolist() == [[0, 0, 0]]


def test_snippet_frames_are_consecutive_and_in_range():
    starts = snippet_starts(50, 4, span=6, phase="test", num_clips=3)
    frames = snippet_frames(starts, 6, 50)
    assert frames.shape == (3, 4, 6)
    assert (np.diff(frames, axis=-1) == 1).all() and frames.max() < 50


@pytest.mark.parametrize("bad", [dict(num_frames=0), dict(num_segments=0), dict(span=0), dict(phase="eval")])
def test_bad_requests_raise(bad):
    kwargs = dict(num_frames=10, num_segments=3, span=1, phase="val") | bad
    with pytest.raises(ValueError):
        snippet_starts(**kwargs)
