"""TSN-style snippet sampling (Wang et al., Temporal Segment Networks): which frames to decode.

A video of ``num_frames`` frames is cut into ``num_segments`` (K) equal segments and one snippet is
taken per segment. A snippet spans ``span`` consecutive frames: 1 for the RGB stream alone,
L+1 when it also feeds L stacked flows (flow i goes from frame s+i to s+i+1; the RGB frame is the
snippet's first frame s). Snippet starts ``s`` are drawn from the ``num_frames - span + 1`` positions
where the whole snippet fits:

* ``train``: a uniformly random start inside each segment;
* ``val``: the centre of each segment;
* ``test``: ``num_clips`` clips of K snippets, evenly spaced inside each segment (clip c at fraction
  (c + 0.5) / num_clips of every segment), so one test clip equals the validation clip.

Videos shorter than a snippet (``num_frames < span``) are looped: all starts are 0 and frame
indices wrap around modulo ``num_frames``. (For flow this puts one jump, last frame -> first frame,
inside the snippet; it only happens on clips shorter than L+1 frames.)
"""
from __future__ import annotations

import numpy as np

PHASES = ("train", "val", "test")


def snippet_starts(
    num_frames: int,
    num_segments: int,
    span: int,
    phase: str,
    num_clips: int = 1,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """First frame of every snippet, int64 ``[num_clips, num_segments]`` (``num_clips`` is 1 unless ``test``)."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    if num_frames < 1 or num_segments < 1 or span < 1 or num_clips < 1:
        raise ValueError(f"bad sampling request: {num_frames=} {num_segments=} {span=} {num_clips=}")
    positions = num_frames - span + 1  # starts at which the snippet fits without looping
    if positions <= 0:
        clips = num_clips if phase == "test" else 1
        return np.zeros((clips, num_segments), dtype=np.int64)
    seg_len = positions / num_segments
    seg_first = np.arange(num_segments) * seg_len
    if phase == "train":
        rng = rng if rng is not None else np.random.default_rng()
        offsets = rng.random((1, num_segments)) * seg_len
    elif phase == "val":
        offsets = np.full((1, num_segments), 0.5 * seg_len)
    else:
        offsets = ((np.arange(num_clips) + 0.5) / num_clips * seg_len)[:, None].repeat(num_segments, axis=1)
    starts = np.floor(seg_first[None, :] + offsets).astype(np.int64)
    return np.clip(starts, 0, positions - 1)


def snippet_frames(starts: np.ndarray, span: int, num_frames: int) -> np.ndarray:
    """Frame indices ``[..., span]`` of snippets starting at ``starts``, looped modulo ``num_frames``."""
    return (np.asarray(starts)[..., None] + np.arange(span)) % num_frames
