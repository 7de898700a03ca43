"""Two-stream network: cross-modality initialisation, consensus and fusion arithmetic, modes, backbones."""
from __future__ import annotations

import logging
import math

import pytest
import torch
import torchvision

from actionflow.model import ModelConfigError, TwoStreamNet, consensus, flow_channels, fuse, normalize_flow, normalize_rgb


@pytest.fixture(scope="module")
def resnet18_state(tmp_path_factory):
    """A saved torchvision resnet18 state dict (random weights standing in for ImageNet's)."""
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


def test_cross_modality_initialisation(resnet18_state):
    path, state = resnet18_state
    net = TwoStreamNet(num_classes=4, mode="two_stream", flow_length=5, pretrained=True, pretrained_path=str(path))
    rgb_conv = state["conv1.weight"]  # [64, 3, 7, 7]
    flow_conv = net.flow.net.conv1.weight
    assert flow_conv.shape == (64, 10, 7, 7)
    for c in range(10):
        torch.testing.assert_close(flow_conv[:, c], rgb_conv.mean(dim=1), rtol=0, atol=0)
    torch.testing.assert_close(net.rgb.net.conv1.weight, rgb_conv, rtol=0, atol=0)
    # deeper layers keep the pretrained weights in both streams; the heads are new
    for stream in (net.rgb, net.flow):
        torch.testing.assert_close(stream.net.layer3[1].conv2.weight, state["layer3.1.conv2.weight"], rtol=0, atol=0)
        assert stream.net.fc[1].out_features == 4


def test_without_pretrained_weights_the_flow_conv_is_fresh():
    net = TwoStreamNet(num_classes=3, mode="flow", flow_length=2)
    assert net.rgb is None and net.flow.net.conv1.in_channels == 4
    assert not torch.allclose(net.flow.net.conv1.weight[:, 0], net.flow.net.conv1.weight[:, 1])


def test_unavailable_imagenet_weights_warn_once_and_train_from_scratch(monkeypatch, caplog):
    def offline(*args, **kwargs):
        raise OSError("no internet")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    with caplog.at_level(logging.WARNING):
        net = TwoStreamNet(num_classes=3, mode="two_stream", pretrained=True)
    assert caplog.text.count("unavailable") == 1 and "training from scratch" in caplog.text
    assert not net.rgb.pretrained and not net.flow.pretrained


def test_a_crafted_file_in_the_torch_hub_cache_is_refused_never_run(tmp_path, monkeypatch, caplog):
    # torch.hub reads its cache with weights_only=False unless told otherwise
    from hostile_files import code_running_checkpoint

    from actionflow.model import pretrained_state

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    cached = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    code_running_checkpoint(cached, tmp_path / "pwned")
    with caplog.at_level(logging.WARNING):
        assert pretrained_state("resnet18") is None
    assert not (tmp_path / "pwned").exists()
    assert "ImageNet weights for resnet18 unavailable (Weights only load failed" in caplog.text


def test_bad_pretrained_file_and_settings_are_clear_errors(tmp_path):
    with pytest.raises(ModelConfigError, match="not found"):
        TwoStreamNet(num_classes=3, pretrained=True, pretrained_path=str(tmp_path / "missing.pth"))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ModelConfigError, match="do not fit resnet18"):
        TwoStreamNet(num_classes=3, pretrained=True, pretrained_path=str(tmp_path / "wrong.pth"))
    from hostile_files import code_running_checkpoint

    evil = code_running_checkpoint(tmp_path / "evil.pth", tmp_path / "pwned")
    with pytest.raises(ModelConfigError, match=r"evil\.pth: cannot be read .*weights_only=True"):
        TwoStreamNet(num_classes=3, pretrained=True, pretrained_path=str(evil))
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ModelConfigError, match="unknown backbone 'resnet19'"):
        TwoStreamNet(num_classes=3, backbone="resnet19")
    with pytest.raises(ModelConfigError, match="model.mode"):
        TwoStreamNet(num_classes=3, mode="depth")


def test_consensus_averages_segments():
    logits = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [5.0, -2.0]]])
    assert consensus(logits).tolist() == [[3.0, 0.0]]


