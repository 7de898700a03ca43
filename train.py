"""Train, then test, the two-stream action recogniser.

    python train.py                                   # the default run: the demo (see --print_config)
    python train.py --config configs/ucf101.yaml --trainer.max_epochs 50
    python train.py --data.root DIR --model.mode flow --data.flow_source online --trainer.accelerator gpu
    python train.py --print_config                    # the whole resolved configuration

A LightningCLI (:class:`flow_engine.lightning_cli.TrainingCLI`, the convention it shares with
``python -m flow_engine train``) over ``actionflow.module.ActionRecognizer`` (``--model.*``) and
``actionflow.data.ActionDataModule`` (``--data.*``), plus ``--trainer.*``, ``--checkpoint.*``
(the ModelCheckpoint: best by validation top-1 of the fused output, and last), ``--ckpt_path PATH|last``
(resume) and ``--wandb auto|online|offline``. A run lives in ``trainer.default_root_dir``
(``runs/<name>``): config.yaml, checkpoints/, wandb/, test/ (metrics.json, confusion matrices,
per-class reports). The last two lines printed are ``checkpoint: PATH`` and ``test metrics: PATH``.

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
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: with DataLoader workers (or other programs) on the
# same few cores, spinning threads steal the cycles the work needs. Measured on the 2-core CPU: a
# ResNet-18 training step 3-5x faster. Must be set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from actionflow.classify import read_checkpoint
from actionflow.data import ActionDataModule, resolve_flow_engine
from actionflow.errors import ActionflowError
from actionflow.module import ActionRecognizer
from flow_engine.checkpoints import check_resume_fits
from flow_engine.errors import FlowEngineError
from flow_engine.lightning_cli import TrainingCLI, finish_loggers, start_loggers

# Where the default run (the demo dance set, generated on first use) reads and writes. A config of your
# own sets these to its own folders (a data.root holding other videos is used as it is, not overwritten).
DEFAULT_RUN = {"data.root": "data/demo", "data.demo": True, "data.cache_dir": "cache/demo"}
# The trainer of the default run: sized for 10 minutes on a 2-core CPU, on whatever device there is.
TRAINER_DEFAULTS = {
    "default_root_dir": "runs/demo",  # the run folder: config, checkpoints/, wandb/, test/
    "accelerator": "auto", "devices": 1, "precision": "32-true",  # 16-mixed / bf16-mixed on a GPU
    "max_epochs": 20, "gradient_clip_val": 20.0, "log_every_n_steps": 5, "num_sanity_val_steps": 0,
    "logger": {"class_path": "pytorch_lightning.loggers.WandbLogger", "init_args": {"project": "actionflow", "name": "demo"}},
}
CALLBACKS = [{"class_path": "pytorch_lightning.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "epoch"}}]
log = logging.getLogger("train")


class RunConfigError(ActionflowError, ValueError):
    """A run that cannot give what train.py promises (a checkpoint to test), however long it ran."""


# What a bad configuration or input raises (every error of either package: a bad list, setting, video,
# checkpoint, engine...): each is one line, `train.py: error: ...` and exit 2, as the parser's own errors;
# anything else is a bug and keeps its traceback.
CONFIG_ERRORS = (ActionflowError, FlowEngineError)


class TrainCLI(TrainingCLI):
    SIZE_KEYS = {"data.size": "[H, W] or a short side", "data.crop_size": "[H, W]"}
    CHECKPOINT_DEFAULTS = {"monitor": "val/top1", "mode": "max", "save_last": True, "filename": "best-epoch{epoch}",
                           "auto_insert_metric_name": False}

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.set_defaults({**DEFAULT_RUN, "trainer.callbacks": CALLBACKS})
        parser.link_arguments("model.mode", "data.mode")
        for key in ("flow_length", "flow_engine", "flow_weights", "flow_updates", "flow_bound", "crop_size"):
            parser.link_arguments(f"data.{key}", f"model.{key}")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")

    def read_checkpoint(self, path: str) -> dict:
        return read_checkpoint(path)

    def before_instantiate_classes(self) -> None:
        data = self.config.data
        if data.flow_model is not None:  # its old name: the setting moves to data.flow_engine, and the model follows
            data.flow_engine = self.config.model.flow_engine = resolve_flow_engine(data.flow_engine, data.flow_model)
            data.flow_model = None
        super().before_instantiate_classes()


def build_cli(argv: list[str] | None = None) -> TrainCLI:
    """The parsed command line with model, data and trainer built (nothing run yet)."""
    return TrainCLI(ActionRecognizer, ActionDataModule, args=sys.argv[1:] if argv is None else argv, run=False,
                    auto_configure_optimizers=False, seed_everything_default=0, trainer_defaults=TRAINER_DEFAULTS,
                    save_config_kwargs={"overwrite": True})


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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cli = build_cli(argv)
        trainer, model, data = cli.trainer, cli.model, cli.datamodule
        if cli.ckpt_path and Path(cli.ckpt_path).is_file():
            check_resume_fits(model, read_checkpoint(cli.ckpt_path), cli.ckpt_path, model.param_groups(),
                              hint="Train afresh (without --ckpt_path), or classify with it as it is.")
        check_trains(trainer)
        start_loggers(trainer)
        trainer.fit(model, datamodule=data, ckpt_path=cli.ckpt_path, weights_only=True)
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
