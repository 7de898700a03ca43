"""Dataset behaviour: consistent crop/flip of frames and flow, bad videos skipped and counted, config errors."""
from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
from tiny_videos import make_dataset, render, write_mp4

from actionflow.annotations import AnnotationError, Sample
from actionflow.clips import BadVideo, Clip, VideoClips, _crop_resize, collate, crop_box
from actionflow.data import ActionDataModule, DataConfigError
from flow_engine.io.video import VideoError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("tiny"), per_class=4, frames=12, size=32, classes=("right", "left"))
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    write_mp4(root / "one_frame.mp4", render("right", frames=1, size=32))
    return root


RGB = dict(flow_source="cache", num_segments=3, flow_length=5, test_clips=1)  # VideoClips settings the RGB tests do not vary


def _item(H=8, W=8, L=2):
    rgb = torch.arange(H * W, dtype=torch.uint8).view(1, 1, H, W).expand(2, 3, H, W).contiguous()
    flow = torch.zeros(2, 2 * L, H, W)
    flow[:, 0::2] = 3.0  # x
    flow[:, 1::2] = -1.0  # y
    flow[:, :, :, : W // 2] += 0.5  # left half differs, so a flip is visible
    return {"rgb": rgb, "flow": flow}


def _clips(**kw):
    return VideoClips([], "train", mode="two_stream", flow_source="cache", num_segments=3, flow_length=2, test_clips=1,
                      crop_size=(8, 8), **kw)


def _augment(ds: VideoClips, item: dict, rng: np.random.Generator, size=(8, 8)) -> dict:
    """The dataset's crop of an item: its box for a frame of ``size``, applied to every tensor."""
    box, flip = ds._box(size, rng)
    return {k: crop_box(v, box, flip, ds.crop_size, flow=k == "flow") for k, v in item.items()}


def test_flip_mirrors_frames_and_negates_x_flow():
    ds = _clips(scales=(1.0,), flip=True)
    item = _item()
    flipped = None
    for seed in range(20):
        out = _augment(ds, item, np.random.default_rng(seed))
        if not torch.equal(out["rgb"], item["rgb"]):
            flipped = out
            break
    assert flipped is not None, "no flip in 20 draws"
    assert torch.equal(flipped["rgb"], item["rgb"].flip(-1))
    torch.testing.assert_close(flipped["flow"][:, 0::2], -item["flow"][:, 0::2].flip(-1))
    torch.testing.assert_close(flipped["flow"][:, 1::2], item["flow"][:, 1::2].flip(-1))


def test_crop_resize_scales_flow_with_the_resize_factor():
    ds = _clips(scales=(0.5,), flip=False)
    item = _item()
    item["flow"][:] = torch.tensor([3.0, -1.0, 3.0, -1.0]).view(1, 4, 1, 1)
    out = _augment(ds, item, np.random.default_rng(0))
    assert out["rgb"].shape == (2, 3, 8, 8) and out["flow"].shape == (2, 4, 8, 8)
    torch.testing.assert_close(out["flow"][:, 0::2], torch.full((2, 2, 8, 8), 6.0))  # 4 px box -> 8 px: x2
    torch.testing.assert_close(out["flow"][:, 1::2], torch.full((2, 2, 8, 8), -2.0))


def test_eval_takes_the_centre_box_at_the_middle_training_scale():
    # size 8x8, crop 4x6: largest box of the crop's aspect is 5.33x8; at scale 0.875 -> 5x7,
    # centred at rows 1..5, cols 0..6, then resized to 4x6 like a training box
    ds = VideoClips([], "val", mode="rgb", crop_size=(4, 6), **RGB)
    assert ds._box((8, 8), np.random.default_rng(0)) == ((1, 0, 5, 7), False)
    out = _augment(ds, _item(), np.random.default_rng(0))
    assert torch.equal(out["rgb"], _crop_resize(_item()["rgb"][..., 1:6, 0:7], (4, 6)))
    # the usual TSN case is unchanged: 224 of 256 is a plain centre crop
    ds = VideoClips([], "val", mode="rgb", crop_size=(224, 224), **RGB)
    rgb = torch.randint(0, 255, (1, 3, 256, 256), dtype=torch.uint8)
    assert torch.equal(_augment(ds, {"rgb": rgb}, np.random.default_rng(0), (256, 256))["rgb"], rgb[..., 16:240, 16:240])
    # a portrait frame: the box is as wide as the frame, centred vertically
    assert ds._box((400, 256), np.random.default_rng(0))[0] == (88, 16, 224, 224)


def test_online_item_holds_uncropped_snippet_frames_and_the_crop(tiny):
    clip = Clip(Sample(str(tiny / "videos/right/right_0.mp4"), 0), 12, (32, 32))
    ds = VideoClips([clip], "test", mode="two_stream", flow_source="online", num_segments=2, flow_length=3,
                    test_clips=2, crop_size=(24, 24))
    item = ds[0]
    assert item["frames"].shape == (4, 4, 3, 32, 32) and item["frames"].dtype == torch.uint8
    assert item["box"].tolist() == [2, 2, 28, 28] and not bool(item["flip"])  # centre box at scale 0.875
    assert "rgb" not in item and item["label"] == 0


def test_decode_failure_is_dropped_with_a_warning_and_counted(tiny, caplog):
    good = Clip(Sample(str(tiny / "videos/left/left_0.mp4"), 1), 12, (32, 32))
    bad = Clip(Sample(str(tiny / "broken.mp4"), 0), 12, (32, 32))  # passed setup, fails now
    ds = VideoClips([good, bad], "val", mode="rgb", crop_size=(32, 32), **RGB)
    with caplog.at_level(logging.WARNING):
        batch = collate([ds[0], ds[1]])
    assert "broken.mp4" in caplog.text
    assert batch["label"].tolist() == [1] and int(batch["num_dropped"]) == 1
    assert int(collate([None])["num_dropped"]) == 1
    strict = VideoClips([bad], "val", mode="rgb", crop_size=(32, 32), strict=True, **RGB)
    with pytest.raises(VideoError, match="broken.mp4"):
        strict[0]


def test_setup_skips_bad_and_too_short_videos(tiny, caplog):
    lists = tiny / "with_bad.txt"
    lists.write_text((tiny / "train.txt").read_text() + "broken.mp4 0\none_frame.mp4 1\nmissing.mp4 1\n")
    dm = ActionDataModule(root=str(tiny), train_list=str(lists), val_list=str(tiny / "val.txt"),
                          test_list=str(tiny / "test.txt"), mode="flow", flow_source="online", num_workers=0,
                          size=(32, 32), crop_size=(32, 32))
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert len(dm.skipped) == 3
    for name in ("broken.mp4", "one_frame.mp4", "missing.mp4"):
        assert name in caplog.text
    assert "skipped 3 bad video(s)" in caplog.text
    assert len(dm.clips["train"]) == 4 and dm.num_classes == 2 and dm.class_names == ["right", "left"]

    strict = ActionDataModule(root=str(tiny), train_list=str(lists), val_list=str(tiny / "val.txt"),
                              test_list=str(tiny / "test.txt"), mode="flow", flow_source="online", strict=True)
    with pytest.raises(BadVideo, match="one_frame.mp4: only 1 frame"):
        strict.setup("fit")


def test_a_symlink_loop_in_a_list_is_a_named_skip(tiny, tmp_path, caplog):
    loop = tmp_path / "loop.mp4"
    loop.symlink_to(loop.name)
    lists = tmp_path / "train.txt"
    lists.write_text((tiny / "train.txt").read_text().replace("videos/", f"{tiny}/videos/") + f"{loop} 0\n")
    dm = ActionDataModule(root=None, train_list=str(lists), val_list=str(tiny / "val.txt"),
                          test_list=str(tiny / "test.txt"), mode="rgb", num_workers=0, size=(32, 32), crop_size=(32, 32))
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert dm.skipped == [f"{loop}: cannot open (Too many levels of symbolic links)"]
    assert len(dm.clips["train"]) == 4 and str(loop) in caplog.text


def test_a_corrupt_cache_entry_is_recomputed_or_an_error_never_dropped(tiny, tmp_path):
    from actionflow.flow_cache import CachedFlow

    kw = dict(root=str(tiny), train_list=str(tiny / "train.txt"), val_list=str(tiny / "val.txt"),
              test_list=str(tiny / "test.txt"), mode="flow", flow_source="cache", cache_dir=str(tmp_path / "cache"),
              flow_engine="dis", num_workers=0, size=(32, 32), crop_size=(32, 32), num_segments=2, flow_length=3)
    ActionDataModule(**kw).prepare_data()
    dm = ActionDataModule(**kw)
    cache = dm.flow_cache()
    video = dm.splits.train[0].path
    path = cache.path_for(video)
    with CachedFlow(path) as c:
        offset = int(c.index["offset"][2]) + 5
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF  # a flipped payload byte: the entry opens, frame 2 fails its checksum
    path.write_bytes(bytes(data))
    assert cache.lookup(video) is not None and cache.lookup(video, verify=True) is None
    with pytest.raises(DataConfigError, match=r"1 video\(s\) have no usable flow .*corrupt; first: " + re.escape(video)):
        ActionDataModule(**{**kw, "cache_missing": "error"}).prepare_data()
    dm.prepare_data()  # cache_missing: compute
    with CachedFlow(path) as c:
        assert c.num_flows == 11 and c.verify() == []
    dm.setup("fit")
    index = [clip.sample.path for clip in dm.clips["train"]].index(video)
    item = dm.dataset("train")[index]
    assert item is not None and item["flow"].shape == (2, 6, 32, 32)


def test_data_strict_makes_a_video_in_two_splits_an_error(tiny, caplog):
    kw = dict(root=str(tiny), train_list=str(tiny / "train.txt"), val_list=str(tiny / "test.txt"),
              test_list=str(tiny / "test.txt"), mode="rgb", size=(32, 32), crop_size=(32, 32))
    with caplog.at_level(logging.WARNING):
        ActionDataModule(**kw)
    assert "2 video(s) are in more than one of train/val/test" in caplog.text
    with pytest.raises(AnnotationError, match="in more than one of train/val/test.*data.strict is true"):
        ActionDataModule(**kw, strict=True)


def test_bad_settings_fail_before_any_decoding(tiny):
    with pytest.raises(DataConfigError, match="data.flow_source must be one of"):
        ActionDataModule(root=str(tiny), flow_source="disk")
    with pytest.raises(DataConfigError, match="data.train_list: .*nope.txt does not exist"):
        ActionDataModule(train_list=str(tiny / "nope.txt"))
    with pytest.raises(DataConfigError, match="crop_size"):
        ActionDataModule(train_list=str(tiny / "train.txt"), size=(32, 32), crop_size=(64, 64))
    with pytest.raises(DataConfigError, match=r"data.size \[12, 64\]: dis needs frames of at least 16 px a side"):
        ActionDataModule(train_list=str(tiny / "train.txt"), size=(12, 64), crop_size=(12, 12), flow_engine="dis")
    ActionDataModule(train_list=str(tiny / "train.txt"), size=(12, 64), crop_size=(12, 12), flow_engine="dis", mode="rgb")
    with pytest.raises(DataConfigError, match="data.size as a short side must be 8..8192 px, got 100000"):
        ActionDataModule(train_list=str(tiny / "train.txt"), size=100000, crop_size=(64, 64))
    with pytest.raises(DataConfigError, match="data.val_fraction 1.5 and data.test_fraction 0.2 must be fractions"):
        ActionDataModule(root=str(tiny), val_fraction=1.5)
    with pytest.raises(DataConfigError, match=f"data.cache_dir: {tiny / 'train.txt'} is a file, not a folder"):
        ActionDataModule(train_list=str(tiny / "train.txt"), cache_dir=str(tiny / "train.txt"))
    # what one batch of test videos takes, before any decoding: a million clips is an error, not an OOM kill
    with pytest.raises(DataConfigError, match=r"data.test_clips 1000000 x data.num_segments 3 snippets of 6 frames at "
                                              r"data.size \[32, 32\], 1 batch\(es\) at a time, need about [\d.]+ GiB of memory"):
        ActionDataModule(train_list=str(tiny / "train.txt"), size=(32, 32), crop_size=(32, 32), test_clips=1_000_000,
                         num_workers=0)


def test_demo_option_generates_the_bundled_dataset_first(tmp_path):
    root = tmp_path / "demo"
    dm = ActionDataModule(root=str(root), train_list=str(root / "train.txt"), val_list=str(root / "val.txt"),
                          test_list=str(root / "test.txt"), mode="rgb", size=(48, 48), crop_size=(48, 48),
                          demo={"clips_per_class": 5, "frames": 6, "size": 48, "workers": 1})
    assert dm.class_names == ["arm_wave", "spin", "jump", "side_step", "kick", "sway"]
    assert not root.exists()  # nothing written when the module is built: every process of a DDP run builds one
    dm.prepare_data()  # one process per node generates
    assert len(dm.splits.train) + len(dm.splits.val) + len(dm.splits.test) == 30
    other = ActionDataModule(root=str(root), train_list=str(root / "train.txt"), val_list=str(root / "val.txt"),
                             test_list=str(root / "test.txt"), mode="rgb", size=(48, 48), crop_size=(48, 48),
                             demo={"clips_per_class": 5, "frames": 6, "size": 48, "workers": 1})
    other.setup("fit")  # another process: reads what prepare_data wrote
    assert other.class_names == dm.class_names and len(other.clips["train"]) == len(dm.splits.train)
    with pytest.raises(DataConfigError, match="data.demo: .*frames must be >= 2"):
        ActionDataModule(root=str(tmp_path / "x"), demo={"frames": 1})
    with pytest.raises(DataConfigError, match="data.demo needs data.root"):
        ActionDataModule(root=None, demo=True)


def test_demo_is_never_generated_into_a_mistyped_root_given_lists_of_your_own(tiny, tmp_path):
    lists = dict(train_list=str(tiny / "train.txt"), val_list=str(tiny / "val.txt"), test_list=str(tiny / "test.txt"))
    typo = tmp_path / "tinyy"
    with pytest.raises(DataConfigError, match=f"data.root: {typo} does not exist"):
        ActionDataModule(root=str(typo), demo=True, mode="rgb", size=(32, 32), crop_size=(32, 32), **lists)
    with pytest.raises(DataConfigError, match=f"data.train_list: {tmp_path / 'nope.txt'} does not exist"):
        ActionDataModule(root=str(tiny), demo=True, mode="rgb", train_list=str(tmp_path / "nope.txt"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataConfigError, match=f"data.val_list: {empty / 'val.txt'} does not exist"):
        ActionDataModule(root=str(empty), demo=True, mode="rgb", train_list=lists["train_list"], val_list=str(empty / "val.txt"))
    assert not typo.exists() and not any(empty.iterdir())  # nothing generated anywhere


def test_demo_option_leaves_a_folder_of_other_data_alone(tiny):
    before = sorted(p.name for p in tiny.rglob("*"))
    dm = ActionDataModule(root=str(tiny), train_list=str(tiny / "train.txt"), val_list=str(tiny / "val.txt"),
                          test_list=str(tiny / "test.txt"), mode="rgb", size=(32, 32), crop_size=(32, 32), demo=True)
    assert sorted(p.name for p in tiny.rglob("*")) == before and "arm_wave" not in dm.class_names


@pytest.mark.parametrize("key, text, words", [
    ("size", "340x256", "for 340x256 write --data.size '[256, 340]'"),
    ("crop_size", "112x96", "for 112x96 write --data.crop_size '[96, 112]'"),
    ("size", "[340, 256, 3]", "data.size is [H, W] or a short side; got '[340, 256, 3]'"),  # text, but not WxH
])
def test_a_width_x_height_size_is_refused_with_the_form_to_write(tiny, key, text, words):
    with pytest.raises(DataConfigError, match=re.escape(words)):
        ActionDataModule(root=str(tiny), train_list=str(tiny / "train.txt"), **{key: text})



def test_the_old_flow_model_key_still_names_the_flow_engine_with_a_warning(tiny):
    kw = dict(root=str(tiny), train_list=str(tiny / "train.txt"), size=(32, 32), crop_size=(32, 32))
    with pytest.warns(FutureWarning, match="data.flow_model is deprecated: use data.flow_engine"):
        old = ActionDataModule(**kw, flow_model="tvl1")
    assert old.hparams.flow_engine == "tvl1" and "flow_model" not in old.hparams
    assert old.flow_cache().engine_config == ActionDataModule(**kw, flow_engine="tvl1").flow_cache().engine_config
    with pytest.warns(FutureWarning):  # the same engine under both names, or the new one left at its default: fine
        assert ActionDataModule(**kw, flow_engine="tvl1", flow_model="tvl1").hparams.flow_engine == "tvl1"
    with pytest.raises(DataConfigError, match="data.flow_model .* is 'tvl1' but data.flow_engine is 'dis': keep data.flow_engine alone"):
        ActionDataModule(**kw, flow_engine="dis", flow_model="tvl1")  # it silently took tvl1