def test_fusion_of_softmax_scores_with_weights():
    rgb = torch.log(torch.tensor([[0.8, 0.2]]))
    flow = torch.log(torch.tensor([[0.4, 0.6]]))
    fused = fuse(rgb, flow, torch.tensor([1.0, 1.5])).exp()
    # (1 * 0.8 + 1.5 * 0.4) / 2.5 = 0.56 and (1 * 0.2 + 1.5 * 0.6) / 2.5 = 0.44
    torch.testing.assert_close(fused, torch.tensor([[0.56, 0.44]]))
    # equal weights: the plain average
    torch.testing.assert_close(fuse(rgb, flow, torch.tensor([2.0, 2.0])).exp(), torch.tensor([[0.6, 0.4]]))


def test_two_stream_forward_applies_consensus_then_fusion():
    torch.manual_seed(0)
    net = TwoStreamNet(num_classes=5, mode="two_stream", flow_length=3, fusion_weights=(1.0, 1.5)).eval()
    rgb, flow = torch.randn(2, 4, 3, 32, 32), torch.randn(2, 4, 6, 32, 32)
    out = net(rgb, flow)
    assert set(out) == {"rgb", "flow", "two_stream"} and net.streams == ["rgb", "flow", "two_stream"]
    per_snippet = net.rgb(rgb.flatten(0, 1)).view(2, 4, 5)
    torch.testing.assert_close(out["rgb"], per_snippet.mean(dim=1))
    expected = (out["rgb"].softmax(-1) + 1.5 * out["flow"].softmax(-1)) / 2.5
    torch.testing.assert_close(out["two_stream"].exp(), expected)
    torch.testing.assert_close(out["two_stream"].exp().sum(-1), torch.ones(2))


@pytest.mark.parametrize("mode, keys", [("rgb", {"rgb"}), ("flow", {"flow"})])
def test_single_stream_modes(mode, keys):
    net = TwoStreamNet(num_classes=3, mode=mode, flow_length=2)
    out = net(torch.randn(1, 2, 3, 32, 32), torch.randn(1, 2, 4, 32, 32))
    assert set(out) == keys and out[mode].shape == (1, 3)


def test_learned_fusion_weights_get_gradients():
    net = TwoStreamNet(num_classes=3, mode="two_stream", flow_length=1, fusion="learned", fusion_weights=(1.0, 3.0))
    torch.testing.assert_close(net.fusion_logits.detach(), torch.tensor([0.0, math.log(3.0)]))
    out = net(torch.randn(2, 1, 3, 32, 32), torch.randn(2, 1, 2, 32, 32))
    torch.nn.functional.nll_loss(out["two_stream"], torch.tensor([0, 2])).backward()
    assert net.fusion_logits.grad is not None and net.fusion_logits.grad.abs().sum() > 0


def test_other_torchvision_backbones_take_the_flow_stack():
    net = TwoStreamNet(num_classes=4, mode="flow", backbone="mobilenet_v3_small", flow_length=5)
    assert net(flow=torch.randn(1, 2, 10, 32, 32))["flow"].shape == (1, 4)


@pytest.mark.parametrize("size", [(56, 56), (37, 61), (8, 8)])
def test_small_cnn_takes_any_size(size):
    net = TwoStreamNet(num_classes=4, mode="two_stream", backbone="small_cnn", flow_length=5)
    out = net(torch.randn(2, 3, 3, *size), torch.randn(2, 3, 10, *size))
    assert out["rgb"].shape == out["flow"].shape == out["two_stream"].shape == (2, 4)


def test_small_cnn_learns_the_direction_of_motion():
    # a known answer: flow stacks moving right (class 0) or left (class 1) under noise
    torch.manual_seed(0)
    net = TwoStreamNet(num_classes=2, mode="flow", backbone="small_cnn", flow_length=2, dropout=0.0)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    labels = torch.arange(16) % 2
    flow = torch.randn(16, 1, 4, 24, 24)
    flow[:, :, 0::2] += (1 - 2 * labels.float()).view(-1, 1, 1, 1, 1)
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(net(flow=flow)["flow"], labels)
        opt.zero_grad(), loss.backward(), opt.step()
    net.eval()
    test = torch.randn(8, 1, 4, 24, 24)
    test_labels = torch.arange(8) % 2
    test[:, :, 0::2] += (1 - 2 * test_labels.float()).view(-1, 1, 1, 1, 1)
    assert (net(flow=test)["flow"].argmax(-1) == test_labels).all()


