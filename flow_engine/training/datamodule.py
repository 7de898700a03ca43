"""The data of PWC-Net training: :class:`FlowDataModule`, a LightningDataModule.

Training pairs are procedural (:mod:`flow_engine.data.synthetic`, rendered on the training device
inside the loop, seeded from the global step so that a resumed run continues the same
sequence), from the published datasets (:mod:`flow_engine.data.datasets`) with the augmentation of
:mod:`flow_engine.data.augment`, from a teacher's labels of real videos (distillation,
:mod:`flow_engine.data.teacher_labels`: labelled once in ``prepare_data``), or a mix of procedural and
dataset pairs in every batch. Validation runs on the ``cases`` layout. Every ``__init__``
argument is a ``--data.*`` key of ``python -m flow_engine train``; sizes are (h, w) in pixels.
"""
from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, IterableDataset

from flow_engine.data import augment
from flow_engine.data.datasets import DATASETS, FlowCases, make_dataset
from flow_engine.data.synthetic import SyntheticFlow
from flow_engine.data.teacher_labels import label_videos
from flow_engine.engine import FlowEngine
from flow_engine.training.module import ConfigError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Synthetic:
    """Procedural pairs: the settings of :class:`flow_engine.data.synthetic.SyntheticFlow`.

    Args:
        num_layers: (min, max) foreground layers per scene.
        min_displacement: px, the smallest translation magnitude (log-uniform up to max_displacement).
        max_displacement: px, the largest translation magnitude (the curriculum replaces it while it runs).
        photometric: per-layer brightness/contrast/gamma changes in frame 2.
        noise: sensor noise on both frames.
        blur: random blur of both frames.
        photo_prob: the share of layers textured with photographs (the rest procedural patterns).
    """

    num_layers: tuple[int, int] = (2, 8)
    min_displacement: float = 0.1
    max_displacement: float = 160.0
    photometric: bool = True
    noise: bool = True
    blur: bool = True
    photo_prob: float = 0.6


@dataclass(frozen=True)
class Curriculum:
    """The procedural pairs' largest translation grows log-linearly from ``start`` to ``end`` px over ``steps``.

    Args:
        start: px at step 0.
        end: px from ``steps`` on.
        steps: optimizer steps to grow from start to end.
    """

    start: float = 16.0
    end: float = 160.0
    steps: int = 100000


@dataclass(frozen=True)
class Distill:
    """Distillation: ``teacher`` labels pairs of real ``videos`` once (in ``prepare_data``); the labels join
    ``train`` as ``{name: teacher, root: labels}``. Off while ``teacher`` is null.

    Args:
        teacher: the teacher engine (raft_small, raft_large, pwcnet, dis_fine, ...); null: no distillation.
        teacher_weights: the teacher's weights file (RAFT: null = torchvision's download).
        flow_updates: RAFT teacher refinements (null: 12).
        device: where the teacher runs (auto, cpu, cuda, cuda:1 ...).
        videos: folders, list files or video files to label.
        labels: the label folder (null: OUT/labels); a folder labelled elsewhere is reused.
        pairs_per_video: pairs drawn from each video.
        gaps: frames between the two frames of a pair.
        short_sides: decode scales, px of the short side (capped at the video's own).
        batch: pairs per teacher call (both directions).
        threads: torch threads while the teacher labels (null: unchanged).
    """

    teacher: str | None = None
    teacher_weights: str | None = None
    flow_updates: int | None = None
    device: str = "auto"
    videos: tuple[str, ...] = ()
    labels: str | None = None
    pairs_per_video: int = 48
    gaps: tuple[int, ...] = (1, 2)
    short_sides: tuple[int, ...] = (256, 320, 384)
    batch: int = 4
    threads: int | None = None


def _check_kwargs(key: str, given: dict | None, fn: Any, skip: tuple[str, ...] = ()) -> None:
    """A clear error for keyword arguments ``fn`` does not take (instead of a TypeError deep in a data worker)."""
    if given is None:
        return
    if not isinstance(given, dict):
        raise ConfigError(f"{key} must be a mapping of settings or null, got {given!r}")
    known = [p.name for p in inspect.signature(fn).parameters.values()
             if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in skip]
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError(f"{key}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")


