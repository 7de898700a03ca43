"""Score a flow engine (or zero flow) against ground truth: EPE (px), angular error (degrees), Fl-all (%).

A case folder holds ``frame1.*``, ``frame2.*`` and ``flow.flo``; a cases root holds one
folder per case (``../shared/data/flow``). The mean is the plain mean over cases, as in
``BASELINES.txt``.

CLI: ``python -m flow_engine eval (--cases DIR [DIR ...] | --dataset sintel|kitti|chairs|things --root PATH)
[--engine NAME] [--weights PATH] [--device auto|cpu|cuda] [--json OUT.json]``. The benchmark
layouts are read by :mod:`flow_engine.data.datasets` (their pairs with ground truth become cases).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from flow_engine.commands.args import add_engine_argument, add_engine_options, output_file, write_output
from flow_engine.data.datasets import FlowCases, make_dataset
from flow_engine.engine import LEARNED_ENGINES, FlowEngine
from flow_engine.errors import DatasetError, FlowEngineError
from flow_engine.models.classical import CLASSICAL_METHODS, classical_flow
from flow_engine.io.flow_files import FlowFileError, read_flow, read_image, tensor_to_flow
from flow_engine.metrics import flow_metrics

log = logging.getLogger(__name__)

METHODS = ("zero",) + CLASSICAL_METHODS + LEARNED_ENGINES
METRICS = ("epe", "ae", "fl", "seconds")

MethodFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (img1, img2 uint8 RGB [H,W,3]) -> flow [H,W,2] px


@dataclass(frozen=True)
class Case:
    """One frame pair with ground truth: paths to the two frames and the flow file (.flo, KITTI .png, .pfm)."""

    name: str
    frame1: Path
    frame2: Path
    flow: Path


def load_cases(root: str | Path) -> list[Case]:
    """The cases under ``root``, sorted by name (the layout of :class:`flow_engine.data.datasets.FlowCases`)."""
    try:
        pairs = FlowCases(root).pairs
    except DatasetError as e:
        raise FlowFileError(root, str(e).removeprefix(f"{root}: ")) from None
    return [Case(p.name, p.img1, p.img2, p.flow) for p in pairs]


def evaluate(method_fn: MethodFn, cases: list[Case], progress: bool = True) -> dict:
    """Runs ``method_fn`` on every case and scores it over the pixels with known flow.

    Returns ``{"cases": {name: {"epe", "ae", "fl", "seconds"}}, "mean": {...}}``: EPE in px,
    AE in degrees, Fl-all in percent, seconds of ``method_fn`` per pair.
    """
    results: dict[str, dict[str, float]] = {}
    for case in tqdm(cases, desc="eval", unit="pair", disable=not progress):
        img1, img2 = read_image(case.frame1), read_image(case.frame2)
        gt, valid = read_flow(case.flow)
        if img1.shape != img2.shape or img1.shape[:2] != gt.shape[:2]:
            raise FlowFileError(case.flow, f"case {case.name!r}: frames {img1.shape[:2]}, {img2.shape[:2]} and flow {gt.shape[:2]} differ in size")
        start = time.perf_counter()
        pred = np.asarray(method_fn(img1, img2))
        seconds = time.perf_counter() - start
        if pred.shape != gt.shape:
            raise ValueError(f"case {case.name!r}: the method returned flow of shape {pred.shape}, expected {gt.shape}")
        results[case.name] = {**flow_metrics(pred, gt, valid), "seconds": seconds}
    if not results:
        raise ValueError("no cases to evaluate")
    mean = {k: float(np.mean([r[k] for r in results.values()])) for k in METRICS}
    return {"cases": results, "mean": mean}


def make_method(name: str, weights: str | None = None, device: str = "auto", flow_updates: int | None = None,
                scales: list[float] | None = None) -> MethodFn:
    """The flow method called ``name`` as ``fn(img1, img2) -> flow [H,W,2]`` (uint8 RGB in, pixels out).

    ``weights``, (RAFT) ``flow_updates`` and (PWC-Net) ``scales`` go to :class:`FlowEngine` for the learned methods.
    """
    if name == "zero":
        return lambda img1, img2: np.zeros(img1.shape[:2] + (2,), np.float32)
    if name in CLASSICAL_METHODS:
        return lambda img1, img2: classical_flow(name, img1, img2)
    if name in LEARNED_ENGINES:
        engine = FlowEngine(name=name, weights=weights, device=device, flow_updates=flow_updates, scales=scales)

        def learned(img1: np.ndarray, img2: np.ndarray) -> np.ndarray:
            t1 = torch.from_numpy(img1).permute(2, 0, 1)[None]
            t2 = torch.from_numpy(img2).permute(2, 0, 1)[None]
            with torch.inference_mode():
                return tensor_to_flow(engine(t1, t2)[0])

        return learned
    raise ValueError(f"unknown flow method {name!r}; choose from {', '.join(METHODS)}")


# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("ground truth")
    data.add_argument("--cases", type=Path, nargs="+", metavar="DIR",
                      help="folder(s) of case folders (frame1.*, frame2.*, flow.flo); several folders are scored as sets side by side")
    data.add_argument("--dataset", choices=DATASET_NAMES, help="a benchmark in its published layout under --root")
    data.add_argument("--root", type=Path, metavar="PATH", help="the benchmark's folder (with --dataset)")
    data.add_argument("--split", help="benchmark split (default: sintel training, kitti training, chairs val, things TEST)")
    data.add_argument("--pass", dest="pass_", default="clean", choices=("clean", "final"), help="Sintel / FlyingThings3D render pass")
    data.add_argument("--year", type=int, default=2015, choices=(2012, 2015), help="KITTI flow benchmark year")
    data.add_argument("--limit", type=int, metavar="N", help="only the first N pairs of a benchmark")
    method = parser.add_argument_group("engine")
    add_engine_argument(method, "dis", METHODS, old=("--method",),
                        help=f"flow engine, or zero flow: {', '.join(METHODS)} (default dis)", check=False)
    add_engine_options(method)
    method.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="device for a learned method")
    parser.add_argument("--json", type=output_file, metavar="OUT.json", help="also write the scores as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


DATASET_NAMES = ("sintel", "kitti", "chairs", "things")
DEFAULT_SPLITS = {"sintel": "training", "kitti": "training", "chairs": "val", "things": "TEST"}


def dataset_cases(name: str, root: str | Path, split: str | None = None, pass_: str = "clean", year: int = 2015) -> list[Case]:
    """The pairs with ground truth of a benchmark (see :mod:`flow_engine.data.datasets`) as cases."""
    split = split or DEFAULT_SPLITS[name]
    options = {"sintel": {"split": split, "pass_": pass_}, "kitti": {"split": split, "year": year},
               "chairs": {"split": split}, "things": {"split": split, "pass_": pass_}}[name]
    dataset = make_dataset(name, root, **options)
    cases = [Case(p.name, p.img1, p.img2, p.flow) for p in dataset.pairs if p.flow is not None]
    if not cases:
        raise FlowFileError(root, f"{name} {split}: no pairs with ground truth (a test split?)")
    return cases


def cases_from_args(args: argparse.Namespace) -> dict[str, list[Case]]:
    """The cases the command line asks for, by set name (the one place that knows the sources of ground truth):
    one set per ``--cases`` folder (named after it), or the benchmark of ``--dataset``."""
    dataset = getattr(args, "dataset", None)
    if dataset is not None:
        if args.cases:
            raise FlowFileError("--cases", "pass either --cases DIR or --dataset NAME --root PATH, not both")
        if args.root is None:
            raise FlowFileError("--root", f"--dataset {dataset} needs --root PATH (the dataset's folder)")
        cases = dataset_cases(dataset, args.root, args.split, args.pass_, args.year)
        return {dataset: cases[: args.limit] if args.limit else cases}
    if not args.cases:
        raise FlowFileError("--cases", "no ground truth given: pass --cases DIR or --dataset NAME --root PATH")
    sets: dict[str, list[Case]] = {}
    for folder in args.cases:
        name = Path(folder).resolve().name
        sets[name if name not in sets else f"{name}{len(sets)}"] = load_cases(folder)
    return sets


def format_table(result: dict) -> str:
    """The scores as a Markdown table: one row per case and the mean."""
    lines = ["| case | EPE (px) | AE (deg) | Fl-all (%) | s/pair |", "|---|---:|---:|---:|---:|"]
    rows = list(result["cases"].items()) + [("**mean**", result["mean"])]
    for name, r in rows:
        lines.append(f"| {name} | {r['epe']:.3f} | {r['ae']:.2f} | {r['fl']:.2f} | {r['seconds']:.3f} |")
    return "\n".join(lines)


def format_sets(results: dict[str, dict]) -> str:
    """Several sets' means side by side, a row per set."""
    lines = ["| set | pairs | EPE (px) | AE (deg) | Fl-all (%) | s/pair |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        m = r["mean"]
        lines.append(f"| {name} | {len(r['cases'])} | {m['epe']:.3f} | {m['ae']:.2f} | {m['fl']:.2f} | {m['seconds']:.3f} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        sets = cases_from_args(args)
        method_fn = make_method(args.engine, args.weights, args.device, args.flow_updates, args.scales)
        results = {name: evaluate(method_fn, cases, progress=not args.no_progress) for name, cases in sets.items()}
    except (FlowEngineError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for name, result in results.items():
        print(f"engine: {args.engine}, {len(sets[name])} pairs" + (f" of {name}" if len(results) > 1 else ""))
        print(format_table(result))
    if len(results) > 1:
        print(f"engine: {args.engine}, sets side by side")
        print(format_sets(results))
    if args.json is not None:
        body = next(iter(results.values())) if len(results) == 1 else {"sets": results}
        if not write_output(args.json, json.dumps({"method": args.engine, **body}, indent=2) + "\n"):
            return 2
        print(f"wrote {args.json}")
    return 0
