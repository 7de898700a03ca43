"""RAFT (Teed & Deng, "RAFT: Recurrent All-Pairs Field Transforms for Optical Flow", ECCV 2020)
from torchvision, behind the same interface as PWC-Net.

torchvision implements the network (:func:`torchvision.models.optical_flow.raft_small` and
``raft_large``); this module only loads weights and adapts the call:

- :func:`load_raft` builds a variant with torchvision's own pretrained weights (downloaded into
  the torch hub cache) or a local file in torchvision's layout or in the authors' release
  layout (princeton-vl: ``module.fnet.*``, ``module.cnet.*``, ``module.update_block.*``), whose
  names :func:`princeton_to_torchvision` maps onto torchvision's.
- :class:`RAFT` takes RGB [B,3,H,W] in [0,1] of any size (replicate-padded to multiples of 8,
  and to at least 128 px a side, centred as in the authors' evaluation, and cropped back) and
  returns the last of the
  ``flow_updates`` refinements in pixels. :meth:`RAFT.encode` and :meth:`RAFT.flow_from_features`
  split the feature encoder from the rest, so a clip's frames are encoded once.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from flow_engine.checkpoints import WeightsError, file_hash, load_weights_only
from flow_engine.models.pwcnet import FlowInputError, as_rgb, check_pair

log = logging.getLogger(__name__)

VARIANTS = ("raft_small", "raft_large")
DEFAULT_FLOW_UPDATES = 12
MULTIPLE = 8  # the feature encoder's stride
# torchvision's correlation pyramid pools the 1/8-resolution features 3 times and needs them
# at least 16 px a side: frames are padded up to 128 px.
MIN_SIDE = 128
# Peak memory of one fp32 forward pass per padded input pixel, with margin: ~400 B measured for
# RAFT-small on the CPU (`bench --batch 1 --skip-cost-volume`, 256x256 against 1024x512), besides
# its all-pairs correlation pyramid: (HW/64)^2 fp32 values at level 0 and 1/4 + 1/16 + 1/64 of that
# below, i.e. ~5.3 bytes per pair of 1/8-resolution pixels (CORR_BYTES).
BYTES_PER_PIXEL = 1024
CORR_BYTES = 4 * (1 + 1 / 4 + 1 / 16 + 1 / 64)


def padded_size(height: int, width: int) -> tuple[int, int]:
    """(H, W) in pixels frames of ``height`` x ``width`` are padded to: multiples of 8, at least :data:`MIN_SIDE`."""
    return max(MIN_SIDE, height + (-height) % MULTIPLE), max(MIN_SIDE, width + (-width) % MULTIPLE)


def _builder(variant: str):
    from torchvision.models import optical_flow  # here: torchvision loads only when RAFT is used

    if variant not in VARIANTS:
        raise ValueError(f"unknown RAFT variant {variant!r}; choose {', '.join(VARIANTS)}")
    builder = getattr(optical_flow, variant)
    weights_enum = optical_flow.Raft_Small_Weights if variant == "raft_small" else optical_flow.Raft_Large_Weights
    return builder, weights_enum


# --- the authors' layout -> torchvision's names ------------------------------------------------
_ENCODER_TOP = {"conv1": "convnormrelu.0", "norm1": "convnormrelu.1", "conv2": "conv"}
_MOTION = {"convc1": "convcorr1.0", "convc2": "convcorr2.0", "convf1": "convflow1.0", "convf2": "convflow2.0", "conv": "conv.0"}
_GRU = {"convz": "convgru1.convz", "convr": "convgru1.convr", "convq": "convgru1.convq",
        "convz1": "convgru1.convz", "convr1": "convgru1.convr", "convq1": "convgru1.convq",
        "convz2": "convgru2.convz", "convr2": "convgru2.convr", "convq2": "convgru2.convq"}
_MASK = {"0": "convrelu.0", "2": "conv"}


def _rename_princeton(key: str, convs_per_block: int) -> str | None:
    """torchvision's name for one key of the authors' release, ``None`` for duplicates to drop.

    The authors' blocks register the norm of their downsample branch twice (``norm3`` in a
    residual block of 2 convs, ``norm4`` in a bottleneck block of 3, and ``downsample.1``);
    torchvision keeps only ``downsample.1``. Keys that match no rule come back unchanged, so
    the caller reports them as unknown.
    """
    parts = key.split(".")
    if parts[0] in ("fnet", "cnet"):
        top = "feature_encoder" if parts[0] == "fnet" else "context_encoder"
        rest = parts[1:]
        if rest[0] in _ENCODER_TOP:
            return ".".join([top, _ENCODER_TOP[rest[0]], *rest[1:]])
        m = re.fullmatch(r"layer(\d)", rest[0])
        if m and len(rest) >= 4:
            block, sub, tail = rest[1], rest[2], rest[3:]
            if sub == "downsample":
                return ".".join([top, rest[0], block, "downsample", *tail])
            cm = re.fullmatch(r"(conv|norm)(\d)", sub)
            if cm:
                kind, idx = cm.group(1), int(cm.group(2))
                # Residual blocks have 2 convs (norm3 = downsample's), bottleneck blocks 3 (norm4).
                if kind == "norm" and idx > convs_per_block:
                    return None
                return ".".join([top, rest[0], block, f"convnormrelu{idx}", "0" if kind == "conv" else "1", *tail])
        return key  # unmapped: reported by the caller
    if parts[0] == "update_block" and len(parts) >= 3:
        part, name, tail = parts[1], parts[2], parts[3:]
        if part == "encoder" and name in _MOTION:
            return ".".join(["update_block.motion_encoder", _MOTION[name], *tail])
        if part == "gru" and name in _GRU:
            return ".".join(["update_block.recurrent_block", _GRU[name], *tail])
        if part == "flow_head":
            return ".".join(["update_block.flow_head", name, *tail])
        if part == "mask" and name in _MASK:
            return ".".join(["mask_predictor", _MASK[name], *tail])
    return key


def princeton_to_torchvision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' RAFT state dict (``module.`` prefix optional) under torchvision's names."""
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    convs = 3 if any(re.search(r"layer\d\.\d\.conv3\.", k) for k in state) else 2  # bottleneck or residual
    out = {}
    for k, v in state.items():
        new = _rename_princeton(k, convs)
        if new is not None:
            out[new] = v
    return out


