"""The procedural flow generator: exact ground truth, reproducibility, displacement range."""
import pytest
import torch
import torch.nn.functional as F

from flow_engine.data.synthetic import SyntheticFlow, gaussian_blur


pytestmark = pytest.mark.usefixtures("one_thread")


def backward_warp(img2: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """img2 sampled at p + flow(p): frame 2 brought back onto frame 1 (bilinear, pixel centres)."""
    B, _, H, W = img2.shape
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    gx = (xs + flow[:, 0] + 0.5) / W * 2 - 1
    gy = (ys + flow[:, 1] + 0.5) / H * 2 - 1
    return F.grid_sample(img2, torch.stack([gx, gy], -1), mode="bilinear", align_corners=False)


def test_ground_truth_flow_warps_frame2_onto_frame1():
    gen = SyntheticFlow(80, 112, seed=3, photometric=False, noise=False, blur=False)
    r = gen.render(4)
    err = (backward_warp(r.img2, r.flow) - r.img1).abs().mean(1)
    no_motion = (r.img2 - r.img1).abs().mean(1)
    vis = r.visible
    assert 0.3 < vis.float().mean() < 1.0  # there are occlusions, and most pixels are visible
    assert no_motion[vis].mean() > 0.05  # the frames really differ
    # Away from occlusions the warped frame 2 equals frame 1 up to interpolation at edges.
    assert err[vis].mean() < 0.15 * no_motion[vis].mean()
    assert err[vis].median() < 0.01
    # Occluded pixels do not warp back: their error is far above the visible ones'.
    assert err[~vis].mean() > 3 * err[vis].mean()


def test_flow_is_the_top_layer_motion_and_layers_are_ordered():
    gen = SyntheticFlow(64, 64, seed=1, num_layers=(3, 3), photometric=False, noise=False, blur=False)
    r = gen.render(2)
    assert r.layer1.min() >= 0 and r.layer1.max() <= 3
    for b in range(2):
        # Within one layer the flow is an affine function of the position: its second differences vanish.
        for k in r.layer1[b].unique():
            mask = r.layer1[b] == k
            inner = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1]
            d2 = r.flow[b, :, 2:, 1:-1] - 2 * r.flow[b, :, 1:-1, 1:-1] + r.flow[b, :, :-2, 1:-1]
            if inner.any():
                assert d2[:, inner].abs().max() < 1e-2


def test_same_seed_same_batch_other_seed_other_batch():
    a = SyntheticFlow(64, 64, seed=7).sample(2)
    b = SyntheticFlow(64, 64, seed=7).sample(2)
    c = SyntheticFlow(64, 64, seed=8).sample(2)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])
    # An explicit seed makes the batch independent of the generator's state.
    gen = SyntheticFlow(64, 64, seed=0)
    first = gen.sample(1, seed=123)
    gen.sample(1)
    assert torch.equal(first[2], gen.sample(1, seed=123)[2])


def test_displacements_from_subpixel_to_over_100px_by_default():
    gen = SyntheticFlow(96, 96, seed=0)
    _, _, flow, valid = gen.sample(8)
    mag = flow.norm(dim=1)
    assert valid.all()
    assert mag.max() > 100
    assert (mag < 1).float().mean() > 0.01
    # Magnitudes are heavy-tailed: the median is a few pixels.
    assert 0.5 < mag.median() < 30


def test_small_max_displacement_keeps_motion_small():
    gen = SyntheticFlow(96, 96, seed=0, max_displacement=2.0)
    _, _, flow, _ = gen.sample(4)
    assert torch.quantile(flow.norm(dim=1).flatten(), 0.99) < 4.0


def test_images_in_range_and_shapes():
    img1, img2, flow, valid = SyntheticFlow(64, 128, seed=2).sample(3)
    assert img1.shape == img2.shape == (3, 3, 64, 128)
    assert flow.shape == (3, 2, 64, 128) and valid.shape == (3, 64, 128)
    assert img1.min() >= 0 and img1.max() <= 1 and img1.dtype == torch.float32
    assert img1.std() > 0.05  # textured, not flat


def test_blur_keeps_constant_images_and_mean():
    img = torch.rand(2, 3, 16, 16)
    out = gaussian_blur(img, torch.tensor([0.0, 1.0]))
    assert torch.allclose(out[0], img[0], atol=1e-5)
    assert out[1].std() < img[1].std()
    assert torch.allclose(gaussian_blur(torch.full((1, 3, 8, 8), 0.3), torch.tensor([1.0])), torch.full((1, 3, 8, 8), 0.3), atol=1e-6)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="at least 8x8"):
        SyntheticFlow(4, 64)
    with pytest.raises(ValueError, match="max_displacement"):
        SyntheticFlow(64, 64, min_displacement=5, max_displacement=1)
    with pytest.raises(ValueError, match="batch"):
        SyntheticFlow(64, 64).sample(0)
