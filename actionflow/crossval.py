"""K-fold cross-validation by video: every video is a test video once, never trained on with its own clips.

``python -m actionflow cv [--folds 5] [--seed 0] [--out runs/cv] [--group REGEX] [--only 0,3] TRAIN_ARGS...``

``TRAIN_ARGS`` are ``train.py``'s (``--config configs/real.yaml --data.root DIR ...``); the dataset is the
union of the train, val and test videos they name. Clips are grouped into videos by their file name
(:data:`DEFAULT_GROUP`: ``dance_3.mp4`` is a clip of video ``dance``, as the real-footage benchmark names
them; ``--group`` takes a regular expression whose first group names the video), videos are dealt into
``folds`` folds with scikit-learn's ``StratifiedGroupKFold`` (class proportions kept as far as whole
videos allow), and fold ``i`` is trained on every fold but ``i`` and ``i + 1``, validated (checkpoint
choice, ``fusion: validation`` weights) on fold ``i + 1`` and tested on fold ``i``. Each fold is one
``train.py`` run (``train.main``: the same LightningCLI, no second training loop) in ``OUT/fold<i>/``,
logging to CSV; the flow cache is filled once, before the first fold. A fold whose result is already in
``OUT`` with the same resolved config (what ``--print_config`` shows: an edited config file counts) and
videos is reused, and a fold that was stopped half way resumes from its last checkpoint, so an interrupted
run resumes; a fold folder of other settings is an error (a new ``--out``, or remove it), never overwritten.

Printed and written to ``OUT/cv.md`` and ``OUT/cv.json``: each fold's test top-1 per stream (and the last
epoch's training top-1: the gap between them is what the recipe learned about the videos rather than
the task), the mean ± sample standard deviation over folds, the top-1 over all clips (each tested once)
and the wall time.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import logging
import re
import statistics
import sys
import time
from pathlib import Path

from sklearn.model_selection import StratifiedGroupKFold

from actionflow.annotations import Sample
from actionflow.errors import ActionflowError
from flow_engine.commands.args import output_folder
from flow_engine.errors import FlowEngineError

log = logging.getLogger(__name__)

DEFAULT_GROUP = r"^(.+?)(?:_\d+)?$"  # file stem -> video: a trailing _<number> is a clip index
TRAIN_ENTRY = Path(__file__).resolve().parents[1] / "train.py"
STREAMS = ("rgb", "flow", "two_stream")


class CrossValError(ActionflowError, ValueError):
    """Settings or data that cannot be cross-validated (too few videos for the folds, a bad pattern, a failed fold)."""


def video_of(path: str, pattern: str = DEFAULT_GROUP) -> str:
    """The video a clip comes from: the first group of ``pattern`` matched on the file's stem (the stem when it does not match)."""
    stem = Path(path).stem
    match = re.match(pattern, stem)
    return match.group(1) if match and match.groups() and match.group(1) else stem


def check_plan(folds: int, pattern: str = DEFAULT_GROUP, only: list[int] | None = None) -> None:
    """CrossValError for fold settings that cannot work, checked before any work (the flow cache is filled after)."""
    try:
        groups = re.compile(pattern).groups
    except re.error as exc:
        raise CrossValError(f"--group {pattern!r}: {exc}") from None
    if groups < 1:
        raise CrossValError(f"--group {pattern!r} has no (group): its first group names the video, e.g. '^(.+?)_\\d+$'")
    if folds < 3:
        raise CrossValError(f"--folds must be at least 3 (a test, a validation and a training fold), got {folds}")
    if only is not None and (bad := sorted(set(only) - set(range(folds)))):
        raise CrossValError(f"--only {bad}: there are folds 0..{folds - 1}")


def video_folds(samples: list[Sample], folds: int, seed: int = 0,
                pattern: str = DEFAULT_GROUP) -> list[tuple[list[Sample], list[Sample], list[Sample]]]:
    """(train, val, test) samples of each fold: test fold ``i``, validation fold ``i + 1`` (mod ``folds``), train the rest.

    Whole videos go to one fold (``StratifiedGroupKFold``, shuffled with ``seed``), so no fold tests a
    video that its training saw; the folds depend on the samples and the seed, not on their order.
    """
    check_plan(folds, pattern)
    samples = sorted(samples, key=lambda s: s.path)
    groups = [video_of(s.path, pattern) for s in samples]
    videos = len(set(groups))
    if videos < folds:
        raise CrossValError(f"{videos} videos cannot fill {folds} folds (videos are grouped by {pattern!r})")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_of = [0] * len(samples)
    for i, (_, test) in enumerate(splitter.split(samples, [s.label for s in samples], groups)):
        for j in test:
            fold_of[j] = i
    out = []
    for i in range(folds):
        val = (i + 1) % folds
        train, test = [s for s, f in zip(samples, fold_of) if f not in (i, val)], [s for s, f in zip(samples, fold_of) if f == i]
        if unseen := sorted({s.label for s in test} - {s.label for s in train}):
            # e.g. the demo's clips (<class>_<i>.mp4): grouped by the default pattern, each "video" is a class
            raise CrossValError(f"fold {i} tests class(es) {unseen} that none of its training videos has: are the clips "
                                f"grouped into videos right? (--group {pattern!r}; '^(.+)$' makes every file its own video)")
        out.append((train, [s for s, f in zip(samples, fold_of) if f == val], test))
    return out


