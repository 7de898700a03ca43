"""Training PWC-Net: ``python -m flow_engine train [--config FILE] [--section.key VALUE ...]``.

A LightningCLI (:class:`FlowCLI`) over :class:`~flow_engine.training.module.FlowModule`
(``--model.*``: start weights, loss, optimizer and schedule) and
:class:`~flow_engine.training.datamodule.FlowDataModule` (``--data.*``: training sources, crop (h, w),
batch, procedural pairs, curriculum, augmentation, validation cases, ``--data.distill.*``),
plus ``--trainer.*`` (Lightning's Trainer) and these keys of its own:

    --out DIR                the run folder: checkpoints/ (step*.ckpt every N steps or minutes, best-*.ckpt
                             by val/epe, last.ckpt), config.yaml, logs, val_images/, labels/ (distillation)
    --resume auto|PATH       continue a run exactly (auto: OUT/checkpoints/last.ckpt when there is one)
    --export [PATH]          after training, write the best (else last) checkpoint's fp16 weights
                             (default flow_engine/weights/pwcnet_actionflow.pt)
    --export-only CKPT|best  do not train: export CKPT (best: this run's best) to --export's PATH
    --threads N              torch.set_num_threads
    --logger wandb|csv|none  (--wandb.project, --wandb.name, --wandb.mode auto: online when WANDB_API_KEY is set)
    --checkpoint.every_steps N | --checkpoint.every_minutes M
    --teacher, --teacher-weights, --videos (repeatable), --labels: --data.distill.* shortcuts

The config is ``configs/flow/synthetic.yaml`` unless ``--config`` names another; ``--print_config``
prints the whole resolved configuration. Examples::

    python -m flow_engine train --config configs/flow/chairs.yaml --data.train '[{name: chairs, root: /data/FlyingChairs_release}]'
    python -m flow_engine train --trainer.devices 4 --trainer.strategy ddp --model.init flow_engine/weights/pwcnet_actionflow.pt --export
    python -m flow_engine train --config configs/flow/distill.yaml --resume auto --export

Checkpoints hold only tensors and plain types, so resume and export read them with
``torch.load(weights_only=True)``; a crafted file is refused before Lightning sees it.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.cli import LightningCLI

from flow_engine.errors import DatasetError
from flow_engine.data.teacher_labels import LabelError
from flow_engine.engine import FlowEngineError
from flow_engine.checkpoints import ResumeError, WeightsError, check_resume_fits, load_weights_only
from flow_engine.models.pwcnet import PWCNet
from flow_engine.training.datamodule import FlowDataModule
from flow_engine.training.module import ConfigError, DivergedError, FlowModule
from flow_engine.io.video import ListFileError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "configs" / "flow" / "synthetic.yaml"
DEFAULT_WEIGHTS_OUT = Path(__file__).resolve().parents[1] / "weights" / "pwcnet_actionflow.pt"

# Trainer settings of flow training (steps, not epochs: procedural data has no epochs).
TRAINER_DEFAULTS: dict[str, Any] = {
    "max_steps": 1200000, "val_check_interval": 5000, "check_val_every_n_epoch": None, "log_every_n_steps": 50,
    "num_sanity_val_steps": 0, "enable_progress_bar": False, "enable_model_summary": False,
}
DESCRIPTION = ("Train or fine-tune PWC-Net: a YAML config (default configs/flow/synthetic.yaml) and --section.key VALUE "
               "overrides. Sizes are (h, w). Shortcuts: --teacher NAME, --teacher-weights FILE, --videos DIR|LIST|VIDEO "
               "(repeatable), --labels DIR set --data.distill.teacher, .teacher_weights, .videos, .labels.")
# Short flags for --data.distill.* (--videos is repeatable and collected into one list).
SHORTCUTS = {"--teacher": "--data.distill.teacher", "--teacher-weights": "--data.distill.teacher_weights",
             "--labels": "--data.distill.labels", "--videos": "--data.distill.videos"}
# Flags of the earlier hand-rolled command line, and what replaces them.
REPLACED = {"--max-steps": "--trainer.max_steps N", "--devices": "--trainer.devices N", "--num-nodes": "--trainer.num_nodes N",
            "--strategy": "--trainer.strategy NAME", "--precision": "--trainer.precision NAME", "--batch-size": "--data.batch_size N",
            "--lr": "--model.lr LR", "--crop": "--data.crop '[H, W]'", "--init": "--model.init PATH",
            "--set": "--SECTION.KEY VALUE (e.g. --model.schedule onecycle)"}


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


def make_logger(kind: str, out: Path, project: str, name: str | None, mode: str) -> pl.loggers.Logger | bool:
    """The run's logger: W&B (offline unless WANDB_API_KEY is set, for mode auto), CSV in OUT/csv, or none (False)."""
    if kind == "none":
        return False
    if kind == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            log.warning("wandb is not installed; logging to CSV in %s", out)
            kind = "csv"
    if kind == "csv":
        return pl.loggers.CSVLogger(str(out), name="csv")
    if mode == "auto":
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return pl.loggers.WandbLogger(project=project, name=name, save_dir=str(out), mode=mode, log_model=False)


