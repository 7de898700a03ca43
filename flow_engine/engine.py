"""FlowEngine: one object that turns RGB frame pairs into optical flow, batched, on the right device.

    engine = FlowEngine()                       # PWC-Net, shipped weights, cuda if available, bf16 there
    flow = engine(frames1, frames2)             # [B,3,H,W] uint8 or float [0,1] -> [B,2,H,W] float32 px
    flows = engine.clip_flow(clip)              # [T,3,H,W] -> [T-1,2,H,W] forward flows
    for flows in engine.stream(chunks): ...     # a video in chunks of frames -> its flows, in order
    engine.config()                             # {"name", "weights_hash", "dtype"}: a cache key

RAFT from torchvision ("raft_small", "raft_large"; :mod:`flow_engine.models.raft`) and the classical
OpenCV methods ("dis", "dis_fine", "farneback", "tvl1", CPU) sit behind the same interface.
For end-to-end fine-tuning use ``engine.model`` (the :class:`PWCNet` or :class:`RAFT`) or
:meth:`FlowEngine.flow_with_grad`, which keeps the autograd graph.
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import torch

from flow_engine.checkpoints import WeightsError, file_hash
from flow_engine.errors import FlowEngineError
from flow_engine.models.classical import CLASSICAL_METHODS, MIN_SIDE as CLASSICAL_MIN_SIDE, ClassicalFlow
from flow_engine.models.pwcnet import MULTIPLE, FlowInputError, PWCNet, check_scales, padded_size
from flow_engine.models.raft import (
    CORR_BYTES as RAFT_CORR_BYTES, DEFAULT_FLOW_UPDATES, RAFT, VARIANTS as RAFT_VARIANTS, default_weights_id, load_raft,
    padded_size as raft_padded_size,
)

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "pwcnet_actionflow.pt"
LEARNED_ENGINES = ("pwcnet",) + RAFT_VARIANTS
ENGINES = LEARNED_ENGINES + CLASSICAL_METHODS
# PWC-Net runs coarse to fine at these factors of the frame size (PWCNet.predict): a pass at
# 7/16 size finds long displacements, the full-size pass refines them. Measured on both shared
# sets (README, "Flow engine"): better than one full-size pass on small motion too; a coarser
# first pass helps large motion and costs small motion.
PWCNET_SCALES = (0.4375, 1.0)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Rough peak activation memory of PWC-Net inference is ~1-2 KB per (padded) input pixel in
# fp32; the defaults keep a sub-batch well inside a GPU's memory and a few GB on CPU.
CPU_MAX_PIXELS = 2_000_000
GPU_BYTES_PER_PIXEL = 4096

_warned_random = False


def min_side(name: str) -> int:
    """The smallest frame side in pixels engine ``name`` takes, without building it (OpenCV's methods have
    one, :data:`~flow_engine.models.classical.MIN_SIDE`; the networks pad any frame: 1)."""
    return CLASSICAL_MIN_SIDE.get(name, 1)


MEMINFO = Path("/proc/meminfo")
CGROUP = Path("/sys/fs/cgroup")  # cgroup v2: a container's memory limit


def available_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on ``device``: free GPU memory, or on the CPU the kernel's
    MemAvailable, lowered to what this process's cgroup (container) limit leaves (its page cache
    counted as free: the kernel reclaims it)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    free = None
    try:
        with open(MEMINFO) as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        pass
    try:
        limit = (CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            cache = next((int(line.split()[1]) for line in (CGROUP / "memory.stat").read_text().splitlines()
                          if line.startswith("file ")), 0)
            left = int(limit) - int((CGROUP / "memory.current").read_text()) + cache
            free = left if free is None else min(free, left)
    except (OSError, ValueError):
        pass
    return free if free is not None else 1 << 62  # unknown: no bound


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: the GPU (under torchrun the one of ``LOCAL_RANK``, modulo the GPUs here) or the CPU;
    anything else as torch reads it, checked (``"cuda"`` without CUDA is a :class:`FlowEngineError`)."""
    if str(device) == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise FlowEngineError(f"unknown device {device!r}: {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FlowEngineError(f"device {device!r} requested but CUDA is not available here")
    return dev


def engine_identity(name: str = "pwcnet", weights: str | Path | None = None, flow_updates: int | None = None,
                    scales: Sequence[float] | None = None) -> dict:
    """What determines an engine's flow, without building it: ``{"name", "weights_hash"}`` and, for
    RAFT, ``"flow_updates"``, for PWC-Net, ``"scales"``. The cache key and what checkpoints record
    (``FlowEngine.config()`` adds the dtype, which neither compares)."""
    if name not in ENGINES:
        raise FlowEngineError(f"unknown flow engine {name!r}; choose one of {', '.join(ENGINES)}")
    if name in CLASSICAL_METHODS:
        return {"name": name, "weights_hash": f"opencv-{cv2.__version__}"}
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"{path}: no such weights file")
        weights_hash = file_hash(path)
    elif name == "pwcnet":
        weights_hash = file_hash(DEFAULT_WEIGHTS) if DEFAULT_WEIGHTS.is_file() else "random"
    else:
        weights_hash = default_weights_id(name)
    out = {"name": name, "weights_hash": weights_hash}
    if name in RAFT_VARIANTS:
        out["flow_updates"] = DEFAULT_FLOW_UPDATES if flow_updates is None else int(flow_updates)
    if name == "pwcnet":
        out["scales"] = list(_pwcnet_scales(scales))
    return out


