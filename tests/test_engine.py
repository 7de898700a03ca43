"""FlowEngine on CPU: shapes, input types, batch splitting, clip flow, weights, classical methods, errors."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from flow_engine import engine as engine_mod
from flow_engine.checkpoints import WeightsError, file_hash
from flow_engine.engine import DEFAULT_WEIGHTS, FlowEngine, FlowEngineError, engine_identity
from flow_engine.models import pwcnet as pwcnet_mod
from flow_engine.models.pwcnet import FlowInputError, PWCNet


@pytest.fixture(scope="module")
def engine() -> FlowEngine:
    return FlowEngine(device="cpu")


def drifting(T: int, H: int, W: int) -> torch.Tensor:
    """T uint8 RGB frames [T,3,H,W]: a smooth pattern drifting right by 2 px per frame."""
    y, x = torch.meshgrid(torch.arange(float(H)), torch.arange(float(W + 2 * T)), indexing="ij")
    base = torch.stack([torch.sin(x / 5) + torch.cos(y / 7), torch.cos(x / 9 - y / 4), torch.sin((x + y) / 6)])
    base = ((base - base.min()) / (base.max() - base.min()) * 255).round().to(torch.uint8)
    return torch.stack([base[:, :, 2 * (T - t) : 2 * (T - t) + W] for t in range(T)])


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    """Four 50x60 frames (padded to 64x64 inside: PWC-Net on CPU is slow)."""
    return drifting(4, 50, 60)


@pytest.fixture(scope="module")
def reference(engine, frames) -> torch.Tensor:
    """The engine's flow for all consecutive pairs in one batch."""
    return engine(frames[:-1], frames[1:])


def test_defaults_and_config(engine):
    assert engine.name == "pwcnet" and engine.device == torch.device("cpu") and engine.dtype == "fp32"
    assert isinstance(engine.model, PWCNet) and not engine.model.training
    if not DEFAULT_WEIGHTS.is_file():
        assert engine.weights_hash == "random"
    assert engine.config() == {"name": "pwcnet", "weights_hash": engine.weights_hash, "dtype": "fp32", "scales": [0.4375, 1.0]}


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="needs the shipped PWC-Net weights")
def test_coarse_to_fine_finds_a_long_displacement_that_one_pass_misses():
    import skimage.data

    photo = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)[None]
    shift = 72  # px: frame 2 is frame 1's view moved 72 px right, so every pixel's flow is u = -72
    a, b = photo[..., 100:356, 100:420], photo[..., 100:356, 100 + shift : 420 + shift]
    one_pass = FlowEngine(device="cpu", scales=[1.0])
    coarse_to_fine = FlowEngine(device="cpu")
    seen = slice(shift + 8, -8)  # pixels whose match is inside frame 2

    def error(engine):
        return (engine(a, b)[0, 0, :, seen] + shift).abs().mean().item()

    assert error(one_pass) > 30 and error(coarse_to_fine) < 5
    # One full-size pass is the network's own predict; the scales are part of the engine's identity.
    assert torch.equal(one_pass(a, b), one_pass.model.predict(a.float() / 255, b.float() / 255))
    assert one_pass.config()["scales"] == [1.0] and engine_identity("pwcnet", scales=[1.0]) != engine_identity("pwcnet")
    with pytest.raises(FlowEngineError, match="coarse to fine"):
        FlowEngine(device="cpu", scales=[1.0, 0.5])
    with pytest.raises(FlowEngineError, match="PWC-Net only"):
        FlowEngine("dis", scales=[0.5, 1.0])


def test_random_init_is_deterministic_and_warns_once(caplog, monkeypatch, tmp_path):
    monkeypatch.setattr(engine_mod, "DEFAULT_WEIGHTS", tmp_path / "absent.pt")
    monkeypatch.setattr(engine_mod, "_warned_random", False)
    with caplog.at_level(logging.WARNING, logger="flow_engine.engine"):
        a = FlowEngine(device="cpu")
        b = FlowEngine(device="cpu")
    assert sum("flow will be noise" in r.message for r in caplog.records) == 1
    assert a.weights_hash == b.weights_hash == "random"
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(v, w), k


