"""Middlebury colour coding of optical flow (Baker et al. 2011), as PNGs and MP4 videos.

Direction gives the hue on the Middlebury colour wheel (right = red, down = yellow,
left = cyan, up = blue/violet), magnitude gives the saturation: white is still, full
colour is the normalising magnitude (the frame's largest valid flow, or ``max_flow``
pixels), darker beyond it. Unknown pixels are black.

CLI: ``python -m flow_engine viz FILES... -o DIR [--video OUT.mp4 --fps 30] [--max-flow PX] [--legend]``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from flow_engine.io import FlowFileError, output_file, output_folder, positive_number, read_flow, write_image

log = logging.getLogger(__name__)

# Hue segments of the wheel, in wheel entries: red-yellow, yellow-green, green-cyan,
# cyan-blue, blue-magenta, magenta-red (chosen by Baker et al. for perceptual spacing).
WHEEL_SEGMENTS = (("RY", 15), ("YG", 6), ("GC", 4), ("CB", 11), ("BM", 13), ("MR", 6))


def make_color_wheel() -> np.ndarray:
    """The Middlebury colour wheel: float64 [55,3] RGB in 0..255, red -> yellow -> ... -> magenta -> red."""
    rows = []
    for name, n in WHEEL_SEGMENTS:
        ramp = np.floor(255 * np.arange(n) / n)
        up, down, full, zero = ramp, 255 - ramp, np.full(n, 255.0), np.zeros(n)
        rgb = {
            "RY": (full, up, zero),
            "YG": (down, full, zero),
            "GC": (zero, full, up),
            "CB": (zero, down, full),
            "BM": (up, zero, full),
            "MR": (full, zero, down),
        }[name]
        rows.append(np.stack(rgb, axis=1))
    return np.concatenate(rows)


_WHEEL = make_color_wheel()


def flow_to_color(flow: np.ndarray, valid: np.ndarray | None = None, max_flow: float | None = None) -> np.ndarray:
    """Colour-codes flow [H,W,2] (pixels) as uint8 RGB [H,W,3].

    The saturation is normalised by ``max_flow`` pixels when given (steady colours across a
    video), else by the largest valid magnitude of this frame. Pixels not ``valid`` (or not
    finite) are black.
    """
    flow = np.asarray(flow, dtype=np.float64)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be [H,W,2], got shape {flow.shape}")
    known = np.isfinite(flow).all(axis=2)
    if valid is not None:
        known &= np.asarray(valid, dtype=bool)
    u = np.where(known, flow[..., 0], 0.0)
    v = np.where(known, flow[..., 1], 0.0)
    mag = np.sqrt(u * u + v * v)
    norm = _normaliser(float(mag.max(initial=0.0)), max_flow)

    ncols = len(_WHEEL)
    fk = (np.arctan2(-v, -u) / np.pi + 1) / 2 * (ncols - 1)
    k0 = np.floor(fk).astype(np.int64)
    k1 = (k0 + 1) % ncols
    f = (fk - k0)[..., None]
    col = (1 - f) * _WHEEL[k0] + f * _WHEEL[k1]  # 0..255
    rad = (mag / norm)[..., None]
    col = np.where(rad <= 1, 255 - rad * (255 - col), col * 0.75)
    rgb = np.floor(col).astype(np.uint8)
    rgb[~known] = 0
    return rgb


def flow_to_color_torch(flow: torch.Tensor, max_flow: float | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Batched colour coding on the flow's device: flow [B,2,H,W] pixels -> uint8 RGB [B,3,H,W].

    Same colours as :func:`flow_to_color`; each frame is normalised by its own largest valid
    magnitude unless ``max_flow`` is given. ``valid`` [B,H,W] (optional) marks known pixels.
    """
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must be [B,2,H,W], got shape {tuple(flow.shape)}")
    # float64 so the floor at the end matches the numpy version bit for bit.
    flow = flow.detach().double()
    known = torch.isfinite(flow).all(dim=1)
    if valid is not None:
        known &= valid.to(device=flow.device, dtype=torch.bool)
    u = torch.where(known, flow[:, 0], 0.0)
    v = torch.where(known, flow[:, 1], 0.0)
    mag = torch.sqrt(u * u + v * v)
    if max_flow is not None:
        norm = torch.full((flow.shape[0], 1, 1), _normaliser(0.0, max_flow), dtype=flow.dtype, device=flow.device)
    else:
        frame_max = mag.flatten(1).amax(dim=1).view(-1, 1, 1)
        norm = torch.where(frame_max > 0, frame_max, 1.0)

    wheel = torch.from_numpy(_WHEEL).to(flow.device)
    ncols = wheel.shape[0]
    fk = (torch.atan2(-v, -u) / torch.pi + 1) / 2 * (ncols - 1)
    k0 = torch.floor(fk).long()
    k1 = (k0 + 1) % ncols
    f = (fk - k0).unsqueeze(-1)
    col = (1 - f) * wheel[k0] + f * wheel[k1]  # [B,H,W,3], 0..255
    rad = (mag / norm).unsqueeze(-1)
    col = torch.where(rad <= 1, 255 - rad * (255 - col), col * 0.75)
    rgb = torch.floor(col).to(torch.uint8)
    rgb[~known] = 0
    return rgb.permute(0, 3, 1, 2).contiguous()