class FlowCLI(LightningCLI):
    """The flow-training command line; ``build=False`` parses and checks the configuration only."""

    def __init__(self, args: list[str] | None = None, prog: str = "python -m flow_engine train", build: bool = True):
        given = sys.argv[1:] if args is None else list(args)
        # configs/flow/synthetic.yaml applies only when no --config is given (so keys of one never leak into another)
        has_config = any(a in ("-c", "--config") or a.startswith("--config=") for a in given)
        self.build = build
        self.ckpt_path: str | None = None
        super().__init__(
            FlowModule, FlowDataModule, args=given, run=False, auto_configure_optimizers=False,
            seed_everything_default=0, trainer_defaults=TRAINER_DEFAULTS, save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": prog, "description": DESCRIPTION,
                           "default_config_files": [] if has_config else [str(DEFAULT_CONFIG)]},
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--out", type=str, default="runs/flow/synthetic",
                            help="the run folder: checkpoints/, config.yaml, logs, val_images/, labels/")
        parser.add_argument("--resume", type=str | None, default=None,
                            help="continue a run exactly: auto (OUT/checkpoints/last.ckpt when there is one) or a checkpoint")
        parser.add_argument("--export", type=str | None, nargs="?", const=str(DEFAULT_WEIGHTS_OUT), default=None, metavar="PATH",
                            help=f"after training, write the best (else last) checkpoint's fp16 weights to PATH "
                                 f"(default {DEFAULT_WEIGHTS_OUT.relative_to(ROOT)})")
        parser.add_argument("--export-only", type=str | None, default=None, metavar="CKPT",
                            help="do not train: export CKPT (best: this run's best) to --export's PATH")
        parser.add_argument("--threads", type=int | None, default=None, help="torch.set_num_threads (null: torch's default)")
        parser.add_argument("--logger", type=Literal["wandb", "csv", "none"], default="wandb",
                            help="wandb (see --wandb.*), csv (OUT/csv) or none")
        parser.add_argument("--wandb.project", type=str, default="actionflow-flow", help="W&B project")
        parser.add_argument("--wandb.name", type=str | None, default=None, help="W&B run name")
        parser.add_argument("--wandb.mode", type=Literal["auto", "online", "offline"], default="auto",
                            help="auto: online when WANDB_API_KEY is set, else offline (upload later with wandb sync)")
        parser.add_argument("--checkpoint.every_steps", type=int, default=5000, help="save a checkpoint every N optimizer steps")
        parser.add_argument("--checkpoint.every_minutes", type=float | None, default=None,
                            help="save a checkpoint every M minutes instead (for runs that may be killed)")
        parser.link_arguments("out", "trainer.default_root_dir")
        parser.link_arguments("trainer.max_steps", "model.max_steps")
        # A seed of true (random) leaves the data seed at 0: a random run is not resumable anyway.
        parser.link_arguments("seed_everything", "data.seed", compute_fn=lambda s: 0 if isinstance(s, bool) else int(s))

    def parse_arguments(self, parser, args: list[str]) -> None:
        # LightningCLI's own version warns whenever sys.argv is also set (always, under python -m flow_engine).
        self.config = parser.parse_args(self._expand(parser, args))

    @staticmethod
    def _expand(parser, args: list[str]) -> list[str]:
        """Rewrites the --data.distill.* shortcuts, names the replacement of an old flag, refuses a WxH crop."""
        out: list[str] = []
        videos: list[str] = []
        videos_at = None
        i = 0
        while i < len(args):
            flag, eq, value = args[i].partition("=")
            if flag in REPLACED:
                parser.error(f"{flag} is now {REPLACED[flag]} (see --help)")
            if flag not in SHORTCUTS and flag != "--data.crop":
                out.append(args[i])
                i += 1
                continue
            if not eq:
                if i + 1 == len(args):
                    parser.error(f"{flag} needs a value")
                i += 1
                value = args[i]
            i += 1
            wxh = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value)
            if flag == "--data.crop" and wxh:
                w, h = wxh.groups()
                parser.error(f"data.crop is [h, w] (height first), not WxH: for {w}x{h} write --data.crop '[{h}, {w}]'")
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
        c = self.config
        self.ckpt_path = resolve_resume(c.resume, Path(c.out))  # before anything is built or written
        if c.threads:
            torch.set_num_threads(c.threads)
        if c.data.distill.teacher and not c.data.distill.labels:
            c.data.distill.labels = str(Path(c.out) / "labels")

    def instantiate_classes(self) -> None:
        if self._building():  # export-only and build=False need no model, data or trainer
            super().instantiate_classes()

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """Lightning's Trainer with the run's checkpoints, logger and step log, validating only when there are cases."""
        c = self.config
        if c.trainer.logger is not None:
            raise ConfigError("trainer.logger: flow training sets its logger with --logger wandb|csv|none and --wandb.*")
        out = Path(c.out)
        out.mkdir(parents=True, exist_ok=True)
        every_minutes = c.checkpoint.every_minutes
        callbacks: list[pl.Callback] = [StepLog(c.trainer.log_every_n_steps), pl.callbacks.ModelCheckpoint(
            dirpath=out / "checkpoints", filename="step{step:07d}", auto_insert_metric_name=False, save_last=True, save_top_k=1,
            every_n_train_steps=None if every_minutes else c.checkpoint.every_steps,
            train_time_interval=timedelta(minutes=every_minutes) if every_minutes else None,
        )]
        if not self.datamodule.val_sets():
            log.info("no validation cases at %s: validation and best-checkpoint selection are off", c.data.val_cases)
            kwargs.update(val_check_interval=None, limit_val_batches=0)
        else:
            callbacks.append(pl.callbacks.ModelCheckpoint(
                dirpath=out / "checkpoints", filename="best-step{step:07d}-epe{val/epe:.3f}", auto_insert_metric_name=False,
                monitor="val/epe", mode="min", save_top_k=1,
            ))
        logger = make_logger(c.logger, out, c.wandb.project, c.wandb.name, c.wandb.mode)
        if logger:
            callbacks.append(pl.callbacks.LearningRateMonitor(logging_interval="step"))
            logger.log_hyperparams(yaml.safe_load(self.parser.dump(c)))
        configured = self.config_init.trainer.callbacks or []
        return super().instantiate_trainer(callbacks=[*configured, *callbacks], logger=logger, **kwargs)


