"""Files an attacker would hand the project, shared by the tests that check each is refused."""
from __future__ import annotations

import builtins
from pathlib import Path

import torch


class _CreatesMarker:
    """Unpickling this calls ``open(marker, "w")``: the file appears only if the unpickler runs code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def code_running_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint-shaped file (state_dict, hyper_parameters) whose plain ``torch.load`` creates ``marker``."""
    torch.save({"state_dict": {"model.conv1a.0.weight": _CreatesMarker(marker)}, "hyper_parameters": {},
                "global_step": 1}, path)
    return path
