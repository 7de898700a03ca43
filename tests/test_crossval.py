"""K-fold cross-validation by video: clips grouped into videos, every video tested once and never trained on
in its own fold, class proportions kept, the summary's arithmetic, and a whole run of train.py folds."""
from __future__ import annotations

import json
import logging
import statistics
from collections import Counter
from pathlib import Path

import pytest
from tiny_videos import render, write_mp4

from actionflow.__main__ import main as actionflow_main
from actionflow.annotations import Sample
from actionflow.crossval import CrossValError, cross_validate, last_train_top1, summarise, table, video_folds, video_of


def test_video_of_strips_the_clip_index():
    assert video_of("/data/videos/fast/gvhmr_tennis_3.mp4") == "gvhmr_tennis"
    assert video_of("videos/normal/sam2_kids_jumping_on_bed_0.mp4") == "sam2_kids_jumping_on_bed"
    assert video_of("clips/dance.mp4") == "dance"  # no index: the file is its own video
    assert video_of("frames/dance_12") == "dance"  # a frame folder
    assert video_of("v_ApplyEyeMakeup_g08_c01.avi", r"v_.*_(g\d+)_c\d+") == "g08"  # UCF101's groups
    assert video_of("other.avi", r"v_.*_(g\d+)_c\d+") == "other"  # no match: the stem


def _samples(videos: int, with_third: int) -> list[Sample]:
    """``videos`` videos of 2 clips of classes 0 and 1 each; the first ``with_third`` also a clip of class 2."""
    out = []
    for v in range(videos):
        for label in range(3 if v < with_third else 2):
            out.append(Sample(f"/d/videos/c{label}/vid{v:02d}_{label}.mp4", label))
    return out


@pytest.mark.parametrize("folds", [3, 5])
def test_every_video_is_tested_once_and_never_trained_on_in_its_fold(folds):
    samples = _samples(videos=20, with_third=10)
    plan = video_folds(samples, folds, seed=0)
    assert len(plan) == folds
    tested = Counter(s.path for _, _, test in plan for s in test)
    assert set(tested) == {s.path for s in samples} and set(tested.values()) == {1}
    for i, (train, val, test) in enumerate(plan):
        vids = [{video_of(s.path) for s in split} for split in (train, val, test)]
        assert not (vids[0] & vids[1]) and not (vids[0] & vids[2]) and not (vids[1] & vids[2])
        assert len(train) + len(val) + len(test) == len(samples)
        assert {s.path for s in val} == {s.path for s in plan[(i + 1) % folds][2]}  # validated on the next fold
        assert {s.label for s in test} == {0, 1, 2}  # the videos with a third class are spread over the folds
    # whole videos in a fold: its two or three clips together
    assert all(len({video_of(s.path) for s in test}) * 2 <= len(test) for _, _, test in plan)


def test_folds_depend_on_the_seed_only():
    samples = _samples(videos=12, with_third=6)
    first = [[s.path for s in t] for _, _, t in video_folds(samples, 4, seed=1)]
    assert first == [[s.path for s in t] for _, _, t in video_folds(list(reversed(samples)), 4, seed=1)]
    assert first != [[s.path for s in t] for _, _, t in video_folds(samples, 4, seed=2)]


def test_bad_fold_settings_are_named():
    samples = _samples(videos=4, with_third=0)
    with pytest.raises(CrossValError, match="4 videos cannot fill 5 folds"):
        video_folds(samples, 5)
    with pytest.raises(CrossValError, match="at least 3"):
        video_folds(samples, 2)
    with pytest.raises(CrossValError, match="--group"):
        video_folds(samples, 3, pattern="(unclosed")
    demo = [Sample(f"/d/videos/{c}/{c}_{i}.mp4", label) for label, c in enumerate("abcdef") for i in range(4)]
    with pytest.raises(CrossValError, match=r"fold 0 tests class\(es\) \[[\d, ]+\] that none of its training videos has"):
        video_folds(demo, 3)  # each class is one "video" by the default pattern: no fold could learn what it tests
    assert len(video_folds(demo, 3, pattern=r"^(.+)$")) == 3  # every file its own video


