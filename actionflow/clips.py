"""The Dataset of TSN snippets: what one video gives the two-stream network, and its crop.

Each item is one video as a dict of tensors (S = num_segments, times test_clips at test time):

* ``rgb``    uint8 ``[S, 3, h, w]``: the first frame of every snippet (modes with an RGB stream,
  unless ``frames`` carries them);
* ``flow``   float32 ``[S, 2L, h, w]`` in pixels, channels x1, y1, ..., xL, yL (``flow_source: cache``);
* ``frames`` uint8 ``[S, L+1, 3, H, W]``: the snippet's frames at decode size, uncropped, from
  which the model computes flow on its device (``flow_source: online``), with ``box`` int64
  ``[4]`` (top, left, height, width in decoded pixels) and ``flip`` bool: the crop that
  :func:`crop_box` then applies to the flow and to frame 0 (the RGB stream's input);
* ``label``, ``index``: int64.

Training picks a random multi-scale box (TSN's scale jitter: each side a fraction in ``scales`` of
the largest box with the crop's aspect ratio, at a random place), validation and test the centre
box at the middle training scale (:data:`EVAL_SCALE`); the box is resized to ``crop_size`` and
(training) flipped, identically for every frame and flow of the item (:func:`crop_box`: a flip
negates the x flow channels, a resize scales flow by its factor). With ``reverse``, training plays
half the items backwards (:func:`reverse_time`; online: the frames in reverse order). A video that fails while
decoding is dropped from its batch by :func:`collate` and counted (``strict``: an error).
The settings come from :class:`actionflow.data.ActionDataModule` (or a checkpoint, for ``classify``).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate

from actionflow.annotations import Sample
from actionflow.errors import ActionflowError
from actionflow.flow_cache import CacheError
from actionflow.sampling import snippet_frames, snippet_starts
from flow_engine.io.video import VideoError, read_frames

logger = logging.getLogger(__name__)

DEFAULT_SCALES = (1.0, 0.875, 0.75, 0.66)
OPEN_ENTRIES = 128  # cache entries a dataset keeps open (file descriptors per DataLoader worker)
EVAL_SCALE = 0.875  # box side (fraction of the largest box) that validation and test crop


class BadVideo(ActionflowError, RuntimeError):
    """A video (or its cached flow) that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Clip:
    """A usable video: its sample, decoded frame count and decode size (H, W) in pixels."""

    sample: Sample
    num_frames: int
    size: tuple[int, int]


def crop_box(x: torch.Tensor, box: Sequence[int], flip: bool, size: tuple[int, int], flow: bool = False) -> torch.Tensor:
    """``x[..., top:top+bh, left:left+bw]`` resized to ``size`` (h, w) and, with ``flip``, mirrored.

    ``flow``: ``x`` holds flows in pixels with channels x1, y1, x2, y2, ... (``[..., 2L, H, W]``): x
    is scaled by ``w / bw`` and y by ``h / bh`` (displacements grow with the resize) and x negated
    on a flip. The one crop of the RGB frames, cached flow and online flow.
    """
    top, left, bh, bw = (int(v) for v in box)
    h, w = size
    x = _crop_resize(x[..., top : top + bh, left : left + bw], (h, w))
    if flow:
        x = x.float().clone()
        x[..., 0::2, :, :] *= w / bw
        x[..., 1::2, :, :] *= h / bh
    if flip:
        x = x.flip(-1)
        if flow:
            x[..., 0::2, :, :] *= -1
    return x.contiguous()


