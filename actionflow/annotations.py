"""Video annotations: which video has which label, and the train/val/test splits.

Formats read:

* a folder per class: ``root/<class>/<video>`` (class names sorted alphabetically give the indices);
* annotation lists, one video per line: ``relative/path label`` where ``label`` is a class name or
  an integer index; or ``relative/path`` alone, the label then being the video's parent folder name
  (UCF101 ``testlist01.txt``). Blank lines and lines starting with ``#`` are ignored;
* mmaction2 rawframe lists, ``frame_dir total_frames label`` (three tokens, the last two integers),
  recognised from the first line: the item is a folder of frames (``flow_engine.io.video``), and a folder
  holding fewer frames than its line says is a warning when the data module probes it;
* Kinetics CSVs (``label,youtube_id,time_start,time_end[,split,...]``; a ``.csv`` file or a first line
  naming ``youtube_id``), read with the csv module (quoted labels may hold commas; extra columns are
  ignored). The video of a row is ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` (the usual downloader's
  name) or ``<youtube_id>.<ext>``, found anywhere under the root (a file in a folder named after the
  label wins over a namesake elsewhere). Class names are the CSV's labels, sorted; rows whose video is
  missing (normal for Kinetics) are left out, counted and listed in one warning;
* a class-index file: ``index name`` lines (UCF101 ``classInd.txt``, 1-based) or one name per line
  (0-based, e.g. ``classes.txt``).

A "video" anywhere here may be a folder of frames (``root/<class>/<folder>/img_00001.jpg`` in the
folder-per-class layout: folders holding a file that ``frame_pattern`` names).

Integer labels in lists are 0-based, except when the class-index file numbers its classes from 1
(UCF101): then the lists are read 1-based too. ``label_base`` overrides that guess.

Paths in lists are relative to ``root`` when given, else to the list file's folder. When no list
is given and ``root`` holds ``train.txt`` (and ``val.txt``, ``test.txt``), those lists are used;
otherwise ``root`` is read as a folder per class.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from actionflow.errors import ActionflowError
from flow_engine.io.video import (
    DEFAULT_FRAME_PATTERN, VIDEO_EXTENSIONS, ListFileError, Video, is_frame_name, is_video_path, read_list_lines,
    split_list_line,
)

logger = logging.getLogger(__name__)

CLASS_INDEX_NAMES = ("classInd.txt", "classes.txt", "class_index.txt", "labels.txt")
# Integer labels without a class-index file make max(label) + 1 classes: a bound keeps a typo or a
# crafted label (99999999999) from allocating a class list of gigabytes. Larger sets need the file.
MAX_CLASSES = 100_000
_INTEGER = re.compile(r"-?[0-9]+")  # ASCII only: str.isdigit() accepts "²", which int() refuses
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")
MAX_LISTED_MISSING = 20  # missing Kinetics videos named in the warning (all are counted)


class AnnotationError(ActionflowError, ValueError):
    """A bad annotation file, line, label or split request; the message names the file and line."""


@dataclass(frozen=True)
class Sample:
    """One labelled video (or frame folder): absolute ``path``, 0-based class index ``label``, where it
    was listed (``source`` "file:line"; ``listed_frames``: a rawframe list's frame count), and the file
    names of a folder's frames (``frame_pattern``): :attr:`video` is what the readers take."""

    path: str
    label: int
    listed_frames: int | None = field(default=None, compare=False)
    source: str | None = field(default=None, compare=False)
    frame_pattern: str = field(default=DEFAULT_FRAME_PATTERN, compare=False)

    @property
    def video(self) -> Video:
        return Video(self.path, self.frame_pattern)


@dataclass(frozen=True)
class Splits:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    classes: list[str]


@dataclass(frozen=True)
class _Entry:
    path: str
    label: str | None  # the raw label token, None when the line has none
    source: str  # "file:line", for error messages
    frames: int | None = None  # total_frames of a rawframe list line
    missing: bool = False  # a Kinetics row whose video is not on disk


def _int_label(token: str) -> int | None:
    """The integer a label token spells, or None for a class name. Tokens too long for any class
    index come back as +-10**18 (out of every range) without converting thousands of digits."""
    if not _INTEGER.fullmatch(token):
        return None
    if len(token) > 18:
        return -(10**18) if token.startswith("-") else 10**18
    return int(token)


def read_class_index(path: str | os.PathLike) -> tuple[list[str], int]:
    """Class names in index order and the file's index base (0 or 1).

    ``index name`` lines give explicit indices (which must be consecutive from 0 or 1);
    lines holding only a name are numbered from 0 in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: class-index file not found")
    numbered: dict[int, str] = {}
    names: list[str] = []
    try:
        lines = read_list_lines(path)
    except ListFileError as exc:
        raise AnnotationError(str(exc)) from None
    for lineno, line in lines:
        parts = line.split(maxsplit=1)
        if len(parts) == 2 and _int_label(parts[0]) is not None:
            index, name = _int_label(parts[0]), parts[1].strip()
            if index in numbered:
                raise AnnotationError(f"{path}:{lineno}: class index {index} appears twice")
            numbered[index] = name
        elif len(parts) == 1:
            names.append(parts[0])
        else:
            raise AnnotationError(f"{path}:{lineno}: expected 'index name' or 'name', got {line!r}")
    if numbered and names:
        raise AnnotationError(f"{path}: mixes 'index name' lines with bare names")
    if names:
        if len(set(names)) != len(names):
            raise AnnotationError(f"{path}: a class name appears twice")
        return names, 0
    if not numbered:
        raise AnnotationError(f"{path}: no classes")
    base = min(numbered)
    if base not in (0, 1) or sorted(numbered) != list(range(base, base + len(numbered))):
        raise AnnotationError(f"{path}: class indices must run consecutively from 0 or 1, got {sorted(numbered)}")
    return [numbered[i] for i in range(base, base + len(numbered))], base


def _read_list(path: str | os.PathLike, base_dir: Path, video_index: dict[Path, dict] | None = None) -> list[_Entry]:
    """The entries of a list file in any of the module's list formats (``base_dir``: where a Kinetics
    CSV's videos are looked for; ``video_index`` caches those folders' listings between lists)."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation list not found")
    try:
        lines = read_list_lines(path)
    except ListFileError as exc:
        raise AnnotationError(str(exc)) from None
    if not lines:
        raise AnnotationError(f"{path}: no videos listed")
    if path.suffix.lower() == ".csv" or "youtube_id" in _csv_fields(lines[0][1]):
        index = video_index if video_index is not None else {}
        if base_dir not in index:
            index[base_dir] = _index_videos(base_dir)
        return _read_kinetics(path, lines, index[base_dir])
    if _is_rawframe_line(lines[0][1]):
        return [_rawframe_entry(path, lineno, line, lines[0][0]) for lineno, line in lines]
    return [_Entry(*split_list_line(line), f"{path}:{lineno}") for lineno, line in lines]