def _read_state_dict(path: Path, expected: dict[str, torch.Size], variant: str) -> dict[str, torch.Tensor]:
    obj = load_weights_only(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise WeightsError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    if any(k.startswith(("module.fnet.", "fnet.", "module.update_block.", "update_block.encoder.")) for k in obj):
        layout, state = "the authors' (princeton-vl)", princeton_to_torchvision(obj)
    else:
        layout, state = "torchvision's", {k[len("model."):] if k.startswith("model.") else k: v for k, v in obj.items()}
    unknown = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    wrong = sorted(f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k])})"
                   for k in set(state) & set(expected) if state[k].shape != expected[k])
    problems = [f"{what}: {_names(keys)}" for what, keys in
                (("unknown keys", unknown), ("missing keys", missing), ("shape mismatches", wrong)) if keys]
    if problems:
        raise WeightsError(
            f"{path}: not {variant} weights (read as {layout} layout); " + "; ".join(problems)
            + ". Expected torchvision's state dict or the authors' release (module.fnet.*, module.cnet.*, module.update_block.*)"
        )
    return {k: v.float() for k, v in state.items()}


def _names(keys: list[str], limit: int = 8) -> str:
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def default_weights_id(variant: str) -> str:
    """The id of torchvision's default weights of ``variant`` (from their file name; nothing is downloaded)."""
    return f"torchvision-{_builder(variant)[1].DEFAULT.url.rsplit('/', 1)[-1].split('.')[0]}"


