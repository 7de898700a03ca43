"""Command line of actionflow: ``python -m actionflow COMMAND ...``.

Each command lives in the module named here, which provides ``add_arguments(parser)``
and ``run(args) -> int``.
"""
from __future__ import annotations

import sys

from flow_engine.__main__ import main as _dispatch

COMMANDS: dict[str, tuple[str, str]] = {
    "precompute": ("actionflow.precompute", "Compute flow for videos and store it in the compressed flow cache."),
    "cache": ("actionflow.flow_cache.cli", "The flow cache: 'verify' checksums, 'stats' sizes, 'import'/'export' TSN flow JPEGs."),
    "bench-cache": ("actionflow.benchmarks.cache", "Benchmark the flow cache: bytes per frame, round-trip EPE, read speed."),
    "classify": ("actionflow.classify", "Classify one video clip with a trained two-stream checkpoint."),
    "app": ("actionflow.app", "A local web page: classify a clip, see its flow (Gradio: pip install -e \".[app]\")."),
    "demo-data": ("actionflow.benchmarks.demo_data", "Generate the bundled demo dance dataset (MP4 clips + annotation lists)."),
    "real-motion": ("actionflow.benchmarks.real_motion", "Build the real-footage benchmark (real clips labelled by playback speed: normal / fast / faster)."),
    "cv": ("actionflow.crossval", "K-fold cross-validation by video of a train.py recipe: each video tested once, mean ± std."),
    "motion-data": ("actionflow.benchmarks.motion_data", "Generate dancers labelled by tempo, for pre-training the temporal stream."),
    "flow-init": ("actionflow.flow_init", "Export a checkpoint's temporal stream as weights to start from (model.flow_init)."),
}


def main(argv: list[str] | None = None) -> int:
    return _dispatch(
        argv,
        prog="python -m actionflow",
        commands=COMMANDS,
        description="Two-stream action recognition: flow cache, classification, demo data.",
    )


if __name__ == "__main__":
    sys.exit(main())
