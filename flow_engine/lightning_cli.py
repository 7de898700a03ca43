"""The LightningCLI convention both training command lines share: ``python train.py`` (the two-stream
classifier) and ``python -m flow_engine train`` (PWC-Net).

- Defaults live in the classes' signatures and the command's trainer defaults; no config file is
  layered underneath, so ``--print_config`` shows what a run uses, and ``--config FILE`` (or
  ``-c FILE``: the same) starts from exactly that.
- The run folder is ``--trainer.default_root_dir``: checkpoints in its ``checkpoints/``
  (``--checkpoint.*``: Lightning's ModelCheckpoint), the logger's files (its ``save_dir`` follows
  the run folder), whatever else the command writes.
- ``--ckpt_path PATH`` resumes a run, ``--ckpt_path last`` the run folder's ``checkpoints/last.ckpt``
  when there is one (else the run starts fresh). The file is read with ``weights_only=True`` before
  anything is built, so a crafted pickle is refused and a wrong path fails at once.
- The logger is ``--trainer.logger`` (a class_path such as ``WandbLogger`` or ``CSVLogger``, or
  ``false``); ``--wandb auto|online|offline`` is W&B's mode (auto: online when WANDB_API_KEY is set,
  else offline runs that ``wandb sync`` uploads later). A W&B logger that cannot start falls back to
  CSV with a warning.
- Old flags keep working: :attr:`TrainingCLI.RENAMED` maps each to what replaces it, said on stderr.
"""
from __future__ import annotations

import logging
import os
import sys
from argparse import ArgumentTypeError
from collections.abc import Callable, Sequence
from pathlib import Path

from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from flow_engine.checkpoints import load_weights_only
from flow_engine.commands.args import WIDTH_X_HEIGHT, config_size_error

log = logging.getLogger(__name__)

# --ckpt_path values that Lightning resolves itself (besides "last", resolved here to check the file first)
LIGHTNING_CKPT_KEYWORDS = ("best", "hpc")

Replacement = str | Callable[[str], list[str]]


def rename_flags(args: Sequence[str], renamed: dict[str, Replacement], prog: str) -> list[str]:
    """``args`` with every old flag of ``renamed`` replaced (``--old V`` or ``--old=V``): by the new
    flag with the same value, or by what the function makes of the value (a ValueError or
    ArgumentTypeError of it is an argument error); each said once on stderr."""
    out: list[str] = []
    i = 0
    while i < len(args):
        flag, eq, value = args[i].partition("=")
        if flag not in renamed:
            out.append(args[i])
            i += 1
            continue
        if not eq:
            if i + 1 == len(args) or args[i + 1].startswith("--"):  # not the next flag taken for a value
                print(f"{prog}: error: {flag} needs a value", file=sys.stderr)
                raise SystemExit(2)
            i += 1
            value = args[i]
        i += 1
        new = renamed[flag]
        try:
            replacement = [new, value] if isinstance(new, str) else new(value)
        except (ValueError, ArgumentTypeError) as exc:
            print(f"{prog}: error: {flag} {value}: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        print(f"{prog}: warning: {flag} is deprecated; use {' '.join(replacement)}", file=sys.stderr)
        out += replacement
    return out


def resolve_ckpt_path(ckpt_path: str | None, run_dir: str | os.PathLike, read=None) -> str | None:
    """The checkpoint to resume from: ``last`` -> the run folder's ``checkpoints/last.ckpt`` when there
    is one (else None: a fresh start); a path is read with ``read`` (default ``weights_only=True``)
    first, so that a missing, broken or crafted file fails before anything is built."""
    if not ckpt_path:
        return None
    if ckpt_path in LIGHTNING_CKPT_KEYWORDS or ckpt_path.startswith("registry"):
        return ckpt_path
    if ckpt_path == "last":
        last = Path(run_dir) / "checkpoints" / "last.ckpt"
        if not last.is_file():
            log.info("no %s yet: starting fresh", last)
            return None
        log.info("resuming from %s", last)
        ckpt_path = str(last)
    (read or (lambda p: load_weights_only(p, what="checkpoint to resume from")))(ckpt_path)
    return ckpt_path


class TrainingCLI(LightningCLI):
    """LightningCLI with this project's convention (see the module docstring). Subclasses set
    :attr:`RENAMED` (old flag -> new one), :attr:`CHECKPOINT_DEFAULTS` (their ModelCheckpoint's
    ``--checkpoint.*`` defaults) and :attr:`SIZE_KEYS`; :meth:`read_checkpoint` is how a checkpoint to
    resume from is read, :meth:`expand` rewrites their shortcuts."""

    RENAMED: dict[str, Replacement] = {}
    CHECKPOINT_DEFAULTS: dict = {}
    SIZE_KEYS: dict[str, str] = {}  # config key -> the form it takes ("[H, W]"): WIDTHxHEIGHT is refused with that form

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="resume from this checkpoint; last: the run folder's checkpoints/last.ckpt when there is one")
        parser.add_argument("--wandb", type=str, default="auto", choices=["auto", "online", "offline"],
                            help="W&B mode (auto: online when WANDB_API_KEY is set, else offline)")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({f"checkpoint.{k}": v for k, v in self.CHECKPOINT_DEFAULTS.items()})
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath",
                              compute_fn=lambda run_dir: os.path.join(run_dir, "checkpoints"))
        parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir")

    def parse_arguments(self, parser, args: list[str]) -> None:
        # LightningCLI's own version warns whenever sys.argv is also set (always, under python -m).
        args = rename_flags(self.expand(parser, list(args)), self.RENAMED, parser.prog)
        for i, arg in enumerate(args):  # a size key given WIDTHxHEIGHT: the [H, W] to write
            flag, eq, value = arg.partition("=")
            value = value if eq else (args[i + 1] if i + 1 < len(args) else "")
            if flag[2:] in self.SIZE_KEYS and WIDTH_X_HEIGHT.fullmatch(value):
                parser.error(config_size_error(flag[2:], value, self.SIZE_KEYS[flag[2:]]))
        self.config = parser.parse_args(args)

    def expand(self, parser, args: list[str]) -> list[str]:
        """The command line with a subclass's own shortcuts rewritten (before the old flags are)."""
        return args

    def read_checkpoint(self, path: str) -> dict:
        return load_weights_only(path, what="checkpoint to resume from")

    def before_instantiate_classes(self) -> None:
        c = self.config
        # Before the data module is built (it may generate data or fill a cache): a wrong path fails at once.
        self.ckpt_path = resolve_ckpt_path(c.ckpt_path, c.trainer.default_root_dir, self.read_checkpoint)
        if c.checkpoint.train_time_interval is not None:  # a time interval replaces the step interval
            c.checkpoint.every_n_train_steps = None
        if c.wandb != "auto":
            os.environ["WANDB_MODE"] = c.wandb
        elif "WANDB_MODE" not in os.environ and not os.environ.get("WANDB_API_KEY"):
            os.environ["WANDB_MODE"] = "offline"


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
    if not loggers:  # `--trainer.logger false`: a LearningRateMonitor would refuse to start
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
