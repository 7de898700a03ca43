"""RAFT from torchvision behind FlowEngine: weight layouts, errors, known motion, the shared reference EPE."""
from __future__ import annotations

import json
import pickle
import re
import urllib.error

import pytest
import torch

from flow_engine import FlowEngine, FlowEngineError, WeightsError
from flow_engine.__main__ import main as cli
from flow_engine.models.raft import RAFT, load_raft, princeton_to_torchvision

from conftest import SHARED

pytestmark = pytest.mark.usefixtures("one_thread")

RAFT_SMALL = SHARED / "weights" / "raft-small.pth"


@pytest.fixture
def raft_small_file():
    if not RAFT_SMALL.is_file():
        pytest.skip(f"{RAFT_SMALL} is absent (the authors' RAFT-small lives in ../shared/weights)")
    return RAFT_SMALL


def _authors_layout(tv_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An independent reference: torchvision names -> the authors' (princeton-vl) names, with the
    norm of each downsample branch registered twice as in their code, under ``module.``."""
    out = {}
    for k, v in tv_state.items():
        n = k
        n = re.sub(r"^feature_encoder\.", "fnet.", n)
        n = re.sub(r"^context_encoder\.", "cnet.", n)
        n = re.sub(r"^(fnet|cnet)\.convnormrelu\.0\.", r"\1.conv1.", n)
        n = re.sub(r"^(fnet|cnet)\.convnormrelu\.1\.", r"\1.norm1.", n)
        n = re.sub(r"^(fnet|cnet)\.conv\.", r"\1.conv2.", n)
        n = re.sub(r"convnormrelu(\d)\.0\.", r"conv\1.", n)
        n = re.sub(r"convnormrelu(\d)\.1\.", r"norm\1.", n)
        n = n.replace("update_block.motion_encoder.", "update_block.encoder.")
        for tv, au in (("convcorr1.0", "convc1"), ("convcorr2.0", "convc2"), ("convflow1.0", "convf1"),
                       ("convflow2.0", "convf2"), ("encoder.conv.0", "encoder.conv")):
            n = n.replace(tv, au)
        n = re.sub(r"update_block\.recurrent_block\.convgru(\d)\.conv([zrq])", r"update_block.gru.conv\2\1", n)
        n = n.replace("mask_predictor.convrelu.0.", "update_block.mask.0.").replace("mask_predictor.conv.", "update_block.mask.2.")
        out["module." + n] = v
        m = re.match(r"^(fnet|cnet)\.(layer\d\.\d)\.downsample\.1\.(.+)$", n)
        if m:  # the duplicate the authors' blocks carry: norm3 (residual) or norm4 (bottleneck)
            convs = 3 if any(f"{m.group(1)}.{m.group(2)}.conv3." in x for x in out) else 2
            out[f"module.{m.group(1)}.{m.group(2)}.norm{convs + 1}.{m.group(3)}"] = v
    return out


def test_authors_raft_small_maps_in_order_onto_torchvision(raft_small_file):
    # The shared README: the release's tensors map one to one, in order, onto torchvision's raft_small.
    from torchvision.models.optical_flow import raft_small

    authors = torch.load(raft_small_file, map_location="cpu", weights_only=True)
    expected = dict(zip(raft_small().state_dict(), authors.values()))
    mapped = princeton_to_torchvision(authors)
    assert mapped.keys() == expected.keys()
    assert all(torch.equal(mapped[k], expected[k]) for k in expected)
    model, weights_id = load_raft("raft_small", raft_small_file)
    assert weights_id == "c7d41b9cc88442bb"  # sha256[:16] from shared/weights/README.md
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("variant", ["raft_small", "raft_large"])
def test_both_layouts_load_into_both_variants(tmp_path, variant):
    from torchvision.models import optical_flow

    torch.manual_seed(0)
    reference = getattr(optical_flow, variant)().state_dict()
    reference = {k: (v + torch.randn_like(v) if v.is_floating_point() else v) for k, v in reference.items()}
    for name, state in (("tv.pth", reference), ("authors.pth", _authors_layout(reference))):
        torch.save(state, tmp_path / name)
        model, _ = load_raft(variant, tmp_path / name)
        got = model.state_dict()
        assert got.keys() == reference.keys()
        assert all(torch.equal(got[k].to(reference[k].dtype), reference[k]) for k in reference), name


def test_files_that_are_not_raft_weights_are_clear_errors(tmp_path):
    from torchvision.models.optical_flow import raft_small

    from flow_engine.engine import DEFAULT_WEIGHTS  # a state dict of another network: PWC-Net's

    with pytest.raises(WeightsError, match=r"not raft_small weights.*unknown keys: conv1a"):
        load_raft("raft_small", DEFAULT_WEIGHTS)
    large = tmp_path / "small_as_large.pth"
    torch.save(raft_small().state_dict(), large)
    with pytest.raises(WeightsError, match="raft_large.*(missing keys|shape mismatches)"):
        load_raft("raft_large", large)
    with pytest.raises(WeightsError, match="no such weights file"):
        load_raft("raft_small", tmp_path / "absent.pth")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"fnet.conv1.weight": Evil()}))
    with pytest.raises(WeightsError, match="weights_only=True"):
        load_raft("raft_small", evil)


def test_no_network_and_no_cached_weights_names_both_ways_out(tmp_path, monkeypatch):
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError) as info:
        FlowEngine("raft_small", device="cpu")
    message = str(info.value)
    assert "connect to the internet once" in message and "--weights PATH" in message and "URLError" in message


def test_a_crafted_file_in_the_torch_hub_cache_is_refused_never_run(tmp_path, monkeypatch):
    # torch.hub reads its cache with weights_only=False unless told otherwise
    from hostile_files import code_running_checkpoint
    from torchvision.models.optical_flow import Raft_Small_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Raft_Small_Weights.DEFAULT.url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    code_running_checkpoint(cached, tmp_path / "pwned")
    with pytest.raises(WeightsError, match="UnpicklingError"):
        load_raft("raft_small")
    assert not (tmp_path / "pwned").exists()


def _shifted_pair(H: int, W: int, dx: int, dy: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A crop of a photograph (scikit-image's astronaut) and the same crop moved by (dx, dy) px."""
    import skimage.data

    img = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)[None]
    y, x = 150, 200
    return img[..., y : y + H, x : x + W], img[..., y - dy : y - dy + H, x - dx : x - dx + W]


