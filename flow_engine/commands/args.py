"""What the command lines of both packages share: one name and one form per concept.

- The flow engine is ``--engine NAME`` on every command (:func:`add_engine_argument`); an old name of
  the flag (``--model``, ``--method``) still works and says on stderr that it is deprecated.
- Frame sizes on command lines are WIDTHxHEIGHT (``340x256``, as video tools write them) or, where a
  command takes it, one number: the short side (:func:`parse_size`, :func:`parse_size_or_side`).
  Configs and Python calls hold them as [H, W].
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


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
