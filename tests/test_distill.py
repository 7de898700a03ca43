"""Distillation: teacher labels on disk (consistency masks, resume, mismatches, bad videos) and training on them."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from flow_engine.errors import DatasetError
from flow_engine.data.teacher_labels import (
    LabelError, PairPlan, TeacherLabels, fb_consistency, label_videos, plan_pairs,
)
from flow_engine.training.datamodule import Distill, FlowDataModule
from flow_engine.io.video import scaled_size

from tiny_videos import render, write_mp4

pytestmark = pytest.mark.usefixtures("one_thread")


class ShiftTeacher:
    """A stand-in teacher: every pixel moves by (dx, dy) px forward and by minus that backward."""

    def __init__(self, dx: float = 2.0, dy: float = -1.0, name: str = "shift", dtype: str = "fp32"):
        self.dx, self.dy, self.name, self.dtype = dx, dy, name, dtype
        self.calls = 0

    def config(self) -> dict:
        return {"name": self.name, "weights_hash": "none", "dtype": self.dtype}

    def __call__(self, frames1: torch.Tensor, frames2: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        B, _, H, W = frames1.shape
        assert B % 2 == 0 and torch.equal(frames1[: B // 2], frames2[B // 2 :])  # both directions in one call
        flow = torch.empty(B, 2, H, W)
        flow[: B // 2, 0], flow[: B // 2, 1] = self.dx, self.dy
        flow[B // 2 :] = -flow[: B // 2]
        return flow


def test_forward_backward_check_keeps_consistent_pixels_inside_the_frame():
    fw = torch.zeros(1, 2, 8, 10)
    fw[:, 0] = 2.0
    valid = fb_consistency(fw, -fw)
    assert valid[0, :, :8].all() and not valid[0, :, 8:].any()  # targets x + 2 > 9 leave the frame
    # A backward flow that does not undo the forward one (an occlusion, a teacher failure) is unreliable ...
    assert not fb_consistency(fw, torch.zeros_like(fw)).any()
    # ... unless the disagreement is within the tolerance (0.01 |f|^2 + 0.5 px^2).
    assert fb_consistency(fw, -fw + 0.3)[0, :, :8].all()


def test_pair_plans_are_reproducible_capped_and_fit_the_video(tmp_path):
    video = tmp_path / "clip.mp4"
    plans = plan_pairs(video, 30, (240, 320), pairs=20, gaps=[1, 2], short_sides=[128, 480], seed=3)
    assert plans == plan_pairs(video, 30, (240, 320), pairs=20, gaps=[1, 2], short_sides=[128, 480], seed=3)
    assert plans != plan_pairs(video, 30, (240, 320), pairs=20, gaps=[1, 2], short_sides=[128, 480], seed=4)
    assert {p.size for p in plans} <= {(128, 170), (240, 320)}  # 480 is capped at the video's own 240
    assert all(p.frame + p.gap < 30 for p in plans) and {p.gap for p in plans} == {1, 2}
    assert plan_pairs(video, 2, (240, 320), pairs=5, gaps=[2, 3], short_sides=[128], seed=0) == []
    assert scaled_size(1920, 1080, 256) == (456, 256)  # portrait keeps its aspect ratio
    assert PairPlan(video, 7, 2, (128, 170)).filename() == "f000007_g2_170x128.npz"


@pytest.fixture
def clips(tmp_path) -> Path:
    folder = tmp_path / "videos"
    write_mp4(folder / "a.mp4", render("right", frames=12, size=64, seed=1))
    write_mp4(folder / "b.mp4", render("down", frames=12, size=64, seed=2))
    (folder / "broken.mp4").write_bytes(b"\x00not a video" * 50)
    return folder


def test_labels_are_written_once_read_both_ways_and_resumed(clips, tmp_path, caplog):
    out = tmp_path / "labels"
    teacher = ShiftTeacher()
    summary = label_videos(clips, out, teacher, pairs_per_video=4, gaps=[1, 2], short_sides=[48, 64], batch=3, progress=False)
    assert summary["videos"] == 3 and summary["existing"] == 0 and summary["labelled"] == summary["pairs"] > 0
    assert len(summary["skipped"]) == 1 and "broken.mp4" in summary["skipped"][0]
    assert "broken.mp4" in caplog.text
    manifest = json.loads((out / "labels.json").read_text())
    assert manifest["teacher"] == {"name": "shift", "weights_hash": "none"} and manifest["gaps"] == [1, 2]

    ds = TeacherLabels(out)
    assert len(ds) == 2 * summary["pairs"]
    img1, img2, flow, valid = ds[0]
    back1, back2, back_flow, back_valid = ds[1]
    H, W = img1.shape[-2:]
    assert img1.dtype == torch.uint8 and flow.shape == (2, H, W) and valid.shape == (H, W)
    assert torch.equal(back1, img2) and torch.equal(back2, img1)  # the backward item swaps the frames
    assert torch.allclose(flow[:, 0, 0], torch.tensor([2.0, -1.0])) and torch.allclose(back_flow, -flow)
    # The shift teacher is consistent: only pixels whose target leaves the frame are invalid.
    assert valid[1:, : W - 2].all() and not valid[:, W - 2 :].any() and not valid[0].any()
    assert back_valid[:-1, 2:].all() and not back_valid[:, :2].any()

    # A rerun (a killed run resumed) labels nothing twice; a lost file is labelled again.
    files = sorted(out.glob("*/*.npz"))
    files[0].unlink()
    (files[1].parent / f".{files[1].name}.123.tmp").write_bytes(b"half a file")  # a killed writer's leftover
    again = label_videos(clips, out, ShiftTeacher(), pairs_per_video=4, gaps=[1, 2], short_sides=[48, 64], batch=3, progress=False)
    assert again["labelled"] == 1 and again["existing"] == summary["pairs"] - 1
    assert len(TeacherLabels(out)) == 2 * summary["pairs"]


def test_labels_of_another_teacher_are_never_mixed(clips, tmp_path):
    out = tmp_path / "labels"
    label_videos(clips / "a.mp4", out, ShiftTeacher(), pairs_per_video=2, short_sides=[48], progress=False)
    with pytest.raises(LabelError, match="another teacher"):
        label_videos(clips / "a.mp4", out, ShiftTeacher(name="other"), pairs_per_video=2, short_sides=[48], progress=False)
    with pytest.raises(LabelError, match="gaps must be"):
        label_videos(clips / "a.mp4", tmp_path / "x", ShiftTeacher(), gaps=[0], progress=False)


def test_labels_of_a_bf16_teacher_serve_an_fp32_run_and_the_reverse(clips, tmp_path):
    # Labels are float16 on disk whatever precision the teacher ran at: a GPU's labels serve a CPU run.
    out = tmp_path / "labels"
    first = label_videos(clips / "a.mp4", out, ShiftTeacher(dtype="bf16"), pairs_per_video=2, short_sides=[48], progress=False)
    again = label_videos(clips / "a.mp4", out, ShiftTeacher(dtype="fp32"), pairs_per_video=2, short_sides=[48], progress=False)
    assert again["existing"] == first["pairs"] and again["labelled"] == 0
    assert label_videos(clips / "a.mp4", out, ShiftTeacher(dtype="bf16"), pairs_per_video=2, short_sides=[48], progress=False)["labelled"] == 0


class BrokenTeacher(ShiftTeacher):
    """Returns NaN flow for the first pair of every call (a teacher overflowing in low precision)."""

    def __call__(self, frames1: torch.Tensor, frames2: torch.Tensor) -> torch.Tensor:
        flow = super().__call__(frames1, frames2)
        flow[0, :, :4, :4] = float("nan")
        return flow


def test_a_teachers_nonfinite_flow_is_never_written(clips, tmp_path, caplog):
    out = tmp_path / "labels"
    summary = label_videos(clips / "a.mp4", out, BrokenTeacher(), pairs_per_video=4, short_sides=[48], batch=2, progress=False)
    assert summary["nonfinite"] == 2 and summary["labelled"] == summary["pairs"] - 2 > 0  # one per call of 2 pairs
    assert "not finite" in caplog.text
    ds = TeacherLabels(out)
    assert len(ds) == 2 * summary["labelled"]
    assert all(torch.isfinite(ds[i][2]).all() for i in range(len(ds)))


def test_a_damaged_label_file_is_a_clear_error(clips, tmp_path):
    out = tmp_path / "labels"
    label_videos(clips / "a.mp4", out, ShiftTeacher(), pairs_per_video=1, short_sides=[48], progress=False)
    (path,) = out.glob("*/*.npz")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DatasetError, match=path.name):
        TeacherLabels(out)[0]
    with pytest.raises(DatasetError, match="not a folder of teacher labels"):
        TeacherLabels(tmp_path)


def test_a_label_frame_claiming_gigapixels_is_refused_before_decoding(clips, tmp_path):
    from hostile_files import image_claiming

    out = tmp_path / "labels"
    label_videos(clips / "a.mp4", out, ShiftTeacher(), pairs_per_video=1, short_sides=[48], progress=False)
    (path,) = out.glob("*/*.npz")
    with np.load(path) as z:
        arrays = dict(z)
    arrays["img1"] = np.frombuffer(image_claiming(".jpg", 4100, 4100), np.uint8)  # 50 MB if decoded
    np.savez_compressed(path, **arrays)
    with pytest.raises(DatasetError, match=r"a frame is not a readable JPEG \(image of 4100x4100 pixels is above the limit"):
        TeacherLabels(out)[0]


def test_batches_mix_synthetic_and_teacher_pairs(clips, tmp_path):
    out = tmp_path / "labels"
    label_videos(clips / "a.mp4", out, ShiftTeacher(), pairs_per_video=3, short_sides=[64], progress=False)
    dm = FlowDataModule(crop=(64, 64), batch_size=4, synthetic_fraction=0.25, num_workers=0, spatial=None, photometric=None,
                        seed=0, distill=Distill(teacher="shift", labels=str(out)))
    assert dm.n_synthetic == 1
    dm.trainer = SimpleNamespace(training=True, global_step=0, global_rank=0)  # what the hook reads of a Trainer
    real = next(iter(dm.train_dataloader()))
    assert real[0].shape == (3, 3, 64, 64)
    img1, img2, flow, valid = dm.on_after_batch_transfer(real, 0)
    assert img1.shape == (4, 3, 64, 64) and flow.shape == (4, 2, 64, 64) and valid.shape == (4, 64, 64)
    assert torch.equal(flow[:3], real[2])  # the teacher's pairs first, then one rendered with exact flow
    assert not torch.allclose(flow[3, 0], torch.full((64, 64), 2.0))
    assert np.isfinite(img1.numpy()).all() and img1.min() >= 0 and img1.max() <= 1


@pytest.mark.slow
@pytest.mark.parametrize("config", ["distill.yaml", "distill_gpu.yaml"])
def test_shipped_distillation_configs_train_a_few_steps_on_cpu(clips, tmp_path, config):
    from flow_engine.__main__ import main as cli

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    args = ["train", "--config", str(root / "configs" / "flow" / config), "--out", str(out), "--trainer.max_steps", "2",
            "--data.batch_size", "2", "--data.crop", "[64, 64]", "--trainer.precision", "32-true", "--threads", "1", "--logger", "none",
            "--teacher", "dis_fine", "--videos", str(clips / "a.mp4"),
            "--data.distill.teacher_weights", "null", "--data.distill.flow_updates", "null", "--data.distill.pairs_per_video", "2",
            "--data.distill.short_sides", "[64]", "--trainer.accelerator", "cpu", "--data.num_workers", "0",
            "--data.val_cases", "null", "--model.init", "null", "--export", str(tmp_path / "w.pt")]
    assert cli(args) == 0
    assert len(TeacherLabels(out / "labels")) == 4  # 2 pairs, both directions
    assert (out / "checkpoints" / "last.ckpt").is_file() and (tmp_path / "w.pt").is_file()
