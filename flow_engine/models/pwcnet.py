"""PWC-Net (Sun et al., "PWC-Net: CNNs for Optical Flow Using Pyramid, Warping, and Cost Volume",
CVPR 2018), the ``pwc_dc_net`` variant with the dilated context network.

The blocks follow the paper: a 6-level *feature pyramid extractor* shared by both frames, and
from the coarsest level down to level 2 a *warping layer* (frame-2 features warped by the
upsampled flow), a *cost volume layer* (correlation, max displacement 4) and a densely connected
*optical flow estimator*; a dilated *context network* refines the level-2 flow.

Parameter names and shapes are those of the official NVlabs release (``conv1a.0.weight`` ...,
``predict_flow6.weight``, ``dc_conv7.weight``), so the official ``pwc_net.pth.tar`` loads as it
is; :func:`load_pwcnet_state_dict` also renames the keys of the popular sniklaus/pytorch-pwc
port and unwraps ptlflow / Lightning checkpoints.

Units: inputs are RGB in [0,1], [B,3,H,W] with H, W multiples of 64 for :meth:`PWCNet.forward`;
its flows are in the official units (full-resolution pixels / 20). :meth:`PWCNet.predict`
takes any size and returns pixels at full resolution.
"""
from __future__ import annotations

import functools
import logging
import math
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from flow_engine.checkpoints import WeightsError, load_weights_only
from flow_engine.errors import FlowEngineError
from flow_engine.models.correlation import correlation

log = logging.getLogger(__name__)

PYRAMID_CHANNELS = (16, 32, 64, 96, 128, 196)  # levels 1..6
ESTIMATOR_CHANNELS = (128, 128, 96, 64, 32)  # dense layers of every flow estimator
MAX_DISPLACEMENT = 4
# Flow at level l+1 is upsampled to level l in "/20 units at full resolution" and must be
# turned into pixels at level l's resolution before warping: 20 / 2^l.
WARP_SCALES = {5: 0.625, 4: 1.25, 3: 2.5, 2: 5.0}
MULTIPLE = 64  # 6 stride-2 levels
# Peak memory of one fp32 forward pass per padded input pixel, with margin: ~630 B measured on the CPU
# (`bench --batch 1 --skip-cost-volume`, 256x256 against 1024x512).
BYTES_PER_PIXEL = 1024


class FlowInputError(FlowEngineError):
    """Frames that PWC-Net cannot take (wrong shape, channels, mismatched pair)."""