def main(argv: list[str] | None = None, prog: str = "python -m flow_engine train") -> int:
    """Trains (or exports) as ``argv`` says; returns the exit code (2 with a one-line error for a bad input)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cli = FlowCLI(argv, prog=prog)
        c = cli.config
        if c.export_only:
            ckpt = best_checkpoint(c.out) if c.export_only == "best" else Path(c.export_only)
            print(export_weights(ckpt, c.export or DEFAULT_WEIGHTS_OUT))
            return 0
        trainer = cli.trainer
        if cli.ckpt_path:
            check_resume_fits(cli.model, load_weights_only(cli.ckpt_path, what="checkpoint to resume from"), cli.ckpt_path,
                              cli.model.param_groups(), hint=f"Start a new run (another --out) from its weights with "
                                                             f"--model.init {cli.ckpt_path}.")
        trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.ckpt_path, weights_only=True)
        best = None
        for cb in trainer.checkpoint_callbacks:
            if cb.monitor == "val/epe" and cb.best_model_path:
                best = cb.best_model_path
                print(f"best checkpoint: {best} (val EPE {float(cb.best_model_score):.3f} px)")
        if c.export:
            print(export_weights(best or Path(c.out) / "checkpoints" / "last.ckpt", c.export))
    except (ConfigError, WeightsError, ResumeError, DatasetError, LabelError, ListFileError, FlowEngineError, DivergedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
