"""Training PWC-Net: loss, augmentation geometry, a few optimisation steps, exact resume, export, the command line."""
import csv
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from flow_engine.data import augment
from flow_engine.io.flow_files import write_flow, write_image
from flow_engine.checkpoints import WeightsError
from flow_engine.models.pwcnet import PWCNet
from flow_engine.data.synthetic import SyntheticFlow
from flow_engine.training.losses import downsample_flow, matching_loss, multiscale_loss
from flow_engine.lightning_cli import resolve_ckpt_path
from flow_engine.training.cli import FlowCLI, export_weights
from flow_engine.training.cli import main as train_main
from flow_engine.training.datamodule import FlowDataModule
from flow_engine.training.module import ConfigError, FlowModule


pytestmark = pytest.mark.usefixtures("one_thread")


ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "flow_engine" / "weights" / "pwcnet_actionflow.pt"


def smooth_flow(B: int, H: int, W: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(B, 2, 4, 4, generator=g) * 8
    return F.interpolate(coarse, size=(H, W), mode="bicubic", align_corners=False)


def backward_warp(img2: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    B, _, H, W = img2.shape
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    grid = torch.stack([(xs + flow[:, 0] + 0.5) / W * 2 - 1, (ys + flow[:, 1] + 0.5) / H * 2 - 1], -1)
    return F.grid_sample(img2, grid, align_corners=False)


# ----------------------------------------------------------------------------- loss


def test_loss_is_zero_for_the_downsampled_ground_truth_and_weights_levels():
    gt = smooth_flow(2, 64, 128)
    valid = torch.ones(2, 64, 128, dtype=torch.bool)
    preds = [F.avg_pool2d(gt / 20, 2**level) for level in (6, 5, 4, 3, 2)]
    loss, terms = multiscale_loss(preds, gt, valid)
    assert loss.item() < 1e-4
    # A (3, 4) error (norm 5, in /20 units) on every pixel of level 6 (1x2 pixels per image):
    preds[0] = preds[0] + torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    loss, terms = multiscale_loss(preds, gt, valid)
    assert terms[0].item() == pytest.approx(5.0 * 2, rel=1e-4)  # summed over pixels, mean over the batch
    assert loss.item() == pytest.approx(0.32 * 10.0, rel=1e-3)
    mean_loss, _ = multiscale_loss(preds, gt, valid, reduction="mean")
    assert mean_loss.item() == pytest.approx(0.32 * 5.0, rel=1e-3)


def test_sparse_ground_truth_is_averaged_over_valid_pixels_only():
    gt = torch.full((1, 2, 8, 8), 2.0)
    valid = torch.zeros(1, 8, 8, dtype=torch.bool)
    valid[:, ::2, ::2] = True  # a KITTI-like sparse mask
    gt[:, :, 1::2] = 1000.0  # garbage where unknown
    down, v = downsample_flow(gt, valid, 4)
    assert v.all() and torch.allclose(down, torch.full_like(down, 2.0))
    valid[:, :4, :4] = False
    down, v = downsample_flow(gt, valid, 4)
    assert not v[0, 0, 0] and v.sum() == 3


def test_matching_loss_rewards_features_that_match_under_the_ground_truth():
    # Level-2 features of frame 2 are those of frame 1 moved by (2, -1) level pixels = (8, -4) px.
    g = torch.Generator().manual_seed(0)
    f1 = torch.randn(2, 16, 16, 16, generator=g)
    f2 = torch.roll(f1, shifts=(-1, 2), dims=(2, 3))
    feats = {2: torch.cat([f1, f2])}
    valid = torch.ones(2, 64, 64, dtype=torch.bool)
    right = torch.tensor([8.0, -4.0]).view(1, 2, 1, 1).expand(2, 2, 64, 64)
    good = matching_loss(feats, right, valid)
    bad = matching_loss(feats, torch.zeros_like(right), valid)
    assert good < 0.05 and bad > 5, (good, bad)


def test_untrained_module_predicts_zero_flow():
    module = FlowModule(corr_backend="torch", max_steps=10)
    flows = module(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
    assert all(not f.any() for f in flows)


# ----------------------------------------------------------------------------- augmentation


def test_flips_negate_the_matching_flow_component():
    img = torch.rand(1, 3, 8, 12)
    flow = torch.stack([torch.full((8, 12), 3.0), torch.full((8, 12), -2.0)])[None]
    valid = torch.ones(1, 8, 12, dtype=torch.bool)
    one, zero = torch.ones(1, 2), torch.zeros(1, 2)
    i1, _, f, v = augment.spatial_transform(img, img, flow, valid, (8, 12), one, torch.tensor([[True, False]]), zero)
    assert torch.allclose(i1, img.flip(3), atol=1e-6) and v.all()
    assert torch.allclose(f[:, 0], torch.tensor(-3.0)) and torch.allclose(f[:, 1], torch.tensor(-2.0))
    i1, _, f, _ = augment.spatial_transform(img, img, flow, valid, (8, 12), one, torch.tensor([[False, True]]), zero)
    assert torch.allclose(i1, img.flip(2), atol=1e-6)
    assert torch.allclose(f[:, 0], torch.tensor(3.0)) and torch.allclose(f[:, 1], torch.tensor(2.0))


def test_scaling_and_flips_keep_frames_and_flow_consistent():
    # A smooth texture and the same texture shifted by d: frame 1 -> frame 2 flow is exactly -d.
    g = torch.Generator().manual_seed(0)
    texture = F.interpolate(torch.rand(1, 3, 12, 16, generator=g), size=(96, 128), mode="bicubic", align_corners=False)
    d = (5, 3)
    img1 = texture[..., 8:72, 8:104].expand(2, -1, -1, -1)
    img2 = texture[..., 8 + d[1] : 72 + d[1], 8 + d[0] : 104 + d[0]].expand(2, -1, -1, -1)
    flow = torch.tensor([-d[0], -d[1]], dtype=torch.float32).view(1, 2, 1, 1).expand(2, 2, 64, 96)
    valid = torch.ones(2, 64, 96, dtype=torch.bool)
    scale = torch.tensor([[2.0, 2.0], [1.5, 1.25]])
    flip = torch.tensor([[True, False], [False, True]])
    offset = torch.tensor([[30.0, 20.0], [20.0, 10.0]])
    i1, i2, f, v = augment.spatial_transform(img1, img2, flow, valid, (48, 64), scale, flip, offset)
    assert v.all()
    # Sample 0: h-flipped and doubled, so u = +2*5 and v = -2*3; sample 1: v-flipped, scaled (1.5, 1.25).
    assert torch.allclose(f[0, 0], torch.tensor(10.0)) and torch.allclose(f[0, 1], torch.tensor(-6.0))
    assert torch.allclose(f[1, 0], torch.tensor(-7.5)) and torch.allclose(f[1, 1], torch.tensor(3.75))
    # And that flow maps the transformed frame 1 onto the transformed frame 2 (away from the crop border).
    err = (backward_warp(i2, f) - i1).abs().mean(1)[:, 8:-8, 12:-12]
    base = (i2 - i1).abs().mean(1)[:, 8:-8, 12:-12]
    assert err.mean() < 0.05 * base.mean()
    # The pixel at crop (x', y') of sample 0 is input x = (2W - (x' + 0.5 + 30)) / 2 - 0.5, y = (y' + 0.5 + 20) / 2 - 0.5.
    x_in, y_in = (2 * 96 - (4 + 0.5 + 30)) / 2 - 0.5, (6 + 0.5 + 20) / 2 - 0.5
    ref = F.grid_sample(img1[:1], torch.tensor([[[[(x_in + 0.5) / 96 * 2 - 1, (y_in + 0.5) / 64 * 2 - 1]]]]), align_corners=False)
    assert torch.allclose(i1[0, :, 6, 4], ref[0, :, 0, 0], atol=1e-5)


def test_random_spatial_crop_size_and_sparse_values():
    # u holds each input pixel's index + 1, so a nearest-neighbour copy is recognisable after scaling.
    index = torch.arange(1, 40 * 50 + 1, dtype=torch.float32).view(1, 40, 50).expand(2, -1, -1)
    flow = torch.stack([index, torch.zeros_like(index)], 1)
    valid = torch.rand(2, 40, 50, generator=torch.Generator().manual_seed(0)) > 0.5
    img = torch.rand(2, 3, 40, 50)
    g = torch.Generator().manual_seed(0)
    s = 2**0.3
    i1, i2, f, v = augment.random_spatial(img, img, flow, valid, (32, 32), sparse=True, min_log2_scale=0.3, max_log2_scale=0.3,
                                          scale_prob=1.0, max_log2_stretch=0.0, generator=g)
    assert i1.shape == (2, 3, 32, 32) and f.shape == (2, 2, 32, 32) and v.shape == (2, 32, 32)
    assert 0.3 < v.float().mean() < 0.7
    source = f[:, 0][v].abs() / s  # flips may negate u
    assert torch.allclose(source, source.round(), atol=1e-3)  # a copy of one input pixel, never a blend
    src = source.round().long() - 1
    batch = torch.arange(2)[:, None, None].expand(2, 32, 32)[v]
    assert valid.flatten(1)[batch, src].all()  # ... of a known one
    assert not f[~v[:, None].expand_as(f)].any()
    # Frames smaller than the crop (a 320x240 video's labels under 256x256 crops) are scaled up to cover it.
    dense = torch.ones(2, 40, 50, dtype=torch.bool)
    const = torch.tensor([3.0, -2.0]).view(1, 2, 1, 1).expand(2, 2, 40, 50)
    i1, _, f, v = augment.random_spatial(img, img, const, dense, (64, 64), scale_prob=0.0, stretch_prob=0.0,
                                         hflip_prob=0.0, vflip_prob=0.0, generator=g)
    assert i1.shape == (2, 3, 64, 64) and v.all()
    assert torch.allclose(f[:, 0], torch.full((2, 64, 64), 3.0 * 65 / 50), atol=1e-4)  # u grows with the x scale
    assert torch.allclose(f[:, 1], torch.full((2, 64, 64), -2.0 * 65 / 40), atol=1e-4)


def test_photometric_identity_and_range():
    a, b = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    same = augment.photometric(a, b, brightness=0, contrast=0, saturation=0, hue=0, gamma=(1, 1), noise=(0, 0))
    assert torch.allclose(same[0], a, atol=1e-5) and torch.allclose(same[1], b, atol=1e-5)
    g = torch.Generator().manual_seed(1)
    out1, out2 = augment.photometric(a, b, generator=g)
    assert out1.min() >= 0 and out1.max() <= 1 and not torch.allclose(out1, a)


# ----------------------------------------------------------------------------- training


def tiny_args(out: Path) -> list[str]:
    return [
        "--trainer.default_root_dir", str(out), "--seed_everything", "1", "--data.crop", "[64, 64]", "--data.batch_size", "1", "--data.val_cases", "null",
        "--data.curriculum", "null", "--trainer.max_steps", "3", "--checkpoint.every_n_train_steps", "2", "--trainer.log_every_n_steps", "1",
        "--trainer.precision", "32-true", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.logger", "false", "--model.milestones", "[0.5]", "--model.lr", "1e-4",
    ]


def write_case(folder: Path, shift: int, size=(64, 128)) -> None:
    """A case whose frame 2 is frame 1 moved ``shift`` px to the right: ground truth u = shift."""
    rng = np.random.default_rng(shift)
    big = rng.integers(0, 256, (size[0], size[1] + shift, 3), dtype=np.uint8)
    folder.mkdir(parents=True)
    write_image(folder / "frame1.png", big[:, shift:])
    write_image(folder / "frame2.png", big[:, :size[1]])
    flow = np.zeros(size + (2,), np.float32)
    flow[..., 0] = shift  # frame1(x) = big(x + shift) = frame2(x + shift)
    write_flow(folder / "flow.flo", flow)


def test_validation_scores_each_set_and_averages_the_sets(tmp_path):
    # Two sets of different sizes: val/epe is the mean of the two sets' means, not of the three cases.
    write_case(tmp_path / "small" / "a", 1)
    write_case(tmp_path / "small" / "b", 2)
    write_case(tmp_path / "large" / "c", 40)
    out = tmp_path / "run"
    args = tiny_args(out) + ["--data.val_cases", f"[{tmp_path / 'small'}, {tmp_path / 'large'}]", "--trainer.max_steps", "1",
                             "--trainer.val_check_interval", "1", "--trainer.logger", "CSVLogger", "--trainer.logger.init_args.name", "csv"]
    assert train_main(args) == 0
    rows = list(csv.DictReader(open(out / "csv" / "version_0" / "metrics.csv")))
    val = next(r for r in rows if r.get("val/epe"))
    small, large = float(val["val/small/epe"]), float(val["val/large/epe"])
    cases = [float(val[f"val_case/small/{c}"]) for c in "ab"]
    assert small == pytest.approx(sum(cases) / 2, rel=1e-5)
    assert large == pytest.approx(float(val["val_case/large/c"]), rel=1e-5)
    assert float(val["val/epe"]) == pytest.approx((small + large) / 2, rel=1e-5)
    assert large > small  # 40 px of motion is not found by a net barely trained


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    module = FlowModule(corr_backend="torch", zero_flow_init=False, lr=2e-4, weight_decay=4e-4, schedule="constant", max_steps=10)
    batch = SyntheticFlow(64, 64, seed=0, max_displacement=8.0).sample(2)
    opt = module.configure_optimizers()
    losses = []
    for _ in range(5):
        loss, _ = multiscale_loss(module(batch[0], batch[1]), batch[2], batch[3])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_training_on_a_validation_set_is_refused(tmp_path):
    write_case(tmp_path / "val" / "a", 1)
    with pytest.raises(ConfigError, match="never train on validation frames"):
        FlowDataModule(train=[{"name": "cases", "root": str(tmp_path / "val")}], val_cases=[str(tmp_path / "val")], crop=(64, 64))
    with pytest.raises(ConfigError, match="overlaps the validation set"):
        FlowDataModule(train=[{"name": "cases", "root": str(tmp_path)}], val_cases=str(tmp_path / "val"), crop=(64, 64))
    FlowDataModule(train=[{"name": "cases", "root": str(tmp_path / "val")}], val_cases=None, crop=(64, 64))


def test_nonfinite_batches_are_skipped_and_counted_before_the_loss():
    module = FlowModule(corr_backend="torch", schedule="constant", max_steps=10)
    img1, img2, flow, valid = SyntheticFlow(64, 64, seed=0, max_displacement=8.0).sample(2)
    assert module.training_step((img1, img2, flow, valid), 0) is not None
    bad = flow.clone()
    bad[0, 0, 3, 3] = float("nan")  # a broken label pixel
    assert module.training_step((img1, img2, bad, valid), 0) is None
    valid = valid.clone()
    valid[0, 3, 3] = False  # where the label says "unknown", any value is fine
    assert module.training_step((img1, img2, bad, valid), 0) is not None
    frames = img1.clone()
    frames[1, :, 0, 0] = float("inf")
    assert module.training_step((frames, img2, flow, valid), 0) is None
    assert module.skipped_batches == 2


def test_a_diverging_run_stops_with_a_clear_error_and_keeps_its_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    # A learning rate of 1e30 blows the weights up in one step; the next loss is not finite.
    args = tiny_args(out) + ["--model.lr", "1e30", "--model.schedule", "constant", "--checkpoint.every_n_train_steps", "1",
                             "--model.zero_flow_init", "false"]
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert "training diverged at step" in err and "--ckpt_path last" in err and "Traceback" not in err
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_export_refuses_nonfinite_weights_and_leaves_the_target_alone(tmp_path):
    state = {f"model.{k}": v for k, v in PWCNet().state_dict().items()}
    state["model.predict_flow2.weight"][0, 0, 0, 0] = float("inf")
    ckpt = tmp_path / "bad.ckpt"
    torch.save({"state_dict": state, "global_step": 5}, ckpt)
    target = tmp_path / "shipped.pt"
    target.write_bytes(b"the shipped weights")
    with pytest.raises(WeightsError, match="NaN or inf"):
        export_weights(ckpt, target)
    assert target.read_bytes() == b"the shipped weights"


def test_weight_decay_skips_biases():
    module = FlowModule(corr_backend="torch", weight_decay=1e-3, schedule="constant")
    decayed, plain = module.configure_optimizers().param_groups
    assert decayed["weight_decay"] == 1e-3 and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(module.parameters()))


class StopAt(pl.Callback):
    """Stops the run after ``step`` optimizer steps, as a killed job would just after a periodic checkpoint."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_resume_continues_exactly(tmp_path):
    def run(out: Path, stop: int | None = None, resume: str | None = None):
        cli = FlowCLI(tiny_args(out))
        module, data, trainer = cli.model, cli.datamodule, cli.trainer
        if stop is not None:
            trainer.callbacks.append(StopAt(stop))
        trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
        return module, trainer

    straight, t_straight = run(tmp_path / "a")
    run(tmp_path / "b", stop=2)
    last = resolve_ckpt_path("last", tmp_path / "b")
    # The project's own Lightning checkpoints read with weights_only=True (export and resume use it).
    assert last is not None and torch.load(last, weights_only=True)["global_step"] == 2
    resumed, t_resumed = run(tmp_path / "b", resume=last)
    assert t_straight.global_step == t_resumed.global_step == 3
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name
    sa, sb = t_straight.optimizers[0].state_dict(), t_resumed.optimizers[0].state_dict()
    assert sa["param_groups"][0]["lr"] == sb["param_groups"][0]["lr"] == pytest.approx(0.5e-4)
    for k in sa["state"]:
        assert torch.equal(sa["state"][k]["exp_avg_sq"], sb["state"][k]["exp_avg_sq"])

    # Export: a plain fp16 state dict with PWCNet's names that PWCNet.from_weights loads.
    out = export_weights(tmp_path / "b" / "checkpoints" / "last.ckpt", tmp_path / "w.pt")
    state = torch.load(out, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values()) and "predict_flow2.weight" in state
    model = PWCNet.from_weights(out)
    ref = resumed.model.state_dict()["conv1a.0.weight"]
    assert torch.allclose(model.state_dict()["conv1a.0.weight"], ref, atol=1e-3 * ref.abs().max().item())
    assert 15e6 < out.stat().st_size < 25e6


def test_resuming_a_checkpoint_of_another_setup_is_a_clear_error(tmp_path, capsys):
    """A run started by an older version (one optimizer group for all parameters) or with another
    model: exit 2 naming the file and what differs, before training, instead of Lightning's ValueError."""
    from flow_engine.__main__ import main

    cli = FlowCLI(tiny_args(tmp_path / "a"))
    cli.trainer.callbacks.append(StopAt(2))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, weights_only=True)
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    assert main(["train", *tiny_args(tmp_path / "a"), "--ckpt_path", "last"]) == 0  # its own setup resumes
    ckpt = torch.load(last, weights_only=True)
    groups = ckpt["optimizer_states"][0]["param_groups"]
    ckpt["optimizer_states"][0]["param_groups"] = [dict(groups[0], params=[i for g in groups for i in g["params"]])]
    torch.save(ckpt, last)
    capsys.readouterr()
    assert main(["train", *tiny_args(tmp_path / "a"), "--ckpt_path", "last"]) == 2
    err = capsys.readouterr().err
    assert f"error: {last}: cannot resume from it" in err and "optimizer parameter groups of sizes [" in err, err
    assert f"--model.init {last}" in err and "Traceback" not in err


def test_crafted_checkpoints_are_refused_never_run(tmp_path, capsys):
    """--export-only, --resume and --init on a pickle whose loading would run code: a clear error
    naming the file, exit 2, and the code never runs (the marker file it would create stays absent)."""
    from hostile_files import code_running_checkpoint

    from flow_engine.__main__ import main

    marker = tmp_path / "pwned"
    evil = code_running_checkpoint(tmp_path / "evil.ckpt", marker)
    out = tmp_path / "w.pt"
    runs = {
        "export": ["--export-only", str(evil), "--export", str(out)],
        "resume": ["--ckpt_path", str(evil), "--trainer.default_root_dir", str(tmp_path / "run_resume")],
        "init": ["--model.init", str(evil), "--trainer.default_root_dir", str(tmp_path / "run_init"), "--trainer.logger", "false"],
    }
    for name, argv in runs.items():
        assert main(["train", *argv]) == 2, name
        err = capsys.readouterr().err
        assert f"error: {evil}: cannot be read" in err and "weights_only=True" in err, (name, err)
        assert "io.open" in err and "Traceback" not in err, (name, err)
        assert not marker.exists(), name
    assert not out.exists()
    assert not (tmp_path / "run_resume").exists()  # refused before anything was built
    assert main(["train", "--export-only", str(tmp_path / "none.ckpt"), "--export", str(out)]) == 2
    assert f"{tmp_path / 'none.ckpt'}: no such checkpoint" in capsys.readouterr().err
    junk = tmp_path / "junk.ckpt"
    torch.save({"state_dict": {"other.weight": torch.zeros(1)}}, junk)
    assert main(["train", "--export-only", str(junk), "--export", str(out)]) == 2
    assert "junk.ckpt: no 'model.*' PWC-Net parameters" in capsys.readouterr().err


def test_configs_load_and_bad_keys_fail(capsys):
    for name in ("chairs", "things", "sintel", "distill", "distill_gpu"):
        cfg = FlowCLI(["--config", str(ROOT / "configs" / "flow" / f"{name}.yaml")], build=False).config
        assert cfg.trainer.max_steps > 0
    with pytest.raises(SystemExit):
        FlowCLI(["--model.learning_rate", "1"], build=False)
    assert "unrecognized arguments: --model.learning_rate" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="multiples of 64"):
        FlowDataModule(crop=(100, 64))


