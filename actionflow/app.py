"""The local web page: classify a clip and see its flow (Gradio, the optional extra ``app``).

``python -m actionflow app [--ckpt PATH] [--host 127.0.0.1] [--port 7860] [--examples DIR] [--max-upload-mb 200]
[--concurrency 1] [--flow-weights ENGINE=PATH] [--device auto] [--bench [VIDEO]]``

Classify: an upload (a video or a frame folder's zip) or an example goes through classify's own
:func:`actionflow.classify.predict`: the numbers ``classify --json`` prints (also the API endpoint ``/classify``),
the snippets the network saw beside their flow, each snippet's scores along the video, each step's time. Flow: two
frames or a short video through any engine, the colour key, a ``.flo``, and EPE and error map given the truth.
Safety: 127.0.0.1 unless told otherwise; only uploads (Gradio refuses other paths a client names) and the
configured examples are opened; an upload size limit; a queue; temporary files swept, and removed at the end.
"""
from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import zipfile
from collections import Counter
from html import escape
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from actionflow.classify import CheckpointError, Prediction, load_checkpoint, predict
from actionflow.errors import ActionflowError
from flow_engine.checkpoints import WeightsError
from flow_engine.commands.args import positive_int, positive_number
from flow_engine.engine import ENGINES, FlowEngine, FlowEngineError, resolve_device
from flow_engine.io.flow_files import FlowFileError, image_size, read_flow, read_image, write_flow
from flow_engine.io.video import (
    DEFAULT_FRAME_PATTERN, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, Video, VideoError, is_frame_name, iter_frames,
    list_videos, probe, scaled_size,
)
from flow_engine.io.viz import color_wheel_legend, flow_to_color, flow_to_color_torch, write_video
from flow_engine.metrics import flow_metrics
from flow_engine.models.pwcnet import FlowInputError
from flow_engine.models.raft import VARIANTS as RAFT_VARIANTS, cached_weights_path

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 200
TOP_K = 5  # classes shown per stream, as classify's default --topk
DEMO_EXAMPLES = 6  # demo test videos offered as examples (one per class first)
DIR_EXAMPLES = 12  # clips offered from --examples DIR
FLOW_MAX_FRAMES = 32  # a video on the Flow tab: its first frames ...
FLOW_MAX_SIDE = 1024  # ... scaled down when a side is longer (CPU time grows with the pixels)
PAIR_MAX_SIDE = 2048  # two frames larger than this are refused (a ground truth forbids scaling them; TV-L1 takes minutes)
DISPLAY_SIDE = 224  # network-input crops are enlarged (nearest) to at least this many px for display
DISPLAY_FPS = 6  # the snippets play slowly: each is only L+1 frames
SWEEP_AGE_S = 600  # outputs older than this are deleted (Gradio copied them long before)
ZIP_MAX_FILES = 100_000
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
NO_CHECKPOINT = ("**No checkpoint.** Train one with `python train.py` (it ends by printing `checkpoint: PATH`), "
                 "then restart this page, or start it with `--ckpt PATH`. The Flow tab works without one.")
STREAM_TITLES = {"two_stream": "fused (two-stream)", "rgb": "RGB stream", "flow": "flow stream"}


class UploadError(ActionflowError, ValueError):
    """An upload the page cannot use; the message names it by its file name, never by a server path."""