def test_shapes_and_uint8_vs_float(engine, frames, reference):
    f1, f2 = frames[:-1], frames[1:]
    flow = reference
    assert flow.shape == (3, 2, 50, 60) and flow.dtype == torch.float32 and flow.device.type == "cpu"
    assert torch.isfinite(flow).all()
    torch.testing.assert_close(engine(f1.float() / 255, f2.float() / 255), flow)
    single = engine(frames[0], frames[1])
    assert single.shape == (1, 2, 50, 60)
    torch.testing.assert_close(single, flow[:1], rtol=1e-4, atol=1e-4)


def test_batch_splitting_matches_one_batch(engine, frames, reference):
    small = FlowEngine(device="cpu", max_pixels_per_batch=64 * 64 * 2)  # 2 pairs per pass: 2 + 1
    assert small.pairs_per_batch(50, 60) == 2 and engine.pairs_per_batch(50, 60) > 3
    torch.testing.assert_close(small(frames[:-1], frames[1:]), reference, rtol=1e-4, atol=1e-4)


def test_clip_flow(engine, frames, reference):
    flows = engine.clip_flow(frames)
    assert flows.shape == (3, 2, 50, 60)
    torch.testing.assert_close(flows, reference)
    with pytest.raises(FlowInputError, match="T >= 2"):
        engine.clip_flow(frames[:1])


def test_stream_of_chunks_gives_the_pair_flows(engine, frames, reference):
    # Chunks of 1, 2 and 1 frames (decoders' numpy layout): the frame at each boundary is carried over.
    chunks = [frames[i:j].permute(0, 2, 3, 1).numpy() for i, j in ((0, 1), (1, 3), (3, 4))]
    flows = list(engine.stream(chunks, batch=2))
    assert [len(f) for f in flows] == [2, 1]  # the first chunk alone has no pair
    torch.testing.assert_close(torch.cat(flows), reference, rtol=1e-4, atol=1e-4)
    # Windows of one pair each compute the same numbers as one window of all three.
    torch.testing.assert_close(torch.cat(list(engine.windows(frames, batch=1))), reference, rtol=1e-4, atol=1e-4)
    assert list(engine.stream([frames[:1].permute(0, 2, 3, 1).numpy()])) == []


def test_flow_with_grad_keeps_the_graph(engine, frames, reference):
    f = frames[:2].float() / 255
    flow = engine.flow_with_grad(f[:1], f[1:])
    assert flow.requires_grad and flow.shape == (1, 2, 50, 60)
    flow.abs().mean().backward()
    grad = engine.model.dc_conv7.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    engine.model.zero_grad(set_to_none=True)
    torch.testing.assert_close(flow.detach(), reference[:1], rtol=1e-4, atol=1e-4)


def test_weights_file_and_hash(tmp_path, frames):
    torch.manual_seed(3)
    net = PWCNet()
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    eng = FlowEngine(weights=path, device="cpu")
    assert eng.weights_hash == file_hash(path) and len(eng.weights_hash) == 16
    with torch.no_grad():
        ref = net.eval().predict(frames[:1].float() / 255, frames[1:2].float() / 255, scales=eng.scales)
    torch.testing.assert_close(eng(frames[:1], frames[1:2]), ref)
    with pytest.raises(WeightsError, match="no such weights file"):
        FlowEngine(weights=tmp_path / "absent.pt", device="cpu")


def test_bf16_on_cpu_is_close_to_fp32(engine, frames, reference):
    bf = FlowEngine(device="cpu", dtype="bf16")
    assert bf.config()["dtype"] == "bf16"
    ref = reference[:1]
    out = bf(frames[:1], frames[1:2])
    assert out.dtype == torch.float32
    assert (out - ref).abs().mean() < 0.1 * ref.abs().mean() + 0.05