class VideoClips(Dataset):
    """TSN snippets of ``clips`` for one ``phase`` (train/val/test); see the module docstring. The settings
    are the run's (:class:`actionflow.data.ActionDataModule`, or a checkpoint's for ``classify``): no defaults here."""

    def __init__(
        self,
        clips: list[Clip],
        phase: str,
        *,
        mode: str,
        flow_source: str,
        num_segments: int,
        flow_length: int,
        test_clips: int,
        crop_size: tuple[int, int],
        scales: Sequence[float] = DEFAULT_SCALES,
        flip: bool = True,
        cache=None,
        strict: bool = False,
        reverse: bool = False,
    ):
        self.clips = clips
        self.phase = phase
        self.mode = mode
        self.flow_source = flow_source
        self.num_segments = num_segments
        self.flow_length = flow_length
        self.test_clips = test_clips if phase == "test" else 1
        self.crop_size = tuple(crop_size)
        self.scales = tuple(scales)
        self.flip = flip
        self.cache = cache
        self.strict = strict
        self.reverse = reverse and phase == "train"
        self._entries: OrderedDict[str, object] = OrderedDict()  # path -> open CachedFlow
        self.needs_rgb = mode in ("rgb", "two_stream")
        self.needs_flow = mode in ("flow", "two_stream")
        # RGB-only snippets are one frame; with flow, L+1 frames so that the L flows fit.
        self.span = flow_length + 1 if self.needs_flow else 1

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor] | None:
        clip = self.clips[index]
        # numpy randomness seeded from torch's, which Lightning/DataLoader seed per worker
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        try:
            item = self._load(clip, rng)
        except (VideoError, BadVideo) as exc:
            if self.strict:
                raise
            logger.warning("skipping %s: %s", clip.sample.path, getattr(exc, "reason", exc))
            return None
        item["label"] = torch.tensor(clip.sample.label, dtype=torch.int64)
        item["index"] = torch.tensor(index, dtype=torch.int64)
        return item

    def _load(self, clip: Clip, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        video, path, n, size = clip.sample.video, clip.sample.path, clip.num_frames, clip.size
        cached = None
        if self.needs_flow and self.flow_source == "cache":
            cached = self._cached(path)
            n = min(n, cached.num_flows + 1)
        starts = snippet_starts(n, self.num_segments, self.span, self.phase, self.test_clips, rng).reshape(-1)
        box, flip = self._box(size, rng)
        backwards = self.reverse and bool(rng.integers(2))
        if self.needs_flow and self.flow_source == "online":
            idx = snippet_frames(starts, self.span, n)  # [S, L+1]
            if backwards:
                idx = idx[:, ::-1]
            frames = read_frames(video, idx.reshape(-1), size)
            frames = torch.from_numpy(frames).view(*idx.shape, *frames.shape[1:]).permute(0, 1, 4, 2, 3)
            return {"frames": frames, "box": torch.tensor(box), "flip": torch.tensor(flip)}
        item: dict[str, torch.Tensor] = {}
        if self.needs_rgb:
            rgb = torch.from_numpy(read_frames(video, starts, size)).permute(0, 3, 1, 2)
            item["rgb"] = crop_box(rgb, box, flip, self.crop_size)
        if cached is not None:
            flow_idx = snippet_frames(starts, self.flow_length, max(cached.num_flows, 1)) % cached.num_flows
            flow = _read_cached_flows(cached, flow_idx, path, size)
            item["flow"] = crop_box(reverse_time(flow) if backwards else flow, box, flip, self.crop_size, flow=True)
        return item

    def _cached(self, path: str):
        """The video's open cache entry, checked once and kept (each DataLoader worker has its own
        copy of this dataset, so its own handles; at most :data:`OPEN_ENTRIES`, least recently used closed)."""
        cached = self._entries.pop(path, None)
        if cached is None:
            try:
                cached = self.cache.open(path)
            except (CacheError, OSError) as exc:
                raise BadVideo(f"cached flow unusable ({exc})") from None
            if len(self._entries) >= OPEN_ENTRIES:
                self._entries.pop(next(iter(self._entries))).close()
        self._entries[path] = cached  # most recently used last
        return cached

    def _box(self, size: tuple[int, int], rng: np.random.Generator) -> tuple[tuple[int, int, int, int], bool]:
        """The item's crop box (top, left, height, width) in decoded pixels and its flip."""
        H, W = size
        h, w = self.crop_size
        # TSN's multi-scale crop: sides are fractions of the largest box of the crop's aspect ratio
        base_h = min(H, W * h / w)
        if self.phase == "train":
            i, j = rng.integers(len(self.scales), size=2)
            if abs(i - j) > 1:  # TSN's max distortion of 1 between the two sides' scales
                j = i
            bh = max(1, min(H, round(base_h * self.scales[i])))
            bw = max(1, min(W, round(base_h * w / h * self.scales[j])))
            top, left = int(rng.integers(H - bh + 1)), int(rng.integers(W - bw + 1))
            flip = self.flip and bool(rng.integers(2))
        else:
            # the centre box at the middle training scale, resized like training boxes: the same
            # zoom as training whatever crop_size/size is (for 224 of 256 this is the usual centre crop)
            bh = max(1, min(H, round(base_h * EVAL_SCALE)))
            bw = max(1, min(W, round(base_h * w / h * EVAL_SCALE)))
            top, left, flip = (H - bh) // 2, (W - bw) // 2, False
        return (top, left, bh, bw), flip


def reverse_time(flow: torch.Tensor) -> torch.Tensor:
    """Snippets' flows ``[S, 2L, H, W]`` (x1, y1, ..., xL, yL) played backwards: the flows in reverse order,
    negated (each flow's backward flow, to first order; online flow computes it exactly, from the frames
    in reverse order)."""
    S, C, H, W = flow.shape
    return -flow.view(S, C // 2, 2, H, W).flip(1).reshape(S, C, H, W)


def _crop_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize the last two dims of ``x`` (uint8 or float, any leading dims) to ``size``, bilinear."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    lead = x.shape[:-2]
    y = F.interpolate(x.reshape(-1, 1, *x.shape[-2:]).float(), size=size, mode="bilinear", align_corners=False)
    y = y.reshape(*lead, *size)
    return y.round().clamp(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else y


def _read_cached_flows(cached, flow_idx: np.ndarray, path: str, size: tuple[int, int]) -> torch.Tensor:
    """Flows ``flow_idx [S, L]`` from a cache entry as float32 ``[S, 2L, H, W]`` px, x/y interleaved."""
    S, L = flow_idx.shape
    try:
        if np.all(np.diff(flow_idx, axis=1) == 1):
            stacks = [torch.as_tensor(cached.read_stacked(int(s), L)) for s in flow_idx[:, 0]]
            flow = torch.stack(stacks)  # [S, 2L, h, w]
        else:  # looped snippet (video shorter than L+1 frames): gather flow by flow
            lo, count = int(flow_idx.min()), int(flow_idx.max() - flow_idx.min() + 1)
            block = torch.as_tensor(cached.read(lo, count))  # [count, 2, h, w]
            flow = block[torch.as_tensor(flow_idx - lo)].flatten(1, 2)
    except (CacheError, OSError, ValueError) as exc:
        raise BadVideo(f"cached flow unreadable ({exc})") from None
    if tuple(flow.shape[-2:]) != tuple(size):
        if "import" not in cached.header:  # FlowCache.open checks computed entries' size: only a replaced file gets here
            raise BadVideo(f"cached flow is {flow.shape[-2]}x{flow.shape[-1]}, the video decodes at {size[0]}x{size[1]}")
        # imported flow (TSN/denseflow) keeps its own size: brought to the decode size, displacements with it
        sy, sx = size[0] / flow.shape[-2], size[1] / flow.shape[-1]
        flow = _crop_resize(flow.float(), size)
        flow[:, 0::2] *= sx
        flow[:, 1::2] *= sy
    return flow.float()


def collate(items: list[dict[str, torch.Tensor] | None]) -> dict[str, torch.Tensor | list[torch.Tensor]]:
    """Batch the items that loaded; ``num_dropped`` counts those that failed (None). Uncropped
    ``frames`` of videos of different sizes (online flow, aspect-preserving decoding) stay a list."""
    good = [it for it in items if it is not None]
    batch: dict = {}
    if good:
        ragged = "frames" in good[0] and len({tuple(it["frames"].shape) for it in good}) > 1
        batch = default_collate([{k: v for k, v in it.items() if not (ragged and k == "frames")} for it in good])
        if ragged:
            batch["frames"] = [it["frames"] for it in good]
    batch["num_dropped"] = torch.tensor(len(items) - len(good))
    return batch