def _is_rawframe_line(line: str) -> bool:
    """``frame_dir total_frames label``: three tokens, the last two integers, the first no video file."""
    parts = line.split()
    return len(parts) == 3 and not is_video_path(parts[0]) and all(_INTEGER.fullmatch(t) for t in parts[1:])


def _rawframe_entry(path: Path, lineno: int, line: str, first: int) -> _Entry:
    if not _is_rawframe_line(line):
        raise AnnotationError(f"{path}:{lineno}: expected 'frame_dir total_frames label' like line {first} "
                              f"(an mmaction2 rawframe list), got {line[:100]!r}")
    folder, frames, label = line.split()
    if _int_label(frames) < 0 or len(frames) > 12:
        raise AnnotationError(f"{path}:{lineno}: total_frames {frames[:20]} is not a frame count")
    return _Entry(folder, label, f"{path}:{lineno}", frames=int(frames))


def _csv_fields(line: str) -> list[str]:
    return [f.strip() for f in next(csv.reader([line]), [])]


def _index_videos(root: Path) -> dict[str, list[Path]]:
    """{file stem: [paths]} of every video file under ``root`` (one walk, however long the CSV)."""
    index: dict[str, list[Path]] = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if is_video_path(name):
                index.setdefault(os.path.splitext(name)[0], []).append(Path(folder) / name)
    return index


def _seconds(text: str, where: str, column: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 <= value < 1e9):
        raise AnnotationError(f"{where}: {column} {text[:30]!r} is not a number of seconds")
    return int(value)