def test_command_line_shortcuts_and_refused_forms(capsys):
    argv = ["--teacher", "dis_fine", "--videos", "a.mp4", "--labels=L", "--videos=b", "--data.crop", "[128, 192]"]
    c = FlowCLI(argv, build=False).config
    assert c.data.distill.teacher == "dis_fine" and list(c.data.distill.videos) == ["a.mp4", "b"] and c.data.distill.labels == "L"
    assert tuple(c.data.crop) == (128, 192) and list(c.data.train) == [{"name": "synthetic"}]  # procedural pairs by default
    for argv, message in ((["--data.crop", "448x384"], "write --data.crop '[384, 448]'"),  # WxH: the other convention
                          (["--set", "model.lr=1"], "--set is now --SECTION.KEY VALUE"),
                          (["--data.distill.foo", "1"], "unrecognized arguments: --data.distill.foo")):
        with pytest.raises(SystemExit):
            FlowCLI(argv, build=False)
        assert message in capsys.readouterr().err, argv


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="no shipped weights yet")
def test_shipped_weights_beat_zero_flow_and_point_the_right_way(shared_flow_cases):
    from flow_engine.data.datasets import FlowCases

    model = PWCNet.from_weights(WEIGHTS).eval()
    cases = FlowCases(shared_flow_cases, names=["chairs_0000001", "chairs_0000003", "chairs_0000007"])
    ours, zero, cosines = [], [], []
    for img1, img2, flow, valid in cases:
        with torch.no_grad():
            pred = model.predict(img1[None].float() / 255, img2[None].float() / 255)[0]
        ours.append((pred - flow).norm(dim=0)[valid].mean().item())
        zero.append(flow.norm(dim=0)[valid].mean().item())
        moving = valid & (flow.norm(dim=0) > 1)
        cosines.append(F.cosine_similarity(pred, flow, dim=0)[moving].mean().item())
    # Measured at commit time: EPE 3.68, 3.81, 7.84 vs zero flow 4.51, 6.00, 9.34; cosines 0.70, 0.85, 0.62.
    assert sum(ours) < 0.85 * sum(zero), (ours, zero)
    assert min(cosines) > 0.5, cosines


