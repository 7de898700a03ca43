"""Classify one video with a trained two-stream checkpoint.

``python -m actionflow classify VIDEO --ckpt CKPT [--topk 5] [--json] [--flow-video OUT.mp4] [--device auto] [--clips N]``

The checkpoint (a Lightning checkpoint written by ``train.py``) is read with
``torch.load(weights_only=True)``: it holds only tensors and plain hyperparameters (class names,
mode, backbone, flow engine, sizes, sampling). The video is sampled as at test time (``--clips``
evenly spaced clips of K segments over the whole video, averaged), flow is computed online with
the flow engine recorded in the checkpoint (no cache needed), and the top-k classes with their
probabilities are printed, fused and per stream. A video shorter than one snippet is looped.

Exit codes: 0 on success, 1 for an unreadable video, 2 for a bad checkpoint or arguments.
"""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from actionflow.annotations import Sample
from actionflow.clips import Clip, VideoClips, collate, crop_box
from actionflow.data import ActionDataModule, DataConfigError, check_memory, snippets_bytes
from actionflow.errors import ActionflowError
from actionflow.module import ActionRecognizer
from actionflow.sampling import snippet_starts
from flow_engine.checkpoints import WeightsError, load_weights_only
from flow_engine.engine import FlowEngineError, resolve_device
from flow_engine.commands.args import output_file
from flow_engine.io.video import (
    Video, VideoError, VideoInfo, as_video, decode_size, frame_pattern_arg, iter_frames, probe,
)
from flow_engine.io.viz import flow_to_color_torch, write_video

log = logging.getLogger(__name__)


class CheckpointError(ActionflowError, ValueError):
    """A checkpoint that is missing, unreadable, or not one written by train.py."""


