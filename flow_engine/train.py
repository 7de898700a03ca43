"""Training PWC-Net with PyTorch Lightning: ``python -m flow_engine train --config configs/flow/X.yaml``.

- :class:`FlowModule` (the science): PWC-Net, the multi-scale loss of the paper, Adam with
  the paper's multistep schedule or a cyclic one, validation EPE on real cases.
- :class:`FlowDataModule` (the data): procedural pairs rendered on the training device
  (:mod:`flow_engine.synthetic`, seeded from the global step so a resumed run continues the
  same sequence) or the published datasets (:mod:`flow_engine.datasets`) with the
  augmentation of :mod:`flow_engine.augment`; validation on the ``cases`` layout.
- :func:`export_weights`: the fp16 state dict of a checkpoint, loadable by ``PWCNet.from_weights``.

Loss (:mod:`flow_engine.losses`; Sun et al. 2018, eq. 3): ``sum_l alpha_l * sum_x |w_l(x) - w_gt_l(x)|_2``, alpha =
0.32, 0.08, 0.02, 0.01, 0.005 for levels 6..2, the ground truth divided by 20 and
area-averaged to each level (over valid pixels only, for sparse ground truth). With
``reduction: sum`` (the paper's) the per-pixel norms are summed over each image and averaged
over the batch; ``mean`` averages them over valid pixels instead. Weight decay is Adam's.
"""
from __future__ import annotations

import argparse
import copy
import functools
import logging
import math
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import ConcatDataset, DataLoader, Dataset, IterableDataset

from flow_engine import augment
from flow_engine.losses import LEVEL_WEIGHTS, end_point_error, full_resolution_flow, matching_loss, multiscale_loss
from flow_engine.pwcnet import PWCNet, WeightsError, load_weights_only, resize_flow

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS_OUT = Path(__file__).resolve().parent / "weights" / "pwcnet_actionflow.pt"

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "out": "runs/flow/synthetic",
    "threads": None,  # torch.set_num_threads; None leaves torch's default
    "data": {
        "train": [{"name": "synthetic"}],  # and/or datasets: {name: chairs|things|sintel|kitti|teacher, root: ..., repeat: 1, ...}
        "synthetic_fraction": 0.5,  # share of each batch rendered procedurally when synthetic is mixed with datasets
        "crop": [384, 448],  # (h, w), multiples of 64
        "batch_size": 8,
        "num_workers": 4,
        "synthetic": {"num_layers": [2, 8], "min_displacement": 0.1, "max_displacement": 160.0},
        "curriculum": None,  # {start: px, end: px, steps: N}: synthetic max displacement grows log-linearly
        "spatial": {},  # augment.random_spatial kwargs for datasets; null disables
        "photometric": {},  # augment.photometric kwargs; null disables
        "val_cases": "../shared/data/flow",  # the cases layout; skipped with a log line when absent
        "val_scale": 1.0,  # frames resized by this before the network, flow scored at full size
        "val_limit": None,  # evaluate only this many cases (spread over the list)
        "num_threads_label": None,  # torch threads while the teacher labels (None: unchanged)
    },
    # Distillation: a teacher engine labels pairs of real videos once (flow_engine.distill); the
    # labels join data.train as {name: teacher, root: labels}. Off while teacher is null.
    "distill": {
        "teacher": None,  # raft_small | raft_large | pwcnet | dis_fine | ...
        "teacher_weights": None,  # the teacher's weights file (RAFT: None = torchvision's download)
        "flow_updates": None,  # RAFT teacher refinements (None: 12)
        "device": "auto",
        "videos": [],  # folders, list files or video files
        "labels": None,  # label folder; default OUT/labels
        "pairs_per_video": 48,
        "gaps": [1, 2],  # frames between the two frames of a pair
        "short_sides": [256, 320, 384],  # decode scales, px (capped at the video's own)
        "batch": 4,  # pairs per teacher call (both directions)
    },
    "model": {"init": None, "corr_backend": "auto", "zero_flow_init": True},
    "loss": {"weights": list(LEVEL_WEIGHTS), "norm": "l2", "reduction": "sum", "q": 0.4, "eps": 0.01,
             "match_weight": 0.0, "match_levels": [2, 3, 4], "match_temperature": 0.1},
    "optim": {
        "lr": 1.0e-4,
        "weight_decay": 4.0e-4,
        "schedule": "multistep",  # multistep | onecycle | cosine_restarts | constant
        "milestones": [400000, 600000, 800000, 1000000],  # values < 1 are fractions of max_steps
        "gamma": 0.5,
        "pct_start": 0.05,  # onecycle warm-up fraction
        "cycle_steps": 100000,  # cosine_restarts first cycle
        "cycle_mult": 1,
        "min_lr": 1.0e-6,
    },
    "trainer": {
        "max_steps": 1200000,
        "max_time": None,  # "DD:HH:MM:SS": stop after this wall time (a checkpoint is saved), e.g. a GPU burst
        "accelerator": "auto",
        "devices": "auto",
        "num_nodes": 1,
        "strategy": "auto",
        "precision": "32-true",
        "accumulate_grad_batches": 1,
        "gradient_clip_val": None,
        "val_every_steps": 5000,
        "ckpt_every_steps": 5000,
        "ckpt_every_minutes": None,
        "log_every_steps": 50,
    },
    "logger": {"kind": "wandb", "project": "actionflow-flow", "name": None, "mode": "auto"},
}


