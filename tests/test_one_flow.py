"""One flow function: cached and online flow give the network the same input, classify sees what
test_step sees, and videos of every shape (portrait, landscape, square) mix in one dataset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_videos import render, write_mp4

from actionflow.annotations import Sample
from actionflow.classify import classify
from actionflow.clips import Clip, VideoClips, collate
from actionflow.data import ActionDataModule
from actionflow.flow_cache import FlowCache
from actionflow.module import ActionRecognizer
from actionflow.precompute import precompute
from flow_engine import FlowEngine
from flow_engine.io.video import decode_size, probe

pytestmark = pytest.mark.usefixtures("one_thread")

SHORT_SIDE, CROP, BOUND = 48, (32, 32), 20.0


def _moving_video(path: Path, direction: str, height: int, width: int, frames: int = 10) -> Path:
    big = render(direction, frames=frames, size=max(height, width), seed=len(path.name))
    return write_mp4(path, np.ascontiguousarray(big[:, :height, :width]))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> list[Path]:
    """A landscape, a portrait and a square clip (64x96, 96x64, 80x80)."""
    root = tmp_path_factory.mktemp("shapes")
    return [_moving_video(root / "wide.mp4", "right", 64, 96), _moving_video(root / "tall.mp4", "down", 96, 64),
            _moving_video(root / "square.mp4", "left", 80, 80)]


@pytest.fixture(scope="module")
def cache(shapes, tmp_path_factory) -> FlowCache:
    """The clips' DIS flow at short side 48, PNG-coded (lossless: only the 8-bit quantisation differs)."""
    engine = FlowEngine("dis")
    cache = FlowCache(tmp_path_factory.mktemp("cache"), engine.config(), size=SHORT_SIDE, bound=BOUND, codec="png")
    summary = precompute(shapes, cache, engine, batch=4, workers=1, progress=False)
    assert not summary.failed
    return cache


def _clip(video: Path) -> Clip:
    info = probe(video)
    return Clip(Sample(str(video), 0), info.num_frames, decode_size(info.height, info.width, SHORT_SIDE))


def _model(mode: str = "two_stream") -> ActionRecognizer:
    torch.manual_seed(0)
    return ActionRecognizer(num_classes=3, mode=mode, backbone="small_cnn", flow_length=3, flow_engine="dis",
                            crop_size=CROP, flow_bound=BOUND, subtract_camera=False).eval()


def test_cache_keeps_each_video_at_its_own_aspect_ratio(shapes, cache):
    sizes = [cache.open(v).__enter__() for v in shapes]
    assert [(c.height, c.width) for c in sizes] == [(48, 72), (72, 48), (48, 48)]
    assert all(c.header["short_side"] == SHORT_SIDE for c in sizes)
    # a cache at another short side does not take these entries
    other = FlowCache(cache.root, cache.engine_config, size=64, bound=BOUND)
    assert all(other.lookup(v) is None for v in shapes)


@pytest.mark.parametrize("phase", ["val", "train"])
def test_online_and_cached_flow_inputs_agree_element_wise(shapes, cache, phase):
    model = _model("flow")
    clips = [_clip(v) for v in shapes]
    kw = dict(mode="flow", num_segments=2, flow_length=3, test_clips=1, crop_size=CROP, scales=(1.0, 0.875, 0.75))
    cached = VideoClips(clips, phase, flow_source="cache", cache=cache, **kw)
    online = VideoClips(clips, phase, flow_source="online", **kw)
    for i in range(len(clips)):
        torch.manual_seed(i)  # the same snippet starts, box and flip for both
        a = cached[i]
        torch.manual_seed(i)
        b = online[i]
        _, flow = model.inputs(collate([b]))
        assert flow.shape == a["flow"][None].shape == (1, 2, 6, *CROP)
        # 8-bit quantisation: half a step (20/127/2 px) per component, scaled by the resize (<= 72/32)
        # and spread by the bilinear resize; a different flow function would differ by pixels.
        diff = (flow[0] - a["flow"]).abs()
        assert diff.max() <= BOUND / 127 / 2 * 72 / 32 + 1e-4, (shapes[i].name, float(diff.max()))
        assert flow.abs().max() > 0.5  # the clips move: the comparison is not between zeros


def test_batches_mix_portrait_landscape_and_square_online(shapes):
    model = _model()
    online = VideoClips([_clip(v) for v in shapes], "train", mode="two_stream", flow_source="online",
                        num_segments=2, flow_length=3, test_clips=1, crop_size=CROP)
    batch = collate([online[i] for i in range(3)])
    assert isinstance(batch["frames"], list) and [f.shape[-2:] for f in batch["frames"]] == [(48, 72), (72, 48), (48, 48)]
    rgb, flow = model.inputs(batch)
    assert rgb.shape == (3, 2, 3, *CROP) and flow.shape == (3, 2, 6, *CROP)
    out = model(rgb, flow)
    assert out["two_stream"].shape == (3, 3)


