"""``python -m actionflow classify``: JSON / text output, looping of short clips, any resolution,
flow video, clear errors for corrupt videos and bad checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_videos import render, write_mp4

from actionflow.__main__ import main
from actionflow.module import ActionRecognizer
from flow_engine.io.video import probe, read_frames


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A checkpoint laid out as Lightning writes it (state_dict + hyperparameters), random weights."""
    torch.manual_seed(0)
    model = ActionRecognizer(num_classes=3, class_names=["right", "left", "still"], mode="two_stream", flow_length=3)
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    torch.save({
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "datamodule_hyper_parameters": {"size": [32, 32], "crop_size": [32, 32], "num_segments": 2, "test_clips": 2},
    }, path)
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_mp4(tmp_path_factory.mktemp("v") / "right.mp4", render("right", frames=12, size=64))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["classify", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_output(ckpt, video, capsys):
    code, out, _ = run(capsys, video, "--ckpt", ckpt, "--json", "--topk", "2", "--device", "cpu")
    assert code == 0
    result = json.loads(out)
    assert result["video"] == str(video)
    assert len(result["topk"]) == 2 and set(result["streams"]) == {"rgb", "flow"}
    for rows in [result["topk"], *result["streams"].values()]:
        assert {r["label"] for r in rows} <= {"right", "left", "still"}
        assert rows[0]["prob"] >= rows[1]["prob"] > 0


def test_text_output_lists_every_stream(ckpt, video, capsys):
    code, out, _ = run(capsys, video, "--ckpt", ckpt, "--clips", "1", "--device", "cpu")
    assert code == 0
    for stream in ("two_stream:", "rgb:", "flow:"):
        assert stream in out
    assert out.count("1. ") == 3


def test_clip_shorter_than_a_snippet_is_looped(ckpt, tmp_path, capsys):
    short = write_mp4(tmp_path / "short.mp4", render("left", frames=2, size=48))
    code, out, err = run(capsys, short, "--ckpt", ckpt, "--json", "--device", "cpu")
    assert code == 0, err
    assert len(json.loads(out)["topk"]) == 3


def test_any_resolution_and_length(ckpt, shared_videos, capsys):
    video = shared_videos / "kinetics_flipping_pancake.mkv"  # 426x240, 310 frames, with audio
    code, out, err = run(capsys, video, "--ckpt", ckpt, "--json", "--clips", "1", "--device", "cpu")
    assert code == 0, err
    assert json.loads(out)["topk"][0]["label"] in {"right", "left", "still"}


def test_flow_video_is_colour_coded_motion(ckpt, video, tmp_path, capsys):
    out_mp4 = tmp_path / "flow.mp4"
    code, _, err = run(capsys, video, "--ckpt", ckpt, "--flow-video", out_mp4, "--device", "cpu")
    assert code == 0, err
    assert probe(out_mp4).num_frames == 11  # one flow per consecutive frame pair
    # flow at the checkpoint's 32x32, where the square of frame 5 covers x 10..20, y 11..21. It moves
    # right: Middlebury red; the still background is white-ish
    frame = read_frames(out_mp4, [5])[0].astype(int)
    assert frame.shape == (32, 32, 3)
    centre = frame[13:19, 12:18].reshape(-1, 3).mean(axis=0)
    assert centre[0] > centre[2] + 40 and centre[0] > centre[1] + 20, centre
    assert np.median(frame[:4, :4].reshape(-1, 3), axis=0).min() > 150


def test_corrupt_video_is_a_clear_error(ckpt, tmp_path, capsys):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00\x00\x00\x20ftypisom" + bytes(200))
    code, out, err = run(capsys, bad, "--ckpt", ckpt, "--device", "cpu")
    assert code == 1 and out == ""
    assert "corrupt.mp4" in err and "error" in err


def test_bad_checkpoint_is_a_clear_error(video, tmp_path, capsys):
    code, _, err = run(capsys, video, "--ckpt", tmp_path / "none.ckpt")
    assert code == 2 and "none.ckpt: no such checkpoint" in err
    junk = tmp_path / "junk.ckpt"
    torch.save({"weights": torch.zeros(1)}, junk)
    code, _, err = run(capsys, video, "--ckpt", junk)
    assert code == 2 and "not a Lightning checkpoint" in err


def test_non_finite_weights_or_scores_are_an_error_never_nan_in_json(ckpt, video, tmp_path, capsys):
    saved = torch.load(ckpt, weights_only=True)
    head = "net.flow.net.fc.1.weight"  # the flow stream's classifier
    nan = dict(saved, state_dict={**saved["state_dict"], head: torch.full_like(saved["state_dict"][head], float("nan"))})
    torch.save(nan, tmp_path / "nan.ckpt")
    code, out, err = run(capsys, video, "--ckpt", tmp_path / "nan.ckpt", "--json", "--device", "cpu")
    assert code == 2 and out == "" and f"{tmp_path / 'nan.ckpt'}: 1 weight tensor(s) hold NaN or infinity (first: {head})" in err
    # finite weights that overflow: the scores are checked too
    huge = dict(saved, state_dict={k: v * 1e30 if v.is_floating_point() and "running_var" not in k else v
                                   for k, v in saved["state_dict"].items()})
    torch.save(huge, tmp_path / "huge.ckpt")
    code, out, err = run(capsys, video, "--ckpt", tmp_path / "huge.ckpt", "--json", "--device", "cpu")
    assert code == 2 and out == "" and f"the model's scores for {video} are not finite" in err, (out, err)


def test_crafted_sizes_are_refused_before_memory_is_taken(ckpt, video, tmp_path, capsys):
    import resource

    saved = torch.load(ckpt, weights_only=True)
    hp = dict(saved["hyper_parameters"], num_classes=1_000_000, class_names=["c"] * 1_000_000)
    torch.save(dict(saved, hyper_parameters=hp), tmp_path / "million.ckpt")  # 8 MB: 4 GB of classifier if built
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, _, err = run(capsys, video, "--ckpt", tmp_path / "million.ckpt", "--device", "cpu")
    assert code == 2 and "does not fit the recorded model (4 weight(s) missing or of another shape" in err
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500 << 10  # KiB: well under the 4 GB
    code, out, err = run(capsys, video, "--ckpt", ckpt, "--clips", "1000000", "--device", "cpu")
    assert code == 2 and out == "" and "--clips 1000000 x 2 snippets need about" in err and "GiB is available" in err
    if not torch.cuda.is_available():
        code, _, err = run(capsys, video, "--ckpt", ckpt, "--device", "cuda")
        assert code == 2 and "requested but CUDA is not available here" in err


def test_crafted_checkpoint_is_refused_never_run(video, tmp_path, capsys):
    from hostile_files import code_running_checkpoint

    marker = tmp_path / "pwned"
    evil = code_running_checkpoint(tmp_path / "evil.ckpt", marker)
    code, out, err = run(capsys, video, "--ckpt", evil)
    assert code == 2 and out == "" and f"{evil}: cannot be read" in err and "weights_only=True" in err
    assert not marker.exists()


def test_a_checkpoint_naming_an_unknown_flow_engine_is_a_clear_error(ckpt, video, tmp_path, capsys):
    other = tmp_path / "future.ckpt"
    data = torch.load(ckpt, weights_only=True)
    data["hyper_parameters"]["flow_engine"] = "flownet9"  # a later version's engine, say
    torch.save(data, other)
    code, out, err = run(capsys, video, "--ckpt", other, "--device", "cpu")
    assert code == 2 and out == ""
    assert f"{other}: its flow engine 'flownet9' cannot be built here (unknown flow engine 'flownet9'" in err
    assert "Traceback" not in err


def test_a_checkpoint_of_the_earlier_version_still_classifies(ckpt, video, tmp_path, capsys):
    old = tmp_path / "old.ckpt"
    data = torch.load(ckpt, weights_only=True)
    data["hyper_parameters"]["flow_model"] = data["hyper_parameters"].pop("flow_engine")  # the key's earlier name
    data["datamodule_hyper_parameters"]["flow_model"] = data["hyper_parameters"]["flow_model"]
    torch.save(data, old)
    runs = [run(capsys, video, "--ckpt", path, "--json", "--clips", "1", "--device", "cpu") for path in (ckpt, old)]
    assert [code for code, _, _ in runs] == [0, 0]
    assert json.loads(runs[1][1]) == {**json.loads(runs[0][1]), "video": str(video)}


def test_a_one_frame_video_warns_that_the_flow_stream_saw_no_motion(ckpt, tmp_path, capsys, caplog):
    still = write_mp4(tmp_path / "still.mp4", render("right", frames=1, size=64))
    assert probe(still).num_frames == 1
    code, out, _ = run(capsys, still, "--ckpt", ckpt, "--json", "--clips", "1", "--device", "cpu")
    assert code == 0 and len(json.loads(out)["topk"]) == 3  # still classified, from appearance
    assert f"{still} has a single frame: the flow stream saw no motion" in caplog.text
    caplog.clear()
    write_mp4(tmp_path / "two.mp4", render("right", frames=2, size=64))
    assert run(capsys, tmp_path / "two.mp4", "--ckpt", ckpt, "--json", "--clips", "1", "--device", "cpu")[0] == 0
    assert "two.mp4" not in caplog.text  # two frames: one real flow, no warning


@pytest.mark.gpu
def test_classify_on_gpu(ckpt, video, capsys):
    code, out, err = run(capsys, video, "--ckpt", ckpt, "--json", "--device", "cuda")
    assert code == 0, err
    assert len(json.loads(out)["topk"]) == 3


def test_a_different_flow_engine_than_in_training_is_warned(ckpt, video, tmp_path, capsys, caplog):
    other = tmp_path / "other.ckpt"
    data = torch.load(ckpt, weights_only=True)
    data["flow_engine"] = {"name": "dis", "weights_hash": "opencv-0.0"}
    torch.save(data, other)
    code, _, _ = run(capsys, video, "--ckpt", other, "--json", "--clips", "1", "--device", "cpu")
    assert code == 0
    assert "trained on flow from" in caplog.text and "opencv-0.0" in caplog.text