def _read_kinetics(path: Path, lines: list[tuple[int, str]], videos: dict[str, list[Path]]) -> list[_Entry]:
    """Entries of a Kinetics CSV; rows whose video is not in ``videos`` come back with ``missing``."""
    header_line, header_text = lines[0]
    header = _csv_fields(header_text)
    absent = [c for c in KINETICS_COLUMNS if c not in header]
    if absent:
        raise AnnotationError(f"{path}:{header_line}: a Kinetics CSV needs the columns {','.join(KINETICS_COLUMNS)}; "
                              f"{', '.join(absent)} missing from the header {header_text[:120]!r}")
    col = {c: header.index(c) for c in KINETICS_COLUMNS}
    entries = []
    for lineno, line in lines[1:]:
        where = f"{path}:{lineno}"
        row = _csv_fields(line)
        if len(row) != len(header):
            raise AnnotationError(f"{where}: {len(row)} fields where the header has {len(header)} "
                                  '(a label that holds a comma must be quoted: "a, b")')
        label, ytid = row[col["label"]], row[col["youtube_id"]]
        if not label or not ytid:
            raise AnnotationError(f"{where}: empty {'label' if not label else 'youtube_id'}")
        start, end = (_seconds(row[col[c]], where, c) for c in ("time_start", "time_end"))
        clip = f"{ytid}_{start:06d}_{end:06d}"
        found = videos.get(clip) or videos.get(ytid) or []
        # a namesake in the label's folder (the downloader's layout) wins over one elsewhere
        chosen = sorted(found, key=lambda p: (p.parent.name not in (label, label.replace(" ", "_")), str(p)))
        if chosen:
            entries.append(_Entry(str(chosen[0]), label, where))
        else:
            entries.append(_Entry(f"{clip}.mp4", label, where, missing=True))
    if not entries:
        raise AnnotationError(f"{path}: no videos listed (only a header)")
    return entries


def _drop_missing(entries: dict[str, list[_Entry]], lists: dict, bases: dict[str, Path]) -> dict[str, list[_Entry]]:
    """Kinetics rows without a video left out, with ONE warning counting and naming them."""
    missing = [e for es in entries.values() for e in es if e.missing]
    if not missing:
        return entries
    total = sum(len(es) for es in entries.values())
    named = ", ".join(f"{e.path} ({e.source})" for e in missing[:MAX_LISTED_MISSING])
    more = f" and {len(missing) - MAX_LISTED_MISSING} more" if len(missing) > MAX_LISTED_MISSING else ""
    where = ", ".join(sorted({str(b) for k, b in bases.items() if any(e.missing for e in entries[k])}))
    logger.warning("%d of %d listed Kinetics videos are missing under %s (left out; normal for Kinetics): %s%s",
                   len(missing), total, where, named, more)
    kept = {k: [e for e in es if not e.missing] for k, es in entries.items()}
    for k, es in kept.items():
        if not es:
            raise AnnotationError(f"{lists[k]}: none of its {len(entries[k])} videos is under {bases[k]}")
    return kept


def _resolve(entries: list[_Entry], base_dir: Path, classes: list[str], label_base: int) -> list[Sample]:
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for e in entries:
        if e.label is None:
            name = Path(e.path).parent.name
            if name not in index:
                raise AnnotationError(
                    f"{e.source}: no label, and the parent folder {name!r} of {e.path!r} is not a known class"
                )
            label = index[name]
        elif _int_label(e.label) is not None:
            label = _int_label(e.label) - label_base
            if not 0 <= label < len(classes):
                raise AnnotationError(
                    f"{e.source}: label {e.label[:30]} out of range for {len(classes)} classes "
                    f"({label_base}-based: {label_base}..{len(classes) - 1 + label_base})"
                )
        elif e.label in index:
            label = index[e.label]
        else:
            raise AnnotationError(f"{e.source}: unknown class {e.label!r}")
        # realpath, not Path.resolve(): a symlink loop must reach the video reader (a named skip),
        # not raise RuntimeError here and end the run
        samples.append(Sample(os.path.realpath(base_dir / e.path), label, e.frames, e.source))
    return samples


