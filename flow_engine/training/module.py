"""The science of PWC-Net training: :class:`FlowModule`, a LightningModule.

PWC-Net (started from weights, or from scratch with zero-initialised flow heads), the
multi-scale loss of :mod:`flow_engine.training.losses` (plus the optional matching loss), Adam with
the paper's multistep schedule or a one-cycle / cosine-restarts one, and validation EPE (px)
on full-size frame pairs. Weight decay is Adam's L2 term, applied to weights with
``dim() >= 2`` only: biases are not decayed (as in nanoGPT; PWC-Net has no normalisation
layers). Every ``__init__`` argument is a ``--model.*`` key of ``python -m flow_engine train``.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch

from flow_engine.errors import FlowEngineError
from flow_engine.io.flow_files import write_image
from flow_engine.io.viz import flow_to_color_torch
from flow_engine.models.pwcnet import FlowInputError, PWCNet, check_scales, load_pwcnet_state_dict
from flow_engine.training.losses import LEVEL_WEIGHTS, end_point_error, full_resolution_flow, matching_loss, multiscale_loss

log = logging.getLogger(__name__)

Schedule = Literal["multistep", "onecycle", "cosine_restarts", "constant"]


class ConfigError(FlowEngineError):
    """A training setting that cannot be used (the message names the key)."""


class DivergedError(FlowEngineError, RuntimeError):
    """Training produced a non-finite loss or gradient: the run stops before the weights are spoiled."""


class FlowModule(pl.LightningModule):
    """PWC-Net trained with the multi-scale loss; validation EPE (px) on full-size frame pairs."""

    def __init__(
        self,
        init: str | None = None,
        corr_backend: Literal["auto", "cupy", "torch"] = "auto",
        zero_flow_init: bool = True,
        loss_weights: tuple[float, float, float, float, float] = LEVEL_WEIGHTS,
        loss_norm: Literal["l2", "robust"] = "l2",
        loss_reduction: Literal["sum", "mean"] = "sum",
        robust_q: float = 0.4,
        robust_eps: float = 0.01,
        match_weight: float = 0.0,
        match_levels: tuple[int, ...] = (2, 3, 4),
        match_temperature: float = 0.1,
        lr: float = 1.0e-4,
        weight_decay: float = 4.0e-4,
        schedule: Schedule = "multistep",
        milestones: tuple[float, ...] = (400000, 600000, 800000, 1000000),
        gamma: float = 0.5,
        pct_start: float = 0.05,
        cycle_steps: int = 100000,
        cycle_mult: int = 1,
        min_lr: float = 1.0e-6,
        max_steps: int = 1200000,
        val_scale: float | list[float] = 1.0,
    ):
        """
        Args:
            init: PWC-Net weights to start from (this project's weights or checkpoints, or any layout PWCNet reads); null: from scratch.
            corr_backend: the cost volume: auto (the CuPy kernel on CUDA, PyTorch elsewhere), cupy or torch.
            zero_flow_init: from scratch, zero the flow heads so that the untrained net predicts zero flow.
            loss_weights: alpha of levels 6, 5, 4, 3, 2 (the paper's 0.32 ... 0.005).
            loss_norm: l2 (per-pixel Euclidean norm, the paper's training loss) or robust ((|d|_1 + robust_eps)^robust_q, its fine-tuning loss).
            loss_reduction: sum (over the pixels of each image, then mean over the batch: the paper's) or mean (over valid pixels).
            robust_q: exponent of the robust norm.
            robust_eps: offset of the robust norm.
            match_weight: weight of the auxiliary cost-volume matching loss (0: off, as in the paper; helps short runs from scratch).
            match_levels: pyramid levels (2..6) the matching loss is applied to.
            match_temperature: softmax temperature of the matching loss's cosine cost volume.
            lr: Adam's learning rate (the peak of onecycle).
            weight_decay: Adam's L2 term, on weights with dim >= 2 only (not on biases).
            schedule: multistep (the paper's), onecycle (cosine warm-up and decay), cosine_restarts or constant.
            milestones: multistep: the steps at which the learning rate is multiplied by gamma; values < 1 are fractions of max_steps.
            gamma: multistep: the factor at each milestone.
            pct_start: onecycle: the warm-up's fraction of max_steps.
            cycle_steps: cosine_restarts: the first cycle's length in steps.
            cycle_mult: cosine_restarts: each cycle is this many times longer than the one before.
            min_lr: the lowest learning rate of onecycle and cosine_restarts.
            max_steps: the schedule's length in optimizer steps (linked from trainer.max_steps).
            val_scale: validation frames are resized by this factor before the network, or a list of factors run coarse to
                fine as FlowEngine's PWC-Net scales (e.g. [0.375, 1.0]); the flow is scored at full size.
        """
        super().__init__()
        self.save_hyperparameters()
        if not set(match_levels) <= {2, 3, 4, 5, 6}:
            raise ConfigError(f"model.match_levels are pyramid levels 2..6, got {list(match_levels)}")
        if schedule != "constant" and max_steps < 1:
            raise ConfigError(f"the {schedule} schedule needs trainer.max_steps >= 1, got {max_steps}")
        try:
            self.val_scales = check_scales(val_scale)
        except FlowInputError as e:
            raise ConfigError(f"model.val_scale: {e}") from None
        self.model = PWCNet(corr_backend=corr_backend)
        if init:
            self.model.load_state_dict(load_pwcnet_state_dict(init))
            log.info("initialised PWC-Net from %s", init)
        elif zero_flow_init:
            zero_flow_heads(self.model)
        self._features: dict[int, torch.Tensor] = {}
        self.skipped_batches = 0
        if match_weight > 0:
            # The pyramid runs inside PWCNet.forward; hooks keep its features for matching_loss.
            for level in match_levels:
                name = "conv6b" if level == 6 else f"conv{level}b"
                getattr(self.model, name).register_forward_hook(functools.partial(self._keep_features, level))

    def _keep_features(self, level: int, module, inputs, output) -> None:
        if self.training:
            self._features[level] = output

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> list[torch.Tensor]:
        """PWC-Net's predictions [flow6 .. flow2] (px/20 at 1/64 .. 1/4 size) for frames [B,3,H,W] in [0,1]."""
        return self.model(img1, img2)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        img1, img2, flow, valid = batch
        hp = self.hparams
        if not _finite_batch(img1, img2, flow, valid):
            # A bad label or frame must not reach the loss; the step is skipped and counted.
            self.skipped_batches += 1
            log.warning("step %d: a batch with non-finite frames or flow was skipped (%d so far)", self.global_step, self.skipped_batches)
            self.log("train/skipped_batches", float(self.skipped_batches), batch_size=img1.shape[0])
            return None
        flow = flow.masked_fill(~valid[:, None], 0.0)  # what an unknown pixel holds must not reach the pooled targets
        flows = self.model(img1, img2)
        loss, terms = multiscale_loss(flows, flow, valid, tuple(hp.loss_weights), hp.loss_norm, hp.loss_reduction, hp.robust_q, hp.robust_eps)
        B = img1.shape[0]
        if hp.match_weight > 0:
            match = matching_loss(self._features, flow, valid, hp.match_temperature)
            self._features = {}
            self.log("train/match", match, batch_size=B)
            loss = loss + hp.match_weight * match
        if not torch.isfinite(loss):
            raise DivergedError(self._diverged_message(f"the loss is {float(loss.detach())}"))
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        for level, term in zip((6, 5, 4, 3, 2), terms):
            self.log(f"train/loss_level{level}", term, batch_size=B)
        with torch.no_grad():
            self.log("train/epe", end_point_error(full_resolution_flow(flows[-1]), flow, valid), prog_bar=True, batch_size=B)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if str(self.trainer.precision).startswith("16"):
            return  # fp16's loss scaler skips steps with inf gradients by design
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if grads and not torch.isfinite(torch.stack([g.detach().abs().amax() for g in grads])).all():
            raise DivergedError(self._diverged_message("a gradient is not finite"))

    def _diverged_message(self, what: str) -> str:
        folder = Path(self.trainer.default_root_dir) / "checkpoints" if self._trainer is not None else None
        return (f"training diverged at step {self.global_step}: {what}. The weights were not updated with it; the last "
                f"checkpoint written before it is kept{f' in {folder}' if folder else ''}. Resume with --ckpt_path last and a "
                "lower --model.lr, or look for bad training data.")

    def on_validation_epoch_start(self) -> None:
        self._val_epe: dict[str, list[float]] = {}

    def validation_step(self, batch: tuple, batch_idx: int, dataloader_idx: int = 0) -> None:
        img1, img2, flow, valid, name, set_name = batch
        name, set_name = (n[0] if isinstance(n, (list, tuple)) else str(n) for n in (name, set_name))
        pred = self.predict_pair(img1.float() / 255, img2.float() / 255)
        epe = end_point_error(pred, flow, valid)
        self._val_epe.setdefault(set_name, []).append(float(epe))
        self.log(f"val/epe_{name.split('_')[0]}", epe, batch_size=1, sync_dist=True, add_dataloader_idx=False)
        self.log(f"val_case/{set_name}/{name}", epe, batch_size=1, sync_dist=True, add_dataloader_idx=False)
        if batch_idx == 0 and self.global_rank == 0:
            self._log_flow_image(f"{set_name}_{name}", img1, pred, flow, valid)

    def on_validation_epoch_end(self) -> None:
        # Each set counts once in val/epe, whatever its number of cases: a few large-motion pairs
        # must weigh as much as many small-motion ones.
        means = {name: sum(v) / len(v) for name, v in self._val_epe.items() if v}
        for name, mean in means.items():
            self.log(f"val/{name}/epe", mean, sync_dist=True)
        if means:
            self.log("val/epe", sum(means.values()) / len(means), sync_dist=True)

    def predict_pair(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        """Flow [B,2,H,W] px for frames [B,3,H,W] in [0,1], at ``val_scale`` (one factor, or several coarse to fine)."""
        return self.model.predict(img1, img2, scales=self.val_scales).float()

    def _log_flow_image(self, name: str, img1: torch.Tensor, pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> None:
        max_flow = float(gt[0].norm(dim=0)[valid[0]].max()) if bool(valid.any()) else None
        colours = flow_to_color_torch(torch.cat([pred, gt]).float(), max_flow=max_flow)
        panel = torch.cat([img1[0].to(torch.uint8).cpu(), colours[0].cpu(), colours[1].cpu()], dim=2)  # [3,H,3W]
        folder = Path(self.trainer.default_root_dir) / "val_images"
        folder.mkdir(parents=True, exist_ok=True)
        write_image(folder / f"step{self.global_step:07d}_{name}.png", panel.permute(1, 2, 0).numpy())
        for lg in self.loggers:
            if hasattr(lg, "log_image"):
                lg.log_image(key="val/flow", images=[panel.permute(1, 2, 0).numpy()], caption=[f"{name}: frame 1 | predicted | ground truth"], step=self.global_step)

    def param_groups(self) -> list[dict]:
        """The optimizer's parameter groups: weights (decayed), then biases (not decayed)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        # Decay weights only: shrinking biases towards zero regularises nothing useful (nanoGPT does the same).
        return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": self.hparams.weight_decay},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.Adam(self.param_groups(), lr=hp.lr)
        sched = make_scheduler(opt, hp.schedule, hp.max_steps, lr=hp.lr, milestones=hp.milestones, gamma=hp.gamma, pct_start=hp.pct_start,
                               cycle_steps=hp.cycle_steps, cycle_mult=hp.cycle_mult, min_lr=hp.min_lr)
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


def _finite_batch(img1: torch.Tensor, img2: torch.Tensor, flow: torch.Tensor, valid: torch.Tensor) -> bool:
    """Frames finite everywhere, flow finite where it is valid."""
    ok = torch.isfinite(img1).all() & torch.isfinite(img2).all()
    return bool(ok & torch.isfinite(flow.masked_fill(~valid[:, None], 0)).all())


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


def make_scheduler(opt: torch.optim.Optimizer, schedule: Schedule, max_steps: int, *, lr: float, milestones: tuple[float, ...],
                   gamma: float, pct_start: float, cycle_steps: int, cycle_mult: int,
                   min_lr: float) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule (None for constant), stepped once per optimizer step; see :class:`FlowModule`."""
    if schedule == "constant":
        return None
    if schedule == "multistep":
        steps = [int(m * max_steps) if m < 1 else int(m) for m in milestones]
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=gamma)
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=max_steps + 1, pct_start=pct_start,
            anneal_strategy="cos", cycle_momentum=False, div_factor=25.0, final_div_factor=lr / 25.0 / min_lr,
        )
    if schedule == "cosine_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=int(cycle_steps), T_mult=int(cycle_mult), eta_min=min_lr)
    raise ConfigError(f"model.schedule must be multistep, onecycle, cosine_restarts or constant, got {schedule!r}")
