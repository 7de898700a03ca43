"""PWC-Net: official architecture (names, shapes, count), outputs, warping, sizes, checkpoint layouts, bad inputs."""
from __future__ import annotations

import re

import pytest
import torch

from flow_engine.models.pwcnet import (
    FlowInputError,
    PWCNet,
    WeightsError,
    load_pwcnet_state_dict,
    pad_to_multiple,
    resize_flow,
    resize_to_multiple,
    unpad,
    warp,
)


@pytest.fixture(scope="module")
def net() -> PWCNet:
    torch.manual_seed(0)
    return PWCNet().eval()


@pytest.fixture(scope="module")
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(1, 3, 64, 128, generator=g), torch.rand(1, 3, 64, 128, generator=g)


def test_parameter_count_and_official_shapes(net):
    # 9,374,274 parameters: the official pwc_dc_net (md=4) with the context network.
    assert sum(p.numel() for p in net.parameters()) == 9_374_274
    sd = net.state_dict()
    assert len(sd) == 126
    expected = {
        "conv1a.0.weight": (16, 3, 3, 3),
        "conv1aa.0.weight": (16, 16, 3, 3),
        "conv6aa.0.weight": (196, 128, 3, 3),
        "conv6b.0.bias": (196,),
        "conv6_0.0.weight": (128, 81, 3, 3),
        "conv6_4.0.weight": (32, 81 + 448 - 32, 3, 3),
        "predict_flow6.weight": (2, 81 + 448, 3, 3),
        "deconv6.weight": (2, 2, 4, 4),
        "upfeat6.weight": (81 + 448, 2, 4, 4),
        "conv5_0.0.weight": (128, 81 + 128 + 4, 3, 3),
        "upfeat3.weight": (81 + 64 + 4 + 448, 2, 4, 4),
        "conv2_0.0.weight": (128, 117, 3, 3),
        "predict_flow2.weight": (2, 565, 3, 3),
        "dc_conv1.0.weight": (128, 565, 3, 3),
        "dc_conv5.0.weight": (64, 96, 3, 3),
        "dc_conv7.weight": (2, 32, 3, 3),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert "deconv2.weight" not in sd and "upfeat2.weight" not in sd
    dil = [getattr(net, f"dc_conv{i}")[0].dilation[0] for i in range(1, 7)]
    assert dil == [1, 2, 4, 8, 16, 1]


def test_forward_shapes_and_predict(net, pair):
    with torch.no_grad():
        flows = net(*pair)
        assert [tuple(f.shape) for f in flows] == [(1, 2, 64 >> l, 128 >> l) for l in (6, 5, 4, 3, 2)]
        flow = net.predict(*pair)
    assert flow.shape == (1, 2, 64, 128) and flow.dtype == torch.float32
    up = torch.nn.functional.interpolate(flows[-1], scale_factor=4, mode="bilinear", align_corners=False)
    torch.testing.assert_close(flow, 20.0 * up)
    assert PWCNet.FLOW_SCALE == 20.0


def test_forward_flips_rgb_to_bgr(net, pair):
    bgr_net = PWCNet(bgr=False).eval()
    bgr_net.load_state_dict(net.state_dict())
    with torch.no_grad():
        a = net(*pair)[-1]
        b = bgr_net(pair[0].flip(1), pair[1].flip(1))[-1]
    torch.testing.assert_close(a, b)


def test_warp_moves_by_known_integer_flow():
    x = torch.arange(2 * 3 * 8 * 10, dtype=torch.float32).view(2, 3, 8, 10)
    flow = torch.zeros(2, 2, 8, 10)
    flow[:, 0], flow[:, 1] = 2.0, -1.0  # sample from (x + 2, y - 1)
    out = warp(x, flow)
    expected = torch.zeros_like(x)
    expected[:, :, 1:, :-2] = x[:, :, :-1, 2:]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-3)
    # zero flow is the identity; a half-pixel shift off the border is masked to zero
    torch.testing.assert_close(warp(x, torch.zeros_like(flow)), x, rtol=0, atol=1e-3)
    half = torch.zeros_like(flow)
    half[:, 0] = 0.5
    assert (warp(x, half)[..., -1] == 0).all()