def _classes_from_labels(entries: list[_Entry], label_base: int) -> list[str]:
    """Class names when no class-index file exists: sorted names, or the integer labels as names."""
    tokens = [e.label for e in entries]
    if any(t is None for t in tokens):
        bad = next(e for e in entries if e.label is None)
        raise AnnotationError(f"{bad.source}: a line without a label needs a class-index file (classInd.txt)")
    ints = [_int_label(t) for t in tokens]
    if any(v is not None for v in ints) and None in ints:
        bad = next(e for e, v in zip(entries, ints) if v is None)
        raise AnnotationError(f"{bad.source}: label {bad.label!r} is a name but others are integers; add a class-index file")
    if ints and ints[0] is not None:
        for e, v in zip(entries, ints):
            if v - label_base < 0:
                raise AnnotationError(f"{e.source}: label {e.label[:30]} below the index base {label_base}")
            if v - label_base >= MAX_CLASSES:  # checked before the class list is allocated
                raise AnnotationError(f"{e.source}: label {e.label[:30]} would make more than {MAX_CLASSES} classes; "
                                      "a list with so many needs a class-index file (classInd.txt or classes.txt)")
        return [str(i + label_base) for i in range(max(ints) - label_base + 1)]
    return sorted(set(tokens))


def scan_folder(root: str | os.PathLike, frame_pattern: str = DEFAULT_FRAME_PATTERN) -> tuple[list[Sample], list[str]]:
    """Videos and frame folders (folders holding a file ``frame_pattern`` names) under ``root/<class>/``
    (any depth below the class folder), and the sorted class names."""
    root = Path(root)
    if not root.is_dir():
        raise AnnotationError(f"{root}: data root is not a folder")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    samples = []
    for label, name in enumerate(classes):
        found = []
        for folder, _, files in os.walk(root / name):
            found += [Path(folder) / f for f in files if is_video_path(f) and (Path(folder) / f).is_file()]
            if any(is_frame_name(f, frame_pattern) for f in files):
                found.append(Path(folder))
        samples += [Sample(str(f.resolve()), label) for f in sorted(found)]
    if not samples:
        raise AnnotationError(f"{root}: no videos ({', '.join(VIDEO_EXTENSIONS)}) or frame folders ({frame_pattern}) "
                              "in class sub-folders")
    return samples, classes


def stratified_split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split off ``fraction`` of ``samples`` keeping class proportions (scikit-learn), as (rest, held_out).

    Falls back to an unstratified split (with a warning) when a class has too few videos to stratify.
    """
    from sklearn.model_selection import train_test_split  # scikit-learn loads slowly: only when a split is made

    if not 0.0 < fraction < 1.0:
        raise AnnotationError(f"split fraction must lie in (0, 1), got {fraction}")
    if len(samples) < 2:
        raise AnnotationError(f"cannot split {len(samples)} video(s) into two parts")
    labels = [s.label for s in samples]
    n_held = max(1, round(fraction * len(samples)))
    n_classes = len(set(labels))
    stratify = labels
    if min(Counter(labels).values()) < 2 or n_held < n_classes or len(samples) - n_held < n_classes:
        logger.warning("too few videos per class to stratify a %.0f%% split; splitting at random", 100 * fraction)
        stratify = None
    rest, held = train_test_split(samples, test_size=n_held, random_state=seed, stratify=stratify)
    return list(rest), list(held)


def _report(problem: str, strict: bool) -> None:
    """A doubtful annotation: a warning, or with ``strict`` an error."""
    if strict:
        raise AnnotationError(f"{problem} (data.strict is true)")
    logger.warning("%s", problem)


def _check_duplicates(entries: list[_Entry], samples: list[Sample], classes: list[str], strict: bool) -> None:
    """Warn (or, strict, fail) when one list names a video more than once: count and examples with file:line."""
    where: dict[str, list[str]] = {}
    for e, s in zip(entries, samples):
        where.setdefault(s.path, []).append(f"{e.source} ({classes[s.label]})")
    repeated = {path: places for path, places in where.items() if len(places) > 1}
    if repeated:
        examples = "; ".join(f"{path} at {', '.join(places)}" for path, places in list(repeated.items())[:3])
        listing = entries[0].source.rsplit(":", 1)[0]
        _report(f"{listing}: {len(repeated)} video(s) listed more than once, e.g. {examples}", strict)


def _check_overlap(splits: dict[str, list[Sample]], strict: bool) -> None:
    """Warn (or, strict, fail) when a video is in more than one split: test scores would be inflated."""
    seen: dict[str, list[str]] = {}
    for name, samples in splits.items():
        for path in dict.fromkeys(s.path for s in samples):
            seen.setdefault(path, []).append(name)
    shared = {path: names for path, names in seen.items() if len(names) > 1}
    if shared:
        examples = "; ".join(f"{path} in {' and '.join(names)}" for path, names in list(shared.items())[:3])
        _report(f"{len(shared)} video(s) are in more than one of train/val/test, e.g. {examples}", strict)


def find_class_index(*folders: str | os.PathLike | None) -> Path | None:
    """The first ``classInd.txt`` / ``classes.txt`` / ... found in ``folders``, or None."""
    for folder in folders:
        if folder is None:
            continue
        for name in CLASS_INDEX_NAMES:
            candidate = Path(folder) / name
            if candidate.is_file():
                return candidate
    return None


def load_splits(
    root: str | os.PathLike | None = None,
    train_list: str | os.PathLike | None = None,
    val_list: str | os.PathLike | None = None,
    test_list: str | os.PathLike | None = None,
    class_index: str | os.PathLike | None = None,
    label_base: int | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    strict: bool = False,
    frame_pattern: str = DEFAULT_FRAME_PATTERN,
) -> Splits:
    """Train/val/test samples and class names from a class-per-folder ``root`` or annotation lists
