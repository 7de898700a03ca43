"""Evaluation: case loading, the eval CLI reproducing BASELINES.txt (zero, DIS), JSON layout, errors."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from flow_engine.__main__ import main
from flow_engine.models.classical import CLASSICAL_METHODS, classical_flow
from flow_engine.commands.evaluate import Case, evaluate, load_cases, make_method
from flow_engine.io.flow_files import FlowFileError, read_image, write_flo, write_image


def baselines(root: Path) -> dict[str, dict[str, float]]:
    """BASELINES.txt as {case or MEAN: {method: EPE}}."""
    table = {}
    for line in (root / "BASELINES.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, *pairs = line.split()
        table[name] = {k: float(v) for k, v in (p.split("=") for p in pairs)}
    return table


@pytest.mark.parametrize("method, column, tol", [("zero", "zero", 0.01), ("dis", "dis_medium", 0.05)])
def test_eval_cli_reproduces_the_shared_baselines(shared_flow_cases, tmp_path, capsys, method, column, tol):
    out = tmp_path / "scores.json"
    assert main(["eval", "--cases", str(shared_flow_cases), "--engine", method, "--json", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    expected = baselines(shared_flow_cases)
    result = json.loads(out.read_text())
    assert set(result) >= {"cases", "mean"}
    assert list(result["cases"]) == sorted(k for k in expected if k not in ("MEAN", "SECONDS/PAIR"))
    for name, scores in result["cases"].items():
        assert set(scores) >= {"epe", "ae", "fl"}
        assert scores["epe"] == pytest.approx(expected[name][column], abs=tol), name
        # the printed table carries the same EPE
        row = re.search(rf"^\| {name} \| ([\d.]+) \|", printed, re.M)
        assert row and float(row.group(1)) == pytest.approx(scores["epe"], abs=1e-3)
    assert result["mean"]["epe"] == pytest.approx(expected["MEAN"][column], abs=tol)
    assert "**mean**" in printed
    if method == "zero":  # zero flow is wrong by more than 3 px and 5 % wherever |gt| > 3 px
        assert result["mean"]["fl"] > 10 and result["mean"]["ae"] > 10


def test_load_cases_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("b_case", "a_case"):
        d = tmp_path / name
        d.mkdir()
        write_image(d / "frame1.png", rng.integers(0, 255, (8, 10, 3), dtype=np.uint8))
        write_image(d / "frame2.png", rng.integers(0, 255, (8, 10, 3), dtype=np.uint8))
        write_flo(d / "flow.flo", np.ones((8, 10, 2), np.float32))
    (tmp_path / "notes.txt").write_text("not a case")
    cases = load_cases(tmp_path)
    assert [c.name for c in cases] == ["a_case", "b_case"]
    assert cases[0] == Case("a_case", tmp_path / "a_case/frame1.png", tmp_path / "a_case/frame2.png", tmp_path / "a_case/flow.flo")
    # a known answer: zero flow against a constant (1, 1) field
    result = evaluate(make_method("zero"), cases, progress=False)
    assert result["mean"]["epe"] == pytest.approx(np.sqrt(2))
    assert result["mean"]["ae"] == pytest.approx(np.degrees(np.arccos(1 / np.sqrt(3))))
    assert result["mean"]["fl"] == 0.0  # error 1.41 px < 3 px
    assert set(result["cases"]["a_case"]) == {"epe", "ae", "fl", "seconds"}
    # a method returning the wrong shape is named
    with pytest.raises(ValueError, match="a_case"):
        evaluate(lambda a, b: np.zeros((3, 3, 2)), cases, progress=False)
    (tmp_path / "b_case" / "frame2.png").unlink()
    with pytest.raises(FlowFileError, match="b_case.*frame2"):
        load_cases(tmp_path)
    assert main(["eval", "--cases", str(tmp_path), "--engine", "zero", "--no-progress"]) == 1
    with pytest.raises(FlowFileError, match="not a folder"):
        load_cases(tmp_path / "nowhere")


def test_eval_scores_several_sets_side_by_side(tmp_path, capsys):
    # Two sets with constant known flows: zero flow scores |(1, 1)| = 1.41 px on one, |(3, 4)| = 5 px on the other.
    rng = np.random.default_rng(0)
    for set_name, flow, cases in (("small", (1, 1), ("a", "b")), ("large", (3, 4), ("c",))):
        for name in cases:
            d = tmp_path / set_name / name
            d.mkdir(parents=True)
            write_image(d / "frame1.png", rng.integers(0, 255, (8, 10, 3), dtype=np.uint8))
            write_image(d / "frame2.png", rng.integers(0, 255, (8, 10, 3), dtype=np.uint8))
            write_flo(d / "flow.flo", np.broadcast_to(np.float32(flow), (8, 10, 2)).copy())
    out = tmp_path / "scores.json"
    assert main(["eval", "--cases", str(tmp_path / "small"), str(tmp_path / "large"), "--engine", "zero", "--json", str(out),
                 "--no-progress"]) == 0
    sets = json.loads(out.read_text())["sets"]
    assert sets["small"]["mean"]["epe"] == pytest.approx(np.sqrt(2)) and set(sets["small"]["cases"]) == {"a", "b"}
    assert sets["large"]["mean"]["epe"] == pytest.approx(5.0)
    printed = capsys.readouterr().out
    assert re.search(r"^\| small \| 2 \| 1\.414 \|", printed, re.M) and re.search(r"^\| large \| 1 \| 5\.000 \|", printed, re.M)


def test_the_old_method_flag_still_names_the_engine_with_a_deprecation_message(tmp_path, capsys):
    case = tmp_path / "a"
    case.mkdir()
    write_image(case / "frame1.png", np.zeros((8, 10, 3), np.uint8))
    write_image(case / "frame2.png", np.zeros((8, 10, 3), np.uint8))
    write_flo(case / "flow.flo", np.ones((8, 10, 2), np.float32))
    assert main(["eval", "--cases", str(tmp_path), "--method", "zero", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "--method is deprecated; use --engine" in captured.err and "engine: zero" in captured.out


def test_unknown_method_lists_the_choices():
    with pytest.raises(ValueError, match="zero, dis, dis_fine, farneback, tvl1, pwcnet"):
        make_method("raft")


def test_eval_cli_reports_an_unknown_method(capsys, shared_flow_cases):
    assert main(["eval", "--cases", str(shared_flow_cases), "--engine", "raft"]) == 1
    assert "unknown flow method" in capsys.readouterr().err


def test_classical_methods_on_a_known_shift():
    # A smooth random texture shifted 2 px right: DIS and Farneback find ~(2, 0) in the interior.
    rng = np.random.default_rng(0)
    import cv2

    tex = cv2.GaussianBlur(rng.integers(0, 255, (96, 128), dtype=np.uint8), (0, 0), 2)
    tex = cv2.normalize(tex, None, 0, 255, cv2.NORM_MINMAX)
    img1 = np.dstack([tex] * 3)
    img2 = np.roll(img1, 2, axis=1)
    for method in ("dis", "dis_fine", "farneback"):
        flow = classical_flow(method, img1, img2)
        assert flow.shape == (96, 128, 2) and flow.dtype == np.float32
        inner = flow[16:-16, 16:-16]
        assert np.median(inner[..., 0]) == pytest.approx(2.0, abs=0.2), method
        assert np.median(inner[..., 1]) == pytest.approx(0.0, abs=0.2), method
    assert "tvl1" in CLASSICAL_METHODS
    with pytest.raises(ValueError, match="differ in size"):
        classical_flow("dis", img1, img1[:50])
    with pytest.raises(ValueError, match="uint8"):
        classical_flow("dis", img1.astype(np.float32), img2)
    with pytest.raises(ValueError, match="unknown classical method"):
        classical_flow("lucas", img1, img2)


def test_dis_fine_keeps_the_motion_of_thin_parts():
    # a 2-px bright bar moving 1 px right over a static texture (a limb in a small frame):
    # DIS stopping at half resolution loses most of it, dis_fine (full resolution) keeps it
    import cv2

    rng = np.random.default_rng(0)
    bg = cv2.GaussianBlur(rng.integers(0, 255, (112, 112), dtype=np.uint8), (0, 0), 1.5)
    bg = cv2.normalize(bg, None, 40, 160, cv2.NORM_MINMAX)
    frames = []
    for x in (50, 51):
        f = bg.copy()
        f[30:80, x:x + 2] = 250
        frames.append(np.dstack([f] * 3))
    bar = (slice(34, 76), slice(50, 52))
    err = {m: np.linalg.norm(classical_flow(m, *frames)[bar] - [1.0, 0.0], axis=-1).mean() for m in ("dis", "dis_fine")}
    assert np.median(classical_flow("dis_fine", *frames)[bar][..., 0]) == pytest.approx(1.0, abs=0.15)
    assert err["dis_fine"] < 0.2 and err["dis"] > 3 * err["dis_fine"], err


def test_dis_result_does_not_depend_on_earlier_calls_on_tiny_frames(shared_flow_cases):
    """OpenCV's DIS object remembers a lowered finest scale after a tiny pair; ours must not."""
    case = shared_flow_cases / "chairs_0000000"
    img1, img2 = read_image(case / "frame1.ppm"), read_image(case / "frame2.ppm")
    before = classical_flow("dis", img1, img2)
    tiny = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    classical_flow("dis", tiny, tiny)
    assert np.array_equal(classical_flow("dis", img1, img2), before)
