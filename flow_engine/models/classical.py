"""Classical optical flow from OpenCV, as baselines: DIS, Farneback and TV-L1.

The parameters of ``dis``, ``farneback`` and ``tvl1`` are those of
``../shared/data/flow/BASELINES.txt`` (measured on grey frames from ``cv2.imread`` +
``COLOR_BGR2GRAY``; our frames are RGB, so ``COLOR_RGB2GRAY`` gives the identical grey image).

``dis_fine`` is DIS's MEDIUM preset refined down to full resolution (finest scale 0 instead of
1). MEDIUM stops at half resolution with 8-px patches, which blurs the motion of parts a few
pixels wide in small frames (limbs of a dancer 60 px tall); ``dis_fine`` keeps it, at 2-4x
the time (it is also more accurate on every shared Sintel and Chairs case; ``dis`` stays the
faster choice for large frames).

:class:`ClassicalFlow` puts a method behind the networks' interface for :class:`flow_engine.FlowEngine`.
"""
from __future__ import annotations

import multiprocessing
import weakref
from concurrent.futures import ProcessPoolExecutor

import cv2
import numpy as np
import torch

CLASSICAL_METHODS = ("dis", "dis_fine", "farneback", "tvl1")

# pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags
FARNEBACK_PARAMS = (0.5, 5, 15, 3, 5, 1.2, 0)

# The smallest frame side each method takes, found by trying every size from 1 to 40 px a side and
# sides up to 8192 px (OpenCV 5.1): DIS's MEDIUM preset works at half size on frames 40 px wide or
# more, and fails there (cv2.error, or a segmentation fault: 12x64 frames) unless both sides are at
# least 16 px; dis_fine fails below 12x12; Farneback and TV-L1 take 1x1.
MIN_SIDE = {"dis": 16, "dis_fine": 12, "farneback": 1, "tvl1": 1}
# Memory of one pair, per pixel, with margin: the frames, grey copies, pyramids and flow fields in float32.
BYTES_PER_PIXEL = 128

_solvers: dict[str, cv2.DenseOpticalFlow] = {}  # one OpenCV object per method, reused across pairs
_DIS_FINEST_SCALE = {"dis": 1, "dis_fine": 0}  # pyramid level where DIS stops (1: the MEDIUM preset's)


def _solver(method: str) -> cv2.DenseOpticalFlow:
    if method not in _solvers:
        if method in _DIS_FINEST_SCALE:
            _solvers[method] = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        elif method == "tvl1":
            if not hasattr(cv2, "optflow"):
                raise RuntimeError("tvl1 needs cv2.optflow, which this OpenCV build lacks (install opencv-contrib-python-headless)")
            _solvers[method] = cv2.optflow.DualTVL1OpticalFlow_create()
    return _solvers[method]


def _grey(img: np.ndarray, name: str) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {img.dtype}")
    if img.ndim == 2:
        return img
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    raise ValueError(f"{name} must be RGB [H,W,3] or grey [H,W], got shape {img.shape}")


def classical_flow(method: str, img1: np.ndarray, img2: np.ndarray) -> np.ndarray:
    """Flow from ``img1`` to ``img2`` (uint8 RGB [H,W,3] or grey [H,W]) as float32 [H,W,2] pixels."""
    if method not in CLASSICAL_METHODS:
        raise ValueError(f"unknown classical method {method!r}; choose from {', '.join(CLASSICAL_METHODS)}")
    g1, g2 = _grey(img1, "img1"), _grey(img2, "img2")
    if g1.shape != g2.shape:
        raise ValueError(f"frames differ in size: {g1.shape} and {g2.shape}")
    if min(g1.shape) < MIN_SIDE[method]:  # checked here too: in a worker process a crash would end the pool
        raise ValueError(f"{method} needs frames of at least {MIN_SIDE[method]} px a side, got {g1.shape[1]}x{g1.shape[0]}")
    if method == "farneback":
        flow = cv2.calcOpticalFlowFarneback(g1, g2, None, *FARNEBACK_PARAMS)
    else:
        solver = _solver(method)
        if method in _DIS_FINEST_SCALE:
            # DIS lowers its finest scale for small frames and keeps it for every later call
            # (seen with OpenCV 5.0: a 32x32 pair changes the next 512x384 result), so reset it.
            solver.setFinestScale(_DIS_FINEST_SCALE[method])
        flow = solver.calc(g1, g2, None)
    return np.asarray(flow, dtype=np.float32)


def one_thread() -> None:
    """OpenCV on one thread: for worker processes that each take one pair (no oversubscription)."""
    cv2.setNumThreads(1)


class ClassicalFlow:
    """A classical method behind the networks' interface (``predict``, ``predict_clips``), so that
    :class:`flow_engine.FlowEngine` runs every engine the same way: RGB frames [B,3,H,W] as float in
    [0,1] (or uint8) in, float32 flow [B,2,H,W] in pixels out, on the CPU. With ``workers > 1`` the
    pairs of a call are spread over that many processes (started on first use, stopped with this
    object); the flows come back in order."""

    def __init__(self, method: str, workers: int = 1):
        if method not in CLASSICAL_METHODS:
            raise ValueError(f"unknown classical method {method!r}; choose from {', '.join(CLASSICAL_METHODS)}")
        self.method, self.workers = method, int(workers)
        self._pool = None

    def memory_needed(self, height: int, width: int, pairs: int = 1) -> int:
        """Bytes ``pairs`` pairs of ``height`` x ``width`` frames take while computed: one pair at a time in
        each of :attr:`workers` processes (an estimate with margin)."""
        return min(pairs, self.workers) * height * width * BYTES_PER_PIXEL

    def predict(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        """Flow [B,2,H,W] float32 px from frames [B,3,H,W] (float in [0,1] or uint8), on the CPU."""
        a, b = _uint8_images(img1), _uint8_images(img2)
        if self.workers > 1 and len(a) > 1:
            flows = list(self._process_pool().map(classical_flow, [self.method] * len(a), a, b))
        else:
            flows = [classical_flow(self.method, a[i], b[i]) for i in range(len(a))]
        return torch.from_numpy(np.stack(flows)).permute(0, 3, 1, 2)

    def predict_clips(self, clips: torch.Tensor) -> torch.Tensor:
        """Flows [N,T-1,2,H,W] px within each of N clips of frames [N,T,3,H,W]."""
        N, T = clips.shape[:2]
        flows = self.predict(clips[:, :-1].flatten(0, 1), clips[:, 1:].flatten(0, 1))
        return flows.unflatten(0, (N, T - 1))

    def _process_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # forkserver, not fork: the caller may run threads (decoders, encoders, OpenMP) whose
            # locks a forked child would inherit held.
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("forkserver"),
                                             initializer=one_thread)
            weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
        return self._pool


def _uint8_images(x: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] uint8, or float in [0,1] (rounded to the nearest level), as numpy [B,H,W,3] uint8."""
    if x.dtype != torch.uint8:
        x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