def find_checkpoint(runs: Path = Path("runs")) -> Path | None:
    """The newest best checkpoint (``best*.ckpt``) under ``runs/``, or None."""
    found = [p for p in runs.glob("**/checkpoints/best*.ckpt") if p.is_file()] if runs.is_dir() else []  # no dead links
    found.sort(key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def example_clips(data_hparams: dict | None, examples_dir: Path | None) -> list[Path]:
    """The demo set's test videos (one per class first) when the checkpoint's data root holds them, then the
    videos in ``examples_dir``."""
    clips: list[Path] = []
    root = Path((data_hparams or {}).get("root") or "")
    test_list = root / "test.txt"
    if (data_hparams or {}).get("root") and test_list.is_file():
        by_class: dict[str, list[Path]] = {}
        for line in test_list.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and (root / parts[0]).is_file():
                by_class.setdefault(parts[1], []).append(root / parts[0])
        rounds = max((len(v) for v in by_class.values()), default=0)
        ordered = [v[i] for i in range(rounds) for v in by_class.values() if i < len(v)]
        clips += ordered[:DEMO_EXAMPLES]
    if examples_dir is not None:
        clips += [p.resolve() for p in list_videos(examples_dir) if p.is_file()][:DIR_EXAMPLES]  # not frame folders
    return clips


def available_engines(flow_weights: dict[str, Path]) -> list[str]:
    """Every engine FlowEngine knows, RAFT only when its weights are here (a file given, or torch hub's cache)."""
    return [m for m in ENGINES if m not in RAFT_VARIANTS or m in flow_weights or cached_weights_path(m).is_file()]


def extract_frames(archive: Path, dest: Path, max_bytes: int) -> Path:
    """The frame folder inside a zip, extracted under ``dest``: image files only, all in one folder, no
    absolute or ``..`` names, no links, no passwords, at most ``max_bytes`` unpacked. UploadError otherwise.
    What macOS adds to a zip (``__MACOSX/``, hidden files such as ``._img.png`` or ``.DS_Store``) is left out."""
    name = archive.name
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if len(members) > ZIP_MAX_FILES:
                raise UploadError(f"{name}: {len(members)} files, more than {ZIP_MAX_FILES}")
            if sum(m.file_size for m in members) > max_bytes:
                raise UploadError(f"{name}: unpacks to more than the upload limit ({max_bytes / 1e6:.0f} MB)")
            frames = []
            for m in members:
                path = PurePosixPath(m.filename.replace("\\", "/"))
                if path.is_absolute() or ".." in path.parts or (m.external_attr >> 16) & 0o170000 == 0o120000:
                    raise UploadError(f"{name}: unsafe entry {m.filename!r} (absolute, '..' or a link)")
                if path.parts[0] == "__MACOSX" or path.name.startswith("."):
                    continue
                if m.flag_bits & 0x1:
                    raise UploadError(f"{name}: {m.filename!r} is encrypted; zip the frames without a password")
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    frames.append((m, path))
            if not frames:
                raise UploadError(f"{name}: no image files (frames) in this zip")
            folders = {p.parent for _, p in frames}
            if len(folders) > 1:
                raise UploadError(f"{name}: frames in {len(folders)} folders; zip one frame folder")
            for m, path in frames:
                target = dest.joinpath(*path.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError) as exc:
        raise UploadError(f"{name}: not a readable zip ({exc})") from None
    return dest.joinpath(*folders.pop().parts)


def _enlarge(x: torch.Tensor, side: int = DISPLAY_SIDE) -> torch.Tensor:
    """``[..., h, w]`` scaled up by a whole factor (nearest: each input pixel stays visible) to >= ``side``."""
    k = max(1, -(-side // min(x.shape[-2:])))
    return x.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)


def snippet_frames(pred: Prediction) -> list[np.ndarray]:
    """What the network saw, as video frames: each snippet's crops beside their colour-coded flow (one
    colour scale for the whole video), uint8 ``[H, W, 3]``; the crops alone for an RGB-only model."""
    if pred.flow is None:
        tiles = pred.frames.flatten(0, 1)
    else:
        flow = pred.flow.flatten(0, 1).float()
        max_flow = float(flow.norm(dim=1).max().clamp_min(1e-3))
        colour = flow_to_color_torch(flow, max_flow=max_flow)
        rgb = pred.frames[:, : pred.flow.shape[1]].flatten(0, 1)
        gap = torch.full((*rgb.shape[:-1], max(2, rgb.shape[-1] // 16)), 255, dtype=torch.uint8)
        tiles = torch.cat([rgb, gap, colour], dim=-1)
    return list(_enlarge(tiles).permute(0, 2, 3, 1).contiguous().numpy())


def timeline_figure(pred: Prediction, classes: int = 3):
    """Each snippet's scores (the main stream) for the video's top classes, along the video; dashed: the video's."""
    from matplotlib.figure import Figure

    order = np.argsort(pred.starts, kind="stable")
    middle = pred.starts[order] + (pred.frames.shape[1] - 1) / 2
    fps = pred.info.fps
    x = middle / fps if fps > 0 else middle
    scores = pred.snippet_probs[pred.main][order]
    fig = Figure(figsize=(6.4, 3.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for i, c in enumerate(pred.probs[pred.main].topk(min(classes, len(pred.class_names))).indices.tolist()):
        ax.plot(x, scores[:, c].numpy(), "o-", color=f"C{i}", label=pred.class_names[c])
        ax.axhline(float(pred.probs[pred.main][c]), color=f"C{i}", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("time in the video (s)" if fps > 0 else "frame")
    ax.set_ylabel("probability")
    ax.set_title(f"{STREAM_TITLES[pred.main]}: each snippet alone; dashed: the video", fontsize=9, loc="right")
    ax.legend(fontsize=8, loc="upper right")
    return fig


def scores_html(result: dict, streams: list[str]) -> str:
    """The fused top-k and each stream's top-k side by side, from classify's JSON (its numbers, as they are)."""
    columns = [(streams[-1], result["topk"])] + [(s, result["streams"][s]) for s in streams[:-1]]
    html = ['<div class="af-scores" style="display:flex;gap:24px;flex-wrap:wrap">']
    for stream, rows in columns:
        html.append(f'<table class="af-top" id="af-top-{stream}"><caption><b>{STREAM_TITLES[stream]}</b></caption>')
        for rank, row in enumerate(rows, 1):
            bar = f'<div style="background:#6b8fd6;height:8px;width:{100 * row["prob"]:.1f}px"></div>'
            html.append(f'<tr><td>{rank}.</td><td class="af-label">{escape(row["label"])}</td>'
                        f'<td class="af-prob" style="font-family:monospace">{row["prob"]:.6f}</td><td>{bar}</td></tr>')
        html.append("</table>")
    return "".join(html) + "</div>"


_gradio = {"folder": None, "pages": 0}  # this process's folder for Gradio, and the pages using it


def _gradio_folder(use: bool) -> None:
    """$GRADIO_TEMP_DIR (uploads, Gradio's copies of outputs) is read by Gradio on every request, so there is one
    per process: made by the first page (unless set), removed when the last one closes (``use=False``) or at exit."""
    if use:
        if _gradio["pages"] == 0 and not os.environ.get("GRADIO_TEMP_DIR"):
            _gradio["folder"] = os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="actionflow-gradio-")
            atexit.register(shutil.rmtree, _gradio["folder"], True)
        _gradio["pages"] += 1
        return
    _gradio["pages"] -= 1
    if _gradio["pages"] == 0 and _gradio["folder"]:
        shutil.rmtree(_gradio["folder"], ignore_errors=True)
        os.environ.pop("GRADIO_TEMP_DIR", None)
        _gradio["folder"] = None


class ActionflowApp:
    """The page's state and handlers: the model (loaded once), the flow engines (built on first use), the
    settings, and the one temporary folder everything is written to."""

    def __init__(self, ckpt: Path | None = None, device: str = "auto", examples_dir: Path | None = None,
                 max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, concurrency: int = 1,
                 flow_weights: dict[str, Path] | None = None):
        if not (0 < max_upload_mb < float("inf")) or concurrency < 1:
            raise ValueError("--max-upload-mb must be positive and --concurrency at least 1")
        self.device = resolve_device(device)
        self.ckpt, self.model, self.data_hparams = ckpt, None, {}
        if ckpt is not None:
            self.model, self.data_hparams = load_checkpoint(ckpt, self.device)
        self.pattern = self.data_hparams.get("frame_pattern") or DEFAULT_FRAME_PATTERN
        self.examples = example_clips(self.data_hparams, examples_dir)
        self.max_bytes = int(max_upload_mb * 1e6)
        self.concurrency = concurrency
        self.flow_weights = dict(flow_weights or {})
        self.engine_names = available_engines(self.flow_weights)
        self._engines: dict[str, FlowEngine] = {}
        for name in self.flow_weights:  # weights given that do not load are the command's error, not a page's
            self.engine(name)
        self.root = Path(tempfile.mkdtemp(prefix="actionflow-app-"))
        self.page = None
        self.last_seconds: dict[str, float] = {}

    # ------------------------------------------------------------------ inputs and outputs
    def _upload(self, upload: str | None, kinds: tuple[str, ...], what: str) -> Path:
        """The file of an upload (or an example), checked; never a path of the client's choosing: Gradio lets a
        client name one (an image's data without its 'meta' field passes its checks), so the page checks too."""
        if not upload:
            raise UploadError(f"Upload {what} first.")
        path, uploads = Path(upload).resolve(), os.environ.get("GRADIO_TEMP_DIR")
        if not ((uploads and path.is_relative_to(Path(uploads).resolve())) or path in {p.resolve() for p in self.examples}):
            raise UploadError(f"{path.name}: not a file uploaded to this page; upload it")
        size = path.stat().st_size
        if size > self.max_bytes:
            raise UploadError(f"{path.name}: {size / 1e6:.0f} MB, over this page's upload limit of "
                              f"{self.max_bytes / 1e6:.0f} MB (--max-upload-mb)")
        if path.suffix.lower() not in kinds:
            raise UploadError(f"{path.name}: not {what} (expected {', '.join(kinds)})")
        return path

    def _outdir(self) -> Path:
        """A fresh folder for one request's outputs; those of requests older than SWEEP_AGE_S are deleted."""
        now = time.time()
        for old in self.root.glob("out-*"):
            if now - old.stat().st_mtime > SWEEP_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        for old in Path(os.environ.get("GRADIO_TEMP_DIR", self.root)).glob("tmp*"):  # Gradio's File leaves one per upload
            if old.is_file() and old.stat().st_size == 0 and now - old.stat().st_mtime > SWEEP_AGE_S:
                old.unlink(missing_ok=True)
        return Path(tempfile.mkdtemp(prefix="out-", dir=self.root))

    def _handle(self, what: str, fn, *args):
        """``fn(*args)`` with every failure turned into one clear line in the page (gradio.Error)."""
        import gradio as gr

        try:
            return fn(*args)
        except (UploadError, VideoError, FlowFileError, FlowInputError, FlowEngineError, WeightsError) as exc:
            message = str(exc)
        except Exception as exc:  # logged in full here, one line in the page
            log.exception("%s failed", what)
            message = f"{what} failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
        raise gr.Error(self._file_names_only(message), print_exception=False) from None

    def _file_names_only(self, message: str) -> str:
        """``message`` with the folders of the files the page reads cut out (its own, Gradio's uploads, the
        examples'): uploads are named by their file names, the server's folders are no business of the client's."""
        folders = {str(self.root), os.environ.get("GRADIO_TEMP_DIR", ""), *(str(p.parent) for p in self.examples)}
        for folder in sorted(filter(None, folders), key=len, reverse=True):
            message = re.sub(re.escape(folder) + r"[^\s'\"]*/", "", message)
        return message

    # ------------------------------------------------------------------ classify
    def classify(self, upload: str | None, snippets: bool = False) -> tuple[Prediction, dict]:
        """classify's :func:`predict` on an upload (a video, or a zip of a frame folder), and its JSON with
        ``video`` the upload's file name."""
        if self.model is None:
            raise UploadError(NO_CHECKPOINT.replace("**", ""))
        path = self._upload(upload, VIDEO_EXTENSIONS + (".zip",), "a video or a zip of a frame folder")
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            source, pattern = path, self.pattern
            if path.suffix.lower() == ".zip":
                source = extract_frames(path, Path(tmp), self.max_bytes)
                names = [f.name for f in source.iterdir()]
                if not any(is_frame_name(n, pattern) for n in names):  # not named as in training: name order
                    pattern = "*" + Counter(Path(n).suffix for n in names).most_common(1)[0][0]
            try:
                pred = predict(self.model, self.data_hparams, Video(str(source), pattern), snippets=snippets)
            except VideoError as exc:
                raise UploadError(f"{path.name}: {exc.reason}") from None
        result = pred.json(TOP_K)
        result["video"] = path.name
        return pred, result

    def classify_json(self, upload: str | None) -> dict:
        """The API endpoint ``/classify``: the JSON ``classify --json`` prints, for an uploaded video."""
        return self._handle("classify", lambda: self.classify(upload)[1])

    def classify_page(self, upload: str | None):
        """The Classify tab: (scores HTML, snippet video, timeline plot, details markdown, JSON)."""
        return self._handle("classify", self._classify_page, upload)

    def _classify_page(self, upload: str | None):
        started = time.perf_counter()
        pred, result = self.classify(upload, snippets=True)
        classified = time.perf_counter()
        video = self._outdir() / "snippets.mp4"
        write_video(snippet_frames(pred), video, fps=DISPLAY_FPS)
        figure = timeline_figure(pred)
        seconds = dict(pred.seconds, page=time.perf_counter() - classified, total=time.perf_counter() - started)
        self.last_seconds = seconds  # for the benchmark
        return scores_html(result, pred.streams), str(video), figure, self._details(pred, result, seconds), result

    def _details(self, pred: Prediction, result: dict, seconds: dict[str, float]) -> str:
        info, h, e = pred.info, self.model.hparams, self.model.flow_engine if pred.flow is not None else None
        engine = f"`{e.name}` (weights {e.weights_hash}, {e.device})" if e is not None else None
        S, T = pred.frames.shape[:2]
        seen = "RGB crop | flow" if pred.flow is not None else "RGB crops (this checkpoint has no flow stream)"
        duration = f", {info.num_frames / info.fps:.1f} s" if info.fps > 0 else ""
        lines = [
            f"**{result['video']}**: {info.num_frames} frames of {info.width}×{info.height}"
            + (f" at {info.fps:.3g} fps{duration}" if info.fps > 0 else ""),
            f"**sampled** {S} snippets of {T} frames (classify's test-time clips), seen as "
            f"{pred.frames.shape[-1]}×{pred.frames.shape[-2]} crops; the video plays {seen}",
            f"**checkpoint** `{self.ckpt.name}`: {h.mode}, {h.backbone}, {len(pred.class_names)} classes"
            + (f"; **flow engine** {engine}" if engine else ""),
            "**time** " + " · ".join(f"{k} {v:.2f} s" for k, v in seconds.items()),
        ]
        if info.num_frames < 2 and pred.flow is not None:
            lines.append("**note** a single frame: the flow stream saw no motion, so its scores rest on appearance")
        return "  \n".join(lines)

    # ------------------------------------------------------------------ flow
    def engine(self, name: str) -> FlowEngine:
        if name not in self.engine_names:
            raise FlowEngineError(f"engine {name!r} is not available here; choose one of {', '.join(self.engine_names)}")
        if name not in self._engines:
            self._engines[name] = FlowEngine(name, weights=self.flow_weights.get(name), device=str(self.device))
        return self._engines[name]

    def flow_page(self, frame1, frame2, video, engine: str, truth):
        """The Flow tab: (flow image, flow video, time markdown, .flo or zip of .flo, error map, EPE markdown). Each
        file is a path or, as the page sends them (unprocessed, so that our readers say what is wrong with a
        file Gradio's image component cannot open), Gradio's file data."""
        files = [f.get("path") if isinstance(f, dict) else f for f in (frame1, frame2, video, truth)]
        return self._handle("flow", self._flow_page, *files[:3], engine, files[3])

    def _flow_page(self, frame1, frame2, video, engine_name, truth):
        engine = self.engine(engine_name)
        out = self._outdir()
        started = time.perf_counter()
        if video:
            if truth:
                raise UploadError("a ground-truth .flo goes with two frames, not with a video")
            flows, note = self._video_flow(engine, self._upload(video, VIDEO_EXTENSIONS, "a video"))
        else:
            images = [self._upload(f, IMAGE_EXTENSIONS, "two frames (or a video)") for f in (frame1, frame2)]
            for p in images:
                w, h = image_size(p)
                if max(w, h) > PAIR_MAX_SIDE:
                    raise UploadError(f"{p.name} is {w}×{h}: the page takes frames up to {PAIR_MAX_SIDE} px a side "
                                      "(scale them down, or run python -m flow_engine estimate)")
            a, b = (read_image(p) for p in images)
            if a.shape != b.shape:
                raise UploadError(f"{images[0].name} is {a.shape[1]}×{a.shape[0]} but {images[1].name} is "
                                  f"{b.shape[1]}×{b.shape[0]}: the frames must share one size")
            flows = engine(*(torch.from_numpy(x).permute(2, 0, 1)[None] for x in (a, b))).cpu()
            note = ""
        seconds = time.perf_counter() - started
        fields = flows.permute(0, 2, 3, 1).numpy()  # [N, H, W, 2] px
        H, W = fields.shape[1:3]
        timing = (f"`{engine.name}` on {engine.device}: {len(fields)} flow field(s) of {W}×{H} in {seconds:.2f} s "
                  f"({len(fields) / seconds:.2f} pairs/s){note}")
        flow_video, download = None, out / "flow.flo"
        if len(fields) > 1:  # a video: its flows as a zip of .flo and a colour-coded MP4 on one scale
            (out / "flows").mkdir()
            for i, field in enumerate(fields):
                write_flow(out / "flows" / f"{i:06d}.flo", field)
            download = Path(shutil.make_archive(str(out / "flows"), "zip", out / "flows"))
            max_flow = max(float(np.linalg.norm(fields, axis=-1).max()), 1e-3)
            flow_video = out / "flow.mp4"
            write_video((flow_to_color(f, max_flow=max_flow) for f in fields), flow_video, fps=DISPLAY_FPS)
        else:
            write_flow(download, fields[0])
        error_map, scores = None, ""
        if truth:
            gt, valid = read_flow(self._upload(truth, (".flo",), "a ground-truth .flo"))
            if not valid.any():
                raise UploadError(f"{Path(truth).name}: no known flow vector (every one NaN or unknown): nothing to score")
            if gt.shape[:2] != (H, W):
                raise UploadError(f"{Path(truth).name} is {gt.shape[1]}×{gt.shape[0]} but the frames are {W}×{H}")
            m = flow_metrics(fields[0], gt, valid)
            scores = f"**EPE {m['epe']:.3f} px** · angular error {m['ae']:.2f}° · Fl-all {m['fl']:.2f} %"
            error_map, scale = self._error_map(fields[0], gt, valid)
            scores += f" · error map: black 0 px, white {scale:.1f} px and above"
        return flow_to_color(fields[0]), str(flow_video) if flow_video else None, timing, str(download), error_map, scores

    def _video_flow(self, engine: FlowEngine, path: Path) -> tuple[torch.Tensor, str]:
        """Flows of the video's first FLOW_MAX_FRAMES frames (scaled down past FLOW_MAX_SIDE), never more decoded."""
        info = probe(path)
        if info.num_frames < 2:
            raise UploadError(f"{path.name}: {info.num_frames} frame; flow needs two")
        short, long = sorted((info.height, info.width))
        size = scaled_size(info.height, info.width, FLOW_MAX_SIDE * short // long) if long > FLOW_MAX_SIDE else None
        n = min(info.num_frames, FLOW_MAX_FRAMES)

        def chunks():
            seen = 0
            for frames in iter_frames(path, 8, size):
                yield frames[: n - seen]
                seen += len(frames)
                if seen >= n:
                    return

        flows = torch.cat([f.cpu() for f in engine.stream(chunks(), 8)])
        note = f"; the first {n} of {info.num_frames} frames" if n < info.num_frames else ""
        return flows, note + (f", scaled to {size[1]}×{size[0]}" if size else "")

    @staticmethod
    def _error_map(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, float]:
        """End-point error per pixel as a grey-to-hot image (unknown pixels blue) and the px of full scale."""
        from matplotlib import colormaps

        err = np.hypot(*np.moveaxis(pred - np.nan_to_num(gt), -1, 0))
        scale = max(float(np.percentile(err[valid], 99)) if valid.any() else 1.0, 1e-3)
        image = (colormaps["inferno"](np.clip(err / scale, 0, 1))[..., :3] * 255).astype(np.uint8)
        image[~valid] = (40, 60, 160)
        return image, scale

    # ------------------------------------------------------------------ the page
    def build(self):
        """The Gradio Blocks of the page (its temporary files go under this app's folder)."""
        _gradio_folder(use=True)
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        import gradio as gr

        video_types = list(VIDEO_EXTENSIONS) + [".zip"]
        with gr.Blocks(title="actionflow", analytics_enabled=False, delete_cache=(SWEEP_AGE_S, SWEEP_AGE_S)) as page:
            gr.Markdown("## actionflow: classify a clip, see its flow")
            with gr.Tabs():
                with gr.Tab("Classify", id="classify", elem_id="af-tab-classify"):
                    if self.model is None:
                        gr.Markdown(NO_CHECKPOINT, elem_id="af-no-ckpt")
                    with gr.Row():
                        upload = gr.File(label="a video, or a zip of a frame folder", file_types=video_types,
                                         elem_id="af-upload", height=140)
                        with gr.Column():
                            button = gr.Button("Classify", variant="primary", elem_id="af-classify")
                            details = gr.Markdown(elem_id="af-details")
                    if self.examples:
                        gr.Examples([[str(p)] for p in self.examples], inputs=[upload], label="examples")
                    scores = gr.HTML(elem_id="af-scores")
                    with gr.Row():
                        video = gr.Video(label="what the network saw: each snippet's RGB crop | its flow",
                                         autoplay=True, loop=True, interactive=False, elem_id="af-video")
                        plot = gr.Plot(label="scores along the video", elem_id="af-plot")
                    with gr.Accordion("classify --json", open=False):
                        result = gr.JSON(elem_id="af-json")
                    button.click(self.classify_page, [upload], [scores, video, plot, details, result],
                                 api_name="classify_page", api_visibility="undocumented", concurrency_id="work")
                    api_out = gr.JSON(visible=False)
                    gr.Button(visible=False).click(self.classify_json, [upload], [api_out], api_name="classify",
                                                   concurrency_id="work")
                with gr.Tab("Flow", id="flow", elem_id="af-tab-flow"):
                    with gr.Row():
                        frame1, frame2 = (gr.Image(label=f"frame {i}", type="filepath", image_mode=None, sources=["upload"],
                                                   elem_id=f"af-frame{i}") for i in (1, 2))  # the file as uploaded
                        with gr.Column():
                            clip = gr.File(label=f"or a short video (its first {FLOW_MAX_FRAMES} frames)",
                                           file_types=list(VIDEO_EXTENSIONS), elem_id="af-flow-video", height=100)
                            truth = gr.File(label="ground truth .flo (optional)", file_types=[".flo"],
                                            elem_id="af-truth", height=100)
                            default = self.model.hparams.flow_engine if self.model is not None else "pwcnet"
                            engine = gr.Dropdown(self.engine_names, label="engine", elem_id="af-engine",
                                                 value=default if default in self.engine_names else self.engine_names[0])
                            go = gr.Button("Compute flow", variant="primary", elem_id="af-flow-run")
                    timing = gr.Markdown(elem_id="af-flow-time")
                    with gr.Row():
                        flow_image = gr.Image(label="flow", interactive=False, elem_id="af-flow-image")
                        gr.Image(color_wheel_legend(160), label="colour key (hue: direction)",
                                 interactive=False, elem_id="af-legend", width=180)
                        flow_video = gr.Video(label="flow of the video", interactive=False, autoplay=True, loop=True,
                                              elem_id="af-flow-mp4")
                    download = gr.File(label=".flo", interactive=False, elem_id="af-flo")
                    epe = gr.Markdown(elem_id="af-epe")
                    error_map = gr.Image(label="end-point error", interactive=False, elem_id="af-error-map")
                    go.click(self.flow_page, [frame1, frame2, clip, engine, truth],
                             [flow_image, flow_video, timing, download, error_map, epe], api_name="flow",
                             concurrency_id="work", preprocess=False)
        page.queue(default_concurrency_limit=self.concurrency)
        self.page = page
        return page

    def start(self, host: str = "127.0.0.1", port: int | None = None) -> str:
        """Serve the page on ``host:port`` (None: the first free one from 7860) in the background; returns its URL."""
        import gradio as gr

        page = self.page or self.build()
        theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
        return page.launch(server_name=host, server_port=port, max_file_size=self.max_bytes, theme=theme, quiet=True,
                           prevent_thread_lock=True, show_error=True, ssr_mode=False, mcp_server=False,
                           footer_links=["api"])[1]

    def close(self) -> None:
        """Stop the server and remove every file the page wrote."""
        if self.page is not None:
            self.page.close()
            self.page = None
            _gradio_folder(use=False)
        shutil.rmtree(self.root, ignore_errors=True)


def bind_note(host: str, port: int) -> str:
    """What the command says about where it listens."""
    if host in LOCAL_HOSTS:
        return f"serving on http://{host}:{port} (this machine only; --host 0.0.0.0 opens it to the network)"
    return (f"WARNING: serving on {host}:{port}, reachable from other machines: anyone who reaches it can upload "
            "videos and use this machine's processors, without a login")


def bench(app: ActionflowApp, video: Path | None, runs: int = 5) -> dict[str, float]:
    """Upload-to-result seconds of the page for ``video`` (default: a generated 10 s 720p clip) through its server and
    Gradio's client, against classify alone (:func:`predict`) on the file, interleaved; medians of ``runs`` after a
    warm-up. The page's time splits into classify inside it, its video and plot, and the rest (upload, queue, download)."""
    from gradio_client import Client, handle_file

    with tempfile.TemporaryDirectory() as tmp:
        clip = video or bench_clip(Path(tmp) / "bench_720p.mp4")
        info, size = probe(clip), clip.stat().st_size
        client = Client(app.start(), verbose=False, download_files=str(Path(tmp) / "downloads"))
        rows = []
        for _ in range(runs + 1):
            started = time.perf_counter()
            predict(app.model, app.data_hparams, Video(str(clip), app.pattern))
            alone = time.perf_counter() - started
            started = time.perf_counter()
            client.predict(handle_file(str(clip)), api_name="/classify_page")
            page = time.perf_counter() - started
            inside = app.last_seconds
            rows.append((alone, page, inside["total"] - inside["page"], inside["page"], page - inside["total"]))
    medians = np.median(np.array(rows[1:]), axis=0)
    names = ("classify_s", "page_s", "page_classify_s", "page_render_s", "page_transfer_s")
    return {"frames": info.num_frames, "width": info.width, "height": info.height, "bytes": size,
            **{k: round(float(v), 3) for k, v in zip(names, medians)}}


def bench_clip(path: Path, seconds: float = 10.0, fps: float = 30.0, size: tuple[int, int] = (720, 1280)) -> Path:
    """A ``seconds`` s clip of a demo dancer at ``size`` (H, W): the demo renderer's frames scaled up."""
    import cv2

    from actionflow.benchmarks.demo_data import RenderParams, render_clip

    frames = render_clip("spin", RenderParams(frames=round(seconds * fps), size=240), np.random.default_rng(0))
    write_video((cv2.resize(f, size[::-1], interpolation=cv2.INTER_LINEAR) for f in frames), path, fps=fps)
    return path


def _engine_weights(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or name not in ENGINES or not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"expected ENGINE=FILE with ENGINE one of {', '.join(ENGINES)} and FILE a "
                                         f"weights file, got {text!r}")
    return name, Path(path)


def _port(text: str) -> int:
    port = positive_int(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"a port is 1..65535, got {port}")
    return port


def _folder(text: str) -> Path:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder")
    return Path(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", type=Path, help="checkpoint written by train.py (default: the newest best*.ckpt under runs/)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=_port, default=7860, help="port (default 7860)")
    parser.add_argument("--examples", type=_folder, metavar="DIR", help="offer the videos in DIR as examples too")
    parser.add_argument("--max-upload-mb", type=positive_number, default=DEFAULT_MAX_UPLOAD_MB, help="largest upload in MB (default 200)")
    parser.add_argument("--concurrency", type=positive_int, default=1, help="requests worked on at once; the rest queue (default 1)")
    parser.add_argument("--flow-weights", type=_engine_weights, action="append", default=[], metavar="ENGINE=FILE",
                        help="weights of a Flow-tab engine, e.g. raft_small=raft-small.pth (RAFT is offered only with weights)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    parser.add_argument("--bench", nargs="?", const="", metavar="VIDEO", help="time upload to result for VIDEO "
                        "(default: a generated 10 s 720p clip) against classify alone, print JSON, and exit")
    parser.add_argument("--bench-runs", type=positive_int, default=5, help="runs the benchmark takes the median of (default 5)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print('app: error: the page needs Gradio: pip install -e ".[app]"', file=sys.stderr)
        return 2
    ckpt = args.ckpt or find_checkpoint()
    try:
        app = ActionflowApp(ckpt, args.device, args.examples, args.max_upload_mb, args.concurrency, dict(args.flow_weights))
    except (CheckpointError, FlowEngineError, WeightsError, ValueError, RuntimeError) as exc:
        print(f"app: error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.bench is not None:
            if app.model is None:
                print("app: error: --bench needs a checkpoint (--ckpt, or train one with python train.py)", file=sys.stderr)
                return 2
            try:
                print(json.dumps(bench(app, Path(args.bench) if args.bench else None, args.bench_runs)))
            except (ActionflowError, FlowEngineError) as exc:
                print(f"app: error: {exc}", file=sys.stderr)
                return 2
            return 0
        print(f"checkpoint: {ckpt}" if ckpt else "no checkpoint: the Classify tab says how to make one")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so that the temporary folder is removed
        try:
            app.start(args.host, args.port)
        except OSError as exc:  # the port is taken, the address is not this machine's ...
            print(f"app: error: cannot serve on {args.host}:{args.port} ({exc})", file=sys.stderr)
            return 1
        print(bind_note(args.host, args.port), flush=True)
        app.page.block_thread()
        return 0
    finally:
        app.close()