def test_small_cnn_has_no_imagenet_weights():
    with pytest.raises(ModelConfigError, match="small_cnn has no ImageNet weights"):
        TwoStreamNet(num_classes=3, backbone="small_cnn", pretrained=True)


def test_camera_motion_is_subtracted_per_flow_field():
    # camera pans (3, -1) px in field 0 and (-2, 0) px in field 1; a dancer's arm (a tenth of the frame) moves
    # a further (4, 4) px: what is left is the arm's own motion, the background is still
    flow = torch.zeros(2, 4, 20, 20)
    flow[:, 0:2] += torch.tensor([3.0, -1.0]).view(2, 1, 1)
    flow[:, 2:4] += torch.tensor([-2.0, 0.0]).view(2, 1, 1)
    flow[:, :, 5:7, 5:25] += 4.0
    out = normalize_flow(flow, 20.0, subtract_camera=True)
    assert out[:, :, 0, 0].abs().max() == 0
    torch.testing.assert_close(out[:, :, 6, 10], torch.full((2, 4), 0.2))
    torch.testing.assert_close(normalize_flow(flow, 20.0), flow / 20)  # off: only scaled


def test_per_snippet_normalisation_keeps_the_pattern_at_unit_size_and_the_size_as_a_channel():
    torch.manual_seed(0)
    flow = torch.randn(2, 3, 4, 8, 8) * 3.0  # [B, S, 2L, H, W] px, L = 2
    flow[0, 1] = 4 * flow[0, 0]  # a snippet four times faster than another
    out = normalize_flow(flow, 20.0, per_snippet=True)
    assert out.shape == (2, 3, 5, 8, 8) and flow_channels(2, "snippet") == 5 and flow_channels(2) == 4
    rms = flow.pow(2).mean(dim=(-3, -2, -1), keepdim=True).sqrt()
    torch.testing.assert_close(out[..., :4, :, :], flow / (rms + 0.05))
    assert out[..., :4, :, :].pow(2).mean(dim=(-3, -2, -1)).sqrt().sub(1).abs().max() < 0.03  # unit size
    size = out[..., 4, :, :]
    assert size.flatten(-2).std(dim=-1).max() == 0  # one number per snippet
    torch.testing.assert_close(size[..., 0, 0], torch.log(rms.view(2, 3) / 20 + 1e-3))
    torch.testing.assert_close(out[0, 1, :4], out[0, 0, :4], atol=0.01, rtol=0.02)  # the same pattern...
    assert abs(float(size[0, 1, 0, 0] - size[0, 0, 0, 0]) - math.log(4)) < 0.01  # ...four times the size: log 4 more
    still = normalize_flow(torch.zeros(1, 1, 2, 4, 4), per_snippet=True)
    assert still[:, :, :2].abs().max() == 0 and torch.isfinite(still).all()  # no motion: no division by zero
    net = TwoStreamNet(num_classes=3, mode="flow", backbone="small_cnn", flow_length=2, flow_channels=5)
    assert net(flow=out)["flow"].shape == (2, 3)


def test_small_cnn_widths():
    net = TwoStreamNet(num_classes=3, mode="flow", backbone="small_cnn", flow_length=2, cnn_widths=(8, 16))
    convs = [m for m in net.flow.net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(4, 8), (8, 16)]
    assert net(flow=torch.zeros(1, 2, 4, 32, 32))["flow"].shape == (1, 3)
    with pytest.raises(ModelConfigError, match="cnn_widths .* small_cnn only"):
        TwoStreamNet(num_classes=3, backbone="resnet18", cnn_widths=(8, 16))
    with pytest.raises(ModelConfigError, match="cnn_widths"):
        TwoStreamNet(num_classes=3, backbone="small_cnn", cnn_widths=(8, 0))


def test_input_normalisation():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    torch.testing.assert_close(normalize_rgb(x)[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))
    assert normalize_flow(torch.tensor([20.0, -10.0])).tolist() == [1.0, -0.5]