def test_classical_engine():
    frames = drifting(4, 72, 88)
    eng = FlowEngine(name="dis")
    assert eng.model is None and eng.weights_hash.startswith("opencv-")
    flow = eng(frames[:-1], frames[1:])
    assert flow.shape == (3, 2, 72, 88)
    # the pattern drifts right by 2 px per frame: DIS recovers it in the interior
    inner = flow[:, :, 16:-16, 16:-16]
    assert abs(inner[:, 0].median().item() - 2.0) < 0.3 and inner[:, 1].abs().median() < 0.3
    assert eng.clip_flow(frames).shape == (3, 2, 72, 88)
    torch.testing.assert_close(eng(frames[:1].float() / 255, frames[1:2].float() / 255), flow[:1])


def test_errors(engine, frames):
    with pytest.raises(FlowEngineError, match="unknown flow engine 'raft'"):
        FlowEngine(name="raft")
    with pytest.raises(FlowEngineError, match="fp16.*CUDA"):
        FlowEngine(device="cpu", dtype="fp16")
    with pytest.raises(FlowEngineError, match="unknown dtype"):
        FlowEngine(device="cpu", dtype="int8")
    with pytest.raises(FlowEngineError, match="takes no weights"):
        FlowEngine(name="dis", weights="x.pt")
    if not torch.cuda.is_available():
        with pytest.raises(FlowEngineError, match="CUDA is not available"):
            FlowEngine(device="cuda")
    with pytest.raises(FlowInputError, match="sizes differ"):
        engine(frames[:1], frames[:1, :, :40])
    with pytest.raises(FlowInputError, match="RGB"):
        engine(frames[:1, :2], frames[:1, :2])
    with pytest.raises(FlowInputError, match="uint8.*float"):
        engine(frames[:1].int(), frames[:1].int())


def test_bench_cli_runs_and_writes_json(tmp_path, capsys):
    import json

    from flow_engine.__main__ import main

    out = tmp_path / "bench.json"
    args = ["bench", "--size", "64x64", "--batch", "1", "--iters", "1", "--warmup", "0", "--device", "cpu", "--json", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["engine"]["pairs_per_s"] > 0 and result["engine"]["peak_rss_mib"] > 0
    levels = [r["level"] for r in result["cost_volume"]]
    assert levels == [6, 5, 4, 3, 2]
    assert result["cost_volume"][-1]["shape"] == [1, 32, 16, 16]
    assert all(r["torch_fwd_ms"] > 0 and r["torch_fwd_bwd_ms"] > 0 for r in result["cost_volume"])
    assert "PyTorch path only" in capsys.readouterr().out
    # Clip mode: the pair path and the clip path timed in one run, reported side by side.
    args = ["bench", "--engine", "dis", "--size", "64x64", "--clip", "4", "--iters", "1", "--warmup", "0",
            "--skip-cost-volume", "--skip-engine", "--json", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["pairs"]["pairs_per_s"] > 0 and result["clip"]["pairs_per_s"] > 0 and "cost_volume" not in result
    assert result["engine_config"]["name"] == "dis"
    assert main(["bench", "--clip", "1"]) == 2
    # sizes an engine cannot take, and memory the machine does not have: refused before a frame is allocated
    capsys.readouterr()
    assert main(["bench", "--engine", "dis", "--size", "1x1"]) == 2
    assert "error: dis needs frames of at least 16 px a side, got 1x1" in capsys.readouterr().err
    assert main(["bench", "--size", "100000x100000", "--device", "cpu"]) == 2
    assert "100000x100000 frames need about" in capsys.readouterr().err
    assert main(["bench", "--size", "20000x20000", "--skip-engine", "--device", "cpu"]) == 2  # the cost volume alone
    assert "GiB is available" in capsys.readouterr().err


@pytest.mark.gpu
def test_gpu_engine_devices_and_precisions(frames):
    fp32 = FlowEngine(device="cuda", dtype="fp32")
    auto = FlowEngine(device="cuda")
    assert auto.dtype == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    host = fp32(frames[:-1], frames[1:])
    assert host.device.type == "cpu" and host.shape == (3, 2, 50, 60)
    on_gpu = fp32(frames[:-1].cuda(), frames[1:].cuda())
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), host)
    cpu = FlowEngine(device="cpu")(frames[:-1], frames[1:])
    torch.testing.assert_close(host, cpu, rtol=1e-3, atol=1e-3)
    low = auto.clip_flow(frames.cuda())
    assert low.dtype == torch.float32 and low.device.type == "cuda"
    assert (low.cpu() - host).abs().mean() < 0.1 * host.abs().mean() + 0.05