def write_lists(folder: Path, train: list[Sample], val: list[Sample], test: list[Sample], classes: list[str]) -> None:
    """``train.txt``, ``val.txt``, ``test.txt`` (absolute path, 0-based label) and ``classes.txt`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", train), ("val", val), ("test", test)):
        (folder / f"{name}.txt").write_text("".join(f"{s.path} {s.label}\n" for s in split))
    (folder / "classes.txt").write_text("".join(f"{c}\n" for c in classes))


def last_train_top1(run_dir: Path) -> dict[str, float]:
    """The last epoch's training top-1 per stream from the run's CSV log (empty when there is none)."""
    found: dict[str, float] = {}
    logs = {int(m.group(1)): p for p in run_dir.glob("csv/version_*/metrics.csv")
            if (m := re.fullmatch(r"version_(\d+)", p.parent.name))}
    for _, path in sorted(logs.items()):  # a resumed fold logs on in the next version (10 after 9): the last counts
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                for stream in STREAMS:
                    if value := row.get(f"train/{stream}/top1"):
                        found[stream] = float(value)
    return found


def summarise(results: list[dict]) -> dict:
    """Mean, sample standard deviation (over folds) and the top-1 over all test clips, per stream."""
    out = {}
    for stream in STREAMS:
        values = [r["test"][stream] for r in results if stream in r["test"]]
        if not values:
            continue
        clips = [r["clips"] for r in results if stream in r["test"]]
        out[stream] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                       "all_clips": sum(v * n for v, n in zip(values, clips)) / sum(clips)}
    return out


def table(results: list[dict], summary: dict) -> str:
    """A Markdown table: a row per fold (test top-1 per stream, training top-1, videos, clips, time), then mean ± std."""
    streams = [s for s in STREAMS if s in summary]
    trained = [s for s in streams if s != "two_stream"]
    head = ["fold", "test videos", "clips", *(f"{s} test" for s in streams), *(f"{s} train" for s in trained), "time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [str(r["fold"]), ", ".join(r["test_videos"]), str(r["clips"]),
                 *(f"{r['test'][s]:.3f}" for s in streams),
                 *(f"{r['train'][s]:.3f}" if s in r["train"] else "" for s in trained),
                 f"{r['seconds'] / 60:.1f} min"]
        lines.append("| " + " | ".join(cells) + " |")
    total = sum(r["seconds"] for r in results)
    cells = ["mean ± std", "", str(sum(r["clips"] for r in results)),
             *(f"**{summary[s]['mean']:.3f} ± {summary[s]['std']:.3f}**" for s in streams), *("" for _ in trained),
             f"{total / 60:.1f} min"]
    lines.append("| " + " | ".join(cells) + " |")
    cells = ["all clips", "", "", *(f"{summary[s]['all_clips']:.3f}" for s in streams), *("" for _ in trained), ""]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def load_train_entry():
    """``train.py`` (the LightningCLI entry point at the repository's root) as a module."""
    if not TRAIN_ENTRY.is_file():
        raise CrossValError(f"{TRAIN_ENTRY} not found: cross-validation runs train.py, so it needs the source tree")
    spec = importlib.util.spec_from_file_location("actionflow_train_entry", TRAIN_ENTRY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fold_args(folder: Path) -> list[str]:
    """train.py arguments that point a run at a fold's lists and keep its outputs (CSV log included) in ``folder``."""
    logger = {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"name": "csv"}}
    return ["--data.demo", "false", "--data.root", str(folder), "--data.class_index", str(folder / "classes.txt"),
            *(a for split in ("train", "val", "test") for a in (f"--data.{split}_list", str(folder / f"{split}.txt"))),
            "--trainer.default_root_dir", str(folder / "run"), "--trainer.logger", json.dumps(logger)]


def cross_validate(train_args: list[str], folds: int = 5, seed: int = 0, out: str | Path = "runs/cv",
                   pattern: str = DEFAULT_GROUP, only: list[int] | None = None) -> tuple[list[dict], dict]:
    """Run the folds (see the module docstring); returns (a result per fold, the summary)."""
    check_plan(folds, pattern, only)
    train = load_train_entry()
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CrossValError(f"--out {out}: cannot create it ({exc.strerror or exc})") from None
    started = time.monotonic()
    cli = train.build_cli([*train_args, "--trainer.logger", "false", "--trainer.default_root_dir", str(out / "setup")])
    if cli.ckpt_path:  # every fold would start from a model that may have trained on its test videos
        raise CrossValError(f"--ckpt_path {cli.ckpt_path}: cv trains every fold afresh (to start the temporal stream "
                            "from weights of your own, use --model.flow_init)")
    config = cli.parser.dump(cli.config, skip_none=False)  # what the folds run, config files' contents included
    data = cli.datamodule
    data.prepare_data()  # the demo set when asked, and the flow of every video: once, before the folds
    splits = data.splits
    samples = sorted({s for split in (splits.train, splits.val, splits.test) for s in split}, key=lambda s: s.path)
    plan = video_folds(samples, folds, seed, pattern)
    keys = [{"config": config, "videos": [[s.path for s in split] for split in fold], "seed": seed} for fold in plan]
    for i, key in enumerate(keys):  # before any fold trains: a fold folder of other settings is not overwritten
        folder, found = out / f"fold{i}", read_json(out / f"fold{i}" / "key.json")
        if (only is None or i in only) and (found != key if found is not None else (folder / "run").exists()):
            raise CrossValError(f"{out / f'fold{i}'} holds a fold of other settings or videos: use another --out, "
                                "or remove that folder")
    log.info("cross-validation: %d clips of %d videos in %d folds (setup %.0f s)", len(samples),
             len({video_of(s.path, pattern) for s in samples}), folds, time.monotonic() - started)
    results = []
    for i, (tr, va, te) in enumerate(plan):
        if only is not None and i not in only:
            continue
        folder, key = out / f"fold{i}", keys[i]
        done = folder / "result.json"
        if (previous := read_json(done)) is not None and previous.get("key") == key:
            log.info("fold %d: reusing %s", i, done)
            results.append(previous)
            continue
        resume = []
        if (last := folder / "run" / "checkpoints" / "last.ckpt").is_file():  # stopped half way: go on from there
            log.info("fold %d: resuming from %s", i, last)
            resume = ["--ckpt_path", str(last)]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "key.json").write_text(json.dumps(key, indent=1) + "\n")  # first: the folder is this fold's from now on
        write_lists(folder, tr, va, te, splits.classes)
        t0 = time.monotonic()
        if (code := train.main([*train_args, *fold_args(folder), *resume])) != 0:
            raise CrossValError(f"fold {i}: train.py exited with {code}")
        metrics = json.loads((folder / "run" / "test" / "metrics.json").read_text())
        result = {"fold": i, "key": key, "train_args": train_args, "seconds": time.monotonic() - t0, "clips": len(te),
                  "test_videos": sorted({video_of(s.path, pattern) for s in te}),
                  "test": {k: v["top1"] for k, v in metrics.items()}, "train": last_train_top1(folder / "run")}
        done.write_text(json.dumps(result, indent=2) + "\n")
        results.append(result)
    return results, summarise(results)


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when it is missing or unreadable (a fold stopped while writing it)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def fold_list(text: str) -> list[int]:
    """``--only``'s value: fold numbers separated by commas."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: fold numbers separated by commas, e.g. 0,3") from None


def main(argv: list[str] | None = None, prog: str = "python -m actionflow cv") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     epilog="Other arguments go to train.py (e.g. --config configs/real.yaml --data.root DIR).")
    parser.add_argument("--folds", type=int, default=5, help="folds K (default 5): each fold's videos are tested once")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split of videos into folds (default 0)")
    parser.add_argument("--out", type=output_folder, default=Path("runs/cv"), help="output folder (default runs/cv)")
    parser.add_argument("--group", default=DEFAULT_GROUP, help="regex on a clip's file stem whose first group names its "
                        "video (default: the stem less a trailing _<number>)")
    parser.add_argument("--only", type=fold_list, default=None,
                        help="run only these folds, e.g. 0,3 (the summary covers the folds run or reused)")
    args, train_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    try:
        results, summary = cross_validate(train_args, args.folds, args.seed, args.out, args.group, args.only)
    except (ActionflowError, FlowEngineError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    text = table(results, summary)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cv.md").write_text(text)
    wall = time.monotonic() - started
    (args.out / "cv.json").write_text(json.dumps({"train_args": train_args, "folds": args.folds, "seed": args.seed,
                                                  "results": results, "summary": summary, "wall_seconds": wall},
                                                 indent=2) + "\n")
    print(text, end="")
    print(f"cross-validation: {len(results)} fold(s) in {wall / 60:.1f} min; table {args.out / 'cv.md'}, "
          f"results {args.out / 'cv.json'}", flush=True)
    return 0