def test_validation_fusion_weights_ignore_a_stream_that_does_not_generalise():
    from actionflow.model import validation_weights

    labels = torch.arange(6) % 3
    good = torch.full((6, 3), 0.1).scatter(1, labels[:, None], 0.8)  # right with p = 0.8
    wrong = torch.full((6, 3), 0.05).scatter(1, ((labels + 1) % 3)[:, None], 0.9)  # confidently wrong
    assert validation_weights(wrong, good, labels) == (0.0, 1.0)
    assert validation_weights(good, wrong, labels) == (1.0, 0.0)
    half = torch.arange(6)[:, None] < 3  # RGB right on the first three videos, flow on the others
    w_rgb, w_flow = validation_weights(torch.where(half, good, wrong), torch.where(half, wrong, good), labels)
    assert abs(w_rgb - 0.5) <= 0.05 + 1e-6 and w_rgb + w_flow == pytest.approx(1.0)  # equally useful: a balanced mix
    # a stream at chance with near-uniform scores smooths the other's mistakes; it must not win weight for that
    uniform = torch.full((6, 3), 1 / 3) + torch.randn(6, 3, generator=torch.Generator().manual_seed(0)) * 1e-3
    assert (uniform.argmax(dim=1) == labels).sum() <= 2  # at chance (its own noise, not the tests run before it)
    overconfident = torch.where(torch.arange(6)[:, None] < 4, good, wrong)  # right on 4 of 6, confidently wrong on 2
    assert validation_weights(uniform, overconfident, labels)[0] <= 0.1


def test_each_stream_learns_from_its_own_loss_alone():
    """The cause of two-stream runs stuck at chance: with a loss on the fused output, a stream that
    memorises the training clips took the other's gradient away. The flow stream's gradient must not
    depend on what the RGB stream predicts."""
    from actionflow.module import ActionRecognizer

    torch.manual_seed(0)
    module = ActionRecognizer(num_classes=3, mode="two_stream", backbone="small_cnn", flow_length=2, crop_size=[32, 32])
    batch = {"rgb": torch.randint(0, 255, (4, 2, 3, 32, 32), dtype=torch.uint8), "flow": torch.randn(4, 2, 4, 32, 32) * 3,
             "label": torch.tensor([0, 1, 2, 0]), "num_dropped": torch.tensor(0)}
    module.log = lambda *a, **k: None  # no trainer here

    def flow_grad() -> torch.Tensor:
        module.zero_grad(set_to_none=True)
        module.training_step(batch, 0).backward()
        return module.net.flow.net.fc[1].weight.grad.clone()

    module.eval()  # dropout off: the same forward pass twice
    before = flow_grad()
    with torch.no_grad():  # an RGB stream that now predicts the labels confidently (memorised)
        module.net.rgb.net.fc[1].weight.mul_(50)
    torch.testing.assert_close(flow_grad(), before)


def test_label_smoothing_and_snippet_norm_in_the_training_loss():
    """model.label_smoothing: each stream's loss is the cross-entropy against (1 - e) one-hot + e / C, by hand;
    model.flow_norm snippet: the stream takes 2L + 1 channels and sees the flow at unit size."""
    from actionflow.module import ActionRecognizer

    torch.manual_seed(0)
    module = ActionRecognizer(num_classes=3, mode="flow", backbone="small_cnn", flow_length=2, crop_size=[32, 32],
                              label_smoothing=0.2, flow_norm="snippet").eval()
    assert module.net.flow.net.features[0].in_channels == 5
    flow = torch.randn(4, 2, 4, 32, 32) * 3
    labels = torch.tensor([0, 1, 2, 0])
    module.log = lambda *a, **k: None  # no trainer here
    loss = module.training_step({"flow": flow, "label": labels, "num_dropped": torch.tensor(0)}, 0)
    logp = module(None, flow)["flow"].log_softmax(dim=-1)
    target = torch.full((4, 3), 0.2 / 3) + 0.8 * torch.nn.functional.one_hot(labels, 3)
    torch.testing.assert_close(loss, -(target * logp).sum(dim=-1).mean())
    torch.testing.assert_close(module(None, 5 * flow)["flow"], module(None, flow)["flow"], atol=0.05, rtol=0.05)  # but for the size channel
    for bad in ({"label_smoothing": 1.0}, {"label_smoothing": -0.1}, {"flow_norm": "video"}):
        with pytest.raises(ModelConfigError, match=next(iter(bad))):
            ActionRecognizer(num_classes=3, **bad)


def test_weight_decay_only_on_weights():
    from actionflow.module import ActionRecognizer

    module = ActionRecognizer(num_classes=3, mode="two_stream", backbone="small_cnn", weight_decay=0.1, scheduler="none")
    opt = module.configure_optimizers()
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(p) for p in module.parameters() if p.dim() >= 2}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(module.parameters()))
