"""Weight files and checkpoints written by others: the one way both packages read them.

- :func:`load_weights_only`: ``torch.load(weights_only=True)``, with a one-line :class:`WeightsError`
  naming the file when it is missing, refused or broken;
- :func:`file_hash`: the weights' identity (sha256 of the bytes) that caches and checkpoints record;
- :func:`check_resume_fits`: whether a Lightning checkpoint fits the run that would resume from it.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import torch

from flow_engine.errors import FlowEngineError


class WeightsError(FlowEngineError):
    """A weights file or checkpoint that cannot be read or loaded (names the file and the problem: keys, layout)."""


class ResumeError(FlowEngineError):
    """A checkpoint that does not fit the run that would resume from it (names the file and what differs)."""


def load_weights_only(path: str | os.PathLike, what: str = "weights file", hint: str = "") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``: the one way both packages read
    a PyTorch file (weights, checkpoints) written by someone else.

    weights_only=True rebuilds only tensors and plain containers, so a crafted pickle (whose
    ``__reduce__`` would run code under a plain ``torch.load``) is refused instead of executed.
    A missing or non-regular file (a FIFO would block the read), a refused or a broken one is a
    :class:`WeightsError` naming ``path`` (``what`` names the kind of file; ``hint`` is added to
    the message of a file that does not load).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: {what} is not a regular file" if path.exists() else f"{path}: no such {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # refused pickle, truncated zip, not a torch file at all ...
        text = str(e)
        # torch's refusal is a page of advice; the line that says what was refused is the useful one
        found = re.search(r"WeightsUnpickler error: ([^\n]*?)(?: Please use|$)", text, re.M)
        reason = found.group(1).strip() if found else (text.strip().splitlines() or [""])[0][:200]
        raise WeightsError(f"{path}: cannot be read as a PyTorch {what} with weights_only=True "
                           f"({type(e).__name__}: {reason}){hint}") from None


def file_hash(path: str | Path) -> str:
    """First 16 hex digits of the sha256 of the file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def check_resume_fits(module: torch.nn.Module, checkpoint: dict, path: str | Path, groups: list[dict], hint: str) -> None:
    """Raises :class:`ResumeError` when ``checkpoint`` (a Lightning checkpoint read from ``path``) was
    written by another model or optimizer setup than ``module`` with ``groups`` (its optimizer's
    parameter groups): a run started by an older version, or with other model settings.

    Lightning would fail on it only after data and model are built, deep in ``load_state_dict``;
    this says what differs and ``hint`` says what to do instead.
    """
    have = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in (checkpoint.get("state_dict") or {}).items() if hasattr(v, "shape")}
    problems = []
    if missing := sorted(have.keys() - saved.keys()):
        problems.append(f"{len(missing)} weights missing (e.g. {missing[0]})")
    if extra := sorted(saved.keys() - have.keys()):
        problems.append(f"{len(extra)} unexpected weights (e.g. {extra[0]})")
    if wrong := sorted(k for k in have.keys() & saved.keys() if have[k] != saved[k]):
        problems.append(f"{len(wrong)} weights of another shape (e.g. {wrong[0]}: {saved[wrong[0]]} here {have[wrong[0]]})")
    states = checkpoint.get("optimizer_states") or []
    if states and not problems:
        sizes = [len(g.get("params", ())) for g in states[0].get("param_groups", [])]
        expected = [len(g["params"]) for g in groups]
        if sizes != expected:
            problems.append(f"optimizer parameter groups of sizes {sizes}, this setup has {expected}")
    if problems:
        raise ResumeError(f"{path}: cannot resume from it: it was written by another model or optimizer setup "
                          f"({'; '.join(problems)}). {hint}")
