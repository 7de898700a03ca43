"""Video data for the two-stream network: the LightningDataModule (splits, checks, the flow cache filled).

Frames are decoded at ``size``: (H, W) for every video, or an int, the short side, each video
keeping its aspect ratio (portrait, landscape and square videos mix in one dataset); an item may
also be a folder of ``frame_pattern`` images (see ``flow_engine.io.video``), read the same way: each
sample carries its ``video`` (path and frame pattern), so every probe and decode sees the pattern.
The items, their TSN snippets and their crop are :mod:`actionflow.clips`'s (:class:`VideoClips`).

One flow function: the temporal input is always the flow of the decoded frames, bounded at
±``flow_bound``, then cropped like the RGB frames. The cache stores exactly that (quantised);
online flow (training, validation, test and ``classify``) computes it on the model's device and
crops it there, so both give the same tensors up to the cache's quantisation.

Bad videos (unreadable, corrupt, or with fewer frames than a flow needs) are probed once at
setup and skipped with a warning naming each file; a video that still fails while decoding is
dropped from its batch by :func:`actionflow.clips.collate` and counted. ``strict=True`` turns both into errors.
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from actionflow.annotations import Sample, load_splits
from actionflow.benchmarks.demo_data import MOVES, DemoDataError, check_settings, generate_demo_dataset
from actionflow.clips import DEFAULT_SCALES, BadVideo, Clip, VideoClips, collate
from actionflow.errors import ActionflowError
from actionflow.flow_cache import DEFAULT_BOUND, MAX_SIDE, FlowCache
from actionflow.model import MODES
from actionflow.precompute import available_cores, precompute
from flow_engine.checkpoints import WeightsError
from flow_engine.commands.args import config_size_error
from flow_engine.engine import LEARNED_ENGINES, FlowEngine, available_memory, engine_identity, min_side
from flow_engine.errors import FlowEngineError
from flow_engine.io.video import DEFAULT_FRAME_PATTERN, VideoError, check_frame_pattern, decode_size, probe

logger = logging.getLogger(__name__)

FLOW_SOURCES = ("cache", "online")
CACHE_MISSING = ("compute", "error")
DEFAULT_FLOW_ENGINE = "dis_fine"  # the demo's; configs/real.yaml's too


class DataConfigError(ActionflowError, ValueError):
    """A bad data setting or path, raised before any video is decoded."""


def resolve_flow_engine(flow_engine: str, flow_model: str | None) -> str:
    """``data.flow_engine``, or its old name ``data.flow_model`` where that is set (a FutureWarning). Both set to two
    engines (``flow_engine`` not left at its default) is a DataConfigError: which one was meant cannot be known."""
    if flow_model is None:
        return flow_engine
    if flow_engine not in (flow_model, DEFAULT_FLOW_ENGINE):
        raise DataConfigError(f"data.flow_model (the old name of data.flow_engine) is {flow_model!r} but data.flow_engine "
                              f"is {flow_engine!r}: keep data.flow_engine alone")
    warnings.warn("data.flow_model is deprecated: use data.flow_engine (the same setting)", FutureWarning, stacklevel=3)
    return flow_model


def _holds_other_data(root: Path) -> bool:
    """``root`` exists with files in it, and they are not a demo dataset (whose meta.json names its generator)."""
    return root.is_dir() and any(root.iterdir()) and not (root / "meta.json").is_file()


def _pair(value: Sequence[int] | int | str | None, name: str, short_side: bool = False) -> tuple[int, int] | int | None:
    """[H, W] (or one int: a square for crops, the short side for ``short_side`` sizes) checked to lie in
    8..8192 px (the flow cache's largest side: frames decoded larger would be crafted, not asked for)."""
    if value is None:
        return None
    if isinstance(value, str):  # command-line sizes are WIDTHxHEIGHT; configs hold [H, W]
        raise DataConfigError(config_size_error(f"data.{name}", value, "[H, W] or a short side" if short_side else "[H, W]"))
    if isinstance(value, int) and short_side:
        if not 8 <= value <= MAX_SIDE:
            raise DataConfigError(f"data.{name} as a short side must be 8..{MAX_SIDE} px, got {value}")
        return int(value)
    if isinstance(value, int):
        value = (value, value)
    if len(value) != 2 or min(value) < 8 or max(value) > MAX_SIDE:
        form = "[H, W] (e.g. [256, 340]) or one int, the short side (e.g. 256)" if short_side else "[H, W], e.g. [224, 224]"
        raise DataConfigError(f"data.{name} must be {form}, both 8..{MAX_SIDE} px; got {value}")
    return int(value[0]), int(value[1])


def snippets_bytes(snippets: int, flow_length: int, size: tuple[int, int] | int) -> int:
    """Bytes ``snippets`` snippets take in memory while an item is read, at decode ``size`` ([H, W], or a short
    side: a 16:9 frame): their uint8 frames (L + 1 each) and float32 flow (L fields of 2 planes)."""
    h, w = (size, size * 16 // 9) if isinstance(size, int) else size
    return snippets * ((flow_length + 1) * 3 + flow_length * 2 * 4) * h * w


def check_memory(what: str, need: int) -> None:
    """DataConfigError naming ``what`` when ``need`` bytes exceed the memory this machine has free."""
    if need > (have := available_memory(torch.device("cpu"))):
        raise DataConfigError(f"{what} need about {need / 2**30:.1f} GiB of memory, {have / 2**30:.1f} GiB is available")



class ActionDataModule(pl.LightningDataModule):
    """Train/val/test video splits with TSN sampling, RGB frames and flow (cached or online).

    The defaults are those of the default run, ``python train.py`` (the demo on a CPU: ``dis_fine`` flow
    at 112x112, 56x56 crops); where that run reads and writes (``root``, ``demo``, ``cache_dir``) is set
    by train.py. ``python train.py --print_config`` shows every key as a run uses it.

    Args:
        root: folder with a sub-folder per class, or the folder the list paths are relative to.
        train_list: annotation list of the training videos (``relative/path label`` lines).
        val_list: validation list; None: split off the training videos (val_fraction, stratified).
        test_list: test list; None: split off the training videos (test_fraction, stratified).
        class_index: classInd.txt-style file; None: looked for next to train_list and in root.
        label_base: index base of integer labels in the lists; None: the class-index file's, else 0.
        val_fraction: fraction of all videos split off for validation when no val_list.
        test_fraction: fraction of all videos split off for test when no test_list.
        split_seed: seed of those stratified splits.
        mode: rgb | flow | two_stream (linked from model.mode by train.py).
        flow_source: cache (compressed flow cache in cache_dir) | online (the model computes flow).
        cache_dir: flow cache folder (use one per flow engine and size).
        cache_missing: compute (missing cache entries are computed before training) | error.
        flow_engine: the flow engine (flow_engine.FlowEngine): pwcnet | raft_small | raft_large | dis |
            dis_fine | farneback | tvl1.
        flow_weights: weights file of a learned engine; None for PWC-Net's shipped ones (RAFT:
            torchvision's pretrained weights).
        flow_updates: RAFT's refinements per pair (None: 12).
        flow_device: device of the engine filling the cache: auto | cpu | cuda | cuda:N.
        num_segments: TSN segments K per video.
        flow_length: flows L per snippet (2L channels), 1..10.
        test_clips: clips of K snippets, evenly spaced and averaged, per test video.
        size: decode size: [H, W] in pixels for every video, or one int, the short side in pixels with
            each video's aspect ratio kept (mmaction2's ``Resize(scale=(-1, S))``; the flow cache then
            stores each video at its own size). Also the size the flow is computed at.
        crop_size: network input [h, w] taken out of the decoded frames (training at random scales and
            places, evaluation at the centre); None: size (fixed [H, W] only). A video whose decoded
            frame is smaller than the crop is upscaled (said once in the log). 56x56 is the demo's: 20
            epochs fit the CPU budget (80 and 112 px gained nothing).
        flow_bound: flow is clipped at ±this many pixels (the cache's quantisation bound; online flow
            is clipped the same way).
        scales: multi-scale crop side fractions (training).
        flip: random horizontal flips (training; the x flow is negated).
        reverse: play half the training videos backwards (motion that is as fast either way: for labels that
            speed, not direction, decides): the flows in reverse order and negated
            (:func:`actionflow.clips.reverse_time`; online flow: the frames in reverse order).
        batch_size: videos per batch.
        num_workers: DataLoader worker processes.
        strict: bad videos, videos listed twice or in two splits, and frame folders holding fewer frames than
            their rawframe list says raise instead of being skipped / warned about.
        frame_pattern: file names of the frames of a frame folder (a dataset item that is a folder):
            ``img_{:05d}.jpg`` (mmaction2/denseflow), ``{:05d}.jpg``, ``frame_{:06d}.png``... numbered from
            0 or 1, or a glob such as ``*.png`` (name order). Other files in the folder are ignored.
        imported_flow: the flow engine that flow imported into ``cache_dir`` (``python -m actionflow cache
            import``, engine unknown) stands for, e.g. ``tvl1``; it must equal ``flow_engine``, and then
            imported entries are served (at any size and bound: flow is resized and rescaled to ``size``).
            None: imported entries are refused like any other engine's.
        demo: first generate the bundled demo dance dataset into ``root`` (``actionflow.benchmarks.demo_data``;
            instant when it is already there), so the default run needs no data. ``true`` for the
            generator's defaults, or a dict of its arguments (clips_per_class, frames, size, seed...).
            A ``root`` that already holds other files (your own dataset) is used as it is, and lists or a
            class index other than the demo's own (``root/train.txt``...) mean your data: no demo then.
        flow_model: the old name of ``flow_engine`` (deprecated: it still works, with a warning).
    """

    def __init__(
        self,
        root: str | None = None,
        train_list: str | None = None,
        val_list: str | None = None,
        test_list: str | None = None,
        class_index: str | None = None,
        label_base: int | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        mode: Literal["rgb", "flow", "two_stream"] = "two_stream",
        flow_source: Literal["cache", "online"] = "cache",
        cache_dir: str = "cache",
        cache_missing: Literal["compute", "error"] = "compute",
        flow_engine: str = DEFAULT_FLOW_ENGINE,
        flow_weights: str | None = None,
        flow_updates: int | None = None,
        flow_device: str = "auto",
        num_segments: int = 3,
        flow_length: int = 5,
        test_clips: int = 2,
        size: tuple[int, int] | int | str = (112, 112),
        crop_size: tuple[int, int] | None = (56, 56),
        flow_bound: float = DEFAULT_BOUND,
        scales: tuple[float, ...] = DEFAULT_SCALES,
        flip: bool = True,
        reverse: bool = False,
        batch_size: int = 8,
        num_workers: int = 2,
        strict: bool = False,
        demo: bool | dict = False,
        frame_pattern: str = DEFAULT_FRAME_PATTERN,
        imported_flow: str | None = None,
        flow_model: str | None = None,
    ):
        flow_engine, flow_model = resolve_flow_engine(flow_engine, flow_model), None  # before save_hyperparameters
        super().__init__()
        self.save_hyperparameters(ignore=["flow_model"])
        # The demo set is generated in prepare_data (once per node, not by every process of a
        # multi-GPU run); until then its class names come from the generator's settings.
        self._demo_classes: list[str] | None = None
        if demo:
            if root is None:
                raise DataConfigError("data.demo needs data.root: the folder to write the demo dataset into")
            own = {"train_list": "train.txt", "val_list": "val.txt", "test_list": "test.txt", "class_index": "classes.txt"}
            given = {"train_list": train_list, "val_list": val_list, "test_list": test_list, "class_index": class_index}
            yours = [f"data.{k}" for k, v in given.items()
                     if v is not None and os.path.abspath(v) != os.path.abspath(Path(root) / own[k])]
            if _holds_other_data(Path(root)):  # e.g. `python train.py --data.root MY_DATA` over the default config
                logger.info("data.root %s holds a dataset that is not the demo: using it, not generating the demo", root)
            elif yours:  # lists of your own: a mistyped data.root is an error below, not a demo set written there
                logger.info("%s given: not generating the demo into data.root %s", ", ".join(yours), root)
            else:
                settings = demo if isinstance(demo, dict) else {}
                try:
                    check_settings(**settings)
                except (DemoDataError, TypeError) as exc:
                    raise DataConfigError(f"data.demo: {exc}") from None
                self._demo_classes = list(settings.get("classes", MOVES))
        for name, value, allowed in (("mode", mode, MODES), ("flow_source", flow_source, FLOW_SOURCES),
                                     ("cache_missing", cache_missing, CACHE_MISSING)):
            if value not in allowed:
                raise DataConfigError(f"data.{name} must be one of {allowed}, got {value!r}")
        if not 1 <= flow_length <= 10:
            raise DataConfigError(f"data.flow_length must lie in 1..10, got {flow_length}")
        if num_segments < 1 or test_clips < 1 or batch_size < 1 or num_workers < 0:
            raise DataConfigError("data.num_segments, test_clips, batch_size must be >= 1 and num_workers >= 0")
        if not scales or not all(0.1 <= s <= 1.0 for s in scales):
            raise DataConfigError(f"data.scales must be fractions in [0.1, 1], got {scales}")
        for key, path in (("root", root), ("train_list", train_list), ("val_list", val_list),
                          ("test_list", test_list), ("class_index", class_index)):
            if self._demo_classes is None and path is not None and not os.path.exists(path):  # the demo's: prepare_data
                raise DataConfigError(f"data.{key}: {path} does not exist")
        try:
            check_frame_pattern(frame_pattern)
        except ValueError as exc:
            raise DataConfigError(f"data.frame_pattern: {exc}") from None
        if imported_flow is not None and imported_flow != flow_engine:
            raise DataConfigError(f"data.imported_flow is {imported_flow!r} but data.flow_engine is {flow_engine!r}: "
                                  "imported flow stands in only for the engine that fills the rest of the cache")
        self.size = _pair(size, "size", short_side=True)
        if crop_size is None and isinstance(self.size, int):
            raise DataConfigError("data.crop_size must be given when data.size is a short side (each video has its own size)")
        shown = self.size if isinstance(self.size, int) else list(self.size)
        if mode in ("flow", "two_stream"):  # an unknown engine, missing weights, a size it cannot take: now, not after the demo
            try:
                engine_identity(flow_engine, flow_weights, flow_updates)
            except FlowEngineError as exc:
                raise DataConfigError(f"data.{'flow_weights' if isinstance(exc, WeightsError) else 'flow_engine'}: {exc}") from None
            if (self.size if isinstance(self.size, int) else min(self.size)) < min_side(flow_engine):
                raise DataConfigError(f"data.size {shown}: {flow_engine} needs frames of at least {min_side(flow_engine)} px a side")
        self.crop_size = _pair(crop_size, "crop_size") or self.size
        if not isinstance(self.size, int) and (self.crop_size[0] > self.size[0] or self.crop_size[1] > self.size[1]):
            raise DataConfigError(f"data.crop_size {self.crop_size} is larger than data.size {self.size}")
        if not (np.isfinite(flow_bound) and flow_bound > 0):
            raise DataConfigError(f"data.flow_bound must be a positive number of pixels, got {flow_bound}")
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise DataConfigError(f"data.val_fraction {val_fraction} and data.test_fraction {test_fraction} must be "
                                  "fractions in [0, 1) that leave some videos for training")
        if os.path.exists(cache_dir) and not os.path.isdir(cache_dir):
            raise DataConfigError(f"data.cache_dir: {cache_dir} is a file, not a folder")
        in_flight = batch_size * (2 * num_workers + 1)  # a batch being used, two prefetched per worker
        check_memory(f"batches of {batch_size} test videos (data.batch_size) of data.test_clips {test_clips} x data.num_segments "
                     f"{num_segments} snippets of {flow_length + 1} frames at data.size {shown}, {in_flight // batch_size} batch(es) at a time,",
                     in_flight * snippets_bytes(test_clips * num_segments, flow_length, self.size))
        self.splits = None if self._demo_classes is not None else self._load_splits()
        self.clips: dict[str, list[Clip]] = {}
        self.skipped: list[str] = []  # "path: reason" of videos left out at setup
        self._engine = None
        self.cache = None
        self._flow_failures: dict[str, str] = {}  # path -> why its flow could not be computed (prepare_data)

    def _load_splits(self):
        h = self.hparams
        return load_splits(h.root, h.train_list, h.val_list, h.test_list, h.class_index, h.label_base,
                           h.val_fraction, h.test_fraction, h.split_seed, h.strict, h.frame_pattern)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_names(self) -> list[str]:
        return list(self.splits.classes) if self.splits is not None else list(self._demo_classes)

    @property
    def needs_flow(self) -> bool:
        return self.hparams.mode in ("flow", "two_stream")

    def flow_cache(self):
        """The flow cache for this engine and size (``flow_source: cache``)."""
        h = self.hparams  # the cache is keyed by the engine's identity: nothing is built to read it
        identity = engine_identity(h.flow_engine, h.flow_weights, h.flow_updates)
        return FlowCache(h.cache_dir, identity, size=self.size, bound=h.flow_bound, accept_imported=h.imported_flow is not None)

    def flow_engine(self):
        """The ``FlowEngine`` whose flow is cached (built once, on first use)."""
        if self._engine is None:
            h = self.hparams
            # A classical engine fills the cache on every core; learned engines use their device.
            workers = 1 if h.flow_engine in LEARNED_ENGINES else available_cores()
            self._engine = FlowEngine(name=h.flow_engine, weights=h.flow_weights, device=h.flow_device,
                                      flow_updates=h.flow_updates, workers=workers)
        return self._engine

    def prepare_data(self) -> None:
        """Generate the demo set when asked, then fill the flow cache for every video that lacks an
        entry (Lightning runs this on one process per node)."""
        if self._demo_classes is not None:
            demo = self.hparams.demo
            generate_demo_dataset(self.hparams.root, **(demo if isinstance(demo, dict) else {}))
        if self.splits is None:
            self.splits = self._load_splits()
        if not (self.needs_flow and self.hparams.flow_source == "cache"):
            return
        cache = self.flow_cache()
        samples = [s for split in (self.splits.train, self.splits.val, self.splits.test) for s in split]
        # verify: every frame's crc32 (cheap, as precompute does by default). A corrupt entry then
        # counts as missing and is recomputed here, instead of failing when read and its video
        # being dropped from every batch of the run.
        missing = sorted({s.video for s in samples if cache.lookup(s.video, verify=True) is None}, key=str)
        if not missing:
            return
        if self.hparams.cache_missing == "error":
            raise DataConfigError(
                f"{len(missing)} video(s) have no usable flow in cache {self.hparams.cache_dir} (missing, stale or "
                f"corrupt; first: {missing[0]}); run `python -m actionflow precompute` or set data.cache_missing: compute"
            )
        engine = self.flow_engine()
        cache.root.mkdir(parents=True, exist_ok=True)
        logger.info("computing flow of %d video(s) missing from %s with %s", len(missing), cache.root, engine.name)
        summary = precompute(missing, cache, engine, workers=2)
        for path, reason in summary.failed:  # setup() then skips these as uncached, for this reason
            if self.hparams.strict:
                raise BadVideo(f"{path}: no flow ({reason})")
            self._flow_failures[str(path)] = reason

    def setup(self, stage: str | None = None) -> None:
        """Probe every video of the splits once; bad ones are skipped (warned, counted) or raise if strict."""
        if self.clips:
            return
        if self.splits is None:  # the other processes: prepare_data ran on one per node
            self.splits = self._load_splits()
            if self.splits.classes != self.class_names:
                raise DataConfigError(f"{self.hparams.root}: classes {self.splits.classes} differ from the demo's {self.class_names}")
        cache = self.flow_cache() if self.needs_flow and self.hparams.flow_source == "cache" else None
        min_frames = 2 if self.needs_flow else 1
        all_samples = {s.path: s for split in (self.splits.train, self.splits.val, self.splits.test) for s in split}

        def check(path: str) -> str | tuple[int, tuple[int, int]]:
            video = all_samples[path].video
            try:
                info = probe(video)
            except VideoError as exc:
                return exc.reason
            if info.num_frames < min_frames:
                return f"only {info.num_frames} frame(s); flow needs {min_frames}"
            if cache is not None and cache.lookup(video) is None:  # the reason its flow failed, where this process saw it
                return self._flow_failures.get(path) or f"no cached flow in {self.hparams.cache_dir}"
            return info.num_frames, decode_size(info.height, info.width, self.size)

        with ThreadPoolExecutor(max(1, min(4, self.hparams.num_workers))) as pool:
            result = dict(zip(all_samples, pool.map(check, all_samples)))
        bad = {p: r for p, r in result.items() if isinstance(r, str)}
        if bad and self.hparams.strict:
            raise BadVideo("bad videos (data.strict is true):\n" + "\n".join(f"  {p}: {r}" for p, r in bad.items()))
        for path, reason in bad.items():
            logger.warning("skipping bad video %s: %s", path, reason)
        self.skipped = [f"{p}: {r}" for p, r in bad.items()]
        self._check_listed_frames(all_samples, result)
        for name, split in (("train", self.splits.train), ("val", self.splits.val), ("test", self.splits.test)):
            self.clips[name] = [Clip(s, *result[s.path]) for s in split if s.path not in bad]
        small = [p for p, r in result.items() if not isinstance(r, str) and min(
            r[1][0] / self.crop_size[0], r[1][1] / self.crop_size[1]) < 1]
        if small:
            logger.warning("%d video(s) decode smaller than the crop %dx%d and are upscaled to it (first: %s)",
                           len(small), self.crop_size[1], self.crop_size[0], small[0])
        self.cache = cache
        if bad:
            logger.warning("skipped %d bad video(s) of %d", len(bad), len(all_samples))
        if not self.clips["train"]:
            raise BadVideo("no usable training videos left")

    def _check_listed_frames(self, samples: dict[str, Sample], probed: dict[str, str | tuple]) -> None:
        """One warning (an error under data.strict) for frame folders holding fewer frames than their
        rawframe list line says; they are used with the frames they have. ``probed``: setup's
        (frame count, decode size) per path, or the reason it is bad."""
        frames = {p: r[0] for p, r in probed.items() if not isinstance(r, str)}
        short = [f"{p} has {frames[p]} ({s.source} says {s.listed_frames})" for p, s in samples.items()
                 if s.listed_frames is not None and p in frames and frames[p] < s.listed_frames]
        if not short:
            return
        problem = (f"{len(short)} frame folder(s) hold fewer frames than their list says (the frames there are used): "
                   + "; ".join(short[:10]) + (f" and {len(short) - 10} more" if len(short) > 10 else ""))
        if self.hparams.strict:
            raise BadVideo(problem + " (data.strict is true)")
        logger.warning("%s", problem)

    def dataset(self, phase: str) -> VideoClips:
        h = self.hparams
        return VideoClips(
            self.clips[phase], phase, mode=h.mode, flow_source=h.flow_source, num_segments=h.num_segments,
            flow_length=h.flow_length, test_clips=h.test_clips, crop_size=self.crop_size, scales=h.scales, flip=h.flip,
            cache=self.cache, strict=h.strict, reverse=h.reverse,
        )

    def _loader(self, phase: str) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(
            self.dataset(phase),
            batch_size=self.hparams.batch_size,
            shuffle=phase == "train",
            drop_last=False,
            num_workers=workers,
            persistent_workers=workers > 0 and phase != "test",
            pin_memory=torch.cuda.is_available(),
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