def test_classical_workers_give_the_same_flows_in_order():
    frames = drifting(6, 48, 64)
    one = FlowEngine(name="dis_fine")
    two = FlowEngine(name="dis_fine", workers=2)
    torch.testing.assert_close(two(frames[:-1], frames[1:]), one(frames[:-1], frames[1:]), rtol=0, atol=1e-4)
    torch.testing.assert_close(two.clip_flow(frames), one.clip_flow(frames), rtol=0, atol=1e-4)
    with pytest.raises(FlowEngineError, match="workers"):
        FlowEngine(name="dis", workers=0)


def test_snippets_flow_matches_pairs_for_learned_and_classical(engine, frames, reference):
    snippets = torch.stack([frames[:3], frames[1:4]])  # two overlapping 3-frame snippets
    flows = engine.snippets_flow(snippets)
    assert flows.shape == (2, 2, 2, 50, 60)
    torch.testing.assert_close(flows[0], reference[:2], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(flows[1], reference[1:], rtol=1e-4, atol=1e-4)
    dis = FlowEngine(name="dis")
    torch.testing.assert_close(dis.snippets_flow(snippets)[1], dis(frames[1:3], frames[2:4]))


def test_engine_identity_is_the_built_engines_config_without_building_it(tmp_path):
    from flow_engine.engine import engine_identity

    for name in ("pwcnet", "dis"):
        built = FlowEngine(name=name, device="cpu").config()
        assert engine_identity(name) == {k: v for k, v in built.items() if k != "dtype"}
    torch.save(PWCNet().state_dict(), tmp_path / "w.pt")
    assert engine_identity("pwcnet", tmp_path / "w.pt")["weights_hash"] == file_hash(tmp_path / "w.pt")
    raft = engine_identity("raft_small", flow_updates=4)
    assert raft["flow_updates"] == 4 and raft["weights_hash"].startswith("torchvision-raft_small")
    with pytest.raises(WeightsError, match="no such weights file"):
        engine_identity("raft_small", tmp_path / "absent.pth")


def test_the_old_model_keyword_still_names_the_engine_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match=r"FlowEngine\(model=...\) is deprecated: use FlowEngine\(name=...\)"):
        old = FlowEngine(model="dis")
    assert old.name == "dis" and old.config() == FlowEngine(name="dis").config() == FlowEngine("dis").config()


@pytest.mark.parametrize("model, smallest", [("dis", 16), ("dis_fine", 12), ("farneback", 1), ("tvl1", 1)])
def test_each_engine_takes_frames_from_its_smallest_side_and_refuses_smaller(model, smallest):
    """The minimum sides were found by trying every size (classical.MIN_SIDE); below them OpenCV raises
    cv2.error or, for DIS at 12x64, crashes the process: refused first, as a FlowInputError."""
    engine = FlowEngine(model)
    g = torch.Generator().manual_seed(0)
    for h, w in {(smallest, smallest), (smallest, 64), (64, smallest), (smallest, 700)}:
        a, b = (torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=g) for _ in range(2))
        flow = engine(a, b)
        assert flow.shape == (1, 2, h, w) and torch.isfinite(flow).all()
    if smallest > 1:
        for h, w in ((smallest - 1, smallest - 1), (smallest - 1, 500)) + (((12, 64),) if model == "dis" else ()):
            a = torch.zeros(1, 3, h, w, dtype=torch.uint8)
            with pytest.raises(FlowInputError, match=rf"{model} needs frames of at least {smallest} px a side, got {w}x{h}"):
                engine(a, a)
        with pytest.raises(ValueError, match=f"at least {smallest} px"):  # the function the worker processes run
            from flow_engine.models.classical import classical_flow

            classical_flow(model, np.zeros((smallest - 1, 64), np.uint8), np.zeros((smallest - 1, 64), np.uint8))