def cached_weights_path(variant: str) -> Path:
    """Where the torch hub cache keeps torchvision's default weights of ``variant`` (present or not)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / _builder(variant)[1].DEFAULT.url.rsplit("/", 1)[-1]


def load_raft(variant: str, weights: str | Path | None = None) -> tuple[nn.Module, str]:
    """torchvision's ``variant`` with weights; returns (model, weights id).

    ``weights=None``: torchvision's own pretrained weights (``DEFAULT``), from the torch hub cache
    or downloaded into it; without a network that is a :class:`WeightsError` naming the two ways
    out. ``weights=PATH``: a local file (torchvision's layout or the authors'); the id is the
    file's sha256[:16].
    """
    builder, weights_enum = _builder(variant)
    if weights is None:
        chosen = weights_enum.DEFAULT
        model = builder(weights=None)
        try:  # not builder(weights=chosen): torch.hub would read its cached file with weights_only=False
            model.load_state_dict(chosen.get_state_dict(progress=False, check_hash=True, weights_only=True))
        except Exception as e:  # URLError, socket errors, a truncated download, a file refused by weights_only ...
            raise WeightsError(
                f"{variant}: torchvision's pretrained weights ({chosen.url}) are not in the torch hub cache "
                f"({torch.hub.get_dir()}) and could not be downloaded ({type(e).__name__}: {e}). Either connect "
                "to the internet once (the file is cached for later runs), or pass a local file: "
                f"weights=PATH / --weights PATH (torchvision's state dict or the authors' release)"
            ) from None
        return model, default_weights_id(variant)
    path = Path(weights)
    model = builder(weights=None)
    model.load_state_dict(_read_state_dict(path, {k: v.shape for k, v in model.state_dict().items()}, variant))
    return model, file_hash(path)


class RAFT(nn.Module):
    """torchvision's RAFT taking RGB [0,1] frames of any size and returning flow in pixels.

    Args:
        net: a torchvision ``RAFT`` (from :func:`load_raft`).
        flow_updates: recurrent refinements per pair (the authors evaluate with 12 to 32).
    """

    def __init__(self, net: nn.Module, flow_updates: int = DEFAULT_FLOW_UPDATES):
        super().__init__()
        if int(flow_updates) < 1:
            raise ValueError(f"flow_updates must be a positive integer, got {flow_updates}")
        self.net = net
        self.flow_updates = int(flow_updates)

    @staticmethod
    def _pad(img: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
        H, W = img.shape[-2:]
        Hp, Wp = padded_size(H, W)
        ph, pw = Hp - H, Wp - W
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        if ph or pw:
            img = F.pad(img, pad, mode="replicate")
        return img, pad

    @staticmethod
    def _crop(flow: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
        H, W = flow.shape[-2:]
        return flow[..., pad[2] : H - pad[3], pad[0] : W - pad[1]]

    @staticmethod
    def memory_needed(height: int, width: int, pairs: int = 1) -> int:
        """Bytes ``pairs`` pairs of ``height`` x ``width`` frames take in one fp32 pass (an estimate with margin)."""
        Hp, Wp = padded_size(height, width)
        return int(pairs * (Hp * Wp * BYTES_PER_PIXEL + CORR_BYTES * (Hp * Wp / 64) ** 2))

    def predict(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        """Flow [B,2,H,W] in pixels from RGB [0,1] frames [B,3,H,W] of any size."""
        img1, img2 = as_rgb(img1), as_rgb(img2)
        check_pair(img1, img2)
        return self.flow_from_features(*self.encode(torch.cat((img1, img2))).split(img1.shape[0]), img1)

    def predict_clip(self, frames: torch.Tensor) -> torch.Tensor:
        """Flows [T-1,2,H,W] px between consecutive RGB [0,1] frames [T,3,H,W]; each frame is
        encoded once (the same numbers as :meth:`predict` on the pairs)."""
        return self.predict_clips(frames[None])[0]

    def predict_clips(self, clips: torch.Tensor) -> torch.Tensor:
        """Flows [N,T-1,2,H,W] px within each of N clips of RGB [0,1] frames [N,T,3,H,W] (T >= 2)."""
        if clips.dim() != 5 or clips.shape[1] < 2 or clips.shape[2] not in (1, 3):
            raise FlowInputError(f"clips must be [N,T,3,H,W] with T >= 2, got shape {tuple(clips.shape)}")
        N, T = clips.shape[:2]
        fmaps = self.encode(clips.flatten(0, 1)).unflatten(0, (N, T))
        first = clips[:, :-1].flatten(0, 1)
        flow = self.flow_from_features(fmaps[:, :-1].flatten(0, 1), fmaps[:, 1:].flatten(0, 1), first)
        return flow.unflatten(0, (N, T - 1))

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Feature-encoder output [N,C,H/8,W/8] (of the padded frames) for RGB [0,1] frames [N,3,H,W]."""
        x, _ = self._pad(as_rgb(frames).float() * 2 - 1)
        return self.net.feature_encoder(x)

    def flow_from_features(self, fmap1: torch.Tensor, fmap2: torch.Tensor, img1: torch.Tensor) -> torch.Tensor:
        """Flow [B,2,H,W] px from the encoded frames 1 and 2 and frame 1's pixels (for the context encoder).

        The same steps as torchvision's ``RAFT.forward`` after its feature encoder, keeping only
        the last refinement.
        """
        net = self.net
        x1, pad = self._pad(as_rgb(img1).float() * 2 - 1)
        B, _, H, W = x1.shape
        if fmap1.shape[-2:] != (H // MULTIPLE, W // MULTIPLE) or fmap1.shape != fmap2.shape:
            raise FlowInputError(f"features {tuple(fmap1.shape)}, {tuple(fmap2.shape)} do not fit frames of {H}x{W}")
        net.corr_block.build_pyramid(fmap1, fmap2)
        context = net.context_encoder(x1)
        hidden_dim = net.update_block.hidden_state_size
        hidden, context = torch.split(context, [hidden_dim, context.shape[1] - hidden_dim], dim=1)
        hidden, context = torch.tanh(hidden), F.relu(context)
        coords0 = _coords_grid(B, H // MULTIPLE, W // MULTIPLE, fmap1.device)
        coords1 = coords0.clone()
        for _ in range(self.flow_updates):
            coords1 = coords1.detach()  # as upstream: no gradient through the coordinates
            corr = net.corr_block.index_pyramid(centroids_coords=coords1)
            flow = coords1 - coords0
            hidden, delta = net.update_block(hidden, context, corr, flow)
            coords1 = coords1 + delta
        flow = coords1 - coords0
        up_mask = None if net.mask_predictor is None else net.mask_predictor(hidden)
        from torchvision.models.optical_flow._utils import upsample_flow  # torchvision only when RAFT runs

        return self._crop(upsample_flow(flow=flow, up_mask=up_mask).float(), pad)

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        return self.predict(img1, img2)


def _coords_grid(batch: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack((xs, ys)).float()[None].repeat(batch, 1, 1, 1)