def test_classify_gives_the_probabilities_test_step_gives(shapes, cache):
    """classify (online flow) and the test loader (cached flow) at a crop smaller than the decode
    size agree far better than classify would with the old flow function (flow of the cropped frames)."""
    from actionflow.clips import crop_box

    model = _model()
    with torch.no_grad():  # sharper classifiers: a random small CNN barely reacts to its input
        for fc in (model.net.flow.net.fc[1], model.net.rgb.net.fc[1]):
            fc.weight.mul_(300)
    hparams = {"size": SHORT_SIDE, "crop_size": list(CROP), "num_segments": 2, "test_clips": 2}
    for video in shapes:
        clip = _clip(video)
        cached = VideoClips([clip], "test", mode="two_stream", flow_source="cache", cache=cache,
                            num_segments=2, flow_length=3, test_clips=2, crop_size=CROP)
        want = model.predict_proba(collate([cached[0]]))
        got = classify(model, hparams, video)
        assert torch.equal(got["rgb"], want["rgb"][0])  # same frames, same crop: identical
        # The old flow function, flow of the frames cropped and resized first, as a yardstick.
        online = collate([VideoClips([clip], "test", mode="two_stream", flow_source="online", num_segments=2,
                                     flow_length=3, test_clips=2, crop_size=CROP)[0]])
        rgb, _ = model.inputs(online)
        cropped = crop_box(online["frames"][0], online["box"][0].tolist(), False, CROP)
        old_flow = model.flow_engine.snippets_flow(cropped).flatten(1, 2).clamp(-BOUND, BOUND)
        old = model.predict_proba({"rgb": rgb, "flow": old_flow[None]})
        gap_old = float((old["flow"][0] - want["flow"][0]).abs().max())
        gap_new = float((got["flow"] - want["flow"][0]).abs().max())
        assert gap_old > 0.005 and gap_new < gap_old / 3, (video.name, gap_new, gap_old)
        torch.testing.assert_close(got["two_stream"], want["two_stream"][0], atol=0.01, rtol=0)


def test_data_module_takes_a_short_side_and_mixed_shapes(shapes, tmp_path, caplog):
    listing = tmp_path / "train.txt"
    listing.write_text("".join(f"{v} {i % 2}\n" for i, v in enumerate(shapes)))
    dm = ActionDataModule(train_list=str(listing), val_list=str(listing), test_list=str(listing), mode="two_stream",
                          flow_source="cache", cache_dir=str(tmp_path / "cache"), flow_engine="dis", size=SHORT_SIDE,
                          crop_size=[56, 56], num_segments=2, flow_length=3, batch_size=3, num_workers=0)
    dm.prepare_data()
    with caplog.at_level("WARNING"):
        dm.setup()
    assert [c.size for c in dm.clips["train"]] == [(48, 72), (72, 48), (48, 48)]
    assert "decode smaller than the crop 56x56 and are upscaled" in caplog.text  # 48 < 56: said once
    batch = next(iter(dm.train_dataloader()))
    assert batch["rgb"].shape == (3, 2, 3, 56, 56) and batch["flow"].shape == (3, 2, 6, 56, 56)
    with pytest.raises(Exception, match="crop_size must be given"):
        ActionDataModule(train_list=str(listing), size=SHORT_SIDE, crop_size=None)
    with pytest.raises(Exception, match=r"\[H, W\] \(e\.g\. \[256, 340\]\) or one int"):
        ActionDataModule(train_list=str(listing), size=[256, 340, 3])


def test_each_cache_entry_is_opened_once_per_dataset(shapes, cache, monkeypatch):
    import actionflow.clips as clips_module

    opened = []
    real_open = cache.open
    monkeypatch.setattr(cache, "open", lambda video: opened.append(video) or real_open(video))
    clips = VideoClips([_clip(v) for v in shapes], "train", mode="flow", flow_source="cache", cache=cache,
                       num_segments=2, flow_length=3, test_clips=1, crop_size=CROP)
    for _ in range(3):
        for i in range(len(shapes)):
            assert clips[i] is not None
    assert sorted(opened) == sorted(str(v) for v in shapes)  # once each, not once per item
    monkeypatch.setattr(clips_module, "OPEN_ENTRIES", 2)  # a bounded number of open files: the oldest is closed
    clips = VideoClips([_clip(v) for v in shapes], "train", mode="flow", flow_source="cache", cache=cache,
                       num_segments=2, flow_length=3, test_clips=1, crop_size=CROP)
    for i in range(len(shapes)):
        clips[i]
    assert len(clips._entries) == 2


def test_reverse_time_known_answer():
    from actionflow.clips import reverse_time

    flow = torch.arange(8.0).view(1, 4, 1, 2)  # one snippet of L=2 flows: (x1, y1) = (0..1, 2..3), (x2, y2) = (4..5, 6..7)
    assert reverse_time(flow)[0, :, 0].tolist() == [[-4, -5], [-6, -7], [-0, -1], [-2, -3]]


def test_snippets_played_backwards_agree_between_cache_and_online(shapes, cache):
    from actionflow.clips import reverse_time

    model = _model("flow")
    clips = [_clip(shapes[0])]
    kw = dict(mode="flow", num_segments=2, flow_length=3, test_clips=1, crop_size=CROP)
    cached = VideoClips(clips, "train", flow_source="cache", cache=cache, reverse=True, **kw)
    online = VideoClips(clips, "train", flow_source="online", reverse=True, **kw)
    forwards = VideoClips(clips, "train", flow_source="cache", cache=cache, **kw)
    backwards = 0
    for seed in range(10):
        torch.manual_seed(seed)
        a = cached[0]["flow"]
        torch.manual_seed(seed)
        _, b = model.inputs(collate([online[0]]))
        torch.manual_seed(seed)
        c = forwards[0]["flow"]  # the same snippets, box and flip, played forwards
        if torch.equal(a, c):
            continue
        backwards += 1
        assert torch.equal(a, reverse_time(c))
        # online flow of the frames in reverse order: the same motion, to DIS's asymmetry and the quantisation,
        # and far from the flow played forwards
        assert (b[0] - a).abs().mean() < 0.25 * a.abs().mean() < 0.25 * (b[0] - c).abs().mean()
        assert a.abs().mean() > 0.2
    assert 2 <= backwards <= 8  # about half of the draws
    assert not VideoClips(clips, "val", flow_source="cache", cache=cache, reverse=True, **kw).reverse