def test_pad_unpad_round_trip():
    img = torch.rand(2, 3, 70, 130)
    padded = pad_to_multiple(img)
    assert padded.shape == (2, 3, 128, 192)
    assert torch.equal(unpad(padded, (70, 130)), img)
    assert torch.equal(padded[..., 69:, :130], img[..., 69:70, :].expand(-1, -1, 128 - 69, -1))
    zero = pad_to_multiple(img, mode="zero")
    assert torch.equal(zero[..., :70, :130], img) and zero[..., 70:, :].abs().sum() == 0
    same = torch.rand(1, 3, 64, 64)
    assert pad_to_multiple(same) is same


def test_resize_mode_rescales_flow():
    img = torch.rand(1, 3, 100, 150)
    assert resize_to_multiple(img).shape == (1, 3, 128, 192)
    # A constant flow of (u, v) px at 192x128 is (u * 150/192, v * 100/128) px at 150x100.
    flow = torch.ones(1, 2, 128, 192)
    flow[:, 0] *= 4.0
    flow[:, 1] *= -2.0
    back = resize_flow(flow, (100, 150))
    assert back.shape == (1, 2, 100, 150)
    torch.testing.assert_close(back[0, 0], torch.full((100, 150), 4.0 * 150 / 192))
    torch.testing.assert_close(back[0, 1], torch.full((100, 150), -2.0 * 100 / 128))


def test_predict_any_size_and_greyscale(net):
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(1, 3, 50, 90, generator=g), torch.rand(1, 3, 50, 90, generator=g)
    with torch.no_grad():
        padded = net.predict(a, b)
        resized = net.predict(a, b, size_mode="resize")
        # the pad path equals running on the padded frames and cropping
        manual = 20 * torch.nn.functional.interpolate(
            net(pad_to_multiple(a), pad_to_multiple(b))[-1], scale_factor=4, mode="bilinear", align_corners=False
        )[..., :50, :90]
        grey = net.predict(a[:, :1], b[:, :1])
        grey3 = net.predict(a[:, :1].repeat(1, 3, 1, 1), b[:, :1].repeat(1, 3, 1, 1))
    assert padded.shape == resized.shape == (1, 2, 50, 90)
    torch.testing.assert_close(padded, manual)
    torch.testing.assert_close(grey, grey3)


def test_bad_inputs(net):
    with pytest.raises(FlowInputError, match="multiples of 64"):
        net(torch.rand(1, 3, 64, 100), torch.rand(1, 3, 64, 100))
    with pytest.raises(FlowInputError, match="sizes differ"):
        net.predict(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 128))
    with pytest.raises(FlowInputError, match="3 \\(RGB\\) channels, got 4"):
        net.predict(torch.rand(1, 4, 64, 64), torch.rand(1, 4, 64, 64))
    with pytest.raises(FlowInputError, match="\\[B,3,H,W\\]"):
        net.predict(torch.rand(3, 64, 64), torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="size_mode"):
        net.predict(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64), size_mode="crop")
    # frames smaller than 64 px are padded up, not rejected
    with torch.no_grad():
        assert net.predict(torch.rand(1, 3, 20, 30), torch.rand(1, 3, 20, 30)).shape == (1, 2, 20, 30)


# --- checkpoint layouts ------------------------------------------------------------------------
_WORDS = {1: "One", 2: "Two", 3: "Thr", 4: "Fou", 5: "Fiv", 6: "Six"}