def test_the_flags_of_earlier_versions_still_work_and_say_what_replaces_them(tmp_path, capsys):
    # A background run's command line from before the shared convention.
    run, labels = tmp_path / "run", tmp_path / "labels"
    old = ["--out", str(run), "--resume", "auto", "--threads", "1", "--logger", "csv", "--checkpoint.every_minutes", "5",
           "--labels", str(labels), "--export", "--max-steps", "7"]
    c = FlowCLI(old, build=False).config
    err = capsys.readouterr().err
    new = FlowCLI(["--trainer.default_root_dir", str(run), "--ckpt_path", "last", "--threads", "1",
                   "--trainer.logger", "CSVLogger", "--trainer.logger.init_args.name", "csv",
                   "--checkpoint.train_time_interval", "0:05:00", "--labels", str(labels), "--export",
                   "--trainer.max_steps", "7"], build=False).config
    assert c == new
    assert c.trainer.default_root_dir == str(run) and c.ckpt_path == "last" and c.trainer.max_steps == 7
    assert c.trainer.logger.class_path.endswith("CSVLogger") and c.trainer.logger.init_args.save_dir == str(run)
    assert str(c.checkpoint.train_time_interval) == "0:05:00" and c.checkpoint.dirpath == str(run / "checkpoints")
    for flag, replacement in (("--out", "--trainer.default_root_dir"), ("--resume", "--ckpt_path last"),
                              ("--logger", "--trainer.logger CSVLogger"), ("--checkpoint.every_minutes", "--checkpoint.train_time_interval 0:05:00"),
                              ("--max-steps", "--trainer.max_steps 7")):
        assert f"{flag} is deprecated; use {replacement}" in err, flag
    assert "--labels is deprecated" not in err and "--threads is deprecated" not in err  # shortcuts and keys of its own stay