def _normaliser(frame_max: float, max_flow: float | None) -> float:
    if max_flow is not None:
        if not max_flow > 0:
            raise ValueError(f"max_flow must be a positive number of pixels, got {max_flow}")
        return float(max_flow)
    return frame_max if frame_max > 0 else 1.0


def color_wheel_legend(size: int = 256) -> np.ndarray:
    """The colour key: uint8 RGB [size,size,3] of a disc whose flow points away from the centre, black outside."""
    c = (np.arange(size) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    u, v = np.meshgrid(c, c)
    flow = np.stack([u, v], axis=2)
    return flow_to_color(flow, valid=u * u + v * v <= 1, max_flow=1.0)


def write_video(frames: Iterable[np.ndarray], path: str | Path, fps: float = 30) -> int:
    """Writes uint8 RGB frames [H,W,3] as an MP4 (H.264 yuv420p, or MPEG-4 part 2 if libx264 is absent).

    Odd sizes are padded with black to even ones (yuv420p needs them). All frames must
    have the first frame's size. Returns the number of frames written.
    """
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError(f"{path}: no frames to write")
    first = _check_frame(first, None, path)
    h, w = first.shape[:2]
    padded_h, padded_w = h + h % 2, w + w % 2
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    if codec != "libx264":
        log.warning("libx264 is not available in this PyAV build; writing %s with mpeg4", path)
    count = 0
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = padded_w, padded_h, "yuv420p"
        if codec == "mpeg4":
            stream.bit_rate = 8_000_000  # the default is too low for flow colours
        else:
            stream.options = {"crf": "18"}
        frame = first
        while frame is not None:
            if (padded_h, padded_w) != (h, w):
                frame = np.pad(frame, ((0, padded_h - h), (0, padded_w - w), (0, 0)))
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
            count += 1
            frame = next(it, None)
            if frame is not None:
                frame = _check_frame(frame, (h, w), path)
        for packet in stream.encode():
            container.mux(packet)
    return count


def _check_frame(frame: np.ndarray, size: tuple[int, int] | None, path: str | Path) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"{path}: video frames must be uint8 [H,W,3], got {frame.dtype} {frame.shape}")
    if size is not None and frame.shape[:2] != size:
        raise ValueError(f"{path}: frame of size {frame.shape[:2]} differs from the first frame's {size}")
    return np.ascontiguousarray(frame)


# ----------------------------------------------------------------------------- CLI


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
