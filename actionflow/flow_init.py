"""A trained temporal stream as weights to start from: ``python -m actionflow flow-init CKPT OUT --note TEXT``.

Takes the flow stream of a ``train.py`` checkpoint (``mode`` flow or two_stream), less its classifier head,
and writes it where ``model.flow_init: OUT`` reads it (:func:`actionflow.model.flow_init_state`): a
PyTorch file of tensors and plain values only (read back with ``weights_only=True``): ``format``,
``backbone``, ``in_channels`` (the stream's input channels: 2L, + 1 with ``flow_norm: snippet``),
``note`` (what it was trained on, and how long) and ``state_dict``. The shipped
``actionflow/weights/flow_motion_small_cnn.pt`` (``model.flow_init: motion``) was written this way;
``actionflow/weights/README.md`` is its model card.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from actionflow.classify import read_checkpoint
from actionflow.errors import ActionflowError
from actionflow.model import FLOW_INIT_FORMAT, head_keys
from flow_engine.commands.args import output_file

STREAM_PREFIX = "net.flow.net."  # the temporal stream's network inside a train.py checkpoint's state dict


class FlowInitError(ActionflowError, ValueError):
    """A checkpoint whose temporal stream cannot be exported (it has none)."""


def export(ckpt: str | Path, out: str | Path, note: str) -> Path:
    """Write the flow stream of train.py checkpoint ``ckpt`` (less its head) to ``out``; returns ``out``."""
    content = read_checkpoint(ckpt)
    hp = content["hyper_parameters"]
    state = {k[len(STREAM_PREFIX):]: v for k, v in content["state_dict"].items()
             if k.startswith(STREAM_PREFIX) and torch.is_tensor(v)}
    if not state:
        raise FlowInitError(f"{ckpt}: no flow stream to export (model.mode {hp.get('mode')!r})")
    for key in head_keys(state):
        del state[key]
    first = next((v for v in state.values() if v.dim() == 4), None)
    if first is None:
        raise FlowInitError(f"{ckpt}: its flow stream has no convolution")
    blob = {"format": FLOW_INIT_FORMAT, "backbone": str(hp.get("backbone")), "in_channels": int(first.shape[1]),
            "note": str(note), "state_dict": {k: v.detach().clone().contiguous() for k, v in state.items()}}
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(blob, out)
    except OSError as exc:  # a read-only or missing place, a full disk
        raise FlowInitError(f"{out}: cannot write it ({exc.strerror or exc})") from None
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ckpt", type=Path, help="a train.py checkpoint with a flow stream")
    parser.add_argument("out", type=output_file, help="the flow-init file to write (then model.flow_init: OUT)")
    parser.add_argument("--note", required=True, help="what the stream was trained on, and how long (kept in the file)")


def run(args: argparse.Namespace) -> int:
    try:
        out = export(args.ckpt, args.out, args.note)
    except ActionflowError as exc:
        print(f"flow-init: error: {exc}", file=sys.stderr)
        return 2
    print(f"{out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0
