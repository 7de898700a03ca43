"""Train, then test, the two-stream action recogniser.

    python train.py                                   # configs/default.yaml
    python train.py --config configs/ucf101.yaml --trainer.max_epochs 50
    python train.py --data.root DIR --model.mode flow --data.flow_source online --trainer.accelerator gpu
    python train.py --print_config                    # the whole resolved configuration

A LightningCLI over ``actionflow.module.ActionRecognizer`` (``--model.*``) and
``actionflow.data.ActionDataModule`` (``--data.*``), plus ``--trainer.*``, ``--checkpoint.*``
(the ModelCheckpoint: best by validation top-1 of the fused output, and last), ``--ckpt_path``
(resume) and ``--wandb auto|online|offline`` (auto: online when WANDB_API_KEY is set, else offline
runs that ``wandb sync`` uploads later). A run lives in ``trainer.default_root_dir`` (``runs/<name>``):
config.yaml, checkpoints/, wandb/, test/ (metrics.json, confusion matrices, per-class reports).
The last two lines printed are ``checkpoint: PATH`` and ``test metrics: PATH``.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: with DataLoader workers (or other programs) on the
# same few cores, spinning threads steal the cycles the work needs. Measured on the 2-core CPU: a
# ResNet-18 training step 3-5x faster. Must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from actionflow.annotations import AnnotationError
from actionflow.classify import CheckpointError, read_checkpoint
from actionflow.data import ActionDataModule, BadVideo, DataConfigError
from actionflow.model import ModelConfigError
from actionflow.module import ActionRecognizer
from flow_engine.engine import FlowEngineError
from flow_engine.pwcnet import WeightsError
from flow_engine.train_module import ResumeError, check_resume_fits

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"
LIGHTNING_CKPT_KEYWORDS = ("last", "best", "hpc")  # --ckpt_path values Lightning resolves itself
log = logging.getLogger("train")


class RunConfigError(ValueError):
    """A run that cannot give what train.py promises (a checkpoint to test), however long it ran."""


# What a bad configuration or input raises: each is one line, `train.py: error: ...` and exit 2, as the
# parser's own errors; anything else is a bug and keeps its traceback.
CONFIG_ERRORS = (AnnotationError, DataConfigError, BadVideo, ModelConfigError, CheckpointError, ResumeError,
                 FlowEngineError, WeightsError, RunConfigError)


class TrainCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="resume training from this checkpoint")
        parser.add_argument("--wandb", type=str, default="auto", choices=["auto", "online", "offline"],
                            help="W&B mode (auto: online when WANDB_API_KEY is set)")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val/top1", "checkpoint.mode": "max",
                             "checkpoint.save_last": True, "checkpoint.filename": "best-epoch{epoch}",
                             "checkpoint.auto_insert_metric_name": False})
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath",
                              compute_fn=lambda run_dir: os.path.join(run_dir, "checkpoints"))
        parser.link_arguments("model.mode", "data.mode")
        for key in ("flow_length", "flow_model", "flow_weights", "flow_updates", "flow_bound", "crop_size"):
            parser.link_arguments(f"data.{key}", f"model.{key}")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        ckpt_path = self.config.ckpt_path
        if names_a_file(ckpt_path):
            # Checked here, before the data module is built (it may generate the demo set and compute
            # the flow cache): a wrong path fails at once, not after minutes of work. Lightning reads the
            # file again in fit; reading it first with weights_only=True refuses a crafted pickle before
            # Lightning's loader, whose weights_only default has changed between versions, ever sees it.
            read_checkpoint(ckpt_path)
        if self.config.wandb != "auto":
            os.environ["WANDB_MODE"] = self.config.wandb
        elif "WANDB_MODE" not in os.environ and not os.environ.get("WANDB_API_KEY"):
            os.environ["WANDB_MODE"] = "offline"


def names_a_file(ckpt_path: str | None) -> bool:
    """Whether ``--ckpt_path`` names a file (not empty, not one of the values Lightning resolves itself)."""
    return bool(ckpt_path) and ckpt_path not in LIGHTNING_CKPT_KEYWORDS and not ckpt_path.startswith("registry")


def check_trains(trainer) -> None:
    """RunConfigError, before any work, for limits under which nothing trains (so nothing is saved to test)."""
    for key in ("max_epochs", "max_steps"):
        if getattr(trainer, key, None) == 0:
            raise RunConfigError(f"--trainer.{key} 0 trains nothing, so there is no checkpoint to test; to score a "
                                 "checkpoint use `python -m actionflow classify`")
    if trainer.limit_train_batches == 0:
        raise RunConfigError("--trainer.limit_train_batches 0 trains nothing, so there is no checkpoint to test")
    run_dir = Path(trainer.default_root_dir)
    for folder in (run_dir, *run_dir.parents):  # the run folder: checked before the flow cache is filled
        if folder.exists():
            if not folder.is_dir():
                raise RunConfigError(f"--trainer.default_root_dir {run_dir}: {folder} is a file, not a folder")
            break


def start_loggers(trainer) -> None:
    """Start W&B now, so that a failure (no network, bad key...) falls back to a CSV logger with a warning."""
    loggers = []
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger) and trainer.is_global_zero:
            try:
                lg.experiment
            except Exception as exc:
                log.warning("W&B did not start (%s); logging to CSV in %s instead", exc, trainer.default_root_dir)
                lg = CSVLogger(trainer.default_root_dir, name="csv")
        loggers.append(lg)
    trainer.loggers = loggers
    if not loggers:  # `--trainer.logger false`: the config's LearningRateMonitor would refuse to start
        trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, LearningRateMonitor)]


def finish_loggers(trainer) -> list[str]:
    """Finish the loggers; returns where each one wrote ("W&B offline run: DIR", ...)."""
    places = []
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger) and trainer.is_global_zero:
            try:
                run = lg.experiment
                mode = "offline" if run.settings.mode == "offline" else "online"
                places.append(f"W&B {mode} run: {Path(run.dir).parent}" + (f" ({run.url})" if mode == "online" else ""))
                run.finish()
            except Exception as exc:
                log.warning("W&B did not finish cleanly: %s", exc)
        elif isinstance(lg, CSVLogger):
            places.append(f"CSV log: {lg.log_dir}")
    return places


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else argv
    # configs/default.yaml applies only when no --config is given (so keys of one never leak into the other)
    has_config = any(a == "--config" or a.startswith("--config=") for a in given)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cli = TrainCLI(ActionRecognizer, ActionDataModule, args=argv, run=False, auto_configure_optimizers=False,
                       parser_kwargs={"default_config_files": [] if has_config else [str(DEFAULT_CONFIG)]},
                       save_config_kwargs={"overwrite": True})
        trainer, model, data = cli.trainer, cli.model, cli.datamodule
        ckpt_path = cli.config.ckpt_path
        if names_a_file(ckpt_path):
            check_resume_fits(model, read_checkpoint(ckpt_path), ckpt_path, model.param_groups(),
                              hint="Train afresh (without --ckpt_path), or classify with it as it is.")
        check_trains(trainer)
        start_loggers(trainer)
        trainer.fit(model, datamodule=data, ckpt_path=cli.config.ckpt_path, weights_only=True)
        ckpt = trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path
        if not ckpt:
            raise RunConfigError("training saved no checkpoint to test (no training batch ran, or --checkpoint.save_top_k 0 "
                                 "without --checkpoint.save_last true)")
        trainer.test(model, datamodule=data, ckpt_path=ckpt, weights_only=True)
        places = finish_loggers(trainer)
    except CONFIG_ERRORS as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    if trainer.is_global_zero:
        if data.skipped:
            print(f"skipped {len(data.skipped)} bad video(s):\n  " + "\n  ".join(data.skipped))
        test_dir = Path(model.test_metrics_path).parent
        for line in [f"run: {trainer.default_root_dir}", *places,
                     f"confusion matrices and per-class reports: {test_dir}"]:
            print(line)
        metrics = json.loads(Path(model.test_metrics_path).read_text())
        print("test top-1: " + " | ".join(f"{stream} {m['top1']:.3f}" for stream, m in metrics.items()))
        print(f"checkpoint: {ckpt}")
        print(f"test metrics: {model.test_metrics_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
