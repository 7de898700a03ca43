"""``python -m flow_engine estimate``: optical flow for a frame pair, a folder of frames or a video.

    python -m flow_engine estimate frame1.png frame2.png -o flow.flo      # .flo, or .png = KITTI 16-bit
    python -m flow_engine estimate --video clip.mp4 -o out/ --flo --png --mp4 out/flow.mp4
    python -m flow_engine estimate --frames frames/ -o out/ --png --batch 16 --size 512x256
    python -m flow_engine estimate --video rawframes/v_001/ -o out/ --flo     # frame folder img_00001.jpg...

Sequences give the flow from each frame to the next: ``out/NAME.flo`` / ``out/NAME.png``
(colour-coded) where NAME is the first frame's file stem (``--frames``) or its 0-based index
(``--video``, ``000000``...). Videos are decoded with decord in chunks of ``--batch`` frames,
never extracted to disk. Sizes are WIDTHxHEIGHT (``340x256``), as in video tools.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from flow_engine.commands.args import add_engine_argument, add_engine_options, output_file, output_folder, parse_size, positive_number
from flow_engine.engine import ENGINES, FlowEngine
from flow_engine.errors import FlowEngineError
from flow_engine.io.flow_files import read_image, write_flow, write_image
from flow_engine.io.video import (
    DEFAULT_FRAME_PATTERN, VideoError, frame_files, frame_pattern_arg, iter_frames, probe, resize_frames,
)
from flow_engine.io.viz import flow_to_color, write_video
from flow_engine.models.pwcnet import FlowInputError

log = logging.getLogger(__name__)

class EstimateError(FlowEngineError):
    """Input the estimate command cannot use (names the file and the problem)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pair", nargs="*", type=Path, metavar="FRAME", help="two frames: FRAME1 FRAME2 (with -o FILE.flo|.png)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--video", type=Path, metavar="FILE", help="flow between consecutive frames of this video "
                     "(or frame folder: frames img_00001.jpg... or as --frame-pattern says)")
    src.add_argument("--frames", type=Path, metavar="DIR", help="flow between consecutive images of this folder "
                     "(name order, or as --frame-pattern says)")
    parser.add_argument("--frame-pattern", type=frame_pattern_arg, metavar="PATTERN",
                        help="frame file names of a folder: img_{:05d}.jpg (--video's default), {:05d}.jpg, "
                             "frame_{:06d}.png, or a glob such as *.png (--frames' default: every image, name order)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output .flo/.png file (pair) or folder (sequence)")
    parser.add_argument("--flo", action="store_true", help="sequence: write OUT/NAME.flo")
    parser.add_argument("--png", action="store_true", help="sequence: write colour-coded OUT/NAME.png")
    parser.add_argument("--mp4", type=output_file, metavar="OUT.mp4", help="sequence: write a colour-coded video")
    parser.add_argument("--max-flow", type=float, metavar="PX",
                        help="flow magnitude of full colour saturation; default: per frame for PNGs, "
                             "the largest magnitude of the first batch for the MP4 (fixed for all frames)")
    parser.add_argument("--fps", type=positive_number, help="MP4 frame rate (default: the video's, 30 for --frames)")
    parser.add_argument("--batch", type=int, default=8, metavar="N", help="frame pairs per engine call (default 8)")
    parser.add_argument("--size", type=parse_size, metavar="WxH", help="resize frames to WIDTHxHEIGHT before the flow")
    parser.add_argument("--max-frames", type=int, metavar="N", help="use only the first N frames of a sequence")
    add_engine_argument(parser, "pwcnet", ENGINES, old=("--model",))
    add_engine_options(parser)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default auto)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"), help="inference precision")


def run(args: argparse.Namespace) -> int:
    try:
        _check_args(args)
    except EstimateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        engine = FlowEngine(name=args.engine, weights=args.weights, device=args.device, dtype=args.dtype,
                            flow_updates=args.flow_updates, scales=args.scales)
    except FlowEngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.size is not None:  # before anything is decoded at that size
        try:
            engine.check_size(*args.size, args.batch, held_bytes=3 * (args.batch + 1) * 3 * args.size[0] * args.size[1])
        except FlowInputError as e:
            print(f"error: --size {args.size[1]}x{args.size[0]}: {e}", file=sys.stderr)
            return 2
    try:
        if args.video is None and args.frames is None:
            return _run_pair(engine, args)
        return _run_sequence(engine, args)
    except FlowEngineError as e:  # a bad frame, flow file, video, weights file or engine setting
        print(f"error: {e}", file=sys.stderr)
        return 1