def test_memory_is_checked_before_frames_of_any_size_are_allocated(monkeypatch):
    engine = FlowEngine("pwcnet", device="cpu")
    with pytest.raises(FlowInputError, match=r"1 pair\(s\) of 100000x100000 frames need about \d+\.\d GiB with pwcnet on cpu"):
        engine.check_size(100000, 100000)
    # the estimate grows with the padded frame; a pass within what is free is allowed
    assert engine.memory_needed(436, 1024) == 448 * 1024 * pwcnet_mod.BYTES_PER_PIXEL
    monkeypatch.setattr(engine_mod, "available_memory", lambda device: 2 * 448 * 1024 * pwcnet_mod.BYTES_PER_PIXEL)
    assert engine.pairs_per_batch(436, 1024) >= 3
    engine.check_size(436, 1024, batch=2)
    with pytest.raises(FlowInputError, match="3 pair"):
        engine.check_size(436, 1024, batch=3)
    with pytest.raises(FlowInputError, match="2 pair"):
        engine.check_size(436, 1024, batch=2, held_bytes=1 << 20)  # frames the caller holds count too
    assert engine_mod.available_memory(torch.device("cpu")) > 0


def test_each_kind_of_engine_estimates_its_own_memory():
    """Networks by their padded frame (PWC-Net to multiples of 64; RAFT to 8, at least 128 px, plus its
    correlation pyramid); a classical method by its frame, one pair per worker process at a time."""
    from flow_engine.models import classical, raft

    assert FlowEngine("pwcnet", device="cpu").memory_needed(10, 70, pairs=3) == 3 * 64 * 128 * pwcnet_mod.BYTES_PER_PIXEL
    padded = 128 * 136  # 100x130 -> 128x136
    assert raft.RAFT.memory_needed(100, 130, 2) == int(2 * (padded * raft.BYTES_PER_PIXEL + raft.CORR_BYTES * (padded / 64) ** 2))
    for workers in (1, 3):
        dis = FlowEngine("dis", workers=workers)
        assert dis.memory_needed(100, 130, pairs=8) == workers * 100 * 130 * classical.BYTES_PER_PIXEL
        assert dis.min_side == engine_mod.min_side("dis") == classical.MIN_SIDE["dis"] == 16
    assert engine_mod.min_side("pwcnet") == engine_mod.min_side("raft_small") == 1


def test_available_memory_respects_a_containers_limit_and_counts_its_page_cache_free(tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    assert engine_mod.available_memory(cpu) > 0  # this machine's
    (tmp_path / "meminfo").write_text(f"MemTotal: {16 << 20} kB\nMemAvailable: {10 << 20} kB\n")
    (tmp_path / "memory.max").write_text(f"{4 << 30}\n")
    (tmp_path / "memory.current").write_text(f"{3 << 30}\n")
    (tmp_path / "memory.stat").write_text(f"anon {1 << 30}\nfile {2 << 30}\nkernel 0\n")
    monkeypatch.setattr(engine_mod, "MEMINFO", tmp_path / "meminfo")
    monkeypatch.setattr(engine_mod, "CGROUP", tmp_path)
    assert engine_mod.available_memory(cpu) == 3 << 30  # 4 GB limit - 3 GB used + 2 GB of page cache
    (tmp_path / "memory.max").write_text("max\n")
    assert engine_mod.available_memory(cpu) == 10 << 30  # no limit: the kernel's MemAvailable
