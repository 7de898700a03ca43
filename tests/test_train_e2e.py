"""End to end: ``train.py`` fits and tests on tiny generated videos in every mode / flow source, and
``classify`` uses the checkpoint it leaves. One W&B offline run, with a corrupt video in the data."""
from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch
from tiny_videos import make_dataset

from actionflow.__main__ import main as actionflow_main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _load_train():
    spec = importlib.util.spec_from_file_location("train_entry", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train = _load_train()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny"), per_class=4, frames=12, size=32, classes=("right", "left"))


def fit(tiny: Path, run: Path, capsys, *extra: str, logger: str = "csv", folders: bool = False) -> tuple[list[str], dict]:
    """Run train.main on the tiny data (its lists, or ``folders``: a folder per class, split by
    train.py) with ``logger`` csv | wandb (the config's) | none; returns stdout lines and the test metrics JSON."""
    capsys.readouterr()
    assert train.main(train_argv(tiny, run, logger, folders) + list(extra)) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("checkpoint: ") and lines[-1].startswith("test metrics: ")
    ckpt = Path(lines[-2].removeprefix("checkpoint: "))
    assert ckpt.is_file() and ckpt.parent == run / "checkpoints"
    metrics = json.loads(Path(lines[-1].removeprefix("test metrics: ")).read_text())
    return lines, metrics


def train_argv(tiny: Path, run: Path, logger: str = "csv", folders: bool = False) -> list[str]:
    """train.py's arguments for a one-epoch run on the tiny data (see :func:`fit`)."""
    data = ["--data.root", str(tiny / "videos")] if folders else [
        "--data.root", str(tiny),
        "--data.train_list", str(tiny / "train.txt"),
        "--data.val_list", str(tiny / "val.txt"),
        "--data.test_list", str(tiny / "test.txt"),
    ]
    argv = data + [
        "--data.cache_dir", str(tiny.parent / "cache"),
        "--data.size", "[32, 32]", "--data.crop_size", "[32, 32]",
        "--data.num_segments", "2", "--data.flow_length", "3", "--data.test_clips", "2",
        "--data.batch_size", "4", "--data.num_workers", "0",
        "--trainer.default_root_dir", str(run),
        "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--checkpoint.save_last", "false",
    ]
    argv += {
        "csv": ["--trainer.logger", "CSVLogger", "--trainer.logger.init_args.save_dir", str(run)],
        "wandb": ["--trainer.logger.init_args.save_dir", str(run)],
        "none": ["--trainer.logger", "false"],
    }[logger]
    return argv


def classify_json(ckpt: str, video: Path, capsys) -> dict:
    capsys.readouterr()
    assert actionflow_main(["classify", str(video), "--ckpt", ckpt, "--json", "--clips", "2", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def _check_metrics(metrics: dict, streams: set[str]) -> None:
    assert set(metrics) == streams
    for values in metrics.values():
        assert set(values) == {"top1", "top5", "mean_class_acc"}
        assert all(0.0 <= v <= 1.0 for v in values.values())
        assert values["top5"] == 1.0  # two classes: top-min(5, 2) always hits


@pytest.mark.parametrize(
    "mode, source",
    [("rgb", "cache"), ("flow", "cache"), ("flow", "online")],
)
def test_fit_test_classify(tiny, tmp_path, capsys, mode, source):
    lines, metrics = fit(tiny, tmp_path / "run", capsys, "--model.mode", mode, "--data.flow_source", source,
                         folders=mode == "rgb")
    _check_metrics(metrics, {mode})
    run = tmp_path / "run"
    assert list(run.rglob("config.yaml"))  # the resolved config, saved by LightningCLI in the logger's folder
    for suffix in ("confusion.png", "confusion.json", "report.txt", "report.json"):
        assert (run / "test" / f"{mode}_{suffix}").is_file()
    if mode == "flow" and source == "cache":
        assert len(list((tiny.parent / "cache").glob("*.afc"))) == 8  # one entry per video
    result = classify_json(lines[-2].removeprefix("checkpoint: "), tiny / "videos/left/left_3.mp4", capsys)
    assert [r["label"] for r in result["topk"]] in (["right", "left"], ["left", "right"])
    assert abs(sum(r["prob"] for r in result["topk"]) - 1.0) < 1e-4
    assert set(result["streams"]) == {mode}


def test_two_stream_with_wandb_offline_and_a_corrupt_video(tiny, tmp_path, capsys, monkeypatch, caplog):
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                       "WANDB_CONSOLE": "off"}.items():
        monkeypatch.setenv(key, value)
    broken = tiny / "videos/left/broken.mp4"
    broken.write_bytes(b"not a video at all")
    train_list = tiny / "train_with_broken.txt"
    train_list.write_text((tiny / "train.txt").read_text() + "videos/left/broken.mp4 1\n")
    with caplog.at_level(logging.WARNING):
        lines, metrics = fit(tiny, tmp_path / "run", capsys, "--model.mode", "two_stream",
                             "--data.train_list", str(train_list), logger="wandb")
    _check_metrics(metrics, {"rgb", "flow", "two_stream"})
    assert "skipping bad video" in caplog.text and str(broken) in caplog.text
    assert any(line.startswith("skipped 1 bad video(s)") for line in lines)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert runs, "no offline W&B run written"
    # the summary names the run, the W&B run and the test folder, and gives each stream's test top-1
    assert f"run: {tmp_path / 'run'}" in lines and f"W&B offline run: {runs[0]}" in lines
    assert f"confusion matrices and per-class reports: {tmp_path / 'run' / 'test'}" in lines
    top1 = next(line for line in lines if line.startswith("test top-1: "))
    assert top1 == "test top-1: " + " | ".join(f"{k} {metrics[k]['top1']:.3f}" for k in ("rgb", "flow", "two_stream"))
    result = classify_json(lines[-2].removeprefix("checkpoint: "), tiny / "videos/right/right_0.mp4", capsys)
    assert set(result["streams"]) == {"rgb", "flow"}


def test_without_a_logger(tiny, tmp_path, capsys):
    # the default config's LearningRateMonitor needs a logger; with none it is left out, not fatal
    _, metrics = fit(tiny, tmp_path / "run", capsys, "--model.mode", "rgb", logger="none")
    _check_metrics(metrics, {"rgb"})
    assert not list((tmp_path / "run").rglob("*.csv")) and not (tmp_path / "run" / "wandb").exists()


def test_resume_from_a_checkpoint_of_train_py(tiny, tmp_path, capsys):
    # Lightning reads --ckpt_path with weights_only=True: this project's checkpoints must load that way.
    lines, _ = fit(tiny, tmp_path / "run", capsys, "--model.mode", "rgb", logger="none")
    first = lines[-2].removeprefix("checkpoint: ")
    _, metrics = fit(tiny, tmp_path / "run", capsys, "--model.mode", "rgb", "--trainer.max_epochs", "2",
                     "--ckpt_path", first, logger="none")
    _check_metrics(metrics, {"rgb"})

    # A checkpoint of another setup (an older version grouped the optimizer's parameters differently;
    # another backbone has other weights): one clear error before any work, not Lightning's ValueError.
    ckpt = torch.load(first, weights_only=True)
    groups = ckpt["optimizer_states"][0]["param_groups"]
    merged = dict(groups[0], params=[i for g in groups for i in g["params"]])
    ckpt["optimizer_states"][0]["param_groups"] = [merged]
    old_layout = tmp_path / "old_layout.ckpt"
    torch.save(ckpt, old_layout)
    renamed = tmp_path / "renamed.ckpt"
    ckpt["state_dict"] = {f"other.{k}": v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, renamed)
    for bad, words in ((old_layout, "optimizer parameter groups of sizes"), (renamed, "weights missing")):
        argv = train_argv(tiny, tmp_path / "run2", logger="none") + ["--model.mode", "rgb", "--ckpt_path", str(bad)]
        capsys.readouterr()
        assert train.main(argv) == 2
        err = capsys.readouterr().err
        assert f"{bad}: cannot resume from it" in err and words in err and "Traceback" not in err, err


def test_bad_ckpt_path_fails_before_any_heavy_work(tiny, tmp_path, capsys):
    """A missing or crafted --ckpt_path is an error naming it, before the flow cache is computed."""
    from hostile_files import code_running_checkpoint

    marker = tmp_path / "pwned"
    evil = code_running_checkpoint(tmp_path / "evil.ckpt", marker)
    for ckpt, words in ((tmp_path / "missing.ckpt", "missing.ckpt: no such checkpoint"),
                        (evil, f"{evil}: cannot be read as a PyTorch checkpoint with weights_only=True")):
        argv = train_argv(tiny, tmp_path / "run", logger="none") + [
            "--data.cache_dir", str(tmp_path / "cache"), "--model.mode", "flow", "--ckpt_path", str(ckpt)]
        capsys.readouterr()
        assert train.main(argv) == 2
        assert words in capsys.readouterr().err
        assert not (tmp_path / "cache").exists()  # no flow was computed
    assert not marker.exists()


def test_bad_engines_weights_and_limits_are_one_line_errors(tiny, tmp_path, capsys):
    """Each is `train.py: error: ...` and exit 2, as the parser's own errors, never a traceback."""
    from hostile_files import code_running_checkpoint

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((ROOT / "flow_engine" / "weights" / "pwcnet_actionflow.pt").read_bytes()[:3000])
    evil = code_running_checkpoint(tmp_path / "evil.pt", tmp_path / "pwned")
    cases = [
        (["--data.flow_engine", "bogus"], "data.flow_engine: unknown flow engine 'bogus'"),
        (["--data.flow_engine", "pwcnet", "--data.flow_weights", str(tmp_path / "missing.pt")],
         "data.flow_weights: " + str(tmp_path / "missing.pt") + ": no such weights file"),
        (["--data.flow_engine", "pwcnet", "--data.flow_weights", str(truncated)], f"{truncated}: cannot be read as a PyTorch"),
        (["--data.flow_engine", "pwcnet", "--data.flow_weights", str(evil)], f"{evil}: cannot be read as a PyTorch"),
        (["--model.finetune_flow", "true", "--data.flow_source", "online"], "model.finetune_flow needs the pwcnet flow engine"),
        (["--trainer.max_epochs", "0", "--model.mode", "rgb"], "--trainer.max_epochs 0 trains nothing"),
        (["--trainer.default_root_dir", str(truncated)], f"--trainer.default_root_dir {truncated}: {truncated} is a file"),
        (["--model.dropout", "2"], "model.dropout must be in [0, 1), got 2.0"),
        (["--model.lr", "-1"], "model.lr must be a positive number, got -1.0"),
    ]
    for extra, words in cases:
        argv = train_argv(tiny, tmp_path / "run", logger="none") + ["--data.cache_dir", str(tmp_path / "cache"), *extra]
        capsys.readouterr()
        assert train.main(argv) == 2, extra
        err = capsys.readouterr().err
        assert f"train.py: error: {words}" in err and "Traceback" not in err, err
    assert not (tmp_path / "pwned").exists()


def test_wandb_failure_falls_back_to_csv(tmp_path, monkeypatch, caplog):
    import types

    import wandb
    from pytorch_lightning.loggers import CSVLogger, WandbLogger

    def broken_init(*args, **kwargs):
        raise RuntimeError("wandb service unreachable")

    monkeypatch.setattr(wandb, "init", broken_init)
    monkeypatch.setenv("WANDB_MODE", "offline")
    trainer = types.SimpleNamespace(loggers=[WandbLogger(save_dir=str(tmp_path))],
                                    is_global_zero=True, default_root_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING):
        train.start_loggers(trainer)
    assert [type(lg) for lg in trainer.loggers] == [CSVLogger]
    assert "W&B did not start (wandb service unreachable)" in caplog.text


def test_validation_fusion_sets_its_weights_on_the_validation_videos(tiny, tmp_path, capsys):
    import csv

    import torch

    lines, metrics = fit(tiny, tmp_path / "run", capsys, "--model.mode", "two_stream", "--model.fusion", "validation",
                         "--model.backbone", "small_cnn", "--data.size", "32", "--trainer.max_epochs", "2")
    _check_metrics(metrics, {"rgb", "flow", "two_stream"})
    rows = [r for r in csv.DictReader(open(next((tmp_path / "run").rglob("metrics.csv")))) if r.get("val/fusion_rgb_weight")]
    assert len(rows) == 2 and all(0.0 <= float(r["val/fusion_rgb_weight"]) <= 1.0 for r in rows)
    ckpt = torch.load(lines[-2].removeprefix("checkpoint: "), weights_only=True)
    weights = ckpt["state_dict"]["net.fusion_logits"].exp()
    best = [float(r["val/fusion_rgb_weight"]) for r in rows if r["epoch"] == str(ckpt["epoch"])][0]
    assert abs(float(weights[0] / weights.sum()) - best) < 1e-3  # the checkpoint keeps the weights its epoch chose