@pytest.mark.parametrize("argv, words", [
    (["--checkpoint.every_minutes", "abc"], "--checkpoint.every_minutes abc: 'abc' is not a number"),
    (["--checkpoint.every_minutes", "nan"], "--checkpoint.every_minutes nan: must be a positive, finite number"),
    (["--checkpoint.every_minutes", "-5"], "--checkpoint.every_minutes -5: must be a positive, finite number"),
    (["--resume", "--print_config"], "--resume needs a value"),  # the next flag is not its value
])
def test_old_flags_with_bad_values_are_argument_errors(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        FlowCLI(argv, build=False)
    assert exit_.value.code == 2 and words in capsys.readouterr().err


def test_a_config_that_sets_nothing_is_the_default_and_short_and_long_config_flags_agree(tmp_path):
    empty, mine = tmp_path / "empty.yaml", tmp_path / "mine.yaml"
    empty.write_text("{}\n")
    mine.write_text("model:\n  lr: 3.0e-4\ntrainer:\n  max_steps: 9\n")

    def parsed(*argv: str) -> dict:
        cfg = FlowCLI(list(argv), build=False).config.clone()
        cfg.pop("config", None)  # the path of the file given, not a setting
        return cfg.as_dict()

    default = parsed()
    assert default["data"]["curriculum"] == {"start": 16.0, "end": 160.0, "steps": 100000}  # the procedural pre-training
    assert parsed("--config", str(empty)) == default
    long = parsed("--config", str(mine))
    assert long["model"]["lr"] == 3e-4 and long["trainer"]["max_steps"] == 9 and long["data"] == default["data"]
    assert parsed("-c", str(mine)) == long
