"""Distillation data: a teacher flow engine labels frame pairs of real videos once, on disk.

:func:`label_videos` samples pairs from each video (random frames, frame gaps of 1 and 2,
several decode scales given as short sides in pixels), runs the teacher on both directions,
marks pixels where the two disagree (forward-backward check: occlusions, failures) as
invalid, and writes one ``.npz`` per pair:

    img1, img2   JPEG (quality 95) bytes of the two frames; the teacher saw exactly the decoded JPEGs
    flow_fw      float16 [H,W,2] px, frame 1 -> 2 (float16 keeps large displacements: no bound)
    flow_bw      float16 [H,W,2] px, frame 2 -> 1
    valid_fw     bool [H,W] (bit-packed): the forward flow passed the check
    valid_bw     bool [H,W] (bit-packed)
    meta         JSON: video, frame, gap, size, teacher

Files are written to a temporary name and renamed, so a killed run leaves only whole files,
and a rerun labels only what is missing. ``labels.json`` records the teacher (name, weights
hash, flow updates) and the sampling; labels of another teacher are never mixed into a folder.

:class:`TeacherLabels` reads a label folder as a flow dataset (items like
:mod:`flow_engine.data.datasets`: uint8 [3,H,W] frames, float flow [2,H,W] px, bool valid [H,W]),
each file giving two items: the forward and the backward pair.
"""
from __future__ import annotations

import json
import logging
import os
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from flow_engine.errors import DatasetError, FlowEngineError
from flow_engine.io.flow_files import FlowFileError, image_size
from flow_engine.io.video import VideoError, list_videos, probe, read_frames, scaled_size

log = logging.getLogger(__name__)

LABEL_VERSION = 1
JPEG_QUALITY = 95
# Forward-backward consistency (Meister et al., UnFlow 2018): a pixel is unreliable when
# |F_fw + F_bw(p + F_fw)|^2 > ALPHA1 * (|F_fw|^2 + |F_bw(p + F_fw)|^2) + ALPHA2.
FB_ALPHA1, FB_ALPHA2 = 0.01, 0.5


class LabelError(FlowEngineError):
    """A label folder that cannot be used as asked (another teacher's labels, bad settings)."""


@dataclass(frozen=True)
class PairPlan:
    """One pair to label: frames ``frame`` and ``frame + gap`` of ``video``, decoded at ``size`` (H, W)."""

    video: Path
    frame: int
    gap: int
    size: tuple[int, int]

    def filename(self) -> str:
        return f"f{self.frame:06d}_g{self.gap}_{self.size[1]}x{self.size[0]}.npz"


def plan_pairs(video: Path, num_frames: int, native: tuple[int, int], pairs: int, gaps: Sequence[int],
               short_sides: Sequence[int], seed: int) -> list[PairPlan]:
    """``pairs`` random pairs of ``video`` (seeded by ``seed`` and the file name: reproducible).

    Short sides above the video's own are capped at it (no upscaling); gaps longer than the
    video are left out. Duplicates are dropped, so short videos may give fewer pairs.
    """
    gaps = [g for g in gaps if g < num_frames]
    if not gaps:
        return []
    rng = np.random.default_rng([seed, zlib.crc32(video.name.encode())])
    plans = set()
    for _ in range(pairs):
        gap = int(rng.choice(gaps))
        side = min(int(rng.choice(short_sides)), min(native))
        frame = int(rng.integers(0, num_frames - gap))
        plans.add(PairPlan(video, frame, gap, scaled_size(*native, side)))
    return sorted(plans, key=lambda p: (p.size, p.frame, p.gap))