class ConfigError(ValueError):
    """A training config that cannot be used (the message names the key)."""


# ----------------------------------------------------------------------------- config


def _merge(base: dict, update: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if key not in out:
            raise ConfigError(f"unknown config key {where}{key!r}; known: {', '.join(sorted(out))}")
        if isinstance(out[key], dict) and isinstance(value, dict) and key not in ("spatial", "photometric", "synthetic"):
            out[key] = _merge(out[key], value, f"{where}{key}.")
        elif isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def set_key(config: dict, dotted: str, value: Any) -> None:
    """Sets ``config["a"]["b"] = value`` for ``dotted = "a.b"``; numbers index lists ("data.train.0.root")."""
    *parents, last = dotted.split(".")
    node: Any = config
    for p in parents + [last]:
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise ConfigError(f"config key {dotted!r}: {p!r} is not an index of a list of {len(node)}")
        elif not isinstance(node, dict) or p not in node:
            raise ConfigError(f"unknown config key {dotted!r}")
        if p is last:
            break
        node = node[int(p)] if isinstance(node, list) else node[p]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> dict:
    """DEFAULTS updated by the YAML file at ``path`` and then by dotted ``overrides``."""
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config is a mapping of keys, got {type(data).__name__}")
        try:
            config = _merge(config, data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    for key, value in (overrides or {}).items():
        set_key(config, key, value)
    crop = config["data"]["crop"]
    if len(crop) != 2 or any(int(c) % 64 or int(c) <= 0 for c in crop):
        raise ConfigError(f"data.crop must be two positive multiples of 64 (h, w), got {crop}")
    return config


# ----------------------------------------------------------------------------- science


class FlowModule(pl.LightningModule):
    """PWC-Net trained with the multi-scale loss; validation EPE (px) on full-size frame pairs."""

    def __init__(self, model: dict, loss: dict, optim: dict, max_steps: int, val_scale: float = 1.0, out: str | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.model = PWCNet(corr_backend=model.get("corr_backend", "auto"))
        if model.get("init"):
            self.model.load_state_dict(load_init_weights(model["init"]))
            log.info("initialised PWC-Net from %s", model["init"])
        elif model.get("zero_flow_init", True):
            zero_flow_heads(self.model)
        self.loss_cfg = loss
        self._features: dict[int, torch.Tensor] = {}
        if loss.get("match_weight", 0) > 0:
            # The pyramid runs inside PWCNet.forward; hooks keep its features for matching_loss.
            for level in loss["match_levels"]:
                name = "conv6b" if level == 6 else f"conv{level}b"
                getattr(self.model, name).register_forward_hook(functools.partial(self._keep_features, level))
        self.optim_cfg = optim
        self.max_steps = int(max_steps)
        self.val_scale = float(val_scale)
        self.out = Path(out) if out else None

    def _keep_features(self, level: int, module, inputs, output) -> None:
        if self.training:
            self._features[level] = output

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> list[torch.Tensor]:
        return self.model(img1, img2)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        img1, img2, flow, valid = batch
        flows = self.model(img1, img2)
        cfg = self.loss_cfg
        loss, terms = multiscale_loss(flows, flow, valid, tuple(cfg["weights"]), cfg["norm"], cfg["reduction"], cfg["q"], cfg["eps"])
        B = img1.shape[0]
        if cfg.get("match_weight", 0) > 0:
            match = matching_loss(self._features, flow, valid, cfg["match_temperature"])
            self._features = {}
            self.log("train/match", match, batch_size=B)
            loss = loss + cfg["match_weight"] * match
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        for level, term in zip((6, 5, 4, 3, 2), terms):
            self.log(f"train/loss_level{level}", term, batch_size=B)
        with torch.no_grad():
            self.log("train/epe", end_point_error(full_resolution_flow(flows[-1]), flow, valid), prog_bar=True, batch_size=B)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        img1, img2, flow, valid, name = batch
        name = name[0] if isinstance(name, (list, tuple)) else str(name)
        pred = self.predict_pair(img1.float() / 255, img2.float() / 255)
        epe = end_point_error(pred, flow, valid)
        self.log("val/epe", epe, batch_size=1, sync_dist=True)
        self.log(f"val/epe_{name.split('_')[0]}", epe, batch_size=1, sync_dist=True)
        self.log(f"val_case/{name}", epe, batch_size=1, sync_dist=True)
        if batch_idx == 0 and self.global_rank == 0:
            self._log_flow_image(name, img1, pred, flow, valid)

    def predict_pair(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        """Flow [B,2,H,W] px for frames [B,3,H,W] in [0,1], run at ``val_scale`` times their size."""
        H, W = img1.shape[-2:]
        if self.val_scale != 1.0:
            size = (max(8, round(H * self.val_scale)), max(8, round(W * self.val_scale)))
            img1 = F.interpolate(img1, size=size, mode="bilinear", align_corners=False, antialias=True)
            img2 = F.interpolate(img2, size=size, mode="bilinear", align_corners=False, antialias=True)
        return resize_flow(self.model.predict(img1, img2).float(), (H, W))

    def _log_flow_image(self, name: str, img1: torch.Tensor, pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> None:
        from flow_engine.viz import flow_to_color_torch

        max_flow = float(gt[0].norm(dim=0)[valid[0]].max()) if bool(valid.any()) else None
        colours = flow_to_color_torch(torch.cat([pred, gt]).float(), max_flow=max_flow)
        panel = torch.cat([img1[0].to(torch.uint8).cpu(), colours[0].cpu(), colours[1].cpu()], dim=2)  # [3,H,3W]
        if self.out is not None:
            from flow_engine.io import write_image

            folder = self.out / "val_images"
            folder.mkdir(parents=True, exist_ok=True)
            write_image(folder / f"step{self.global_step:07d}_{name}.png", panel.permute(1, 2, 0).numpy())
        for lg in self.loggers:
            if hasattr(lg, "log_image"):
                lg.log_image(key="val/flow", images=[panel.permute(1, 2, 0).numpy()], caption=[f"{name}: frame 1 | predicted | ground truth"], step=self.global_step)

    def configure_optimizers(self):
        cfg = self.optim_cfg
        opt = torch.optim.Adam(self.model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        sched = make_scheduler(opt, cfg, self.max_steps)
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


def zero_flow_heads(model: PWCNet) -> None:
    """Zero the flow-prediction convolutions, so an untrained PWC-Net predicts zero flow.

    With the default He init the untrained net predicts flows of tens of pixels, every level
    warps by them, and the first few hundred steps only learn to switch them off (on a CPU
    run that is most of the budget). Starting at zero, warping is the identity from step 0.
    """
    for name, module in model.named_modules():
        if name.startswith("predict_flow") or name == "dc_conv7":
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)


def make_scheduler(opt: torch.optim.Optimizer, cfg: dict, max_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule of ``cfg["schedule"]``, stepped once per optimizer step."""
    name = cfg["schedule"]
    if name == "constant":
        return None
    if name == "multistep":
        milestones = [int(m * max_steps) if m < 1 else int(m) for m in cfg["milestones"]]
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=cfg["gamma"])
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg["lr"], total_steps=max_steps + 1, pct_start=cfg["pct_start"],
            anneal_strategy="cos", cycle_momentum=False, div_factor=25.0, final_div_factor=cfg["lr"] / 25.0 / cfg["min_lr"],
        )
    if name == "cosine_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=int(cfg["cycle_steps"]), T_mult=int(cfg["cycle_mult"]), eta_min=cfg["min_lr"])
    raise ConfigError(f"optim.schedule must be multistep, onecycle, cosine_restarts or constant, got {name!r}")


def load_init_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """PWC-Net weights to start from: a Lightning checkpoint of this module or any layout PWCNet reads."""
    from flow_engine.pwcnet import load_pwcnet_state_dict

    return load_pwcnet_state_dict(path)


# ----------------------------------------------------------------------------- data


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
    """Validation cases with their names, for per-case logging."""

    def __init__(self, cases, limit: int | None):
        self.cases = cases
        n = len(cases)
        self.indices = list(range(n)) if not limit or limit >= n else sorted({round(i * (n - 1) / max(limit - 1, 1)) for i in range(limit)})

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = self.indices[i]
        return (*self.cases[j], self.cases.names[j])


def _seed(*parts: int) -> int:
    """A 62-bit seed from integers (stable across processes and runs)."""
    h = 0
    for p in parts:
        h = (h * 1_000_003 + int(p) + 0x9E3779B9) % (1 << 62)
    return h


class FlowDataModule(pl.LightningDataModule):
    """Training pairs (procedural on the device, or datasets with augmentation) and validation cases."""

    def __init__(self, data: dict, seed: int = 0, distill: dict | None = None):
        super().__init__()
        self.cfg = data
        self.seed = int(seed)
        self.distill = dict(distill or {})
        entries = list(data["train"])
        if self.distill.get("teacher"):
            if not self.distill.get("labels"):
                raise ConfigError("distill.labels: the label folder is not set")
            if not any(e.get("name") == "teacher" for e in entries):
                entries.append({"name": "teacher", "root": self.distill["labels"]})
        self.entries = entries
        self.synthetic = any(e.get("name") == "synthetic" for e in entries)
        self.datasets = [e for e in entries if e.get("name") != "synthetic"]
        fraction = float(data.get("synthetic_fraction", 0.5))
        if self.synthetic and self.datasets and not 0 < fraction < 1:
            raise ConfigError(f"data.synthetic_fraction must be in (0, 1) when synthetic pairs are mixed with datasets, got {fraction}")
        batch = int(data["batch_size"])
        # Per batch: how many pairs are rendered on the device and how many come from the datasets.
        self.n_synthetic = batch if not self.datasets else (round(batch * fraction) if self.synthetic else 0)
        if self.synthetic and self.datasets and not 0 < self.n_synthetic < batch:
            raise ConfigError(f"data.batch_size {batch} with synthetic_fraction {fraction} leaves no room for both kinds of pairs")
        self._generator = None
        self._micro = (-1, 0)  # (global step, micro-batch within it) for gradient accumulation

    # -- training
    def prepare_data(self) -> None:
        """Labels the distillation videos with the teacher (what is not labelled yet)."""
        d = self.distill
        if not d.get("teacher") or not d.get("videos"):
            return
        from flow_engine.distill import label_videos
        from flow_engine.engine import FlowEngine

        teacher = FlowEngine(model=d["teacher"], weights=d.get("teacher_weights"), device=d.get("device", "auto"),
                             flow_updates=d.get("flow_updates"))
        threads = torch.get_num_threads()
        if self.cfg.get("num_threads_label"):
            torch.set_num_threads(int(self.cfg["num_threads_label"]))
        try:
            summary = label_videos(d["videos"], d["labels"], teacher, pairs_per_video=d["pairs_per_video"],
                                   gaps=d["gaps"], short_sides=d["short_sides"], seed=self.seed, batch=d["batch"])
        finally:
            torch.set_num_threads(threads)
        log.info("teacher labels in %s: %d pairs of %d videos (%d new, %d already there), %d videos skipped",
                 d["labels"], summary["pairs"], summary["videos"], summary["labelled"], summary["existing"], len(summary["skipped"]))

    def train_dataloader(self) -> DataLoader:
        if not self.datasets:
            return DataLoader(_Ticks(), batch_size=None)
        from flow_engine.datasets import make_dataset

        parts = []
        for entry in self.datasets:
            entry = dict(entry)
            name, root, repeat = entry.pop("name"), entry.pop("root", None), int(entry.pop("repeat", 1))
            if root is None:
                raise ConfigError(f"data.train entry {name!r} needs a root folder")
            ds = make_dataset(name, root, **entry)
            log.info("training data: %s at %s, %d pairs x %d", name, root, len(ds), repeat)
            parts += [_Cropped(ds, tuple(self.cfg["crop"]), self.cfg["spatial"], ds.sparse)] * repeat
        return DataLoader(
            ConcatDataset(parts), batch_size=int(self.cfg["batch_size"]) - self.n_synthetic, shuffle=True, drop_last=True,
            num_workers=self.cfg["num_workers"], persistent_workers=self.cfg["num_workers"] > 0, pin_memory=torch.cuda.is_available(),
        )

    def max_displacement(self, step: int) -> float:
        """Largest synthetic translation (px) at ``step``: the curriculum, else the generator's setting."""
        cur = self.cfg.get("curriculum")
        if not cur:
            return float(self.cfg["synthetic"].get("max_displacement", 160.0))
        t = min(1.0, step / max(1, int(cur["steps"])))
        return float(math.exp(math.log(cur["start"]) + t * (math.log(cur["end"]) - math.log(cur["start"]))))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return batch
        step, rank = trainer.global_step, trainer.global_rank
        micro = self._micro[1] + 1 if self._micro[0] == step else 0
        self._micro = (step, micro)
        seed = _seed(self.seed, step, rank, micro)
        if self.synthetic:
            device = batch.device if torch.is_tensor(batch) else batch[0].device
            if self._generator is None or self._generator.device != device:
                from flow_engine.synthetic import SyntheticFlow

                kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in self.cfg["synthetic"].items()}
                h, w = self.cfg["crop"]
                self._generator = SyntheticFlow(h, w, device, self.seed, **kwargs)
            self._generator.max_displacement = self.max_displacement(step)
            rendered = self._generator.sample(self.n_synthetic, seed=seed)
            batch = rendered if not self.datasets else tuple(torch.cat((a, b.to(a.dtype))) for a, b in zip(batch, rendered))
        img1, img2, flow, valid = batch
        if self.cfg.get("photometric") is not None:
            g = torch.Generator(img1.device)
            g.manual_seed(seed ^ 0x5EED)
            img1, img2 = augment.photometric(img1, img2, generator=g, **self.cfg["photometric"])
        return img1, img2, flow, valid

    # -- validation
    def val_cases_root(self) -> Path | None:
        root = self.cfg.get("val_cases")
        if not root:
            return None
        path = Path(root)
        if not path.is_absolute() and not path.exists():
            path = ROOT / root
        return path if path.is_dir() else None

    def val_dataloader(self) -> DataLoader | list:
        from flow_engine.datasets import FlowCases

        root = self.val_cases_root()
        if root is None:
            log.info("validation skipped: no cases folder at %s", self.cfg.get("val_cases"))
            return []
        return DataLoader(_NamedCases(FlowCases(root), self.cfg.get("val_limit")), batch_size=1, num_workers=0)


# ----------------------------------------------------------------------------- callbacks / export


class StepLog(pl.Callback):
    """Logs loss, EPE and seconds per step to the ``logging`` module every N steps (for nohup logs)."""

    def __init__(self, every: int):
        self.every = max(1, int(every))
        self._t = None
        self._step0 = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._t, self._step0 = time.time(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every or step == self._step0:
            return
        now = time.time()
        rate = (now - self._t) / (step - self._step0)
        self._t, self._step0 = now, step
        m = trainer.callback_metrics
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        dm = trainer.datamodule
        extra = f" max_disp {dm.max_displacement(step):.1f}px" if getattr(dm, "synthetic", False) else ""
        log.info("step %d loss %.3f epe %.3f lr %.2e %.2f s/step%s", step, float(m.get("train/loss", float("nan"))),
                 float(m.get("train/epe", float("nan"))), lr, rate, extra)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        if "val/epe" in m:
            groups = " ".join(f"{k[4:]} {float(v):.3f}" for k, v in sorted(m.items()) if k.startswith("val/epe_"))
            log.info("validation at step %d: EPE %.3f px (%s)", trainer.global_step, float(m["val/epe"]), groups)


def export_weights(checkpoint: str | Path, out: str | Path = DEFAULT_WEIGHTS_OUT) -> Path:
    """Writes the PWC-Net weights of a Lightning checkpoint as a plain fp16 state dict at ``out``.

    Raises :class:`WeightsError` naming ``checkpoint`` when it is missing, refused by
    ``weights_only=True`` or holds no PWC-Net.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    # This module's checkpoints hold only tensors and plain types (its hyper-parameters are the
    # YAML config's dicts), so weights_only=True reads them, and a crafted file cannot run code.
    ckpt = load_weights_only(checkpoint, what="checkpoint")
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise WeightsError(f"{checkpoint}: not a checkpoint (a {type(ckpt).__name__}, not a dict)")
    weights = {k[len("model."):]: v.detach().half().contiguous() for k, v in state.items()
               if isinstance(k, str) and k.startswith("model.") and torch.is_tensor(v)}
    if not weights:
        raise WeightsError(f"{checkpoint}: no 'model.*' PWC-Net parameters in this checkpoint")
    try:
        PWCNet().load_state_dict({k: v.float() for k, v in weights.items()})  # fails loudly on a wrong layout
    except RuntimeError as e:
        raise WeightsError(f"{checkpoint}: its 'model.*' parameters are not a PWC-Net ({str(e).splitlines()[0][:200]})") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save(weights, tmp)
    os.replace(tmp, out)
    log.info("exported %s (step %s) -> %s (%.1f MB fp16)", checkpoint, ckpt.get("global_step"), out, out.stat().st_size / 1e6)
    return out


def best_checkpoint(out_dir: str | Path) -> Path:
    """The best-by-validation checkpoint of a run (``best-*.ckpt``), else its ``last.ckpt``."""
    folder = Path(out_dir) / "checkpoints"
    best = sorted(folder.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1]
    last = folder / "last.ckpt"
    if last.is_file():
        log.warning("%s: no best-by-validation checkpoint; using last.ckpt", folder)
        return last
    raise FileNotFoundError(f"{folder}: no checkpoints")


# ----------------------------------------------------------------------------- building / CLI


def make_logger(cfg: dict, out: Path):
    kind = cfg.get("kind", "wandb")
    if kind in (None, "none", False):
        return False
    if kind == "csv":
        return pl.loggers.CSVLogger(str(out), name="csv")
    if kind != "wandb":
        raise ConfigError(f"logger.kind must be wandb, csv or none, got {kind!r}")
    try:
        import wandb  # noqa: F401
    except ImportError:
        log.warning("wandb is not installed; logging to CSV in %s", out)
        return pl.loggers.CSVLogger(str(out), name="csv")
    mode = cfg.get("mode", "auto")
    if mode in (None, "auto"):
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return pl.loggers.WandbLogger(project=cfg.get("project"), name=cfg.get("name"), save_dir=str(out), mode=mode, log_model=False)


def build(config: dict) -> tuple[FlowModule, FlowDataModule, pl.Trainer]:
    """Module, data module and trainer for a config (see DEFAULTS)."""
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    pl.seed_everything(int(config["seed"]), workers=True)
    t = config["trainer"]
    module = FlowModule(config["model"], config["loss"], config["optim"], t["max_steps"], config["data"]["val_scale"], str(out))
    distill = dict(config["distill"])
    if distill.get("teacher") and not distill.get("labels"):
        distill["labels"] = str(out / "labels")
    data = FlowDataModule(config["data"], config["seed"], distill)
    callbacks: list[pl.Callback] = [StepLog(t["log_every_steps"])]
    ckpt_dir = out / "checkpoints"
    every_minutes = t.get("ckpt_every_minutes")
    callbacks.append(pl.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir, filename="step{step:07d}", auto_insert_metric_name=False, save_last=True, save_top_k=1,
        every_n_train_steps=None if every_minutes else t["ckpt_every_steps"],
        train_time_interval=timedelta(minutes=every_minutes) if every_minutes else None,
    ))
    has_val = data.val_cases_root() is not None
    if not has_val:
        log.info("no validation cases at %s: validation and best-checkpoint selection are off", config["data"]["val_cases"])
    else:
        callbacks.append(pl.callbacks.ModelCheckpoint(
            dirpath=ckpt_dir, filename="best-step{step:07d}-epe{val/epe:.3f}", auto_insert_metric_name=False,
            monitor="val/epe", mode="min", save_top_k=1,
        ))
    logger = make_logger(config["logger"], out)
    if logger:
        callbacks.append(pl.callbacks.LearningRateMonitor(logging_interval="step"))
        logger.log_hyperparams(config)
    trainer = pl.Trainer(
        accelerator=t["accelerator"], devices=t["devices"], num_nodes=t["num_nodes"], strategy=t["strategy"],
        precision=t["precision"], max_steps=t["max_steps"], max_time=t.get("max_time"), accumulate_grad_batches=t["accumulate_grad_batches"],
        gradient_clip_val=t["gradient_clip_val"], val_check_interval=t["val_every_steps"] * t["accumulate_grad_batches"] if has_val else None,
        check_val_every_n_epoch=None, limit_val_batches=None if has_val else 0, num_sanity_val_steps=0,
        log_every_n_steps=t["log_every_steps"], logger=logger, callbacks=callbacks, default_root_dir=str(out),
        enable_progress_bar=False, enable_model_summary=False,
    )
    return module, data, trainer


def resolve_resume(resume: str | None, out: Path) -> str | None:
    """``auto`` -> the run's ``last.ckpt`` when there is one; a path must exist and load with ``weights_only=True``."""
    if not resume:
        return None
    if resume == "auto":
        last = out / "checkpoints" / "last.ckpt"
        if not last.is_file():
            log.info("no %s yet: starting fresh", last)
            return None
        log.info("resuming from %s", last)
        resume = str(last)
    # Lightning reads the checkpoint itself (fit passes weights_only=True too, but its default
    # has changed between versions); reading it here first refuses a crafted pickle, or names a
    # missing or broken file, before any model, data or trainer is built.
    load_weights_only(resume, what="checkpoint to resume from")
    return resume


def fit(config: dict, resume: str | None = None) -> tuple[FlowModule, pl.Trainer]:
    """Trains according to ``config``; ``resume`` = checkpoint path or "auto"."""
    ckpt_path = resolve_resume(resume, Path(config["out"]))
    module, data, trainer = build(config)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    return module, trainer


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(ROOT / "configs" / "flow" / "synthetic.yaml"), help="YAML config (default: configs/flow/synthetic.yaml)")
    parser.add_argument("--resume", help="checkpoint to resume from, or 'auto' for OUT/checkpoints/last.ckpt")
    parser.add_argument("--max-steps", type=int, help="trainer.max_steps")
    parser.add_argument("--devices", help="trainer.devices (e.g. 1, 4, auto)")
    parser.add_argument("--num-nodes", type=int, help="trainer.num_nodes")
    parser.add_argument("--strategy", help="trainer.strategy (auto, ddp, ...)")
    parser.add_argument("--precision", help="trainer.precision (32-true, bf16-mixed, 16-mixed)")
    parser.add_argument("--out", help="output folder (checkpoints, logs, validation images)")
    parser.add_argument("--batch-size", type=int, help="data.batch_size")
    parser.add_argument("--lr", type=float, help="optim.lr")
    parser.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="data.crop")
    parser.add_argument("--init", help="model.init: PWC-Net weights to start from")
    parser.add_argument("--logger", choices=["wandb", "csv", "none"], help="logger.kind")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--teacher", help="distill.teacher: label --videos with this engine (raft_small, raft_large, pwcnet, dis_fine ...)")
    parser.add_argument("--teacher-weights", help="distill.teacher_weights: the teacher's weights file")
    parser.add_argument("--videos", action="append", metavar="DIR|LIST|VIDEO", help="distill.videos (repeatable): videos to label")
    parser.add_argument("--labels", help="distill.labels: the label folder (default OUT/labels)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key, dotted (e.g. optim.schedule=onecycle); repeatable")
    parser.add_argument("--export", nargs="?", const=str(DEFAULT_WEIGHTS_OUT), metavar="PATH",
                        help=f"after training, write the best checkpoint's fp16 weights to PATH (default {DEFAULT_WEIGHTS_OUT.relative_to(ROOT)})")
    parser.add_argument("--export-only", metavar="CKPT", help="do not train: export CKPT ('best' = this run's best) to --export's PATH")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides: dict[str, Any] = {}
    for flag, key in (("max_steps", "trainer.max_steps"), ("devices", "trainer.devices"), ("num_nodes", "trainer.num_nodes"),
                      ("strategy", "trainer.strategy"), ("precision", "trainer.precision"), ("out", "out"),
                      ("batch_size", "data.batch_size"), ("lr", "optim.lr"), ("crop", "data.crop"), ("init", "model.init"),
                      ("logger", "logger.kind"), ("threads", "threads"), ("teacher", "distill.teacher"),
                      ("teacher_weights", "distill.teacher_weights"), ("videos", "distill.videos"), ("labels", "distill.labels")):
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = _parse_value(value) if flag == "devices" else value
    for item in args.set:
        if "=" not in item:
            raise SystemExit(f"--set needs KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = _parse_value(value)
    try:
        config = load_config(args.config, overrides)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    out = Path(config["out"])
    try:
        if args.export_only:
            ckpt = best_checkpoint(out) if args.export_only == "best" else Path(args.export_only)
            print(export_weights(ckpt, args.export or DEFAULT_WEIGHTS_OUT))
            return 0
        _, trainer = fit(config, args.resume)
        best = None
        for cb in trainer.checkpoint_callbacks:
            if cb.monitor == "val/epe" and cb.best_model_path:
                best = cb.best_model_path
                print(f"best checkpoint: {best} (val EPE {float(cb.best_model_score):.3f} px)")
        if args.export:
            print(export_weights(best or Path(out) / "checkpoints" / "last.ckpt", args.export))
    except WeightsError as e:  # --export-only, --resume, --init: a missing, refused or broken file
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
