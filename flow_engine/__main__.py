"""Command line of the flow engine: ``python -m flow_engine COMMAND ...``.

Each command lives in the module named here, which provides ``add_arguments(parser)``
and ``run(args) -> int``, or ``main(argv, prog) -> int`` when it parses its own arguments
(``train``: a LightningCLI). Only the chosen command's module is imported, so ``--help``
stays instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "estimate": ("flow_engine.commands.estimate", "Compute optical flow for a frame pair, a folder of frames or a video."),
    "viz": ("flow_engine.commands.viz", "Colour-code flow files (.flo, KITTI PNG, PFM) as PNGs and optionally an MP4."),
    "eval": ("flow_engine.commands.evaluate", "Score a flow method (EPE, angular error, Fl-all) on ground-truth cases or a benchmark."),
    "bench": ("flow_engine.commands.bench", "Benchmark the engine (pairs/s, memory) and the cost volume (CuPy vs PyTorch)."),
    "train": ("flow_engine.training.cli", "Train or fine-tune PWC-Net: a YAML config and --section.key overrides (LightningCLI)."),
    "doctor": ("flow_engine.commands.doctor", "Say what works on this machine (CUDA, CuPy kernels, engines, weights, video) and why not."),
}


def main(
    argv: list[str] | None = None,
    prog: str = "python -m flow_engine",
    commands: dict[str, tuple[str, str]] = COMMANDS,
    description: str = "PWC-Net optical flow: estimate, visualise, score, benchmark and train.",
) -> int:
    """Parse ``argv`` and run the chosen command; returns its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in commands:
        module = importlib.import_module(commands[argv[0]][0])
        if hasattr(module, "main"):  # a command with a parser of its own
            return int(module.main(argv[1:], prog=f"{prog} {argv[0]}") or 0)
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if argv and argv[0] == name:
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    return int(importlib.import_module(commands[args.command][0]).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