def _conv(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """3x3 convolution + LeakyReLU(0.1); a Sequential so keys read ``name.0.weight`` as upstream."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=True),
        nn.LeakyReLU(0.1),
    )


def _predict_flow(c_in: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, 2, 3, stride=1, padding=1, bias=True)


def _deconv(c_in: int) -> nn.ConvTranspose2d:
    """4x4 stride-2 transposed convolution to 2 channels (doubles H and W)."""
    return nn.ConvTranspose2d(c_in, 2, 4, stride=2, padding=1, bias=True)


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward-warp ``x`` [B,C,H,W] by ``flow`` [B,2,H,W] (pixels): out(p) = x(p + flow(p)).

    Bilinear sampling; as in the official code, every output pixel whose bilinear footprint is
    not fully inside the frame is set to zero (the sampled "all ones" mask must stay ~1).
    """
    B, _, H, W = x.shape
    ys, xs = torch.meshgrid(
        torch.arange(H, device=x.device, dtype=torch.float32),
        torch.arange(W, device=x.device, dtype=torch.float32),
        indexing="ij",
    )
    gx = (xs + flow[:, 0].float()) * (2.0 / max(W - 1, 1)) - 1.0
    gy = (ys + flow[:, 1].float()) * (2.0 / max(H - 1, 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    ones = torch.ones((B, 1, H, W), device=x.device, dtype=torch.float32)
    mask = F.grid_sample(ones, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return (out * (mask >= 0.9999)).to(x.dtype)


class PWCNet(nn.Module):
    """PWC-Net with the context network; see the module docstring for units and conventions.

    ``forward(img1, img2)`` returns ``[flow6, flow5, flow4, flow3, flow2]``, ``flow_l`` of shape
    [B,2,H/2^l,W/2^l] in full-resolution pixels / 20 (``FLOW_SCALE``); flow2 includes the
    context-network residual. The official weights expect BGR, so ``forward`` flips the
    RGB input (``bgr=True``); callers always pass RGB.
    """

    FLOW_SCALE = 20.0

    def __init__(self, max_displacement: int = MAX_DISPLACEMENT, bgr: bool = True, corr_backend: str = "auto"):
        super().__init__()
        self.max_displacement = max_displacement
        self.bgr = bgr
        self.corr_backend = corr_backend
        c1, c2, c3, c4, c5, c6 = PYRAMID_CHANNELS

        # Feature pyramid extractor: per level a stride-2 conv then two convs. Level 6 names its
        # layers conv6aa/conv6a/conv6b (in that order), as the official release does.
        self.conv1a, self.conv1aa, self.conv1b = _conv(3, c1, 2), _conv(c1, c1), _conv(c1, c1)
        self.conv2a, self.conv2aa, self.conv2b = _conv(c1, c2, 2), _conv(c2, c2), _conv(c2, c2)
        self.conv3a, self.conv3aa, self.conv3b = _conv(c2, c3, 2), _conv(c3, c3), _conv(c3, c3)
        self.conv4a, self.conv4aa, self.conv4b = _conv(c3, c4, 2), _conv(c4, c4), _conv(c4, c4)
        self.conv5a, self.conv5aa, self.conv5b = _conv(c4, c5, 2), _conv(c5, c5), _conv(c5, c5)
        self.conv6aa, self.conv6a, self.conv6b = _conv(c5, c6, 2), _conv(c6, c6), _conv(c6, c6)

        # Optical flow estimators, densely connected: each conv's output is concatenated in
        # front of its input. Input at level 6: the cost volume; below: cost volume, frame-1
        # features, upsampled flow and upsampled features (2 + 2 channels).
        nd = (2 * max_displacement + 1) ** 2
        for level in (6, 5, 4, 3, 2):
            c_in = nd if level == 6 else nd + PYRAMID_CHANNELS[level - 1] + 4
            for i, c_out in enumerate(ESTIMATOR_CHANNELS):
                setattr(self, f"conv{level}_{i}", _conv(c_in, c_out))
                c_in += c_out
            setattr(self, f"predict_flow{level}", _predict_flow(c_in))
            if level > 2:
                setattr(self, f"deconv{level}", _deconv(2))
                setattr(self, f"upfeat{level}", _deconv(c_in))

        # Context network: dilated convs (1, 2, 4, 8, 16, 1) on the last estimator features;
        # dc_conv7 predicts a residual added to flow2.
        self.dc_conv1 = _conv(c_in, 128, dilation=1)
        self.dc_conv2 = _conv(128, 128, dilation=2)
        self.dc_conv3 = _conv(128, 128, dilation=4)
        self.dc_conv4 = _conv(128, 96, dilation=8)
        self.dc_conv5 = _conv(96, 64, dilation=16)
        self.dc_conv6 = _conv(64, 32, dilation=1)
        self.dc_conv7 = _predict_flow(32)

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in")
                nn.init.zeros_(m.bias)

    # --- blocks ----------------------------------------------------------------------------
    def feature_pyramid(self, img: torch.Tensor) -> list[torch.Tensor]:
        """Features of levels 1..6 (index 0 = level 1, stride 2; index 5 = level 6, stride 64)."""
        feats = []
        x = img
        for names in (("1a", "1aa", "1b"), ("2a", "2aa", "2b"), ("3a", "3aa", "3b"),
                      ("4a", "4aa", "4b"), ("5a", "5aa", "5b"), ("6aa", "6a", "6b")):
            for n in names:
                x = getattr(self, f"conv{n}")(x)
            feats.append(x)
        return feats

    def cost_volume(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(correlation(f1, f2, self.max_displacement, self.corr_backend), 0.1)

    def flow_estimator(self, level: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense estimator of ``level``: returns (flow in /20 units, the features it was predicted from)."""
        for i in range(len(ESTIMATOR_CHANNELS)):
            x = torch.cat((getattr(self, f"conv{level}_{i}")(x), x), dim=1)
        return getattr(self, f"predict_flow{level}")(x), x

    def context_network(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 7):
            x = getattr(self, f"dc_conv{i}")(x)
        return self.dc_conv7(x)

    # --- forward ---------------------------------------------------------------------------
    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> list[torch.Tensor]:
        """Flows [flow6, flow5, flow4, flow3, flow2] (full-res pixels / 20) for RGB [0,1] frames [B,3,H,W]."""
        check_pair(img1, img2, multiple=MULTIPLE)
        if self.bgr:
            img1, img2 = img1.flip(1), img2.flip(1)
        # One pass through the shared pyramid for both frames.
        pyr = self.feature_pyramid(torch.cat((img1, img2), dim=0))
        B = img1.shape[0]
        return self.decode([p[:B] for p in pyr], [p[B:] for p in pyr])

    def decode(self, feats1: list[torch.Tensor], feats2: list[torch.Tensor]) -> list[torch.Tensor]:
        """Flows [flow6 .. flow2] (pixels / 20) from the two frames' pyramids (levels 1..6, as
        :meth:`feature_pyramid` returns them): cost volumes, warping, estimators, context."""
        flows = []
        x = self.cost_volume(feats1[5], feats2[5])
        flow, x = self.flow_estimator(6, x)
        flows.append(flow)
        for level in (5, 4, 3, 2):
            up_flow = getattr(self, f"deconv{level + 1}")(flow)
            up_feat = getattr(self, f"upfeat{level + 1}")(x)
            f1, f2 = feats1[level - 1], feats2[level - 1]
            warped = warp(f2, up_flow * WARP_SCALES[level])
            corr = self.cost_volume(f1, warped)
            x = torch.cat((corr, f1, up_flow.to(f1.dtype), up_feat.to(f1.dtype)), dim=1)
            flow, x = self.flow_estimator(level, x)
            flows.append(flow)
        flows[-1] = flows[-1] + self.context_network(x)
        return flows

    @staticmethod
    def memory_needed(height: int, width: int, pairs: int = 1) -> int:
        """Bytes ``pairs`` pairs of ``height`` x ``width`` frames take in one fp32 pass (an estimate with margin;
        the full-size pass of the coarse-to-fine ``scales`` is the largest)."""
        Hp, Wp = padded_size(height, width, MULTIPLE)
        return pairs * Hp * Wp * BYTES_PER_PIXEL

    def predict(self, img1: torch.Tensor, img2: torch.Tensor, size_mode: str = "pad",
                scales: tuple[float, ...] = (1.0,)) -> torch.Tensor:
        """Flow [B,2,H,W] in pixels from frame 1 to frame 2, for RGB [0,1] frames of any size.

        Frames whose sides are not multiples of 64 are brought there by ``size_mode``: "pad"
        (replicate-pad bottom/right, flow cropped back exactly) or "resize" (bilinear resize,
        flow resized back and u, v rescaled by W/W', H/H'). Greyscale [B,1,H,W] frames are
        repeated to 3 channels. Frames smaller than 64 px in a side are padded up to 64 (they
        work, but there is little for a 6-level pyramid to see).

        ``scales``: the frame sizes the network runs at, as factors of H, W, coarse to fine (see
        :func:`check_scales`). The first gives a flow; each later one estimates what is left on
        frame 2 warped by the flow so far, and adds it. A coarse first pass brings long
        displacements within reach of the cost volume's few pixels; the fine pass restores detail.
        """
        img1, img2 = as_rgb(img1), as_rgb(img2)
        check_pair(img1, img2)
        scales = check_scales(scales)
        flow = self._predict_once(scale_frames(img1, scales[0]), scale_frames(img2, scales[0]), size_mode)
        return self._refine(flow, img1, img2, scales[1:], size_mode)

    def _predict_once(self, img1: torch.Tensor, img2: torch.Tensor, size_mode: str = "pad") -> torch.Tensor:
        H, W = img1.shape[-2:]
        if size_mode == "pad":
            x1, x2 = pad_to_multiple(img1), pad_to_multiple(img2)
        elif size_mode == "resize":
            x1, x2 = resize_to_multiple(img1), resize_to_multiple(img2)
        else:
            raise ValueError(f"size_mode must be 'pad' or 'resize', got {size_mode!r}")
        flow2 = self(x1, x2)[-1].float()
        flow = self.FLOW_SCALE * F.interpolate(flow2, scale_factor=4, mode="bilinear", align_corners=False)
        return unpad(flow, (H, W)) if size_mode == "pad" else resize_flow(flow, (H, W))

    def _refine(self, flow: torch.Tensor, img1: torch.Tensor, img2: torch.Tensor, scales: tuple[float, ...],
                size_mode: str = "pad") -> torch.Tensor:
        """``flow`` [B,2,h,w] px between full-size frames ``img1``, ``img2`` refined at each of ``scales``
        (frame 2 warped by the flow so far, the residual added); returned at the frames' size."""
        for s in scales:
            a, b = scale_frames(img1, s), scale_frames(img2, s)
            init = resize_flow(flow, tuple(a.shape[-2:]))
            flow = init + self._predict_once(a, warp_frame(b, init), size_mode)
        return resize_flow(flow, tuple(img1.shape[-2:]))

    def predict_clip(self, frames: torch.Tensor, scales: tuple[float, ...] = (1.0,)) -> torch.Tensor:
        """Flows [T-1,2,H,W] px between consecutive RGB [0,1] frames [T,3,H,W] of any size.

        Each frame's feature pyramid is computed once and serves as frame 2 of one pair and
        frame 1 of the next: the same numbers as :meth:`predict` on the pairs, with about half
        the pyramid work (at the first of ``scales``; later scales see warped frames, pair by
        pair). Several clips at once: :meth:`predict_clips`.
        """
        return self.predict_clips(frames[None], scales)[0]

    def predict_clips(self, clips: torch.Tensor, scales: tuple[float, ...] = (1.0,)) -> torch.Tensor:
        """Flows [N,T-1,2,H,W] px within each of N clips of RGB [0,1] frames [N,T,3,H,W] (T >= 2)."""
        if clips.dim() != 5 or clips.shape[1] < 2 or clips.shape[2] not in (1, 3):
            raise FlowInputError(f"clips must be [N,T,3,H,W] with T >= 2, got shape {tuple(clips.shape)}")
        scales = check_scales(scales)
        N, T = clips.shape[:2]
        frames = as_rgb(clips.flatten(0, 1))
        x = scale_frames(frames, scales[0])
        h, w = x.shape[-2:]
        x = pad_to_multiple(x)
        if self.bgr:
            x = x.flip(1)
        pyr = [p.unflatten(0, (N, T)) for p in self.feature_pyramid(x)]
        flow2 = self.decode([p[:, :-1].flatten(0, 1) for p in pyr], [p[:, 1:].flatten(0, 1) for p in pyr])[-1].float()
        flow = unpad(self.FLOW_SCALE * F.interpolate(flow2, scale_factor=4, mode="bilinear", align_corners=False), (h, w))
        frames = frames.unflatten(0, (N, T))
        flow = self._refine(flow, frames[:, :-1].flatten(0, 1), frames[:, 1:].flatten(0, 1), scales[1:])
        return flow.unflatten(0, (N, T - 1))

    @classmethod
    def from_weights(cls, path: str | Path, **kwargs) -> "PWCNet":
        """A PWCNet with the weights of ``path`` (any layout :func:`load_pwcnet_state_dict` reads)."""
        model = cls(**kwargs)
        model.load_state_dict(load_pwcnet_state_dict(path))
        return model


# --- input checks and sizes ------------------------------------------------------------------
def as_rgb(img: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] unchanged; greyscale [B,1,H,W] repeated to 3 channels; anything else an error."""
    if img.dim() == 4 and img.shape[1] == 1:
        return img.expand(-1, 3, -1, -1)
    return img


def check_pair(img1: torch.Tensor, img2: torch.Tensor, multiple: int = 1) -> None:
    """Raise :class:`FlowInputError` unless both are [B,3,H,W] of one shape with H, W % multiple == 0."""
    for name, img in (("frame 1", img1), ("frame 2", img2)):
        if img.dim() != 4:
            raise FlowInputError(f"{name} must be [B,3,H,W], got shape {tuple(img.shape)}")
        if img.shape[1] != 3:
            raise FlowInputError(f"{name} must have 3 (RGB) channels, got {img.shape[1]} (shape {tuple(img.shape)})")
    if img1.shape != img2.shape:
        raise FlowInputError(f"frame pair sizes differ: {tuple(img1.shape)} vs {tuple(img2.shape)}")
    H, W = img1.shape[-2:]
    if H % multiple or W % multiple:
        raise FlowInputError(
            f"PWCNet.forward needs H and W multiples of {multiple}, got {H}x{W}; "
            "use PWCNet.predict or pad_to_multiple / resize_to_multiple"
        )


def check_scales(scales) -> tuple[float, ...]:
    """``scales`` as a tuple of floats: factors in (0, 1], strictly growing (coarse to fine); else FlowInputError."""
    try:
        out = tuple(float(s) for s in ([scales] if isinstance(scales, (int, float)) else scales))
    except (TypeError, ValueError):
        out = ()
    if not out or any(not 0 < s <= 1 for s in out) or any(b <= a for a, b in zip(out, out[1:])):
        raise FlowInputError(f"scales are factors in (0, 1], coarse to fine (strictly growing), e.g. [0.375, 1.0]; got {scales!r}")
    return out


def scale_frames(img: torch.Tensor, scale: float) -> torch.Tensor:
    """[B,C,H,W] resized by ``scale`` (antialiased bilinear; at least 8 px a side); unchanged at 1."""
    if scale == 1.0:
        return img
    H, W = img.shape[-2:]
    size = (max(8, round(H * scale)), max(8, round(W * scale)))
    return F.interpolate(img.float(), size=size, mode="bilinear", align_corners=False, antialias=True)


def warp_frame(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward-warp frames [B,C,H,W] by ``flow`` [B,2,H,W] px: out(p) = img(p + flow(p)), the border
    repeated outside (unlike :func:`warp`, whose zeros would read as a dark edge moving)."""
    B, _, H, W = img.shape
    ys, xs = torch.meshgrid(torch.arange(H, device=img.device, dtype=torch.float32),
                            torch.arange(W, device=img.device, dtype=torch.float32), indexing="ij")
    grid = torch.stack(((xs + flow[:, 0].float()) * (2.0 / max(W - 1, 1)) - 1.0,
                        (ys + flow[:, 1].float()) * (2.0 / max(H - 1, 1)) - 1.0), dim=-1)
    return F.grid_sample(img.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)


def padded_size(H: int, W: int, multiple: int = MULTIPLE) -> tuple[int, int]:
    return math.ceil(H / multiple) * multiple, math.ceil(W / multiple) * multiple


def pad_to_multiple(img: torch.Tensor, multiple: int = MULTIPLE, mode: str = "replicate") -> torch.Tensor:
    """Pad [B,C,H,W] at the bottom/right to multiples of ``multiple`` ("replicate" or "zero").

    Padding only bottom/right keeps pixel (y, x) where it was, so :func:`unpad` is a crop.
    """
    H, W = img.shape[-2:]
    Hp, Wp = padded_size(H, W, multiple)
    if (Hp, Wp) == (H, W):
        return img
    if mode == "zero":
        return F.pad(img, (0, Wp - W, 0, Hp - H))
    if mode != "replicate":
        raise ValueError(f"pad mode must be 'replicate' or 'zero', got {mode!r}")
    if not img.is_floating_point():
        img = img.float()
    return F.pad(img, (0, Wp - W, 0, Hp - H), mode="replicate")


def unpad(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop [B,2,H',W'] back to the original ``size`` (H, W) padded by :func:`pad_to_multiple`."""
    H, W = size
    return flow[..., :H, :W]


def resize_to_multiple(img: torch.Tensor, multiple: int = MULTIPLE) -> torch.Tensor:
    """Bilinear resize [B,C,H,W] to the next multiples of ``multiple`` (unchanged if already)."""
    H, W = img.shape[-2:]
    size = padded_size(H, W, multiple)
    if size == (H, W):
        return img
    return F.interpolate(img.float(), size=size, mode="bilinear", align_corners=False)


def resize_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize flow [B,2,H',W'] (pixels of H'xW') to ``size`` (H, W): u scaled by W/W', v by H/H'."""
    H, W = size
    Hs, Ws = flow.shape[-2:]
    if (Hs, Ws) == (H, W):
        return flow
    out = F.interpolate(flow, size=(H, W), mode="bilinear", align_corners=False)
    scale = torch.tensor([W / Ws, H / Hs], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)
    return out * scale


# --- checkpoints -------------------------------------------------------------------------------
_LEVEL_WORDS = {"One": 1, "Two": 2, "Thr": 3, "Fou": 4, "Fiv": 5, "Six": 6}
_PYRAMID_NAMES = {l: ("a", "aa", "b") for l in range(1, 6)} | {6: ("aa", "a", "b")}


def _rename_sniklaus(key: str) -> str | None:
    """Our name for a key of the sniklaus/pytorch-pwc port (``netX`` or older ``moduleX`` names)."""
    p = r"(?:net|module)"
    w = r"(One|Two|Thr|Fou|Fiv|Six)"
    if m := re.fullmatch(rf"{p}Extractor\.{p}{w}\.([024])\.(weight|bias)", key):
        level = _LEVEL_WORDS[m[1]]
        return f"conv{level}{_PYRAMID_NAMES[level][int(m[2]) // 2]}.0.{m[3]}"
    if m := re.fullmatch(rf"{p}{w}\.{p}(One|Two|Thr|Fou|Fiv)\.0\.(weight|bias)", key):
        return f"conv{_LEVEL_WORDS[m[1]]}_{_LEVEL_WORDS[m[2]] - 1}.0.{m[3]}"
    if m := re.fullmatch(rf"{p}{w}\.{p}Six\.0\.(weight|bias)", key):
        return f"predict_flow{_LEVEL_WORDS[m[1]]}.{m[2]}"
    # A decoder's Upflow/Upfeat upsample the coarser level's output: our deconv/upfeat{level+1}.
    if m := re.fullmatch(rf"{p}{w}\.{p}Upflow\.(weight|bias)", key):
        return f"deconv{_LEVEL_WORDS[m[1]] + 1}.{m[2]}"
    if m := re.fullmatch(rf"{p}{w}\.{p}Upfeat\.(weight|bias)", key):
        return f"upfeat{_LEVEL_WORDS[m[1]] + 1}.{m[2]}"
    if m := re.fullmatch(rf"{p}Refiner\.{p}Main\.(\d+)\.(weight|bias)", key):
        i = int(m[1]) // 2 + 1
        return f"dc_conv{i}.{m[2]}" if i == 7 else f"dc_conv{i}.0.{m[2]}"
    return None


def _strip_prefix(state: dict, prefixes: tuple[str, ...] = ("module.", "model.", "net.", "pwcnet.")) -> dict:
    """Drop wrapper prefixes (DataParallel ``module.``, Lightning ``model.`` ...) shared by every key."""
    changed = True
    while changed and state:
        changed = False
        for prefix in prefixes:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


@functools.lru_cache(maxsize=1)
def _expected_shapes() -> dict[str, torch.Size]:
    return {k: v.shape for k, v in PWCNet().state_dict().items()}


def load_pwcnet_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a PWC-Net checkpoint into a float32 state dict with this module's parameter names.

    Layouts: the official NVlabs ``pwc_net.pth.tar`` (plain state dict or under 'state_dict'),
    sniklaus/pytorch-pwc ``network-*.pytorch`` (``netExtractor.netOne.0.weight`` or the older
    ``moduleExtractor.moduleOne...`` names), ptlflow / Lightning ``.ckpt`` ('state_dict',
    optionally prefixed ``model.``), and this project's own weights (plain state dict, maybe
    fp16). Raises :class:`WeightsError` naming the file and any unknown, missing or
    wrongly-shaped keys.
    """
    obj = load_weights_only(path, hint="; if it is a trusted Lightning/ptlflow checkpoint with pickled "
                                  "hyper-parameters, save its 'state_dict' alone and load that")
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
        raise WeightsError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    state = _strip_prefix({k: v for k, v in obj.items() if torch.is_tensor(v)})
    non_tensors = sorted(k for k, v in obj.items() if not torch.is_tensor(v))
    if non_tensors:
        raise WeightsError(f"{path}: state dict entries that are not tensors: {_names(non_tensors)}")

    if any("Extractor." in k for k in state):
        renamed, unknown = {}, []
        for k, v in state.items():
            new = _rename_sniklaus(k)
            if new is None:
                unknown.append(k)
            else:
                renamed[new] = v
        if unknown:
            raise WeightsError(f"{path}: unknown keys for the sniklaus/pytorch-pwc layout: {_names(unknown)}")
        state = renamed

    expected = _expected_shapes()
    unknown = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    wrong = sorted(f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k])})"
                   for k in set(state) & set(expected) if state[k].shape != expected[k])
    problems = []
    if unknown:
        problems.append(f"unknown keys: {_names(unknown)}")
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if wrong:
        problems.append(f"shape mismatches: {_names(wrong)}")
    if problems:
        raise WeightsError(f"{path}: not a PWC-Net (pwc_dc_net) checkpoint; " + "; ".join(problems))
    return {k: v.float() for k, v in state.items()}


def _names(keys: list[str], limit: int = 12) -> str:
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more