def read_checkpoint(path: str | Path) -> dict:
    """The contents of a train.py checkpoint, read with ``torch.load(weights_only=True)`` (a crafted
    pickle is refused, never run); :class:`CheckpointError` naming the file otherwise."""
    try:
        ckpt = load_weights_only(path, what="checkpoint")
    except WeightsError as exc:
        raise CheckpointError(str(exc)) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) \
            or not isinstance(ckpt.get("hyper_parameters"), dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint of train.py (no state_dict / hyper_parameters)")
    return ckpt


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """(ActionRecognizer in eval mode on ``device``, data settings: :func:`data_settings`) from a train.py checkpoint."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    accepted = inspect.signature(ActionRecognizer.__init__).parameters
    recorded_hparams = dict(ckpt["hyper_parameters"])
    if "flow_model" in recorded_hparams:  # checkpoints of earlier versions name the flow engine so
        recorded_hparams.setdefault("flow_engine", recorded_hparams.pop("flow_model"))
    hparams = {k: v for k, v in recorded_hparams.items() if k in accepted}
    hparams["pretrained"] = False  # the weights come from the checkpoint...
    hparams["flow_init"] = None  # ...the temporal stream's starting point's too
    if hparams.get("finetune_flow"):
        hparams["flow_weights"] = None  # ...the fine-tuned flow network's too
    try:  # shapes first, on the meta device (nothing allocated): a crafted hyper-parameter (a million classes)
        # must not build gigabytes of model before the weights show it does not fit them
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in ActionRecognizer(**{**hparams, "finetune_flow": False}).state_dict().items()}
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: its hyper-parameters do not make a model ({str(exc).splitlines()[0][:200]})") from None
    weights = ckpt["state_dict"]
    wrong = [k for k, shape in shapes.items() if not (torch.is_tensor(weights.get(k)) and tuple(weights[k].shape) == shape)]
    if wrong:
        raise CheckpointError(f"{path}: does not fit the recorded model ({len(wrong)} weight(s) missing or of another "
                              f"shape, first: {wrong[0]})")
    try:
        model = ActionRecognizer(**hparams)
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: does not fit the recorded model ({str(exc).splitlines()[0][:200]})") from None
    broken = [name for name, t in ckpt["state_dict"].items() if torch.is_tensor(t) and t.is_floating_point()
              and not torch.isfinite(t).all()]
    if broken:
        raise CheckpointError(f"{path}: {len(broken)} weight tensor(s) hold NaN or infinity (first: {broken[0]}): "
                              "training diverged; use an earlier checkpoint")
    model = model.to(device).eval()
    if model.hparams.mode != "rgb":
        try:  # built now, so that an engine this version does not have is named here, not a traceback later
            model.flow_engine
        except (FlowEngineError, WeightsError) as exc:
            raise CheckpointError(f"{path}: its flow engine {model.hparams.flow_engine!r} cannot be built here ({exc})") from None
    recorded = ckpt.get("flow_engine")
    if recorded and not (hparams.get("finetune_flow") or model.hparams.mode == "rgb"):
        now = model.flow_identity()
        if any(now.get(k) != v for k, v in recorded.items()):
            log.warning("%s was trained on flow from %s; this machine's engine is %s: scores may differ",
                        path, recorded, {k: now.get(k) for k in recorded})
    return model, data_settings(ckpt.get("datamodule_hyper_parameters") or {})


def data_settings(recorded: dict) -> dict:
    """A run's data settings as a checkpoint recorded them; :class:`ActionDataModule`'s defaults for any it lacks."""
    defaults = {k: p.default for k, p in inspect.signature(ActionDataModule).parameters.items() if p.default is not p.empty}
    return {**defaults, **dict(recorded)}


@dataclass
class Prediction:
    """classify's result for one video: ``probs`` (what the command prints, :meth:`json`) and what the web
    page shows besides: the snippets the network saw and each snippet's own scores.

    ``frames`` are the snippets' frames cropped as the network saw them, uint8 ``[S, T, 3, h, w]`` (T = L+1
    with flow, 1 for an RGB-only model; the RGB stream sees the first); ``flow`` their flow in px ``[S, L, 2,
    h, w]`` (None without a flow stream); ``starts`` each snippet's first frame ``[S]`` (clip-major, as
    sampled); ``snippet_probs`` ``{stream: [S, C]}`` when asked for; ``seconds`` the wall time of each step.
    """

    video: str
    class_names: list[str]
    streams: list[str]
    probs: dict[str, torch.Tensor]
    info: VideoInfo
    starts: np.ndarray
    frames: torch.Tensor
    flow: torch.Tensor | None
    snippet_probs: dict[str, torch.Tensor] | None
    seconds: dict[str, float]

    @property
    def main(self) -> str:
        """The stream whose scores are the answer: ``two_stream`` when both streams are there."""
        return self.streams[-1]

    def json(self, k: int = 5) -> dict:
        """The object ``classify --json`` prints."""
        return {
            "video": self.video,
            "topk": topk(self.probs[self.main], self.class_names, k),
            "streams": {s: topk(self.probs[s], self.class_names, k) for s in self.streams if s != "two_stream"},
        }


def predict(model, data_hparams: dict, video: str | Path | Video, clips: int | None = None,
            frame_pattern: str | None = None, snippets: bool = False) -> Prediction:
    """Classify ``video`` (test-time multi-clip sampling, online flow); a frame folder's frames are the files
    ``frame_pattern`` names. ``snippets`` also scores each snippet alone (one more pass of the network)."""
    clock = time.perf_counter()
    video = as_video(video, frame_pattern)
    info = probe(video)
    if info.num_frames < 2 and model.hparams.mode != "rgb":
        log.warning("%s has a single frame: the flow stream saw no motion (all-zero flow), so its scores and the "
                    "fused ones rest on appearance alone", video)
    h = data_settings(data_hparams)
    size = decode_size(info.height, info.width, _size_setting(h))
    crop = h.get("crop_size") or size
    dataset = VideoClips(
        [Clip(Sample(video.path, 0, frame_pattern=video.frame_pattern), info.num_frames, size)],
        phase="test",
        mode=model.hparams.mode,
        flow_source="online",
        num_segments=int(h["num_segments"]),
        flow_length=int(model.hparams.flow_length),
        test_clips=int(clips or h["test_clips"]),
        crop_size=(crop, crop) if isinstance(crop, int) else tuple(crop),
        strict=True,
    )
    batch = collate([dataset[0]])
    batch = {k: v.to(model.device) if torch.is_tensor(v) else [t.to(model.device) for t in v] for k, v in batch.items()}
    seconds = {"decode": time.perf_counter() - clock}
    clock = time.perf_counter()
    rgb, flow = model.inputs(batch)
    seconds["flow"] = time.perf_counter() - clock
    clock = time.perf_counter()
    probs = {k: v[0].cpu() for k, v in model.predict_proba({"rgb": rgb, "flow": flow}).items()}
    broken = [k for k, p in probs.items() if not torch.isfinite(p).all()]
    if broken:  # finite weights can still overflow: no score is better than a NaN one
        raise CheckpointError(f"the model's scores for {video} are not finite ({', '.join(broken)}): its weights "
                              "overflow on this input")
    per_snippet = None
    if snippets:  # each snippet as a video of one segment
        alone = {k: None if x is None else x.flatten(0, 1)[:, None] for k, x in (("rgb", rgb), ("flow", flow))}
        per_snippet = {k: v.cpu() for k, v in model.predict_proba(alone).items()}
    seconds["network"] = time.perf_counter() - clock
    if "frames" in batch:  # the snippets' frames, cropped as the network's input was
        box, flip = batch["box"][0].tolist(), bool(batch["flip"][0])
        frames = crop_box(batch["frames"][0], box, flip, tuple(flow.shape[-2:])).cpu()
    else:
        frames = rgb[0][:, None].cpu()
    if flow is not None:
        flow = flow[0].unflatten(1, (-1, 2)).cpu()
    starts = snippet_starts(info.num_frames, dataset.num_segments, dataset.span, "test", dataset.test_clips)
    return Prediction(str(video), list(model.hparams.class_names), list(model.streams), probs, info,
                      starts.reshape(-1), frames, flow, per_snippet, seconds)


def classify(model, data_hparams: dict, video: str | Path | Video, clips: int | None = None,
             frame_pattern: str | None = None) -> dict[str, torch.Tensor]:
    """Class probabilities ``{stream: [C]}`` for ``video`` (test-time multi-clip sampling); a frame
    folder's frames are the files ``frame_pattern`` names."""
    return predict(model, data_hparams, video, clips, frame_pattern).probs


