"""Training PWC-Net: ``python -m flow_engine train [--config FILE] [--section.key VALUE ...]``.

A LightningCLI (:class:`FlowCLI`, with the convention of :mod:`flow_engine.lightning_cli` that
``train.py`` shares) over :class:`~flow_engine.training.module.FlowModule` (``--model.*``: start
weights, loss, optimizer and schedule) and :class:`~flow_engine.training.datamodule.FlowDataModule`
(``--data.*``: training sources, crop [H, W], batch, procedural pairs, curriculum, augmentation,
validation cases, ``--data.distill.*``), plus ``--trainer.*`` (Lightning's Trainer; the run folder is
``--trainer.default_root_dir``: checkpoints/, config.yaml, logs, val_images/, labels/),
``--checkpoint.*`` (the ModelCheckpoint of step*.ckpt and last.ckpt, every N steps or a time interval;
best-*.ckpt by val/epe is kept beside it), ``--ckpt_path PATH|last`` (resume exactly) and
``--wandb auto|online|offline``, and these keys of its own:

    --export [PATH]          after training, write the best (else last) checkpoint's fp16 weights
                             (default flow_engine/weights/pwcnet_actionflow.pt)
    --export-only CKPT|best  do not train: export CKPT (best: this run's best) to --export's PATH
    --threads N              torch.set_num_threads
    --teacher, --teacher-weights, --videos (repeatable), --labels: --data.distill.* shortcuts

The defaults are the paper's S_long pre-training on procedural pairs (:data:`TRAINER_DEFAULTS` and the
classes' signatures); ``--print_config`` prints the whole configuration a run uses. Examples::

    python -m flow_engine train --config configs/flow/chairs.yaml --data.train '[{name: chairs, root: /data/FlyingChairs_release}]'
    python -m flow_engine train --trainer.devices 4 --trainer.strategy ddp --model.init flow_engine/weights/pwcnet_actionflow.pt --export
    python -m flow_engine train --config configs/flow/distill.yaml --ckpt_path last --export

The flags of earlier versions (``--out``, ``--resume``, ``--logger``, ``--wandb.*``,
``--checkpoint.every_steps|every_minutes``, ``--max-steps`` ...) still work and say what replaces them.
Checkpoints hold only tensors and plain types, so resume and export read them with
``torch.load(weights_only=True)``; a crafted file is refused before Lightning sees it.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml

from flow_engine.checkpoints import WeightsError, check_resume_fits, load_weights_only
from flow_engine.commands.args import positive_number
from flow_engine.errors import FlowEngineError
from flow_engine.lightning_cli import TrainingCLI, start_loggers
from flow_engine.models.pwcnet import PWCNet
from flow_engine.training.datamodule import FlowDataModule
from flow_engine.training.module import FlowModule

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WEIGHTS_OUT = Path(__file__).resolve().parents[1] / "weights" / "pwcnet_actionflow.pt"

# The trainer of flow training (steps, not epochs: procedural data has no epochs): the paper's S_long
# schedule of 1.2M steps, on every GPU there is, in bf16.
TRAINER_DEFAULTS: dict[str, Any] = {
    "default_root_dir": "runs/flow/synthetic",  # the run folder: checkpoints/, config.yaml, logs, val_images/, labels/
    "max_steps": 1200000, "val_check_interval": 5000, "check_val_every_n_epoch": None, "log_every_n_steps": 100,
    "accelerator": "auto", "devices": "auto", "strategy": "auto", "precision": "bf16-mixed",
    "num_sanity_val_steps": 0, "enable_progress_bar": False, "enable_model_summary": False,
    "logger": {"class_path": "pytorch_lightning.loggers.WandbLogger",
               "init_args": {"project": "actionflow-flow", "log_model": False}},
}
CALLBACKS = [{"class_path": "pytorch_lightning.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "step"}}]
DESCRIPTION = ("Train or fine-tune PWC-Net: defaults as --print_config shows them, a YAML config (--config/-c) and "
               "--section.key VALUE overrides. Sizes are [H, W]. Shortcuts: --teacher NAME, --teacher-weights FILE, --videos DIR|LIST|VIDEO "
               "(repeatable), --labels DIR set --data.distill.teacher, .teacher_weights, .videos, .labels.")
# Short flags for --data.distill.* (--videos is repeatable and collected into one list).
SHORTCUTS = {"--teacher": "--data.distill.teacher", "--teacher-weights": "--data.distill.teacher_weights",
             "--labels": "--data.distill.labels", "--videos": "--data.distill.videos"}
# Flags of earlier versions and what replaces them (they still work, and say so on stderr): the run
# folder, resuming, the logger and checkpoint keys of the convention before TrainingCLI, and the
# hand-rolled command line before that. (--set has no one replacement: it is refused with the form to use.)
_LOGGERS = {"wandb": ["--trainer.logger", "WandbLogger"], "csv": ["--trainer.logger", "CSVLogger", "--trainer.logger.init_args.name", "csv"],
            "none": ["--trainer.logger", "false"]}
RENAMED = {
    "--out": "--trainer.default_root_dir",
    "--resume": lambda v: ["--ckpt_path", "last" if v == "auto" else v],
    "--logger": lambda v: _LOGGERS.get(v, ["--trainer.logger", v]),
    "--wandb.mode": "--wandb", "--wandb.project": "--trainer.logger.init_args.project",
    "--wandb.name": "--trainer.logger.init_args.name",
    "--checkpoint.every_steps": "--checkpoint.every_n_train_steps",
    "--checkpoint.every_minutes": lambda v: ["--checkpoint.train_time_interval", str(timedelta(minutes=positive_number(v)))],
    "--max-steps": "--trainer.max_steps", "--devices": "--trainer.devices", "--num-nodes": "--trainer.num_nodes",
    "--strategy": "--trainer.strategy", "--precision": "--trainer.precision", "--batch-size": "--data.batch_size",
    "--lr": "--model.lr", "--crop": "--data.crop", "--init": "--model.init",
}


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
        extra = f" max_disp {dm.max_displacement(step):.1f}px" if getattr(dm, "uses_synthetic", False) else ""
        log.info("step %d loss %.3f epe %.3f lr %.2e %.2f s/step%s", step, float(m.get("train/loss", float("nan"))),
                 float(m.get("train/epe", float("nan"))), lr, rate, extra)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        if "val/epe" in m:
            groups = " ".join(f"{k[4:].removesuffix('/epe')} {float(v):.3f}" for k, v in sorted(m.items())
                              if k.startswith("val/") and k != "val/epe")
            log.info("validation at step %d: EPE %.3f px (%s)", trainer.global_step, float(m["val/epe"]), groups)


def export_weights(checkpoint: str | Path, out: str | Path = DEFAULT_WEIGHTS_OUT) -> Path:
    """Writes the PWC-Net weights of a Lightning checkpoint as a plain fp16 state dict at ``out``.

    Raises :class:`WeightsError` naming ``checkpoint`` when it is missing, refused by
    ``weights_only=True`` or holds no PWC-Net.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    # FlowModule's hyper-parameters are plain types, so weights_only=True reads its checkpoints,
    # and a crafted file cannot run code.
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
    bad = sorted(k for k, v in weights.items() if not torch.isfinite(v).all())
    if bad:
        raise WeightsError(f"{checkpoint}: {len(bad)} weight tensors hold NaN or inf once in fp16 (e.g. {bad[0]}); "
                           f"nothing was written to {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save(weights, tmp)
    os.replace(tmp, out)
    log.info("exported %s (step %s) -> %s (%.1f MB fp16)", checkpoint, ckpt.get("global_step"), out, out.stat().st_size / 1e6)
    return out


def best_checkpoint(out_dir: str | Path) -> Path:
    """The best-by-validation checkpoint of a run (``best-*.ckpt``), else its ``last.ckpt``; WeightsError if neither."""
    folder = Path(out_dir) / "checkpoints"
    best = sorted(folder.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1]
    last = folder / "last.ckpt"
    if last.is_file():
        log.warning("%s: no best-by-validation checkpoint; using last.ckpt", folder)
        return last
    raise WeightsError(f"{folder}: no checkpoints")


class FlowCLI(TrainingCLI):
    """The flow-training command line; ``build=False`` parses and checks the configuration only."""

    RENAMED = RENAMED
    SIZE_KEYS = {"data.crop": "[H, W]"}
    CHECKPOINT_DEFAULTS = {"filename": "step{step:07d}", "auto_insert_metric_name": False, "save_last": True,
                           "save_top_k": 1, "every_n_train_steps": 2000}

    def __init__(self, args: list[str] | None = None, prog: str = "python -m flow_engine train", build: bool = True):
        self.build = build
        self.ckpt_path: str | None = None
        super().__init__(
            FlowModule, FlowDataModule, args=sys.argv[1:] if args is None else list(args), run=False,
            auto_configure_optimizers=False, seed_everything_default=0, trainer_defaults=TRAINER_DEFAULTS,
            save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": prog, "description": DESCRIPTION},
        )

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.set_defaults({"trainer.callbacks": CALLBACKS})
        parser.add_argument("--export", type=str | None, nargs="?", const=str(DEFAULT_WEIGHTS_OUT), default=None, metavar="PATH",
                            help=f"after training, write the best (else last) checkpoint's fp16 weights to PATH "
                                 f"(default {DEFAULT_WEIGHTS_OUT.relative_to(ROOT)})")
        parser.add_argument("--export-only", type=str | None, default=None, metavar="CKPT",
                            help="do not train: export CKPT (best: this run's best) to --export's PATH")
        parser.add_argument("--threads", type=int | None, default=None, help="torch.set_num_threads (null: torch's default)")
        parser.link_arguments("trainer.max_steps", "model.max_steps")
        # A seed of true (random) leaves the data seed at 0: a random run is not resumable anyway.
        parser.link_arguments("seed_everything", "data.seed", compute_fn=lambda s: 0 if isinstance(s, bool) else int(s))

    def expand(self, parser, args: list[str]) -> list[str]:
        """Rewrites the --data.distill.* shortcuts; refuses --set, naming what replaced it."""
        out: list[str] = []
        videos: list[str] = []
        videos_at = None
        i = 0
        while i < len(args):
            flag, eq, value = args[i].partition("=")
            if flag == "--set":
                parser.error("--set is now --SECTION.KEY VALUE (e.g. --model.schedule onecycle; see --help)")
            if flag not in SHORTCUTS:
                out.append(args[i])
                i += 1
                continue
            if not eq:
                if i + 1 == len(args):
                    parser.error(f"{flag} needs a value")
                i += 1
                value = args[i]
            i += 1
            if flag == "--videos":
                videos_at = len(out) if videos_at is None else videos_at
                videos.append(value)
            else:
                out += [SHORTCUTS.get(flag, flag), value]
        if videos:  # one list, where the first --videos stood
            out[videos_at:videos_at] = ["--data.distill.videos", json.dumps(videos)]
        return out

    def _building(self) -> bool:
        return self.build and not self.config.export_only

    def before_instantiate_classes(self) -> None:
        if not self._building():
            return
        super().before_instantiate_classes()  # the checkpoint to resume from is read before anything is built
        c = self.config
        if c.threads:
            torch.set_num_threads(c.threads)
        if c.data.distill.teacher and not c.data.distill.labels:
            c.data.distill.labels = str(Path(c.trainer.default_root_dir) / "labels")

    def instantiate_classes(self) -> None:
        if self._building():  # export-only and build=False need no model, data or trainer
            super().instantiate_classes()

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """Lightning's Trainer with the step log and, when there are validation cases, the best checkpoint by val/epe."""
        c = self.config
        callbacks: list[pl.Callback] = [StepLog(c.trainer.log_every_n_steps)]
        if not self.datamodule.val_sets():
            log.info("no validation cases at %s: validation and best-checkpoint selection are off", c.data.val_cases)
            kwargs.update(val_check_interval=None, limit_val_batches=0)
        else:
            callbacks.append(pl.callbacks.ModelCheckpoint(
                dirpath=Path(c.trainer.default_root_dir) / "checkpoints", filename="best-step{step:07d}-epe{val/epe:.3f}",
                auto_insert_metric_name=False, monitor="val/epe", mode="min", save_top_k=1,
            ))
        trainer = super().instantiate_trainer(**{**kwargs, "callbacks": [*kwargs.get("callbacks", []), *callbacks]})
        for lg in trainer.loggers:
            lg.log_hyperparams(yaml.safe_load(self.parser.dump(c)))
        return trainer


def main(argv: list[str] | None = None, prog: str = "python -m flow_engine train") -> int:
    """Trains (or exports) as ``argv`` says; returns the exit code (2 with a one-line error for a bad input)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cli = FlowCLI(argv, prog=prog)
        c = cli.config
        if c.export_only:
            ckpt = best_checkpoint(c.trainer.default_root_dir) if c.export_only == "best" else Path(c.export_only)
            print(export_weights(ckpt, c.export or DEFAULT_WEIGHTS_OUT))
            return 0
        trainer = cli.trainer
        if cli.ckpt_path and Path(cli.ckpt_path).is_file():
            check_resume_fits(cli.model, load_weights_only(cli.ckpt_path, what="checkpoint to resume from"), cli.ckpt_path,
                              cli.model.param_groups(), hint=f"Start a new run (another --trainer.default_root_dir) from "
                                                             f"its weights with --model.init {cli.ckpt_path}.")
        start_loggers(trainer)
        trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.ckpt_path, weights_only=True)
        best = None
        for cb in trainer.checkpoint_callbacks:
            if cb.monitor == "val/epe" and cb.best_model_path:
                best = cb.best_model_path
                print(f"best checkpoint: {best} (val EPE {float(cb.best_model_score):.3f} px)")
        if c.export:
            print(export_weights(best or Path(c.trainer.default_root_dir) / "checkpoints" / "last.ckpt", c.export))
    except FlowEngineError as e:  # a bad setting, file, checkpoint or dataset, or a diverged run: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
