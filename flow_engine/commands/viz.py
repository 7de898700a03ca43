"""``python -m flow_engine viz FILES... -o DIR [--video OUT.mp4 --fps 30] [--max-flow PX] [--legend]``:
flow files colour-coded (:mod:`flow_engine.io.viz`) as PNGs and optionally an MP4."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from flow_engine.commands.args import output_file, output_folder, positive_number
from flow_engine.io.flow_files import FlowFileError, read_flow, write_image
from flow_engine.io.viz import color_wheel_legend, flow_to_color, write_video


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILES", help="flow files (.flo, KITTI .png, .pfm)")
    parser.add_argument("-o", "--out", type=output_folder, required=True, metavar="DIR", help="folder for the colour PNGs")
    parser.add_argument("--video", type=output_file, metavar="OUT.mp4", help="also write an MP4 of the frames, in the order given")
    parser.add_argument("--fps", type=positive_number, default=30.0, help="video frame rate (default 30)")
    parser.add_argument("--max-flow", type=float, metavar="PX", help="magnitude of full saturation in pixels (default: per-frame max)")
    parser.add_argument("--legend", action="store_true", help="also write DIR/legend.png, the colour key")


def _output_names(files: list[Path]) -> list[str]:
    """PNG names after the inputs; inputs sharing a stem (case_a/flow.flo, case_b/flow.flo) get their folder's name."""
    stems = [f.stem for f in files]
    names = [f"{f.parent.name}_{f.stem}" if stems.count(f.stem) > 1 else f.stem for f in files]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return [n + ".png" for n in unique]


def run(args: argparse.Namespace) -> int:
    if args.max_flow is not None and not args.max_flow > 0:
        print(f"error: --max-flow must be positive, got {args.max_flow}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    written: list[Path] = []

    def frames() -> Iterator[np.ndarray]:
        size = None
        for src, name in zip(args.files, _output_names(args.files)):
            dst = args.out / name
            if dst.resolve() == src.resolve():
                dst = dst.with_name(dst.stem + "_color.png")
            try:
                flow, valid = read_flow(src)
            except FlowFileError as e:
                failures.append(str(e))
                print(f"error: {e}", file=sys.stderr)
                continue
            rgb = flow_to_color(flow, valid, args.max_flow)
            write_image(dst, rgb)
            written.append(dst)
            if args.video is not None:
                if size is not None and rgb.shape[:2] != size:
                    msg = f"{src}: size {rgb.shape[:2]} differs from the video's {size}; left out of the video"
                    failures.append(msg)
                    print(f"error: {msg}", file=sys.stderr)
                    continue
                size = rgb.shape[:2]
            yield rgb

    if args.video is not None:
        args.video.parent.mkdir(parents=True, exist_ok=True)
        try:
            n = write_video(frames(), args.video, args.fps)
            print(f"wrote {args.video} ({n} frames at {args.fps:g} fps)")
        except ValueError as e:  # no good frame at all
            print(f"error: {e}", file=sys.stderr)
            failures.append(str(e))
    else:
        for _ in frames():
            pass
    if args.legend:
        write_image(args.out / "legend.png", color_wheel_legend())
        print(f"wrote {args.out / 'legend.png'}")
    print(f"wrote {len(written)} colour PNG(s) to {args.out}" + (f"; {len(failures)} problem(s)" if failures else ""))
    return 1 if failures else 0