def _size_setting(data_hparams: dict) -> tuple[int, int] | int:
    """The training run's ``data.size``: [H, W] or a short side."""
    size = data_hparams["size"]
    return int(size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def topk(probs: torch.Tensor, names: list[str], k: int) -> list[dict]:
    values, indices = probs.topk(min(k, len(probs)))
    return [{"label": names[i], "prob": round(float(p), 6)} for p, i in zip(values.tolist(), indices.tolist())]


def write_flow_video(model, video: str | Path, size: tuple[int, int], out: str | Path, chunk: int = 32,
                     frame_pattern: str | None = None) -> int:
    """The whole video's flow (model's engine, at ``size``) colour-coded into an MP4; returns frames written."""
    video = as_video(video, frame_pattern)
    frames = iter_frames(video, chunk, size)
    flows = [f.half().cpu() for f in model.flow_engine.stream(frames, chunk)]
    if not flows:
        log.warning("%s has a single frame: no flow video written", video)
        return 0
    flow = torch.cat(flows).float()
    max_flow = float(flow.norm(dim=1).max().clamp_min(1e-3))  # one normaliser for the whole clip: steady colours
    colours = flow_to_color_torch(flow, max_flow=max_flow).permute(0, 2, 3, 1).numpy()
    fps = probe(video).fps or 25.0
    write_video(list(colours), out, fps=fps)
    return len(colours)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", type=Path, help="video file (any format and resolution decord reads) or frame folder")
    parser.add_argument("--frame-pattern", type=frame_pattern_arg, default=None, metavar="PATTERN",
                        help="file names of a frame folder's frames (default: the training config's data.frame_pattern, "
                             "else img_{:05d}.jpg)")
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint written by train.py")
    parser.add_argument("--topk", type=int, default=5, help="classes to show (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--flow-video", type=output_file, default=None, help="write the video's flow, colour-coded, as MP4")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    parser.add_argument("--clips", type=int, default=None, help="clips averaged (default: the training config's test_clips)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.topk < 1 or (args.clips is not None and args.clips < 1):
        print("classify: error: --topk and --clips must be >= 1", file=sys.stderr)
        return 2
    try:
        device = resolve_device(args.device)
        model, data_hparams = load_checkpoint(args.ckpt, device)
    except (CheckpointError, FlowEngineError, RuntimeError) as exc:
        print(f"classify: error: {exc}", file=sys.stderr)
        return 2
    names = model.hparams.class_names
    clips, segments = args.clips or int(data_hparams["test_clips"]), int(data_hparams["num_segments"])
    try:  # before anything is decoded
        check_memory(f"--clips {clips} x {segments} snippets", snippets_bytes(clips * segments, int(model.hparams.flow_length),
                                                                              _size_setting(data_hparams)))
    except DataConfigError as exc:
        print(f"classify: error: {exc}", file=sys.stderr)
        return 2
    try:
        video = Video(str(args.video), args.frame_pattern or data_hparams["frame_pattern"])  # as in training
        prediction = predict(model, data_hparams, video, args.clips)
        if args.flow_video is not None:
            info = probe(video)
            size = decode_size(info.height, info.width, _size_setting(data_hparams))
            write_flow_video(model, video, size, args.flow_video)
    except VideoError as exc:
        print(f"classify: error: {exc}", file=sys.stderr)
        return 1
    except CheckpointError as exc:
        print(f"classify: error: {args.ckpt}: {exc}", file=sys.stderr)
        return 2
    main, result = prediction.main, prediction.json(args.topk)
    if args.json:
        print(json.dumps(result, allow_nan=False))  # strict JSON: a NaN would be refused here, never printed
        return 0
    print(f"{args.video}: {main}" + (f" (saved flow video to {args.flow_video})" if args.flow_video else ""))
    width = max(len(n) for n in names)
    for stream in model.streams[::-1]:
        rows = result["topk"] if stream == main else result["streams"][stream]
        print(f"  {stream}:")
        for i, row in enumerate(rows, 1):
            print(f"    {i}. {row['label']:<{width}}  {row['prob']:.3f}")
    return 0