def to_sniklaus(key: str, p: str) -> str:
    """How sniklaus/pytorch-pwc names our parameter (prefix ``p`` = "net" or the older "module")."""
    if m := re.fullmatch(r"conv(\d)(a|aa|b)\.0\.(\w+)", key):
        level = int(m[1])
        order = ("aa", "a", "b") if level == 6 else ("a", "aa", "b")
        return f"{p}Extractor.{p}{_WORDS[level]}.{2 * order.index(m[2])}.{m[3]}"
    if m := re.fullmatch(r"conv(\d)_(\d)\.0\.(\w+)", key):
        return f"{p}{_WORDS[int(m[1])]}.{p}{_WORDS[int(m[2]) + 1]}.0.{m[3]}"
    if m := re.fullmatch(r"predict_flow(\d)\.(\w+)", key):
        return f"{p}{_WORDS[int(m[1])]}.{p}Six.0.{m[2]}"
    if m := re.fullmatch(r"(deconv|upfeat)(\d)\.(\w+)", key):
        kind = "Upflow" if m[1] == "deconv" else "Upfeat"
        return f"{p}{_WORDS[int(m[2]) - 1]}.{p}{kind}.{m[3]}"
    if m := re.fullmatch(r"dc_conv(\d)(?:\.0)?\.(\w+)", key):
        return f"{p}Refiner.{p}Main.{2 * (int(m[1]) - 1)}.{m[2]}"
    raise AssertionError(key)


def _layouts(sd: dict) -> dict[str, object]:
    return {
        "official.pth.tar": sd,
        "official_wrapped.pth.tar": {"state_dict": sd},
        "dataparallel.pth": {f"module.{k}": v for k, v in sd.items()},
        "network-default.pytorch": {to_sniklaus(k, "net"): v for k, v in sd.items()},
        "network-old.pytorch": {to_sniklaus(k, "module"): v for k, v in sd.items()},
        "ptlflow.ckpt": {"state_dict": dict(sd), "epoch": 3, "global_step": 100},
        "lightning_model.ckpt": {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 1},
        "own_fp16.pt": {k: v.half() for k, v in sd.items()},
    }


def test_checkpoint_layouts_load_to_identical_outputs(net, pair, tmp_path):
    sd = net.state_dict()
    for name, obj in _layouts(sd).items():
        path = tmp_path / name
        torch.save(obj, path)
        loaded = load_pwcnet_state_dict(path)
        assert set(loaded) == set(sd), name
        assert all(v.dtype == torch.float32 for v in loaded.values()), name
        for k, v in sd.items():
            if name == "own_fp16.pt":
                assert torch.equal(loaded[k], v.half().float()), (name, k)
            else:
                assert torch.equal(loaded[k], v), (name, k)
    # and through from_weights, a converted sniklaus file predicts exactly what the original net does
    with torch.no_grad():
        ref = net(*pair)[-1]
        out = PWCNet.from_weights(tmp_path / "network-default.pytorch").eval()(*pair)[-1]
    assert torch.equal(out, ref)


def test_checkpoint_errors_name_the_keys(net, tmp_path):
    sd = dict(net.state_dict())
    sd["extra.weight"] = torch.zeros(1)
    del sd["dc_conv7.bias"]
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"bad\.pt.*unknown keys: extra\.weight.*missing keys: dc_conv7\.bias"):
        load_pwcnet_state_dict(path)

    sd = dict(net.state_dict())
    sd["conv1a.0.weight"] = torch.zeros(16, 4, 3, 3)
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"conv1a\.0\.weight \(16, 4, 3, 3\) \(expected \(16, 3, 3, 3\)\)"):
        load_pwcnet_state_dict(path)

    sn = {to_sniklaus(k, "net"): v for k, v in net.state_dict().items()}
    sn["netExtractor.netSeven.0.weight"] = torch.zeros(1)
    torch.save(sn, path)
    with pytest.raises(WeightsError, match="netExtractor.netSeven.0.weight"):
        load_pwcnet_state_dict(path)

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pt.*cannot be read"):
        load_pwcnet_state_dict(tmp_path / "junk.pt")
    with pytest.raises(WeightsError, match="no such weights file"):
        load_pwcnet_state_dict(tmp_path / "absent.pt")