def _pwcnet_scales(scales: Sequence[float] | None) -> tuple[float, ...]:
    try:
        return check_scales(PWCNET_SCALES if scales is None else scales)
    except FlowInputError as e:
        raise FlowEngineError(str(e)) from None


def _resolve_dtype(dtype: str, device: torch.device) -> str:
    if dtype == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "fp32"
    if dtype not in DTYPES:
        raise FlowEngineError(f"unknown dtype {dtype!r}; choose auto, fp32, bf16 or fp16")
    if dtype == "fp16" and device.type != "cuda":
        raise FlowEngineError("dtype 'fp16' needs a CUDA device (CPU autocast supports bf16 and fp32)")
    return dtype


class FlowEngine:
    """Optical flow for batches of RGB frame pairs (see module docstring).

    Args:
        name: the engine: "pwcnet", "raft_small", "raft_large" or a classical OpenCV method ("dis",
            "dis_fine", "farneback", "tvl1"); :data:`ENGINES`. (``model=`` is its old, deprecated name.)
        weights: PWC-Net: a checkpoint in any layout ``load_pwcnet_state_dict`` reads; ``None``
            means :data:`DEFAULT_WEIGHTS` (when that file is absent the network is randomly
            initialised, deterministically, seed 0, and a warning says the flow will be noise).
            RAFT: a local file in torchvision's or the authors' layout; ``None`` asks torchvision
            for its pretrained weights (torch hub cache, downloaded once).
        device: "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1" ...
        dtype: "auto" (bf16 autocast on a CUDA device that supports it, else fp32), "fp32",
            "bf16" (CPU too) or "fp16" (CUDA only: an error on CPU).
        max_pixels_per_batch: padded pixels per frame pair times pairs allowed in one forward
            pass; larger batches are split. Default: 2 M on CPU, GPU memory / 4 KB on CUDA.
            RAFT's correlation volume counts as extra pixels (it grows with the square of the size).
        flow_updates: RAFT's recurrent refinements per pair (default 12); part of the cache key.
        scales: PWC-Net's coarse-to-fine frame sizes, factors of H, W (default :data:`PWCNET_SCALES`;
            ``[1.0]``: one full-size pass); part of the cache key.
        workers: processes a classical engine spreads the pairs of a batch over (default 1: in
            this process); the flows come back in order. Learned engines use their device.
    Attributes: ``name``, ``weights_hash`` (sha256[:16] of the weights file, "random",
        "torchvision-<file>" or "opencv-<version>"), ``device`` (torch.device), ``dtype`` (str),
        ``flow_updates`` (RAFT, else ``None``), ``scales`` (PWC-Net, else ``None``), ``model`` (the :class:`PWCNet` or
        :class:`RAFT`, ``None`` for classical methods), ``min_side`` (the smallest frame side it takes, px).
    """

    min_side = 1
    workers = 1

    def __init__(
        self,
        name: str = "pwcnet",
        weights: str | Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
        max_pixels_per_batch: int | None = None,
        flow_updates: int | None = None,
        workers: int = 1,
        scales: Sequence[float] | None = None,
        *,
        model: str | None = None,
    ):
        if model is not None:  # the old name of `name`; `self.model` is the network
            warnings.warn("FlowEngine(model=...) is deprecated: use FlowEngine(name=...)", DeprecationWarning, stacklevel=2)
            name = model
        if name not in ENGINES:
            raise FlowEngineError(f"unknown flow engine {name!r}; choose one of {', '.join(ENGINES)}")
        self.name = name
        self.min_side = min_side(name)
        self.model: PWCNet | RAFT | None = None
        self.flow_updates: int | None = None
        self.workers = int(workers)
        if self.workers < 1:
            raise FlowEngineError(f"workers must be at least 1, got {workers}")
        if name in RAFT_VARIANTS:
            self.flow_updates = DEFAULT_FLOW_UPDATES if flow_updates is None else int(flow_updates)
            if self.flow_updates < 1:
                raise FlowEngineError(f"flow_updates must be at least 1, got {flow_updates}")
        elif flow_updates is not None:
            raise FlowEngineError(f"flow_updates applies to RAFT only, not to {name!r}")
        if scales is not None and name != "pwcnet":
            raise FlowEngineError(f"scales apply to PWC-Net only, not to {name!r}")
        self.scales = _pwcnet_scales(scales) if name == "pwcnet" else None
        if name not in LEARNED_ENGINES:
            if weights is not None:
                raise FlowEngineError(f"engine {name!r} is a classical method and takes no weights (got {weights})")
            self.device = torch.device("cpu")
            self.dtype = "fp32"
            self.weights_hash = f"opencv-{cv2.__version__}"
            self.max_pixels_per_batch = max_pixels_per_batch or CPU_MAX_PIXELS
            self._method = ClassicalFlow(name, self.workers)
            return

        self.device = resolve_device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        if name in RAFT_VARIANTS:
            net, self.weights_hash = load_raft(name, weights)
            self.model = RAFT(net, self.flow_updates)
        else:
            self.model, self.weights_hash = self._load(weights)
        self.model.to(self.device).eval()
        self._method = self.model  # what computes the flow: the network here, a ClassicalFlow for OpenCV's methods
        if max_pixels_per_batch is None:
            if self.device.type == "cuda":
                total = torch.cuda.get_device_properties(self.device).total_memory
                max_pixels_per_batch = total // GPU_BYTES_PER_PIXEL
            else:
                max_pixels_per_batch = CPU_MAX_PIXELS
        if max_pixels_per_batch < 1:
            raise FlowEngineError(f"max_pixels_per_batch must be positive, got {max_pixels_per_batch}")
        self.max_pixels_per_batch = int(max_pixels_per_batch)

    @staticmethod
    def _load(weights: str | Path | None) -> tuple[PWCNet, str]:
        global _warned_random
        if weights is None and not DEFAULT_WEIGHTS.is_file():
            if not _warned_random:
                log.warning(
                    "no PWC-Net weights at %s: using a random initialisation, the flow will be noise "
                    "(pass weights=... or train them with `python -m flow_engine train`)", DEFAULT_WEIGHTS
                )
                _warned_random = True
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                return PWCNet(), "random"
        path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
        if not path.is_file():
            raise WeightsError(f"{path}: no such weights file")
        return PWCNet.from_weights(path), file_hash(path)

    def config(self) -> dict:
        """What determines the flow this engine computes: :func:`engine_identity` and the dtype."""
        out = {"name": self.name, "weights_hash": self.weights_hash, "dtype": self.dtype}
        if self.flow_updates is not None:
            out["flow_updates"] = self.flow_updates
        if self.scales is not None:
            out["scales"] = list(self.scales)
        return out

    def __repr__(self) -> str:
        extra = f", flow_updates={self.flow_updates}" if self.flow_updates is not None else ""
        extra += f", scales={list(self.scales)}" if self.scales is not None else ""
        return (f"FlowEngine(name={self.name!r}, weights_hash={self.weights_hash!r}, device={self.device}, "
                f"dtype={self.dtype!r}{extra})")

    # --- inference -------------------------------------------------------------------------
    def pairs_per_batch(self, height: int, width: int) -> int:
        """How many frame pairs of ``height`` x ``width`` go through one forward pass."""
        if isinstance(self._method, ClassicalFlow):
            return 1 << 30  # any number: its pairs go to its worker processes as they come
        if isinstance(self.model, RAFT):
            Hp, Wp = raft_padded_size(height, width)
            corr_pixels = RAFT_CORR_BYTES * (Hp * Wp / 64) ** 2 / GPU_BYTES_PER_PIXEL
            return max(1, int(self.max_pixels_per_batch // (Hp * Wp + corr_pixels)))
        Hp, Wp = padded_size(height, width, MULTIPLE)
        return max(1, self.max_pixels_per_batch // (Hp * Wp))

    def memory_needed(self, height: int, width: int, pairs: int = 1) -> int:
        """Bytes ``pairs`` frame pairs of ``height`` x ``width`` take in one pass of this engine (an estimate
        with margin, each kind of engine its own: ``memory_needed`` of the network or the ClassicalFlow)."""
        return self._method.memory_needed(height, width, pairs)

    def check_size(self, height: int, width: int, batch: int = 1, held_bytes: int = 0) -> None:
        """FlowInputError, before anything is allocated, unless frames of ``height`` x ``width`` px suit this
        engine: both sides at least :attr:`min_side`, and calls of ``batch`` pairs (those of them in one
        pass at a time, with ``held_bytes`` the caller holds besides, such as decoded frames) within the
        device's available memory."""
        if min(height, width) < self.min_side:
            raise FlowInputError(f"{self.name} needs frames of at least {self.min_side} px a side, got {width}x{height}: "
                                 "use a larger size or another engine")
        pairs = min(batch, self.pairs_per_batch(height, width))
        need = self.memory_needed(height, width, pairs) + held_bytes
        have = available_memory(self.device)
        if need > have:
            raise FlowInputError(f"{pairs} pair(s) of {width}x{height} frames need about {need / 2**30:.1f} GiB with "
                                 f"{self.name} on {self.device}, {have / 2**30:.1f} GiB is available: use a smaller size or batch")

    def __call__(self, frames1: torch.Tensor, frames2: torch.Tensor) -> torch.Tensor:
        """Flow [B,2,H,W] float32 in pixels from ``frames1`` to ``frames2`` (RGB [B,3,H,W]).

        Frames are uint8 (0..255) or float in [0,1]; a single pair [3,H,W] gives [1,2,H,W].
        Any H, W (padded inside to multiples of 64 for PWC-Net, 8 for RAFT). The result is on
        the frames' device.
        """
        frames1, frames2 = _check_frames(frames1, frames2)
        B, _, H, W = frames1.shape
        self.check_size(H, W, B)
        out = torch.empty((B, 2, H, W), dtype=torch.float32, device=frames1.device)
        step = self.pairs_per_batch(H, W)
        with self._inference():
            for i in range(0, B, step):
                a = _to_unit_float(frames1[i : i + step].to(self.device, non_blocking=True))
                b = _to_unit_float(frames2[i : i + step].to(self.device, non_blocking=True))
                out[i : i + step] = self._predict(a, b).float()
        return out

    def clip_flow(self, clip: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        """Forward flows [T-1,2,H,W] (pixels) between consecutive frames of ``clip`` [T,3,H,W].

        PWC-Net and RAFT compute each frame's features once (see :meth:`windows`). The clip
        crosses to the engine's device once; the result comes back to the clip's device.
        """
        home = clip.device
        return torch.cat([f.to(home) for f in self.windows(clip, batch)])

    def windows(self, clip: torch.Tensor, batch: int | None = None) -> Iterator[torch.Tensor]:
        """Flows of consecutive frames of ``clip`` [T,3,H,W] (uint8 or float [0,1]), ``batch`` pairs
        at a time (default: as many as fit the memory budget), on the engine's device.

        A window of n pairs runs the network's feature extractor on its n+1 frames once.
        """
        if not torch.is_tensor(clip) or clip.dim() != 4 or clip.shape[0] < 2 or clip.shape[1] not in (1, 3):
            raise FlowInputError(f"clip must be a tensor [T,3,H,W] with T >= 2, got {tuple(getattr(clip, 'shape', ()))}")
        if batch is not None and batch < 1:
            raise FlowEngineError(f"batch must be at least 1, got {batch}")
        H, W = clip.shape[-2:]
        step = min(self.pairs_per_batch(H, W), len(clip) - 1)
        step = min(step, batch or step)
        self.check_size(H, W, step)
        clip = clip.to(self.device, non_blocking=True)
        with self._inference():
            for s in range(0, len(clip) - 1, step):
                yield self._predict_clips(_to_unit_float(clip[s : s + step + 1])[None])[0].float()

    def snippets_flow(self, snippets: torch.Tensor) -> torch.Tensor:
        """Flows [N,T-1,2,H,W] px within each of N snippets of consecutive frames [N,T,3,H,W]
        (uint8 or float [0,1]), on the snippets' device. Each frame's features are computed once;
        snippets are batched within the memory budget."""
        if not torch.is_tensor(snippets) or snippets.dim() != 5 or snippets.shape[1] < 2:
            raise FlowInputError(f"snippets must be a tensor [N,T,3,H,W] with T >= 2, got {tuple(getattr(snippets, 'shape', ()))}")
        N, T, C, H, W = snippets.shape
        home = snippets.device
        self.check_size(H, W, N * (T - 1))
        per_call = max(1, self.pairs_per_batch(H, W) // (T - 1))
        out = []
        with self._inference():
            for s in range(0, N, per_call):
                part = _to_unit_float(snippets[s : s + per_call].to(self.device, non_blocking=True))
                out.append(self._predict_clips(part).float().to(home))
        return torch.cat(out)

    def stream(self, chunks: Iterable[torch.Tensor | np.ndarray], batch: int | None = None) -> Iterator[torch.Tensor]:
        """Flows between consecutive frames of a video given in chunks, on the engine's device.

        ``chunks``: uint8 RGB frames, each chunk a numpy [t,H,W,3] (as decoders return them) or a
        tensor [t,3,H,W]. The last frame of a chunk is carried over, so the flows are those of
        the whole sequence: n frames in all give n-1 flows, yielded ``batch`` pairs at a time.
        """
        previous = None
        for chunk in chunks:
            if isinstance(chunk, np.ndarray):
                if chunk.ndim != 4 or chunk.shape[-1] != 3:
                    raise FlowInputError(f"frame chunks must be [t,H,W,3] arrays, got shape {chunk.shape}")
                chunk = torch.from_numpy(chunk).permute(0, 3, 1, 2)
            if len(chunk) == 0:
                continue
            chunk = chunk.to(self.device, non_blocking=True)
            seq = chunk if previous is None else torch.cat([previous, chunk])
            previous = seq[-1:]
            if len(seq) >= 2:
                yield from self.windows(seq, batch)

    def flow_with_grad(self, frames1: torch.Tensor, frames2: torch.Tensor) -> torch.Tensor:
        """Flow [B,2,H,W] in pixels with the autograd graph kept, for fine-tuning the network end to end.

        Frames: float RGB in [0,1] (or uint8) on the engine's device. No inference mode and no
        autocast here: the caller owns train/eval mode, precision (e.g. Lightning's) and the
        optimizer of ``engine.model.parameters()``.
        """
        if self.name not in LEARNED_ENGINES:
            raise FlowEngineError(f"engine {self.name!r} is a classical method: no gradients to take")
        frames1, frames2 = _check_frames(frames1, frames2)
        self.check_size(frames1.shape[2], frames1.shape[3], frames1.shape[0])
        return self._predict(_to_unit_float(frames1), _to_unit_float(frames2))

    @contextmanager
    def _inference(self) -> Iterator[None]:
        """Inference mode, and autocast to the engine's dtype (off in fp32): the one block every call runs in."""
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=DTYPES[self.dtype], enabled=self.dtype != "fp32"):
            yield

    def _predict(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.scales is not None:
            return self._method.predict(a, b, scales=self.scales)
        return self._method.predict(a, b)

    def _predict_clips(self, clips: torch.Tensor) -> torch.Tensor:
        if self.scales is not None:
            return self._method.predict_clips(clips, scales=self.scales)
        return self._method.predict_clips(clips)


def _check_frames(frames1: torch.Tensor, frames2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not (torch.is_tensor(frames1) and torch.is_tensor(frames2)):
        raise FlowInputError(f"frames must be torch tensors, got {type(frames1).__name__} and {type(frames2).__name__}")
    if frames1.dim() == 3 and frames2.dim() == 3:
        frames1, frames2 = frames1[None], frames2[None]
    for name, f in (("frames1", frames1), ("frames2", frames2)):
        if f.dim() != 4 or f.shape[1] != 3:
            raise FlowInputError(f"{name} must be RGB [B,3,H,W] (or one [3,H,W] frame), got shape {tuple(f.shape)}")
        if f.dtype != torch.uint8 and not f.is_floating_point():
            raise FlowInputError(f"{name} must be uint8 (0..255) or float in [0,1], got {f.dtype}")
    if frames1.shape != frames2.shape:
        raise FlowInputError(f"frame pair sizes differ: {tuple(frames1.shape)} vs {tuple(frames2.shape)}")
    if frames1.shape[0] == 0:
        raise FlowInputError("empty batch of frames")
    return frames1, frames2


def _to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 0..1; float frames pass through as float32."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()
