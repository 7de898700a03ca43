"""The LightningModule of the two-stream classifier: losses, metrics, optimiser, online flow.

Batches come from :mod:`actionflow.clips` (via :mod:`actionflow.data`). With ``flow_source: online`` a batch carries the raw
snippet frames and the flow engine computes flow here, on the module's device, batched over all
snippets of the batch (under ``no_grad`` unless ``finetune_flow``, which trains the flow network
end to end with the classifier; its weights are then part of this module's checkpoint).

Loss: the sum of the streams' cross-entropies, each stream learning from its own predictions as
in the two-stream paper (with ``fusion: learned`` the fused output's cross-entropy, on detached
stream scores, trains the fusion weights alone). A loss on the fused output would tie the streams:
a stream that memorises the training clips (RGB on labels that only motion decides) makes the
fused loss small and starves the other stream of its share of the gradient. With ``fusion:
validation`` the fusion weights are set after every validation pass from the streams' held-out
scores (:func:`actionflow.model.validation_weights`).
Metrics (top-1, top-5, mean class accuracy) per stream and fused, over the whole validation /
test set gathered from every process; at test time a confusion matrix (PNG + JSON), a
per-class report and ``metrics.json`` are written into ``<run dir>/test/``.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import WandbLogger

from actionflow import metrics
from actionflow.clips import crop_box
from actionflow.model import (
    FLOW_NORMS, ModelConfigError, TwoStreamNet, flow_channels, fuse, normalize_flow, normalize_rgb, validation_weights,
)
from flow_engine.engine import FlowEngine, engine_identity
from flow_engine.io.viz import flow_to_color_torch

logger = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("cosine", "step", "none")


class ActionRecognizer(pl.LightningModule):
    """Two-stream action recogniser (see :class:`actionflow.model.TwoStreamNet` for the network).

    The defaults are those of the default run, ``python train.py`` (the demo, sized for a CPU: a
    small CNN from scratch); ``python train.py --print_config`` shows them with every other key.

    Args:
        num_classes: number of classes (linked from the data by train.py).
        class_names: class names in index order (linked from the data).
        mode: rgb | flow | two_stream (the data module follows it).
        backbone: small_cnn (four conv layers) or a torchvision classification model name (resnet18, resnet50,
            mobilenet_v3_large...).
        pretrained: start from ImageNet weights (torchvision download, or pretrained_path); from
            scratch, with one warning, when they cannot be had.
        pretrained_path: a saved torchvision state dict of the backbone (offline pretrained weights).
        flow_length: flows L per snippet, 2L input channels (linked from data.flow_length).
        fusion: weighted (fixed fusion_weights) | learned (initialised at fusion_weights, trained on
            the training clips) | validation (set after every validation pass to the weights that
            score the validation videos best; fusion_weights until the first one).
        fusion_weights: late-fusion weights of the softmax scores, [RGB, flow].
        dropout: dropout before each stream's classifier (from scratch on 360 training clips 0.5 slows learning).
        flow_init: weights the temporal stream starts from, its classifier head excepted: ``motion`` (the
            project's motion-pretrained stream, ``actionflow/weights/``) or a file written by ``python -m
            actionflow flow-init``; None: from scratch (or ImageNet's cross-modality initialisation with pretrained).
        label_smoothing: label smoothing of each stream's cross-entropy (0: none).
        optimizer: sgd | adamw.
        lr: learning rate.
        momentum: SGD momentum.
        weight_decay: weight decay.
        scheduler: cosine (per step, to 0 at the end of training) | step | none.
        step_size: epochs between learning-rate drops (scheduler: step).
        gamma: learning-rate factor per drop (scheduler: step).
        flow_engine: the flow engine for online flow (linked from data.flow_engine).
        flow_weights: weights of a learned flow engine, None for the default ones (linked from data.flow_weights).
        flow_updates: RAFT's refinements per pair, None for 12 (linked from data.flow_updates).
        finetune_flow: train PWC-Net end to end with the classifier (data.flow_source: online).
        flow_lr_scale: learning-rate factor of the flow network when fine-tuned.
        flow_scale: flow input normalisation in px (flow / flow_scale; 20 = the flow cache's bound).
        flow_bound: online flow is clipped at ±this many px, as the cache clips it (linked from data.flow_bound).
        crop_size: the network input [h, w] that online flow is cropped to (linked from data.crop_size).
        subtract_camera: subtract each flow field's median displacement (camera motion) from the flow input.
        flow_norm: fixed (flow / flow_scale) | snippet (each snippet at unit size, its size one more input
            channel: :func:`actionflow.model.normalize_flow`).
        cnn_widths: ``small_cnn``'s conv layer widths, e.g. [32, 64] for two layers (None: 32, 64, 128, 256).
        log_clips: validation clips (frame + colour-coded flow) logged to W&B per epoch.
    """

    def __init__(
        self,
        num_classes: int = 2,
        class_names: list[str] | None = None,
        mode: Literal["rgb", "flow", "two_stream"] = "two_stream",
        backbone: str = "small_cnn",
        pretrained: bool = False,
        pretrained_path: str | None = None,
        flow_length: int = 5,
        fusion: Literal["weighted", "learned", "validation"] = "weighted",
        fusion_weights: tuple[float, float] = (1.0, 1.5),
        dropout: float = 0.1,
        flow_init: str | None = None,
        label_smoothing: float = 0.0,
        optimizer: Literal["sgd", "adamw"] = "adamw",
        lr: float = 0.002,
        momentum: float = 0.9,
        weight_decay: float = 0.01,
        scheduler: Literal["cosine", "step", "none"] = "cosine",
        step_size: int = 10,
        gamma: float = 0.1,
        flow_engine: str = "dis",
        flow_weights: str | None = None,
        flow_updates: int | None = None,
        finetune_flow: bool = False,
        flow_lr_scale: float = 0.1,
        flow_scale: float = 20.0,
        flow_bound: float = 20.0,
        crop_size: tuple[int, int] | None = (112, 112),
        subtract_camera: bool = True,
        flow_norm: Literal["fixed", "snippet"] = "fixed",
        cnn_widths: list[int] | None = None,
        log_clips: int = 4,
    ):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ModelConfigError(f"model.optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if scheduler not in SCHEDULERS:
            raise ModelConfigError(f"model.scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
        if flow_norm not in FLOW_NORMS:
            raise ModelConfigError(f"model.flow_norm must be one of {FLOW_NORMS}, got {flow_norm!r}")
        for name, value, ok, want in (
            ("lr", lr, lambda v: v > 0, "a positive number"),
            ("weight_decay", weight_decay, lambda v: v >= 0, "zero or more"),
            ("momentum", momentum, lambda v: 0 <= v < 1, "in [0, 1)"),
            ("dropout", dropout, lambda v: 0 <= v < 1, "in [0, 1)"),
            ("label_smoothing", label_smoothing, lambda v: 0 <= v < 1, "in [0, 1)"),
            ("gamma", gamma, lambda v: v > 0, "a positive number"),
            ("step_size", step_size, lambda v: v >= 1, "at least 1"),
            ("flow_lr_scale", flow_lr_scale, lambda v: v >= 0, "zero or more"),
            ("flow_scale", flow_scale, lambda v: v > 0, "a positive number"),
        ):  # what the optimizer or torch would otherwise refuse with a traceback, after the flow cache was filled
            if not (isinstance(value, (int, float)) and math.isfinite(value) and ok(value)):
                raise ModelConfigError(f"model.{name} must be {want}, got {value!r}")
        if finetune_flow and flow_engine != "pwcnet":
            raise ModelConfigError(f"model.finetune_flow needs the pwcnet flow engine (data.flow_engine), not {flow_engine!r}")
        class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        if len(class_names) != num_classes:
            raise ModelConfigError(f"{len(class_names)} class names for {num_classes} classes")
        self.save_hyperparameters()
        # plain types only, so that checkpoints load with torch.load(weights_only=True)
        self.hparams["class_names"] = [str(c) for c in class_names]
        self.hparams["fusion_weights"] = [float(w) for w in fusion_weights]
        if crop_size is not None:
            crop = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
            self.hparams["crop_size"] = [int(crop[0]), int(crop[1])]
        self.net = TwoStreamNet(num_classes, mode, backbone, flow_length, pretrained, pretrained_path,
                                fusion, tuple(fusion_weights), dropout, flow_init, flow_channels(flow_length, flow_norm),
                                cnn_widths)
        self._engine = None
        if finetune_flow and mode != "rgb":
            self._engine = self._make_engine("cpu")
            self.flow_net = self._engine.model.train()  # registered: trained, moved and checkpointed with the rest
        self._outputs: dict[str, list] = {}  # phase -> [(scores per stream, labels, dataset indices)] of this epoch
        self._dropped: dict[str, int] = {}  # phase -> videos that failed to decode this epoch

    # ------------------------------------------------------------------ inputs

    @property
    def streams(self) -> list[str]:
        return self.net.streams

    def _make_engine(self, device):
        h = self.hparams
        return FlowEngine(name=h.flow_engine, weights=h.flow_weights, device=str(device), flow_updates=h.flow_updates)

    @property
    def flow_engine(self):
        """The flow engine for online flow, on this module's device (built on first use)."""
        if self._engine is None:
            self._engine = self._make_engine(self.device)
            logger.info("flow engine: %s on %s", self._engine.name, self.device)
        return self._engine

    def compute_flow(self, frames: torch.Tensor) -> torch.Tensor:
        """Snippet frames uint8 ``[B, S, L+1, 3, H, W]`` -> flow ``[B, S, 2L, H, W]`` px (x1, y1, ..., xL, yL),
        at the frames' size and clipped at ±flow_bound, as the flow cache holds it."""
        B, S, T, C, H, W = frames.shape
        if self.hparams.finetune_flow:
            # the flow network is this module's submodule (on its device): keep the graph when training
            first = frames[:, :, :-1].reshape(-1, C, H, W)
            second = frames[:, :, 1:].reshape(-1, C, H, W)
            with torch.set_grad_enabled(self.training and torch.is_grad_enabled()):
                flow = self.flow_engine.flow_with_grad(first, second).float()
        else:
            with torch.no_grad():  # each frame's features once per snippet
                flow = self.flow_engine.snippets_flow(frames.flatten(0, 1))
        bound = self.hparams.flow_bound
        return flow.reshape(B, S, T - 1, 2, H, W).flatten(2, 3).clamp(-bound, bound)

    def inputs(self, batch: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(uint8 RGB ``[B,S,3,h,w]``, flow px ``[B,S,2L,h,w]``) of a batch, each None when unused.

        An online batch carries uncropped frames (a tensor, or a list when the videos' sizes
        differ) and each item's crop ``box`` and ``flip``: flow is computed at decode size and then
        cropped like the RGB frames (:func:`actionflow.clips.crop_box`), as the cache's flow is.
        """
        rgb, flow = batch.get("rgb"), batch.get("flow")
        if "frames" not in batch:
            return rgb, flow
        frames, boxes, flips = batch["frames"], batch["box"].tolist(), batch["flip"].tolist()
        groups = [frames] if torch.is_tensor(frames) else [f[None] for f in frames]
        want_rgb, want_flow = self.hparams.mode != "flow", self.hparams.mode != "rgb"
        rgbs, flows, i = [], [], 0
        for group in groups:
            crop = tuple(self.hparams.crop_size or group.shape[-2:])
            group_flow = self.compute_flow(group) if want_flow else None
            for j in range(len(group)):
                box, flip = boxes[i], bool(flips[i])
                if want_rgb:
                    rgbs.append(crop_box(group[j, :, 0], box, flip, crop))
                if want_flow:
                    flows.append(crop_box(group_flow[j], box, flip, crop, flow=True))
                i += 1
        return (torch.stack(rgbs) if want_rgb else None), (torch.stack(flows) if want_flow else None)

    def forward(self, rgb: torch.Tensor | None, flow: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """uint8 RGB and flow in px -> ``{stream: [B, C]}`` logits (``two_stream``: fused log-probabilities)."""
        return self.net(
            normalize_rgb(rgb) if rgb is not None else None,
            normalize_flow(flow, self.hparams.flow_scale, self.hparams.subtract_camera, self.hparams.flow_norm == "snippet")
            if flow is not None else None,
        )

    @torch.no_grad()
    def predict_proba(self, batch: dict) -> dict[str, torch.Tensor]:
        """Class probabilities ``{stream: [B, C]}`` for a batch (eval mode)."""
        return {k: v.float().softmax(dim=-1) for k, v in self(*self.inputs(batch)).items()}

    # ------------------------------------------------------------------ steps

    def training_step(self, batch: dict, batch_idx: int):
        self._count_dropped(batch, "train")
        if "label" not in batch:
            return None  # every video of the batch failed to decode
        out = self(*self.inputs(batch))
        y = batch["label"]
        smooth = self.hparams.label_smoothing
        losses = {k: F.cross_entropy(out[k].float(), y, label_smoothing=smooth) for k in ("rgb", "flow") if k in out}
        loss = sum(losses.values())
        if "two_stream" in out:
            losses["two_stream"] = F.cross_entropy(out["two_stream"].float(), y).detach()
            if self.hparams.fusion == "learned":  # trains the fusion weights only: the streams learn alone
                fused = fuse(out["rgb"].detach(), out["flow"].detach(), self.net.fusion_logits.exp())
                loss = loss + F.cross_entropy(fused.float(), y)
        bs = len(y)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs, on_step=True, on_epoch=True, sync_dist=True)
        for k, v in out.items():
            self.log(f"train/{k}/loss", losses[k], batch_size=bs, on_step=False, on_epoch=True, sync_dist=True)
            acc = (v.argmax(dim=1) == y).float().mean()
            self.log(f"train/{k}/top1", acc, batch_size=bs, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def _eval_step(self, batch: dict, phase: str) -> None:
        self._count_dropped(batch, phase)
        if "label" not in batch:
            return
        rgb, flow = self.inputs(batch)
        out = self(rgb, flow)
        store = self._outputs.setdefault(phase, [])
        store.append(({k: v.float().softmax(dim=-1) for k, v in out.items()}, batch["label"], batch["index"]))
        if phase == "val" and len(store) == 1:
            self._log_clips(rgb, flow, out, batch["label"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _count_dropped(self, batch: dict, phase: str) -> None:
        n = int(batch.get("num_dropped", 0))
        if n:
            self._dropped[phase] = self._dropped.get(phase, 0) + n

    # ------------------------------------------------------------------ epoch ends

    def _gather(self, phase: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Scores and labels of ``phase`` from every process, each video once.

        Processes may hold different counts (videos dropped by collate), so tensors are padded
        for all_gather; DistributedSampler's padding duplicates are removed by dataset index.
        """
        store = self._outputs.pop(phase, [])
        empty = torch.zeros(0, dtype=torch.long, device=self.device)
        scores = {k: torch.cat([s[k] for s, _, _ in store]) if store
                  else torch.zeros(0, self.hparams.num_classes, device=self.device) for k in self.streams}
        labels = torch.cat([y for _, y, _ in store]) if store else empty
        index = torch.cat([i for _, _, i in store]) if store else empty
        if self.trainer.world_size == 1:
            return scores, labels
        sizes = self.all_gather(torch.tensor([len(labels)], device=self.device)).view(-1).tolist()
        most = max(sizes)

        def gather(t: torch.Tensor) -> torch.Tensor:
            padded = torch.cat([t, t.new_zeros(most - len(t), *t.shape[1:])])
            g = self.all_gather(padded)  # [world, most, ...]
            return torch.cat([g[r, :n] for r, n in enumerate(sizes)])

        index = gather(index).cpu().numpy()
        _, first = np.unique(index, return_index=True)
        keep = torch.as_tensor(first, device=self.device)
        return {k: gather(v)[keep] for k, v in scores.items()}, gather(labels)[keep]

    def _epoch_metrics(self, phase: str):
        """(``{stream: summary}``, scores, labels) over the epoch, or None when nothing was scored."""
        scores, labels = self._gather(phase)
        dropped = self._dropped.pop(phase, 0)
        if dropped:
            logger.warning("%s: %d video(s) failed to decode and were left out (this process)", phase, dropped)
        if len(labels) == 0:
            return None
        return {k: metrics.summary(scores[k], labels) for k in self.streams}, scores, labels

    def on_validation_epoch_end(self) -> None:
        result = self._epoch_metrics("val")
        if result is None or self.trainer.sanity_checking:
            return
        summary, scores, labels = result
        if self.hparams.fusion == "validation" and self.hparams.mode == "two_stream":
            w_rgb, w_flow = validation_weights(scores["rgb"], scores["flow"], labels)
            with torch.no_grad():  # a buffer: saved with the checkpoint, used by test and classify
                self.net.fusion_logits.copy_(torch.tensor([w_rgb, w_flow]).clamp_min(1e-6).log())
            fused = (w_rgb * scores["rgb"] + w_flow * scores["flow"])
            summary["two_stream"] = metrics.summary(fused, labels)
            self.log("val/fusion_rgb_weight", w_rgb, sync_dist=True)
        for stream, values in summary.items():
            for name, value in values.items():
                self.log(f"val/{stream}/{name}", value, sync_dist=True)
        self.log("val/top1", summary[self.streams[-1]]["top1"], prog_bar=True, sync_dist=True)

    def on_test_epoch_end(self) -> None:
        result = self._epoch_metrics("test")
        if result is None:
            logger.warning("no test videos could be scored")
            return
        summary, scores, labels = result
        for stream, values in summary.items():
            for name, value in values.items():
                self.log(f"test/{stream}/{name}", value, sync_dist=True)  # equal on every process
        if self.trainer.is_global_zero:
            out_dir = Path(self.trainer.default_root_dir) / "test"
            for stream in self.streams:
                metrics.write_report(out_dir, stream, scores[stream], labels, self.hparams.class_names)
            self.test_metrics_path = out_dir / "metrics.json"
            self.test_metrics_path.write_text(json.dumps(summary, indent=2))
            self._log_images("test/confusion", [str(out_dir / f"{s}_confusion.png") for s in self.streams], self.streams)

    # ------------------------------------------------------------------ W&B images

    def _log_images(self, key: str, images: list, captions: list[str]) -> None:
        for lg in self.loggers:
            if isinstance(lg, WandbLogger):
                try:
                    lg.log_image(key=key, images=images, caption=captions)
                except Exception as exc:  # W&B must never end a run
                    logger.warning("could not log %s to W&B: %s", key, exc)

    def _log_clips(self, rgb, flow, out, labels) -> None:
        """The first ``log_clips`` validation videos: first snippet's frame | its first flow, colour-coded."""
        n = min(self.hparams.log_clips, len(labels))
        if n == 0 or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        if not any(isinstance(lg, WandbLogger) for lg in self.loggers):
            return
        panels = []
        if rgb is not None:
            panels.append(rgb[:n, 0])
        if flow is not None:
            panels.append(flow_to_color_torch(flow[:n, 0, :2].float()).to(self.device))
        images = torch.cat(panels, dim=-1).permute(0, 2, 3, 1).cpu().numpy()
        pred = out[self.streams[-1]][:n].argmax(dim=1).tolist()
        names = self.hparams.class_names
        captions = [f"true {names[t]} / pred {names[p]}" for t, p in zip(labels[:n].tolist(), pred)]
        self._log_images("val/clips", list(images), captions)

    # ------------------------------------------------------------------ checkpoints

    def flow_identity(self) -> dict:
        """The flow engine's identity (``flow_engine.engine.engine_identity``), without building it."""
        h = self.hparams
        return engine_identity(h.flow_engine, h.flow_weights, h.flow_updates)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record the flow engine's identity (name, weights hash) so that classify can check it."""
        if self.hparams.mode != "rgb":
            checkpoint["flow_engine"] = self.flow_identity()

    # ------------------------------------------------------------------ optimisation

    def param_groups(self) -> list[dict]:
        """The optimizer's parameter groups: weights and norms/biases of the classifier, then of the flow network."""
        h = self.hparams
        flow_params = list(self.flow_net.parameters()) if hasattr(self, "flow_net") else []
        flow_ids = {id(p) for p in flow_params}
        rest = [p for p in self.parameters() if id(p) not in flow_ids]
        # Weight decay on weights (dim >= 2) only: decaying BatchNorm scales and biases only pulls them
        # off their working values (as nanoGPT and most vision recipes do).
        groups = [{"params": [p for p in rest if p.dim() >= 2]},
                  {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
        if flow_params:
            groups += [{"params": [p for p in flow_params if p.dim() >= 2], "lr": h.lr * h.flow_lr_scale},
                       {"params": [p for p in flow_params if p.dim() < 2], "lr": h.lr * h.flow_lr_scale, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def configure_optimizers(self):
        h = self.hparams
        groups = self.param_groups()
        if h.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=h.lr, momentum=h.momentum, weight_decay=h.weight_decay)
        else:
            opt = torch.optim.AdamW(groups, lr=h.lr, weight_decay=h.weight_decay)
        if h.scheduler == "none":
            return opt
        if h.scheduler == "cosine":
            steps = max(1, int(self.trainer.estimated_stepping_batches))
            sched = {"scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps), "interval": "step"}
        else:
            sched = {"scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=h.step_size, gamma=h.gamma),
                     "interval": "epoch"}
        return {"optimizer": opt, "lr_scheduler": sched}