def fb_consistency(fw: torch.Tensor, bw: torch.Tensor) -> torch.Tensor:
    """bool [B,H,W]: pixels where forward flow ``fw`` [B,2,H,W] and backward flow ``bw`` agree
    (see FB_ALPHA1/2) and whose target ``p + fw(p)`` lies inside the frame."""
    B, _, H, W = fw.shape
    ys, xs = torch.meshgrid(torch.arange(H, device=fw.device, dtype=torch.float32),
                            torch.arange(W, device=fw.device, dtype=torch.float32), indexing="ij")
    tx, ty = xs + fw[:, 0], ys + fw[:, 1]
    grid = torch.stack((2 * tx / max(W - 1, 1) - 1, 2 * ty / max(H - 1, 1) - 1), dim=-1)
    bw_at = F.grid_sample(bw.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
    mismatch = (fw + bw_at).pow(2).sum(1)
    bound = FB_ALPHA1 * (fw.pow(2).sum(1) + bw_at.pow(2).sum(1)) + FB_ALPHA2
    inside = (tx >= 0) & (tx <= W - 1) & (ty >= 0) & (ty <= H - 1)
    return (mismatch <= bound) & inside


def _jpeg_roundtrip(frames: np.ndarray) -> tuple[list[bytes], np.ndarray]:
    """JPEG bytes of RGB uint8 frames [T,H,W,3] and the frames decoded back from them."""
    blobs, decoded = [], []
    for f in frames:
        ok, buf = cv2.imencode(".jpg", f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError("OpenCV could not encode a JPEG")
        blobs.append(buf.tobytes())
        decoded.append(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return blobs, np.stack(decoded)


def _decode_jpeg(blob: np.ndarray, where: Path) -> np.ndarray:
    blob = np.asarray(blob, np.uint8)
    try:
        image_size(where, blob.tobytes())  # the pixel limit, before the decoder allocates
    except FlowFileError as exc:
        raise DatasetError(f"{where}: a frame is not a readable JPEG ({exc.problem})") from None
    img = cv2.imdecode(blob, cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"{where}: a frame is not a readable JPEG")
    return np.ascontiguousarray(img[..., ::-1])


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def _identity(teacher_config: dict) -> dict:
    """What makes two teachers' labels the same: the engine's identity, not the precision it ran at
    (labels are stored as float16 whatever the teacher's dtype, so a GPU's bf16 labels serve a CPU run)."""
    return {k: v for k, v in teacher_config.items() if k != "dtype"}


def _manifest(teacher_config: dict, pairs_per_video: int, gaps: Sequence[int], short_sides: Sequence[int], seed: int) -> dict:
    return {"version": LABEL_VERSION, "teacher": _identity(teacher_config), "pairs_per_video": int(pairs_per_video),
            "gaps": [int(g) for g in gaps], "short_sides": [int(s) for s in short_sides], "seed": int(seed),
            "fb_alpha": [FB_ALPHA1, FB_ALPHA2]}


def _check_manifest(out: Path, manifest: dict) -> None:
    path = out / "labels.json"
    if not path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest, indent=2) + "\n")
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LabelError(f"{path}: unreadable label manifest ({exc}); remove the folder or pick another") from None
    same_teacher = isinstance(old, dict) and isinstance(old.get("teacher"), dict) and _identity(old["teacher"]) == manifest["teacher"]
    if not same_teacher or old.get("version") != LABEL_VERSION:
        raise LabelError(f"{out} holds labels of another teacher or format ({old.get('teacher') if isinstance(old, dict) else old}); "
                         f"this run's teacher is {manifest['teacher']}: use another labels folder")
    if old != manifest:  # other sampling settings: keep the files, record the union
        log.info("%s: sampling settings changed since the last labelling; existing pairs are kept", out)
        path.write_text(json.dumps(manifest, indent=2) + "\n")


def _video_dir(out: Path, video: Path) -> Path:
    # The stem for people, a hash of the full path so two clips of one name do not collide.
    return out / f"{video.stem}_{zlib.crc32(str(video.resolve()).encode()):08x}"


def label_videos(videos: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike, teacher,
                 pairs_per_video: int = 48, gaps: Sequence[int] = (1, 2), short_sides: Sequence[int] = (256, 320, 384),
                 seed: int = 0, batch: int = 4, progress: bool = True) -> dict:
    """Labels pairs of ``videos`` (folders, lists or files, see ``list_videos``) with ``teacher``
    (a :class:`flow_engine.FlowEngine`) into the folder ``out``; resumable.

    Returns ``{"videos", "pairs", "labelled", "existing", "nonfinite", "skipped": ["path: reason", ...]}``;
    ``nonfinite`` counts pairs whose teacher flow held NaN or inf, which are not written.
    Videos that cannot be decoded are skipped and named; a mismatching teacher is a LabelError.
    """
    if pairs_per_video < 1 or batch < 1 or not gaps or not short_sides:
        raise LabelError("pairs_per_video and batch must be positive; gaps and short_sides not empty")
    if any(int(g) < 1 for g in gaps) or any(int(s) < 16 for s in short_sides):
        raise LabelError(f"gaps must be >= 1 frame and short sides >= 16 px, got {list(gaps)} and {list(short_sides)}")
    specs = [videos] if isinstance(videos, (str, os.PathLike)) else list(videos)
    paths = sorted({p for spec in specs for p in list_videos(spec)}, key=str)
    out = Path(out)
    _check_manifest(out, _manifest(teacher.config(), pairs_per_video, gaps, short_sides, seed))
    summary = {"videos": len(paths), "pairs": 0, "labelled": 0, "existing": 0, "nonfinite": 0, "skipped": []}
    for video in tqdm(paths, desc="label", unit="video", disable=not progress):
        try:
            info = probe(video)
            plans = plan_pairs(video, info.num_frames, (info.height, info.width), pairs_per_video, gaps, short_sides, seed)
            if not plans:
                raise VideoError(video, f"{info.num_frames} frame(s): too short for any frame gap in {list(gaps)}")
            folder = _video_dir(out, video)
            folder.mkdir(parents=True, exist_ok=True)
            todo = [p for p in plans if not (folder / p.filename()).is_file()]
            summary["pairs"] += len(plans)
            summary["existing"] += len(plans) - len(todo)
            for size in sorted({p.size for p in todo}):
                group = [p for p in todo if p.size == size]
                for i in range(0, len(group), batch):
                    written, refused = _label_group(group[i : i + batch], folder, teacher)
                    summary["labelled"] += written
                    summary["nonfinite"] += refused
        except VideoError as exc:
            log.warning("skipped %s", exc)
            summary["skipped"].append(str(exc))
    if summary["nonfinite"]:
        log.warning("%d pairs not written: the teacher's flow held NaN or inf", summary["nonfinite"])
    if summary["skipped"]:
        log.warning("%d of %d videos skipped: %s", len(summary["skipped"]), len(paths), "; ".join(summary["skipped"]))
    return summary


def _label_group(plans: list[PairPlan], folder: Path, teacher) -> tuple[int, int]:
    """Decodes, labels and writes pairs that share a video and a size; returns how many were
    written and how many were refused for a non-finite teacher flow."""
    video, size = plans[0].video, plans[0].size
    index = sorted({p.frame for p in plans} | {p.frame + p.gap for p in plans})
    frames = read_frames(video, index, size)
    blobs, decoded = _jpeg_roundtrip(frames)
    at = {f: i for i, f in enumerate(index)}
    i1 = [at[p.frame] for p in plans]
    i2 = [at[p.frame + p.gap] for p in plans]
    clip = torch.from_numpy(decoded).permute(0, 3, 1, 2)
    a, b = clip[i1], clip[i2]
    flows = teacher(torch.cat((a, b)), torch.cat((b, a)))
    fw, bw = flows[: len(plans)], flows[len(plans) :]
    valid_fw, valid_bw = fb_consistency(fw, bw), fb_consistency(bw, fw)
    # float16 holds up to 65504 px: more than any frame, so only a broken teacher overflows it.
    finite = torch.isfinite(fw.half()).flatten(1).all(1) & torch.isfinite(bw.half()).flatten(1).all(1)
    for k, p in enumerate(plans):
        if not finite[k]:
            log.warning("%s frame %d gap %d: the teacher's flow is not finite; pair not written", video, p.frame, p.gap)
            continue
        meta = {"video": str(video), "frame": p.frame, "gap": p.gap, "size": list(size), "teacher": teacher.config()}
        _save_npz(
            folder / p.filename(),
            img1=np.frombuffer(blobs[i1[k]], np.uint8), img2=np.frombuffer(blobs[i2[k]], np.uint8),
            flow_fw=fw[k].permute(1, 2, 0).numpy().astype(np.float16),
            flow_bw=bw[k].permute(1, 2, 0).numpy().astype(np.float16),
            valid_fw=np.packbits(valid_fw[k].numpy()), valid_bw=np.packbits(valid_bw[k].numpy()),
            meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
        )
    return int(finite.sum()), int((~finite).sum())


class TeacherLabels(Dataset):
    """A label folder written by :func:`label_videos` as a flow dataset; item ``2i`` is file i's
    forward pair, ``2i+1`` its backward pair (frames swapped)."""

    sparse = False

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not (self.root / "labels.json").is_file():
            raise DatasetError(f"{self.root}: no labels.json: not a folder of teacher labels (python -m flow_engine train "
                               "--teacher NAME --videos DIR writes one)")
        self.files = sorted(self.root.glob("*/*.npz"))
        if not self.files:
            raise DatasetError(f"{self.root}: no labelled pairs")

    def __len__(self) -> int:
        return 2 * len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        path = self.files[index // 2]
        backward = bool(index % 2)
        try:
            with np.load(path, allow_pickle=False) as z:
                img1, img2 = _decode_jpeg(z["img1"], path), _decode_jpeg(z["img2"], path)
                flow = z["flow_bw" if backward else "flow_fw"].astype(np.float32)
                packed = z["valid_bw" if backward else "valid_fw"]
        except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
            raise DatasetError(f"{path}: not a readable label file ({type(exc).__name__}: {exc})") from None
        H, W = img1.shape[:2]
        if img2.shape != img1.shape or flow.shape != (H, W, 2) or packed.size * 8 < H * W:
            raise DatasetError(f"{path}: frames {img1.shape}, {img2.shape} and flow {flow.shape} do not fit together")
        valid = np.unpackbits(packed)[: H * W].reshape(H, W).astype(bool)
        if backward:
            img1, img2 = img2, img1
        return (
            torch.from_numpy(img1).permute(2, 0, 1).contiguous(),
            torch.from_numpy(img2).permute(2, 0, 1).contiguous(),
            torch.from_numpy(flow).permute(2, 0, 1).contiguous(),
            torch.from_numpy(valid),
        )