(``root/{train,val,test}.txt`` when no list is given and ``root/train.txt`` exists).

    Missing splits are split off stratified with ``seed``: the test split (``test_fraction`` of all)
    from the training list or folder first, then val (``val_fraction`` of all) from what remains.
    A class-index file is looked for next to the training list and in ``root`` when not given.
    A video listed twice in a list, or found in more than one split, is a warning with a count and
    examples (an :class:`AnnotationError` with ``strict``). ``frame_pattern`` names the frames of
    frame folders (found in a folder-per-class ``root``; every sample carries it).
    """
    if train_list is None and val_list is None and test_list is None and root is not None:
        lists = {k: Path(root) / f"{k}.txt" for k in ("train", "val", "test")}
        if lists["train"].is_file():  # the demo-data layout: root/{train,val,test}.txt
            logger.info("annotation lists from %s: %s", root, ", ".join(p.name for p in lists.values() if p.is_file()))
            train_list = lists["train"]
            val_list = lists["val"] if lists["val"].is_file() else None
            test_list = lists["test"] if lists["test"].is_file() else None
    if train_list is None:
        if val_list is not None or test_list is not None:
            raise AnnotationError("data.val_list / data.test_list given without data.train_list")
        if root is None:
            raise AnnotationError("give data.root (a folder per class) or data.train_list")
        samples, classes = scan_folder(root, frame_pattern)
        given_val, given_test = None, None
    else:
        lists = {k: v for k, v in {"train": train_list, "val": val_list, "test": test_list}.items() if v is not None}
        bases = {k: Path(root) if root is not None else Path(v).parent for k, v in lists.items()}
        video_index: dict[Path, dict] = {}
        entries = {k: _read_list(v, bases[k], video_index) for k, v in lists.items()}
        if class_index is None:
            class_index = find_class_index(Path(train_list).parent, root)
            if class_index is not None:
                logger.info("class names from %s", class_index)
        if class_index is not None:
            classes, file_base = read_class_index(class_index)
            base = file_base if label_base is None else label_base
        else:
            base = 0 if label_base is None else label_base
            classes = _classes_from_labels([e for es in entries.values() for e in es], base)
        # classes come from every row above, missing videos' too: indices do not depend on what was downloaded
        entries = _drop_missing(entries, lists, bases)
        resolved = {k: _resolve(entries[k], bases[k], classes, base) for k in entries}
        for k in entries:
            _check_duplicates(entries[k], resolved[k], classes, strict)
        samples = resolved["train"]
        given_val, given_test = resolved.get("val"), resolved.get("test")

    total = len(samples)
    test = given_test
    if test is None:
        samples, test = stratified_split(samples, test_fraction, seed)
    val = given_val
    if val is None:
        # val_fraction is of the whole set, so rescale to what is left after the test split
        frac = val_fraction * total / len(samples) if given_test is None else val_fraction
        samples, val = stratified_split(samples, min(frac, 0.9), seed)
    _check_overlap({"train": samples, "val": val, "test": test}, strict)
    with_pattern = [[replace(s, frame_pattern=frame_pattern) for s in split] for split in (samples, val, test)]
    return Splits(*with_pattern, classes)