def _check_entry(i: int, entry: Any) -> None:
    where = f"data.train[{i}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ConfigError(f"{where} must be a mapping with a name (synthetic, {', '.join(DATASETS)}), got {entry!r}")
    name = entry["name"]
    if name == "synthetic":
        if set(entry) != {"name"}:
            raise ConfigError(f"{where}: synthetic takes no settings here (they are data.synthetic.*), got {entry}")
        return
    cls = DATASETS.get(name)
    if cls is None:
        raise ConfigError(f"{where}: unknown dataset {name!r}; choose synthetic, {', '.join(DATASETS)}")
    if not entry.get("root"):
        raise ConfigError(f"{where}: {name} needs a root folder, e.g. {{name: {name}, root: /data/{name}}}")
    _check_kwargs(where, {k: v for k, v in entry.items() if k not in ("name", "repeat")}, cls.__init__, skip=("self",))


class _Ticks(IterableDataset):
    """An endless stream of step tokens; the real batch is rendered on the device from the global step."""

    def __iter__(self):
        while True:
            yield torch.zeros(1)


class _Cropped(Dataset):
    """A flow dataset with random scale/flip/crop (float frames in [0,1], fixed crop size)."""

    def __init__(self, dataset: Dataset, crop: tuple[int, int], spatial: dict | None, sparse: bool):
        self.dataset, self.crop, self.spatial, self.sparse = dataset, crop, spatial, sparse

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        img1, img2, flow, valid = self.dataset[index]
        batch = (img1[None].float() / 255, img2[None].float() / 255, flow[None], valid[None])
        if self.spatial is None:
            H, W = img1.shape[-2:]
            h, w = self.crop
            y, x = np.random.randint(0, H - h + 1), np.random.randint(0, W - w + 1)
            return tuple(t[0, ..., y : y + h, x : x + w] for t in batch)
        return tuple(t[0] for t in augment.random_spatial(*batch, self.crop, sparse=self.sparse, **self.spatial))


class _NamedCases(Dataset):
    """Validation cases with their names and their set's name, for per-case and per-set logging."""

    def __init__(self, cases, limit: int | None, set_name: str):
        self.cases, self.set_name = cases, set_name
        n = len(cases)
        self.indices = list(range(n)) if not limit or limit >= n else sorted({round(i * (n - 1) / max(limit - 1, 1)) for i in range(limit)})

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = self.indices[i]
        return (*self.cases[j], self.cases.names[j], self.set_name)


def _seed(*parts: int) -> int:
    """A 62-bit seed from integers (stable across processes and runs)."""
    h = 0
    for p in parts:
        h = (h * 1_000_003 + int(p) + 0x9E3779B9) % (1 << 62)
    return h