def test_engine_recovers_a_known_translation_at_an_odd_size(raft_small_file):
    engine = FlowEngine("raft_small", weights=raft_small_file, device="cpu")
    a, b = _shifted_pair(77, 101, dx=3, dy=-2)
    flow = engine(a, b)
    assert flow.shape == (1, 2, 77, 101) and flow.dtype == torch.float32
    inner = flow[0, :, 8:-8, 8:-8]
    assert inner[0].median().item() == pytest.approx(3.0, abs=0.2)  # padded up to 128 px: a little less exact
    assert inner[1].median().item() == pytest.approx(-2.0, abs=0.2)
    # At a multiple of 8 the wrapper is torchvision's own forward pass.
    a, b = _shifted_pair(128, 160, dx=2, dy=1)
    net = engine.model.net
    with torch.inference_mode():
        reference = net(a.float() / 255 * 2 - 1, b.float() / 255 * 2 - 1, num_flow_updates=12)[-1]
    assert torch.allclose(engine(a, b), reference, atol=1e-4)


def test_flow_updates_are_part_of_the_cache_key_and_checked(raft_small_file):
    e12 = FlowEngine("raft_small", weights=raft_small_file, device="cpu")
    e4 = FlowEngine("raft_small", weights=raft_small_file, device="cpu", flow_updates=4)
    assert e12.config() == {"name": "raft_small", "weights_hash": "c7d41b9cc88442bb", "dtype": "fp32", "flow_updates": 12}
    assert e4.config()["flow_updates"] == 4 and e4.config() != e12.config()
    a, b = _shifted_pair(64, 64, dx=4, dy=0)
    assert not torch.allclose(e4(a, b), e12(a, b))
    with pytest.raises(FlowEngineError, match="flow_updates applies to RAFT only"):
        FlowEngine("dis", flow_updates=4)
    with pytest.raises(FlowEngineError, match="at least 1"):
        FlowEngine("raft_small", weights=raft_small_file, device="cpu", flow_updates=0)
    # RAFT's correlation volume grows with the square of the frame: fewer pairs per forward pass.
    assert e12.pairs_per_batch(436, 1024) < e12.pairs_per_batch(218, 512) // 4


@pytest.mark.slow
def test_eval_cli_reproduces_the_published_raft_small_epe(raft_small_file, shared_flow_cases, tmp_path):
    out = tmp_path / "raft.json"
    assert cli(["eval", "--cases", str(shared_flow_cases), "--engine", "raft_small", "--weights", str(raft_small_file),
                "--device", "cpu", "--no-progress", "--json", str(out)]) == 0
    mean = json.loads(out.read_text())["mean"]["epe"]
    assert abs(mean - 1.13) <= 0.05, mean


def test_raft_wrapper_takes_greyscale_and_rejects_mismatched_pairs(raft_small_file):
    model = RAFT(load_raft("raft_small", raft_small_file)[0]).eval()
    grey = torch.rand(1, 1, 40, 48)
    with torch.inference_mode():
        assert model.predict(grey, grey).shape == (1, 2, 40, 48)
    from flow_engine.models.pwcnet import FlowInputError

    with pytest.raises(FlowInputError):
        model.predict(torch.rand(1, 3, 40, 48), torch.rand(1, 3, 40, 56))
    with pytest.raises(ValueError, match="flow_updates"):
        RAFT(model.net, flow_updates=0)


def test_clip_path_encodes_each_frame_once_with_the_pair_numbers(raft_small_file):
    engine = FlowEngine("raft_small", weights=raft_small_file, device="cpu", flow_updates=4)
    a, b = _shifted_pair(72, 88, dx=2, dy=1)
    c, _ = _shifted_pair(72, 88, dx=4, dy=2)
    clip = torch.cat([a, b, c])
    calls = []
    hook = engine.model.net.feature_encoder.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    flows = engine.clip_flow(clip)
    hook.remove()
    assert calls == [3]  # three frames through the encoder once, not four
    pairs = engine(clip[:-1], clip[1:])
    torch.testing.assert_close(flows, pairs, rtol=1e-4, atol=1e-3)
