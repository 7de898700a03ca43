"""Train, then test, the two-stream action recogniser.

    python train.py                                   # the default run: the demo (see --print_config)
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

Defaults have one home each: the model's and the data's in their classes' signatures, the trainer's
and where the default run reads and writes in :data:`TRAINER_DEFAULTS` and :data:`DEFAULT_RUN` here.
No config file is layered underneath: ``--print_config`` shows what a run uses, a config of your own
(``--config FILE`` or ``-c FILE``, the same) starts from exactly that, and the default run is the demo.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import warnings
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
from flow_engine.checkpoints import ResumeError, check_resume_fits

# Where the default run (the demo dance set, generated on first use) reads and writes. A config of your
# own sets these to its own folders (a data.root holding other videos is used as it is, not overwritten).
DEFAULT_RUN = {"data.root": "data/demo", "data.demo": True, "data.cache_dir": "cache/demo"}
# The trainer of the default run: sized for 10 minutes on a 2-core CPU, on whatever device there is.
TRAINER_DEFAULTS = {
    "default_root_dir": "runs/demo",  # the run directory: config, checkpoints/, wandb/, test/
    "accelerator": "auto", "devices": 1, "precision": "32-true",  # 16-mixed / bf16-mixed on a GPU
    "max_epochs": 20, "gradient_clip_val": 20.0, "log_every_n_steps": 5, "num_sanity_val_steps": 0,
    "logger": {"class_path": "pytorch_lightning.loggers.WandbLogger",  # save_dir: keep it the run directory
               "init_args": {"save_dir": "runs/demo", "project": "actionflow", "name": "demo"}},
}
CALLBACKS = [{"class_path": "pytorch_lightning.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "epoch"}}]
LIGHTNING_CKPT_KEYWORDS = ("last", "best", "hpc")  # --ckpt_path values Lightning resolves itself
log = logging.getLogger("train")


class TrainCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="resume training from this checkpoint")
        parser.add_argument("--wandb", type=str, default="auto", choices=["auto", "online", "offline"],
                            help="W&B mode (auto: online when WANDB_API_KEY is set)")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({**DEFAULT_RUN, "trainer.callbacks": CALLBACKS})
        parser.set_defaults({"checkpoint.monitor": "val/top1", "checkpoint.mode": "max",
                             "checkpoint.save_last": True, "checkpoint.filename": "best-epoch{epoch}",
                             "checkpoint.auto_insert_metric_name": False})
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath",
                              compute_fn=lambda run_dir: os.path.join(run_dir, "checkpoints"))
        parser.link_arguments("model.mode", "data.mode")
        for key in ("flow_length", "flow_engine", "flow_weights", "flow_updates", "flow_bound", "crop_size"):
            parser.link_arguments(f"data.{key}", f"model.{key}")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        data = self.config.data
        if data.flow_model is not None:  # its old name: the setting moves to data.flow_engine, and the model follows
            warnings.warn("data.flow_model is deprecated: use data.flow_engine (the same setting)", FutureWarning)
            data.flow_engine = self.config.model.flow_engine = data.flow_model
            data.flow_model = None
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


def build_cli(argv: list[str] | None = None) -> TrainCLI:
    """The parsed command line with model, data and trainer built (nothing run yet)."""
    return TrainCLI(ActionRecognizer, ActionDataModule, args=argv, run=False, auto_configure_optimizers=False,
                    seed_everything_default=0, trainer_defaults=TRAINER_DEFAULTS, save_config_kwargs={"overwrite": True})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cli = build_cli(argv)
        trainer, model, data = cli.trainer, cli.model, cli.datamodule
        ckpt_path = cli.config.ckpt_path
        if names_a_file(ckpt_path):
            check_resume_fits(model, read_checkpoint(ckpt_path), ckpt_path, model.param_groups(),
                              hint="Train afresh (without --ckpt_path), or classify with it as it is.")
        start_loggers(trainer)
        trainer.fit(model, datamodule=data, ckpt_path=cli.config.ckpt_path, weights_only=True)
        ckpt = trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path
        trainer.test(model, datamodule=data, ckpt_path=ckpt, weights_only=True)
        places = finish_loggers(trainer)
    except (AnnotationError, DataConfigError, BadVideo, ModelConfigError, CheckpointError, ResumeError) as exc:
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