def _check_args(args: argparse.Namespace) -> None:
    sequence = args.video is not None or args.frames is not None
    if sequence and args.pair:
        raise EstimateError("give either FRAME1 FRAME2 or --video/--frames, not both")
    if not sequence:
        if len(args.pair) != 2:
            raise EstimateError(f"expected two frames FRAME1 FRAME2 (or --video/--frames), got {len(args.pair)}")
        if args.out.suffix.lower() not in (".flo", ".png"):
            raise EstimateError(f"{args.out}: output of a frame pair must end in .flo or .png (KITTI)")
        if args.flo or args.png or args.mp4:
            raise EstimateError("--flo, --png and --mp4 apply to --video/--frames only")
    elif not (args.flo or args.png or args.mp4):
        raise EstimateError("nothing to write: give any of --flo, --png, --mp4")
    try:  # a folder where a file goes, a file where a folder goes: said now, before any flow is computed
        (output_folder if sequence else output_file)(str(args.out))
    except argparse.ArgumentTypeError as e:
        raise EstimateError(f"-o {e}") from None
    if args.batch < 1:
        raise EstimateError(f"--batch must be at least 1, got {args.batch}")
    if args.max_frames is not None and args.max_frames < 2:
        raise EstimateError(f"--max-frames must be at least 2 (one pair), got {args.max_frames}")
    if args.max_flow is not None and not args.max_flow > 0:
        raise EstimateError(f"--max-flow must be positive, got {args.max_flow}")


def _resize(img: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    return img if size is None else resize_frames(img[None], size)[0]


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T,H,W,3] -> uint8 [T,3,H,W] (a view: no copy)."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2)


def _run_pair(engine: FlowEngine, args: argparse.Namespace) -> int:
    a, b = (_resize(read_image(p), args.size) for p in args.pair)
    if a.shape != b.shape:
        raise EstimateError(f"{args.pair[0]} is {a.shape[1]}x{a.shape[0]} but {args.pair[1]} is {b.shape[1]}x{b.shape[0]}")
    flow = engine(_to_tensor(a[None]), _to_tensor(b[None]))[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_flow(args.out, flow.permute(1, 2, 0).numpy())
    print(f"{args.out}: flow {a.shape[1]}x{a.shape[0]}, max |flow| {flow.norm(dim=0).max().item():.2f} px")
    return 0


# --- sequences -------------------------------------------------------------------------------------
def _sequence(path: Path, chunk: int, size: tuple[int, int] | None, max_frames: int | None, pattern: str,
              frame_names: bool):
    """(names, fps, iterator of uint8 [t,H,W,3] chunks) of a video or frame folder (flow_engine.io.video).
    Names are the frames' file stems with ``frame_names``, else 0-based indices (``000000``...)."""
    try:
        info = probe(path, pattern)
        names = [f.stem for f in frame_files(path, pattern)] if frame_names else None
    except VideoError as e:
        raise EstimateError(str(e)) from None
    n = info.num_frames if max_frames is None else min(info.num_frames, max_frames)
    if n < 2:
        raise EstimateError(f"{path}: {n} decodable frame(s); need at least 2")

    def chunks() -> Iterator[np.ndarray]:
        seen = 0
        try:
            for frames in iter_frames(path, chunk, size, pattern):
                yield frames[: n - seen]
                seen += len(frames)
                if seen >= n:
                    return
        except VideoError as e:
            raise EstimateError(str(e)) from None

    return (names or [f"{i:06d}" for i in range(n)])[:n], info.fps or 30.0, chunks()


def _run_sequence(engine: FlowEngine, args: argparse.Namespace) -> int:
    if args.video is not None:
        pattern = args.frame_pattern or DEFAULT_FRAME_PATTERN
        names, fps, chunks = _sequence(args.video, args.batch, args.size, args.max_frames, pattern, False)
    else:
        if not args.frames.is_dir():
            raise EstimateError(f"{args.frames}: no such folder")
        names, fps, chunks = _sequence(args.frames, args.batch, args.size, args.max_frames,
                                       args.frame_pattern or "*", True)
    if args.flo or args.png:
        args.out.mkdir(parents=True, exist_ok=True)
    if args.mp4 is not None:
        args.mp4.parent.mkdir(parents=True, exist_ok=True)
    state = {"max_flow": args.max_flow, "pairs": 0}

    def colour_frames() -> Iterator[np.ndarray]:
        """Computes the flows chunk by chunk, writes .flo/.png, yields MP4 colour frames."""
        with tqdm(total=len(names) - 1, unit="pair", desc="flow", disable=None) as bar:
            for flows in engine.stream(chunks, args.batch):
                flows = flows.permute(0, 2, 3, 1).cpu().numpy()  # [t,H,W,2]
                if args.mp4 is not None and state["max_flow"] is None:
                    state["max_flow"] = max(float(np.linalg.norm(flows, axis=-1).max()), 1e-6)
                for flow in flows:
                    name = names[state["pairs"]]
                    if args.flo:
                        write_flow(args.out / f"{name}.flo", flow)
                    if args.png:
                        write_image(args.out / f"{name}.png", flow_to_color(flow, max_flow=args.max_flow))
                    state["pairs"] += 1
                    if args.mp4 is not None:
                        yield flow_to_color(flow, max_flow=state["max_flow"])
                bar.update(len(flows))

    if args.mp4 is not None:
        write_video(colour_frames(), args.mp4, fps=args.fps or fps)
    else:
        for _ in colour_frames():
            pass
    where = [str(args.out)] if (args.flo or args.png) else []
    where += [str(args.mp4)] if args.mp4 is not None else []
    extra = f" (MP4 saturation at {state['max_flow']:.2f} px)" if args.mp4 is not None else ""
    print(f"{state['pairs']} flow fields from {len(names)} frames -> {', '.join(where)}{extra}")
    return 0
