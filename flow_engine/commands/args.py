"""What the command lines of both packages share: one name and one form per concept.

- The flow engine is ``--engine NAME`` on every command (:func:`add_engine_argument`); an old name of
  the flag (``--model``, ``--method``) still works and says on stderr that it is deprecated.
- Frame sizes on command lines are WIDTHxHEIGHT (``340x256``, as video tools write them) or, where a
  command takes it, one number: the short side (:func:`parse_size`, :func:`parse_size_or_side`).
  Configs and Python calls hold them as [H, W] (:func:`config_size_error` says what to write instead of text).
- What a command writes is checked when parsed, before any work: a file (:func:`output_file`: ``--json``,
  ``--mp4``...) or a folder (:func:`output_folder`); frame rates and similar are :func:`positive_number`,
  counts :func:`positive_int`.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path


class DeprecatedFlag(argparse.Action):
    """An old flag that still works: it stores into the new flag's ``dest`` and says so on stderr."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_engine_argument(parser, default: str, names: Sequence[str], old: Sequence[str] = (), help: str | None = None,
                        check: bool = True) -> None:
    """``--engine NAME`` (dest ``engine``), one of ``names`` (checked by argparse unless ``check`` is false:
    the command names a bad one itself), and each of ``old`` as a deprecated, hidden alias of it."""
    choices = list(names) if check else None
    parser.add_argument("--engine", default=default, choices=choices, metavar="NAME",
                        help=help or f"flow engine: {', '.join(names)} (default {default})")
    for flag in old:
        parser.add_argument(flag, dest="engine", choices=choices, action=DeprecatedFlag, new="--engine",
                            help=argparse.SUPPRESS)


def add_engine_options(parser) -> None:
    """The learned engines' settings, as every flow command names them: ``--weights``, ``--flow-updates`` (RAFT)
    and ``--scales`` (PWC-Net; its default from :data:`flow_engine.engine.PWCNET_SCALES`)."""
    from flow_engine.engine import PWCNET_SCALES  # here, not at the top: this module stays free of torch for the storage code

    default = " ".join(f"{s:g}" for s in PWCNET_SCALES)
    parser.add_argument("--weights", type=Path, metavar="PATH",
                        help="weights file (default: PWC-Net's shipped ones, torchvision's for RAFT)")
    parser.add_argument("--flow-updates", type=int, metavar="N", help="RAFT's refinements per pair (default 12)")
    parser.add_argument("--scales", type=float, nargs="+", metavar="S",
                        help=f"PWC-Net's coarse-to-fine frame sizes, factors of H, W (default {default}; 1: one full-size pass)")


def parse_size(text: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' (e.g. '340x256') -> (height, width)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT like 340x256, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return h, w


def parse_size_or_side(text: str) -> tuple[int, int] | int:
    """``"340x256"`` (WIDTHxHEIGHT) -> (256, 340) = (H, W) in pixels; ``"256"`` -> 256, a short side
    (each video keeps its aspect ratio). At least 8 px a side."""
    if text.strip().isdigit():
        side = int(text)
        if side < 8:
            raise argparse.ArgumentTypeError(f"short side {text!r} is too small (at least 8)")
        return side
    h, w = parse_size(text)
    if h < 8 or w < 8:
        raise argparse.ArgumentTypeError(f"size {text!r} is too small (at least 8x8)")
    return h, w


WIDTH_X_HEIGHT = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*")


def config_size_error(key: str, text: str, form: str = "[H, W]") -> str:
    """What to say of a size given as text where a config holds ``form`` (``data.size``, ``data.crop_size``,
    the flow training's ``data.crop``): for WIDTHxHEIGHT, the [H, W] to write instead."""
    wxh = WIDTH_X_HEIGHT.fullmatch(text)
    if wxh is None:
        return f"{key} is {form}; got {text!r}"
    w, h = wxh.groups()
    return f"{key} is {form} (height first), not WIDTHxHEIGHT: for {w}x{h} write --{key} '[{h}, {w}]'"


def output_file(text: str) -> Path:
    """An argparse ``type`` for a file a command writes (``--json OUT``, ``--mp4 OUT``...): refused at once,
    before any work, when it names an existing folder or lies under an existing file."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; name a file in it, e.g. {path / 'report.json'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{text}: {parent} is a file, not a folder")
            break
    return path


def output_folder(text: str) -> Path:
    """An argparse ``type`` for a folder a command writes into: refused at once when it, or a folder above
    it, is an existing file."""
    path = Path(text)
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise argparse.ArgumentTypeError(f"{text}: {folder} is a file, not a folder")
            break
    return path


def positive_int(text: str) -> int:
    """``"32"`` -> 32; zero, a negative number or not an integer is an argument error (exit 2, before any work)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_number(text: str, unit: str = "") -> float:
    """An argparse ``type`` for a positive, finite number (a frame rate, a flow magnitude): NaN, infinity,
    zero and negatives are argument errors (``unit``, e.g. "pixels", is named in the message)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number{' of ' + unit if unit else ''}, got {text!r}")
    return value


def write_output(path: Path, text: str) -> bool:
    """Writes ``text`` to the file ``path`` (its folder made first): True, or False with one error line on
    stderr when it still cannot be written (no permission, a full disk): what was printed stands."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        print(f"error: cannot write {path} ({exc.strerror or exc})", file=sys.stderr)
        return False
    return True