class FlowDataModule(pl.LightningDataModule):
    """Training pairs (procedural on the device, datasets with augmentation, teacher labels) and validation cases."""

    def __init__(
        self,
        train: Sequence[dict[str, Any]] = ({"name": "synthetic"},),
        synthetic_fraction: float = 0.5,
        crop: tuple[int, int] = (384, 448),
        batch_size: int = 8,
        num_workers: int = 4,
        synthetic: Synthetic = Synthetic(),
        curriculum: Curriculum | None = Curriculum(),
        spatial: dict[str, Any] | None = {},  # noqa: B006 (never mutated; {} = augment's defaults, null = off)
        photometric: dict[str, Any] | None = {},  # noqa: B006
        val_cases: str | list[str] | None = "../shared/data/flow",
        val_limit: int | None = None,
        distill: Distill = Distill(),
        seed: int = 0,
    ):
        """
        Args:
            train: the training sources: {name: synthetic} (procedural pairs) and/or datasets {name: chairs|things|sintel|kitti|teacher, root: DIR, repeat: N, ...their settings}.
            synthetic_fraction: the share of each batch rendered procedurally when synthetic pairs are mixed with datasets.
            crop: (h, w) in pixels of the training pairs, multiples of 64, e.g. [384, 448].
            batch_size: pairs per batch and device.
            num_workers: DataLoader workers for the datasets (procedural pairs need none).
            synthetic: the procedural pairs' settings.
            curriculum: the procedural pairs' largest translation grows from start to end px over steps; null: off.
            spatial: random scale/stretch/flip/crop of dataset pairs: flow_engine.data.augment.random_spatial settings ({}: its defaults; null: plain random crops).
            photometric: colour jitter and noise of every batch: flow_engine.data.augment.photometric settings ({}: its defaults; null: off).
            val_cases: the validation cases folder (the cases layout), or a list of them: each is a set scored on its own
                (val/<set>/epe, the set named after its folder) and val/epe is the mean of the sets' means; null or missing: no validation.
            val_limit: validate on only this many cases, spread over the list (null: all).
            distill: distillation from a teacher's labels of real videos.
            seed: the data seed (linked from seed_everything).
        """
        super().__init__()
        if len(crop) != 2 or any(int(c) <= 0 or int(c) % 64 for c in crop):
            raise ConfigError(f"data.crop is (h, w) in pixels, two positive multiples of 64, e.g. [384, 448]; got {list(crop)}")
        if batch_size < 1 or num_workers < 0:
            raise ConfigError(f"data.batch_size must be >= 1 and data.num_workers >= 0, got {batch_size} and {num_workers}")
        _check_kwargs("data.spatial", spatial, augment.random_spatial, skip=("img1", "img2", "flow", "valid", "crop", "sparse", "generator"))
        _check_kwargs("data.photometric", photometric, augment.photometric, skip=("img1", "img2", "generator"))
        entries = [dict(e) if isinstance(e, dict) else e for e in train]
        for i, entry in enumerate(entries):
            _check_entry(i, entry)
        if distill.teacher:
            if not distill.labels:
                raise ConfigError("data.distill.labels: the label folder is not set")
            missing = [v for v in distill.videos if not Path(v).exists()]
            if missing:
                raise ConfigError(f"data.distill.videos: no such folder, video or list file: {', '.join(missing)}")
            if not any(e["name"] == "teacher" for e in entries):
                entries.append({"name": "teacher", "root": distill.labels})
        self.crop = (int(crop[0]), int(crop[1]))
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.synthetic, self.curriculum = synthetic, curriculum
        self.spatial, self.photometric = spatial, photometric
        self.val_cases, self.val_limit = val_cases, val_limit
        self.distill, self.seed = distill, int(seed)
        self.entries = entries
        self._refuse_training_on_validation(entries)
        self.uses_synthetic = any(e["name"] == "synthetic" for e in entries)
        self.datasets = [e for e in entries if e["name"] != "synthetic"]
        if not entries:
            raise ConfigError("data.train is empty: name synthetic pairs and/or datasets")
        mixed = self.uses_synthetic and self.datasets
        if mixed and not 0 < synthetic_fraction < 1:
            raise ConfigError(f"data.synthetic_fraction must be in (0, 1) when synthetic pairs are mixed with datasets, got {synthetic_fraction}")
        # Per batch: how many pairs are rendered on the device and how many come from the datasets.
        self.n_synthetic = self.batch_size if not self.datasets else (round(self.batch_size * synthetic_fraction) if self.uses_synthetic else 0)
        if mixed and not 0 < self.n_synthetic < self.batch_size:
            raise ConfigError(f"data.batch_size {batch_size} with synthetic_fraction {synthetic_fraction} leaves no room for both kinds of pairs")
        self._generator = None
        self._micro = (-1, 0)  # (global step, micro-batch within it) for gradient accumulation

    def _refuse_training_on_validation(self, entries: list[dict]) -> None:
        """A training source inside a validation set (or holding one) would score memory, not flow: a ConfigError."""
        sets = [p.resolve() for p in self.val_sets().values()]
        sources = [Path(e["root"]) for e in entries if e.get("root")] + [Path(v) for v in self.distill.videos]
        for src in sources:
            s = src.resolve()
            for v in sets:
                if s == v or v in s.parents or s in v.parents:
                    raise ConfigError(f"training source {src} overlaps the validation set {v}: never train on validation frames")

    # -- training
    def prepare_data(self) -> None:
        """Labels the distillation videos with the teacher (what is not labelled yet)."""
        d = self.distill
        if not d.teacher or not d.videos:
            return
        teacher = FlowEngine(name=d.teacher, weights=d.teacher_weights, device=d.device, flow_updates=d.flow_updates)
        threads = torch.get_num_threads()
        if d.threads:
            torch.set_num_threads(int(d.threads))
        try:
            summary = label_videos(list(d.videos), d.labels, teacher, pairs_per_video=d.pairs_per_video,
                                   gaps=d.gaps, short_sides=d.short_sides, seed=self.seed, batch=d.batch)
        finally:
            torch.set_num_threads(threads)
        log.info("teacher labels in %s: %d pairs of %d videos (%d new, %d already there), %d videos skipped",
                 d.labels, summary["pairs"], summary["videos"], summary["labelled"], summary["existing"], len(summary["skipped"]))

    def train_dataloader(self) -> DataLoader:
        if not self.datasets:
            return DataLoader(_Ticks(), batch_size=None)
        parts = []
        for entry in self.datasets:
            entry = dict(entry)
            name, root, repeat = entry.pop("name"), entry.pop("root"), int(entry.pop("repeat", 1))
            ds = make_dataset(name, root, **entry)
            log.info("training data: %s at %s, %d pairs x %d", name, root, len(ds), repeat)
            parts += [_Cropped(ds, self.crop, self.spatial, ds.sparse)] * repeat
        return DataLoader(
            ConcatDataset(parts), batch_size=self.batch_size - self.n_synthetic, shuffle=True, drop_last=True,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
        )

    def max_displacement(self, step: int) -> float:
        """Largest procedural translation (px) at ``step``: the curriculum's, else ``synthetic.max_displacement``."""
        cur = self.curriculum
        if cur is None:
            return float(self.synthetic.max_displacement)
        t = min(1.0, step / max(1, int(cur.steps)))
        return float(math.exp(math.log(cur.start) + t * (math.log(cur.end) - math.log(cur.start))))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return batch
        step, rank = trainer.global_step, trainer.global_rank
        micro = self._micro[1] + 1 if self._micro[0] == step else 0
        self._micro = (step, micro)
        seed = _seed(self.seed, step, rank, micro)
        if self.uses_synthetic:
            device = batch.device if torch.is_tensor(batch) else batch[0].device
            if self._generator is None or self._generator.device != device:
                s = self.synthetic
                self._generator = SyntheticFlow(*self.crop, device, self.seed, num_layers=tuple(s.num_layers), min_displacement=s.min_displacement,
                                                max_displacement=s.max_displacement, photometric=s.photometric, noise=s.noise,
                                                blur=s.blur, photo_prob=s.photo_prob)
            self._generator.max_displacement = self.max_displacement(step)
            rendered = self._generator.sample(self.n_synthetic, seed=seed)
            batch = rendered if not self.datasets else tuple(torch.cat((a, b.to(a.dtype))) for a, b in zip(batch, rendered))
        img1, img2, flow, valid = batch
        if self.photometric is not None:
            g = torch.Generator(img1.device)
            g.manual_seed(seed ^ 0x5EED)
            img1, img2 = augment.photometric(img1, img2, generator=g, **self.photometric)
        return img1, img2, flow, valid

    # -- validation
    def val_sets(self) -> dict[str, Path]:
        """The validation sets that exist, by name (their folder's name; relative paths: to the working
        directory, else to the repository). A folder that is missing is logged and left out."""
        given = [self.val_cases] if isinstance(self.val_cases, (str, Path)) else list(self.val_cases or [])
        sets: dict[str, Path] = {}
        for entry in given:
            path = Path(entry)
            if not path.is_absolute() and not path.exists():
                path = ROOT / entry
            if not path.is_dir():
                log.info("validation set %s left out: no such folder", entry)
                continue
            name = path.resolve().name
            if name in sets:
                name = f"{name}{len(sets)}"
            sets[name] = path
        return sets

    def val_dataloader(self) -> list[DataLoader]:
        sets = self.val_sets()
        if not sets:
            log.info("validation skipped: no cases folder at %s", self.val_cases)
        return [DataLoader(_NamedCases(FlowCases(root), self.val_limit, name), batch_size=1, num_workers=0)
                for name, root in sets.items()]
