"""Readers for the published optical-flow datasets and for the simple ``cases`` layout.

Every dataset is a ``torch.utils.data.Dataset`` whose items are
``(img1, img2, flow, valid)``: uint8 RGB [3,H,W] twice, float32 flow [2,H,W] in pixels
(frame 1 -> frame 2) and bool valid [H,W]. Pairs without ground truth (benchmark test
splits) give zero flow and an all-False mask (``has_flow`` is False).

Layouts (``root`` is the dataset's top folder as unpacked):

- FlyingChairs: ``data/NNNNN_img1.ppm``, ``NNNNN_img2.ppm``, ``NNNNN_flow.flo`` and, if
  present, ``FlyingChairs_train_val.txt`` (one line per pair in order: 1 = train, 2 = val).
- FlyingThings3D: ``frames_{clean,final}pass/{TRAIN,TEST}/{A,B,C}/NNNN/{left,right}/NNNN.png``
  and ``optical_flow/{TRAIN,TEST}/{A,B,C}/NNNN/into_{future,past}/{left,right}/
  OpticalFlowInto{Future,Past}_NNNN_{L,R}.pfm``.
- MPI-Sintel: ``{training,test}/{clean,final}/<scene>/frame_NNNN.png`` and
  ``training/flow/<scene>/frame_NNNN.flo``.
- KITTI 2015: ``{training,testing}/image_2/NNNNNN_{10,11}.png``, ``training/flow_occ/NNNNNN_10.png``;
  KITTI 2012 the same with ``colored_0``. KITTI flow is sparse (``sparse`` is True).
- cases: ``<case>/frame1.*``, ``<case>/frame2.*``, ``<case>/flow.flo`` (``../shared/data/flow``).

A root that does not have the layout raises :class:`DatasetError`; an unreadable or
malformed file raises ``flow_engine.io.flow_files.FlowFileError`` naming it.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from flow_engine.io import flow_files
from flow_engine.errors import DatasetError
from flow_engine.data.teacher_labels import TeacherLabels

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".ppm", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class FlowPair:
    """One sample: two frame paths and the ground-truth flow file (None when there is none)."""

    img1: Path
    img2: Path
    flow: Path | None
    name: str


class FlowPairs(Dataset):
    """A list of :class:`FlowPair` read with ``flow_engine.io.flow_files``; the readers below only build the list."""

    sparse = False  # True where ground truth covers only some pixels (KITTI)

    def __init__(self, pairs: list[FlowPair], root: str | Path, what: str):
        if not pairs:
            raise DatasetError(f"{root}: no {what} frame pairs found (is this the right folder and layout?)")
        self.pairs = pairs
        self.root = Path(root)

    @property
    def has_flow(self) -> bool:
        return self.pairs[0].flow is not None

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def read_flow(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        return flow_files.read_flow(path)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        pair = self.pairs[index]
        img1, img2 = flow_files.read_image(pair.img1), flow_files.read_image(pair.img2)
        if img1.shape != img2.shape:
            raise DatasetError(f"{pair.img2}: size {img2.shape[1]}x{img2.shape[0]} differs from {pair.img1} ({img1.shape[1]}x{img1.shape[0]})")
        H, W = img1.shape[:2]
        if pair.flow is None:
            flow, valid = np.zeros((H, W, 2), np.float32), np.zeros((H, W), bool)
        else:
            flow, valid = self.read_flow(pair.flow)
            if flow.shape[:2] != (H, W):
                raise DatasetError(f"{pair.flow}: flow is {flow.shape[1]}x{flow.shape[0]}, the frames {W}x{H}")
        return (
            torch.from_numpy(np.ascontiguousarray(img1.transpose(2, 0, 1))),
            torch.from_numpy(np.ascontiguousarray(img2.transpose(2, 0, 1))),
            flow_files.flow_to_tensor(flow),
            torch.from_numpy(np.ascontiguousarray(valid)),
        )


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: not a folder (missing folder of {what})")
    return path


def _frame_number(path: Path) -> int:
    digits = re.findall(r"\d+", path.stem)
    if not digits:
        raise DatasetError(f"{path}: frame file name has no frame number")
    return int(digits[-1])


def _find_image(folder: Path, stem: str) -> Path:
    found = [folder / f"{stem}{suffix}" for suffix in IMAGE_SUFFIXES if (folder / f"{stem}{suffix}").is_file()]
    if len(found) == 1:
        return found[0]
    problem = f"ambiguous ({', '.join(p.name for p in found)})" if found else f"missing ({'/'.join(s[1:] for s in IMAGE_SUFFIXES)})"
    raise DatasetError(f"{folder}: case {folder.name!r}: {stem}.* is {problem}")


# ----------------------------------------------------------------------------- FlyingChairs


class FlyingChairs(FlowPairs):
    """FlyingChairs (Dosovitskiy et al. 2015); ``split`` "train", "val" or "all"."""

    def __init__(self, root: str | Path, split: str = "train"):
        root = Path(root)
        if split not in ("train", "val", "all"):
            raise ValueError(f"FlyingChairs split must be 'train', 'val' or 'all', got {split!r}")
        data = root / "data" if (root / "data").is_dir() else _require_dir(root, "FlyingChairs data")
        flows = sorted(data.glob("*_flow.flo"))
        pairs = []
        for f in flows:
            stem = f.name[: -len("_flow.flo")]
            pairs.append(FlowPair(data / f"{stem}_img1.ppm", data / f"{stem}_img2.ppm", f, f"chairs_{stem}"))
        split_file = next((p for p in (root / "FlyingChairs_train_val.txt", data / "FlyingChairs_train_val.txt") if p.is_file()), None)
        if split != "all":
            if split_file is None:
                log.warning("%s: no FlyingChairs_train_val.txt; using all %d pairs for split %r", root, len(pairs), split)
            else:
                labels = split_file.read_text().split()
                if len(labels) != len(pairs) or not set(labels) <= {"1", "2"}:
                    raise DatasetError(f"{split_file}: expected {len(pairs)} labels of 1 (train) or 2 (val), got {len(labels)} ({sorted(set(labels))[:5]})")
                want = "1" if split == "train" else "2"
                pairs = [p for p, label in zip(pairs, labels) if label == want]
        super().__init__(pairs, root, f"FlyingChairs {split}")


# ----------------------------------------------------------------------------- FlyingThings3D


class FlyingThings3D(FlowPairs):
    """FlyingThings3D (Mayer et al. 2016) ``frames_{pass}pass`` with ``optical_flow`` PFMs.

    ``split`` "TRAIN" or "TEST"; ``pass_`` "clean" or "final"; ``camera`` "left" or "right";
    ``direction`` "into_future" (frame t -> t+1), "into_past" (t+1 -> t) or "both".
    """

    def __init__(self, root: str | Path, split: str = "TRAIN", pass_: str = "clean", camera: str = "left", direction: str = "into_future"):
        root = Path(root)
        if pass_ not in ("clean", "final"):
            raise ValueError(f"FlyingThings3D pass must be 'clean' or 'final', got {pass_!r}")
        if camera not in ("left", "right"):
            raise ValueError(f"FlyingThings3D camera must be 'left' or 'right', got {camera!r}")
        if direction not in ("into_future", "into_past", "both"):
            raise ValueError(f"FlyingThings3D direction must be 'into_future', 'into_past' or 'both', got {direction!r}")
        frames_root = _require_dir(root / f"frames_{pass_}pass" / split, f"FlyingThings3D {pass_} pass frames")
        flow_root = _require_dir(root / "optical_flow" / split, "FlyingThings3D optical_flow")
        cam = camera[0].upper()
        pairs = []
        for seq in sorted(p for p in frames_root.glob("*/*") if p.is_dir()):
            rel = seq.relative_to(frames_root)
            frames = sorted((seq / camera).glob("*.png"), key=_frame_number)
            for a, b in zip(frames[:-1], frames[1:]):
                na, nb = _frame_number(a), _frame_number(b)
                if nb != na + 1:
                    continue
                name = f"things_{pass_}_{rel.as_posix().replace('/', '_')}_{na:04d}"
                if direction in ("into_future", "both"):
                    pairs.append(FlowPair(a, b, flow_root / rel / "into_future" / camera / f"OpticalFlowIntoFuture_{na:04d}_{cam}.pfm", name))
                if direction in ("into_past", "both"):
                    pairs.append(FlowPair(b, a, flow_root / rel / "into_past" / camera / f"OpticalFlowIntoPast_{nb:04d}_{cam}.pfm", name + "_past"))
        super().__init__(pairs, root, f"FlyingThings3D {split} {pass_}")


# ----------------------------------------------------------------------------- MPI-Sintel


class Sintel(FlowPairs):
    """MPI-Sintel (Butler et al. 2012); ``split`` "training" or "test"; ``pass_`` "clean" or "final"."""

    def __init__(self, root: str | Path, split: str = "training", pass_: str = "clean", scenes: list[str] | None = None):
        root = Path(root)
        if split not in ("training", "test"):
            raise ValueError(f"Sintel split must be 'training' or 'test', got {split!r}")
        if pass_ not in ("clean", "final"):
            raise ValueError(f"Sintel pass must be 'clean' or 'final', got {pass_!r}")
        frames_root = _require_dir(root / split / pass_, f"Sintel {split} {pass_} frames")
        flow_root = _require_dir(root / split / "flow", "Sintel ground-truth flow") if split == "training" else None
        pairs = []
        for scene in sorted(p for p in frames_root.iterdir() if p.is_dir()):
            if scenes is not None and scene.name not in scenes:
                continue
            frames = sorted(scene.glob("frame_*.png"), key=_frame_number)
            for a, b in zip(frames[:-1], frames[1:]):
                flow = flow_root / scene.name / f"{a.stem}.flo" if flow_root is not None else None
                pairs.append(FlowPair(a, b, flow, f"sintel_{pass_}_{scene.name}_{_frame_number(a):04d}"))
        super().__init__(pairs, root, f"Sintel {split} {pass_}")


# ----------------------------------------------------------------------------- KITTI


class KITTI(FlowPairs):
    """KITTI flow 2015 (``image_2``) or 2012 (``colored_0``); sparse ground truth from ``flow_occ``."""

    sparse = True

    def __init__(self, root: str | Path, year: int = 2015, split: str = "training"):
        root = Path(root)
        if year not in (2012, 2015):
            raise ValueError(f"KITTI year must be 2012 or 2015, got {year!r}")
        if split not in ("training", "testing"):
            raise ValueError(f"KITTI split must be 'training' or 'testing', got {split!r}")
        images = _require_dir(root / split / ("image_2" if year == 2015 else "colored_0"), f"KITTI {year} {split} images")
        flow_dir = _require_dir(root / split / "flow_occ", f"KITTI {year} flow_occ") if split == "training" else None
        pairs = []
        for a in sorted(images.glob("*_10.png")):
            stem = a.name[: -len("_10.png")]
            flow = flow_dir / a.name if flow_dir is not None else None
            pairs.append(FlowPair(a, images / f"{stem}_11.png", flow, f"kitti{year}_{stem}"))
        super().__init__(pairs, root, f"KITTI {year} {split}")

    def read_flow(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        return flow_files.read_kitti_flow(path)


# ----------------------------------------------------------------------------- cases


class FlowCases(FlowPairs):
    """The ``cases`` layout: one folder per pair with ``frame1.*``, ``frame2.*`` and ``flow.flo``
    (the one reader of it: training validation and ``eval --cases``). A folder without ``flow.flo``
    is not a case (skipped with a warning); a case whose frames are missing or ambiguous is an error."""

    def __init__(self, root: str | Path, names: list[str] | None = None):
        root = _require_dir(Path(root), "flow cases")
        folders = sorted(p for p in root.iterdir() if p.is_dir())
        if names is not None:
            unknown = sorted(set(names) - {p.name for p in folders})
            if unknown:
                raise DatasetError(f"{root}: no such cases: {', '.join(unknown)}")
            folders = [p for p in folders if p.name in names]
        pairs = []
        for case in folders:
            flow = case / "flow.flo"
            if not flow.is_file():
                log.warning("%s: no flow.flo, not a case; skipped", case)
                continue
            pairs.append(FlowPair(_find_image(case, "frame1"), _find_image(case, "frame2"), flow, case.name))
        super().__init__(pairs, root, "cases")


DATASETS: dict[str, type[FlowPairs]] = {
    "chairs": FlyingChairs,
    "things": FlyingThings3D,
    "sintel": Sintel,
    "kitti": KITTI,
    "cases": FlowCases,
    "teacher": TeacherLabels,
}


def make_dataset(name: str, root: str | Path, **kwargs) -> Dataset:
    """The dataset ``name`` (chairs, things, sintel, kitti, cases, or teacher: the labels of
    :mod:`flow_engine.data.teacher_labels`) at ``root``; kwargs go to its class."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name](root, **kwargs)