def test_fold_settings_are_refused_before_any_work(tmp_path, capsys):
    """--folds, --only and --group are checked before train.py's setup, which fills the flow cache (minutes)."""
    missing = ["--data.root", str(tmp_path / "no_such_data")]  # setup would fail on this, so it must not run
    for args, message in ((["--folds", "1"], "--folds must be at least 3"), (["--only", "7"], "--only [7]"),
                          (["--group", "x"], "has no (group)")):
        assert actionflow_main(["cv", "--out", str(tmp_path / "cv"), *args, *missing]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(CrossValError, match="has no \\(group\\)"):
        video_folds(_samples(videos=6, with_third=0), 3, pattern=r"\w+")


def test_an_out_folder_that_cannot_be_made_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as exit_:  # the parser's own error, before anything runs
        actionflow_main(["cv", "--out", str(tmp_path / "file" / "cv")])
    assert exit_.value.code == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(CrossValError, match="--out /proc/no_such/cv: cannot create it"):
        cross_validate([], out="/proc/no_such/cv")


def test_the_last_training_log_counts(tmp_path):
    """A resumed fold logs on in a new CSV version; version_10 comes after version_9, not after version_1."""
    for version, top1 in ((1, 0.1), (9, 0.9), (10, 0.5)):
        log = tmp_path / "csv" / f"version_{version}" / "metrics.csv"
        log.parent.mkdir(parents=True)
        log.write_text(f"epoch,train/flow/top1\n0,{top1}\n")
    assert last_train_top1(tmp_path) == {"flow": 0.5}


def test_summary_arithmetic():
    results = [{"fold": 0, "clips": 10, "seconds": 60, "test_videos": ["a"], "test": {"flow": 0.5, "rgb": 0.3}, "train": {"flow": 0.9}},
               {"fold": 1, "clips": 30, "seconds": 120, "test_videos": ["b"], "test": {"flow": 0.7, "rgb": 0.4}, "train": {}}]
    summary = summarise(results)
    assert summary["flow"]["mean"] == pytest.approx(0.6)
    assert summary["flow"]["std"] == pytest.approx(statistics.stdev([0.5, 0.7]))  # sample standard deviation
    assert summary["flow"]["all_clips"] == pytest.approx((0.5 * 10 + 0.7 * 30) / 40)
    assert "two_stream" not in summary
    text = table(results, summary)
    assert "**0.600 ± 0.141**" in text and "| 0 | a | 10 | 0.300 | 0.500 |" in text and "3.0 min" in text


@pytest.mark.slow
def test_a_cross_validation_run(tmp_path, capsys, caplog):
    """Six videos of two clips (a right and a left motion) in 3 folds of train.py runs; a second call reuses them."""
    root = tmp_path / "data"
    lines = []
    for v in range(6):
        for label, name in enumerate(("right", "left")):
            rel = f"videos/{name}/vid{v}_{label}.mp4"
            write_mp4(root / rel, render(name, frames=10, size=32, seed=10 * v + label))
            lines.append(f"{rel} {name}")
    (root / "train.txt").write_text("\n".join(lines[:8]) + "\n")
    (root / "val.txt").write_text("\n".join(lines[8:10]) + "\n")
    (root / "test.txt").write_text("\n".join(lines[10:]) + "\n")
    out = tmp_path / "cv"
    argv = ["cv", "--folds", "3", "--out", str(out), "--data.root", str(root), "--data.cache_dir", str(tmp_path / "cache"),
            "--model.mode", "flow", "--data.flow_engine", "dis", "--data.size", "[32, 32]", "--data.crop_size", "[32, 32]",
            "--data.num_segments", "2", "--data.flow_length", "3", "--data.test_clips", "1", "--data.batch_size", "4",
            "--data.num_workers", "0", "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    assert actionflow_main(argv) == 0
    report = json.loads((out / "cv.json").read_text())
    assert [r["fold"] for r in report["results"]] == [0, 1, 2]
    tested = [v for r in report["results"] for v in r["test_videos"]]
    assert sorted(tested) == [f"vid{v}" for v in range(6)]  # every video tested once
    assert all(r["clips"] == 4 and 0 <= r["test"]["flow"] <= 1 and "flow" in r["train"] for r in report["results"])
    for i in range(3):
        train = (out / f"fold{i}" / "train.txt").read_text()
        assert not any(f"/vid{v[-1]}_" in train for v in report["results"][i]["test_videos"])
    assert report["summary"]["flow"]["mean"] == pytest.approx(statistics.fmean(r["test"]["flow"] for r in report["results"]))
    assert (out / "cv.md").read_text() in capsys.readouterr().out
    before = (out / "fold0" / "result.json").stat().st_mtime_ns
    assert actionflow_main(argv + ["--only", "0"]) == 0  # the same arguments and videos: fold 0 reused, not retrained
    assert (out / "fold0" / "result.json").stat().st_mtime_ns == before
    assert json.loads((out / "cv.json").read_text())["results"][0] == report["results"][0]
    assert actionflow_main([*argv, "--ckpt_path", str(out / "fold0" / "run" / "checkpoints" / "last.ckpt")]) == 2
    assert "--ckpt_path" in capsys.readouterr().err  # a model trained on other folds' test videos: refused
    config = tmp_path / "recipe.yaml"  # the same arguments, an edited config file: not the folds run before
    config.write_text("model:\n  dropout: 0.5\n")
    assert actionflow_main([*argv, "--config", str(config), "--only", "0"]) == 2
    assert "holds a fold of other settings" in capsys.readouterr().err
    assert json.loads((out / "fold0" / "result.json").read_text()) == report["results"][0]  # nothing overwritten
    (out / "fold1" / "result.json").unlink()  # fold 1 stopped after training: it resumes from its last checkpoint
    with caplog.at_level(logging.INFO, logger="actionflow.crossval"):
        assert actionflow_main([*argv, "--only", "1"]) == 0
    assert "fold 1: resuming from" in caplog.text
    assert json.loads((out / "fold1" / "result.json").read_text())["test"] == report["results"][1]["test"]
    assert actionflow_main(["cv", "--folds", "7", "--out", str(tmp_path / "cv2"), *argv[5:]]) == 2
    assert "6 videos cannot fill 7 folds" in capsys.readouterr().err
    assert actionflow_main([*argv, "--only", "3"]) == 2
    assert "--only [3]: there are folds 0..2" in capsys.readouterr().err
