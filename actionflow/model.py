"""Two-stream network (Simonyan & Zisserman 2014, with TSN's segmental consensus, Wang et al. 2016).

* RGB stream: a torchvision backbone (or the small :class:`SmallCNN`) on one RGB frame per snippet.
* Temporal stream: the same architecture on 2L stacked flow channels (x1, y1, ..., xL, yL) per
  snippet; its first convolution takes 2L channels. With pretrained weights it is initialised by
  cross-modality initialisation: the RGB first-conv kernel averaged over its 3 input channels and
  replicated 2L times.
* Segmental consensus: the average of each stream's logits over the snippets of a video
  (K segments, times the clips at test time, which makes multi-clip testing the average too).
* Late fusion of softmax scores: ``p = (w_rgb softmax(rgb) + w_flow softmax(flow)) / (w_rgb + w_flow)``
  with fixed weights (``weighted``, default 1 : 1.5), learned ones (``learned``: two logits trained
  on the training clips, initialised at the given ratio) or weights set on the validation set
  (``validation``: after every validation pass, the ratio under which the fused scores classify
  the validation videos best; see :func:`validation_weights`). The fused output is returned as
  log-probabilities ``log p``, so that ``softmax``, ``argmax`` and ``cross_entropy`` apply to it
  exactly as to the streams' logits.

Inputs are normalised tensors: RGB by ImageNet mean/std (:func:`normalize_rgb`), flow in pixels
less the camera's motion (each field's median) and divided by ``flow_scale`` (20 px, the flow
cache's bound), or each snippet brought to unit size with its size as one more channel
(``flow_norm: snippet``) (:func:`normalize_flow`).

The temporal stream may start from weights of its own (``flow_init``, :func:`flow_init_state`):
the project's motion-pretrained stream (``motion``, in ``actionflow/weights/``) or a file written by
``python -m actionflow flow-init`` (:mod:`actionflow.flow_init`): the stream less its classifier head.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
from torch import nn

from actionflow.errors import ActionflowError
from flow_engine.checkpoints import WeightsError, load_weights_only

logger = logging.getLogger(__name__)

MODES = ("rgb", "flow", "two_stream")
FUSIONS = ("weighted", "learned", "validation")
FLOW_NORMS = ("fixed", "snippet")
SNIPPET_FLOOR_PX = 0.05  # flow_norm snippet: a still snippet's noise is not blown up to unit size
FUSION_GRID = 21  # RGB weights 0, 0.05, ..., 1 tried by validation_weights
FLOW_INITS = {"motion": Path(__file__).resolve().parent / "weights" / "flow_motion_small_cnn.pt"}  # model.flow_init names
FLOW_INIT_FORMAT = "actionflow-flow-init-1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelConfigError(ActionflowError, ValueError):
    """A bad model setting (mode, backbone, fusion, pretrained weights file)."""


def normalize_rgb(frames: torch.Tensor) -> torch.Tensor:
    """uint8 RGB ``[..., 3, H, W]`` -> float, ImageNet-normalised."""
    mean = frames.new_tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = frames.new_tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return (frames.float() / 255.0 - mean) / std


def normalize_flow(flow_px: torch.Tensor, scale: float = 20.0, subtract_camera: bool = False,
                   per_snippet: bool = False) -> torch.Tensor:
    """Flow in pixels ``[..., 2L, H, W]`` -> network input: divided by ``scale`` (the cache bound, 20 px) so |x| <~ 1.

    ``subtract_camera``: first subtract from every flow field its median x and y displacement, the
    camera's motion wherever the moving subject covers less than half the frame (the two-stream
    paper's mean flow subtraction; the median is not pulled by the dancer's own motion).

    ``per_snippet``: divide each snippet's flow by its root-mean-square displacement instead (the
    pattern of the motion at unit size: where and how it changes from flow to flow, whatever the
    person's size in the frame), and append one channel holding ``log(rms / scale)``, the size as a
    number: ``[..., 2L + 1, H, W]`` (:func:`flow_channels`).
    """
    x = flow_px.float()
    if subtract_camera:
        x = x - x.flatten(-2).median(dim=-1).values[..., None, None]
    if not per_snippet:
        return x / scale
    rms = x.pow(2).mean(dim=(-3, -2, -1), keepdim=True).sqrt()
    size = (rms / scale + 1e-3).log().expand(*x.shape[:-3], 1, *x.shape[-2:])
    return torch.cat([x / (rms + SNIPPET_FLOOR_PX), size], dim=-3)


def flow_channels(flow_length: int, flow_norm: str = "fixed") -> int:
    """The temporal stream's input channels: 2L flow planes, and the size channel of ``flow_norm: snippet``."""
    return 2 * flow_length + (flow_norm == "snippet")


def _first_conv(net: nn.Module) -> tuple[str, nn.Conv2d]:
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ModelConfigError(f"{type(net).__name__} has no Conv2d to take the flow stack")


def _last_linear(net: nn.Module) -> tuple[str, nn.Linear]:
    found = None
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    if found is None:
        raise ModelConfigError(f"{type(net).__name__} has no Linear classifier head")
    return found


def pretrained_state(backbone: str, pretrained_path: str | None = None) -> dict[str, torch.Tensor] | None:
    """ImageNet state dict of torchvision ``backbone``: from ``pretrained_path`` (a saved torchvision
    state dict) or torchvision's download; None (logged once) when it cannot be had."""
    if backbone == "small_cnn" and pretrained_path is None:
        raise ModelConfigError("small_cnn has no ImageNet weights: set model.pretrained false or give model.pretrained_path")
    if pretrained_path is not None:
        if not os.path.isfile(pretrained_path):
            raise ModelConfigError(f"{pretrained_path}: pretrained state dict not found")
        try:
            state = load_weights_only(pretrained_path, what="pretrained state dict")
        except WeightsError as exc:
            raise ModelConfigError(str(exc)) from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        return state
    import torchvision  # torchvision only for its backbones: small_cnn needs none

    try:
        # weights_only=True: torch.hub's default is False, and a file planted in its cache would run code
        return torchvision.models.get_model_weights(backbone).DEFAULT.get_state_dict(progress=False, weights_only=True)
    except Exception as exc:  # no internet, no cache, or no weights for this architecture
        logger.warning("ImageNet weights for %s unavailable (%s); training from scratch", backbone, str(exc)[:120])
        return None


class SmallCNN(nn.Module):
    """A four-layer CNN for small inputs and CPU budgets (backbone name ``small_cnn``).

    conv3x3 stride 2, then three conv3x3 each after a 2x2 max-pool (32, 64, 128, 256 channels, each
    with BatchNorm and ReLU), global average pooling and a linear head: about 15 MMACs at 56x56 with
    10 flow channels, a tenth of ResNet-18, so that the demo trains to convergence in minutes on
    two CPU cores. Use a torchvision backbone on real data.
    """

    WIDTHS = (32, 64, 128, 256)

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, widths: tuple[int, ...] | None = None):
        """``widths``: channels of each conv layer (default :data:`WIDTHS`; fewer layers, a smaller receptive field)."""
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i, width in enumerate(widths or self.WIDTHS):
            if i > 0:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            layers += [nn.Conv2d(c, width, 3, stride=2 if i == 0 else 1, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            c = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, H, W]`` -> logits ``[N, num_classes]``."""
        return self.fc(self.features(x).mean(dim=(-2, -1)))


class Stream(nn.Module):
    """One stream: a torchvision classification backbone (or ``small_cnn``) taking ``in_channels`` input channels."""

    def __init__(
        self,
        backbone: str,
        in_channels: int,
        num_classes: int,
        dropout: float = 0.5,
        state: dict[str, torch.Tensor] | None = None,
        widths: tuple[int, ...] | None = None,
    ):
        """``state``: ImageNet weights of ``backbone`` to start from (None: random initialisation);
        ``widths``: ``small_cnn``'s layer widths (None: its default)."""
        super().__init__()
        import torchvision  # torchvision only for its backbones: small_cnn needs none

        try:
            net = SmallCNN(in_channels, widths=widths) if backbone == "small_cnn" else torchvision.models.get_model(backbone, weights=None)
        except ValueError:
            names = ", ".join(n for n in torchvision.models.list_models(torchvision.models) if n.startswith("resnet"))
            raise ModelConfigError(f"unknown backbone {backbone!r}: small_cnn or a torchvision model (e.g. {names})") from None
        self.pretrained = state is not None
        if state is not None:
            try:
                net.load_state_dict(state)
            except RuntimeError as exc:
                raise ModelConfigError(f"pretrained weights do not fit {backbone}: {str(exc).splitlines()[0]}") from None

        conv_name, conv = _first_conv(net)
        if in_channels != conv.in_channels:
            new = nn.Conv2d(
                in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode,
            )
            if self.pretrained:
                with torch.no_grad():
                    new.weight.copy_(cross_modality_weight(conv.weight, in_channels))
                    if conv.bias is not None:
                        new.bias.copy_(conv.bias)
            net.set_submodule(conv_name, new)

        head_name, head = _last_linear(net)
        net.set_submodule(head_name, nn.Sequential(nn.Dropout(dropout), nn.Linear(head.in_features, num_classes)))
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C_in, H, W]`` -> logits ``[N, num_classes]``."""
        return self.net(x)


def head_keys(state: dict[str, torch.Tensor]) -> set[str]:
    """Keys of the last linear layer (the classifier head) in a stream network's state dict."""
    weights = [k for k, v in state.items() if k.endswith(".weight") and v.dim() == 2]
    if not weights:
        raise ModelConfigError("the flow stream has no linear classifier head")
    last = weights[-1].rsplit(".", 1)[0]
    return {k for k in state if k.rsplit(".", 1)[0] == last}


def flow_init_state(spec: str, backbone: str, in_channels: int) -> dict[str, torch.Tensor]:
    """The temporal stream's weights, its head excepted, that ``model.flow_init`` names: a name of
    :data:`FLOW_INITS` or a file of ``python -m actionflow flow-init`` (read with ``weights_only=True``),
    checked to be one of ours for a ``backbone`` stream on ``in_channels`` input channels."""
    path = FLOW_INITS.get(spec, Path(spec))
    if not path.is_file():
        raise ModelConfigError(f"model.flow_init {spec!r}: no such file (a path, or one of: {', '.join(FLOW_INITS)})")
    try:
        blob = load_weights_only(path, what="flow-init weights")
    except WeightsError as exc:
        raise ModelConfigError(f"model.flow_init: {exc}") from None
    if not isinstance(blob, dict) or blob.get("format") != FLOW_INIT_FORMAT:
        raise ModelConfigError(f"model.flow_init {path}: not a flow-init file (python -m actionflow flow-init writes them)")
    state = blob.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise ModelConfigError(f"model.flow_init {path}: its state_dict is not a dict of tensors")
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise ModelConfigError(f"model.flow_init {path}: holds NaN or infinite weights (its training diverged)")
    if blob.get("backbone") != backbone or blob.get("in_channels") != in_channels:
        raise ModelConfigError(f"model.flow_init {path}: weights of a {blob.get('backbone')} stream on {blob.get('in_channels')} "
                               f"input channels; this model's is {backbone} on {in_channels} (model.backbone; "
                               "2 x data.flow_length, + 1 with model.flow_norm snippet)")
    return state


def cross_modality_weight(rgb_weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """First-conv kernel ``[O, 3, k, k]`` -> ``[O, in_channels, k, k]``: the mean over RGB, replicated."""
    return rgb_weight.mean(dim=1, keepdim=True).expand(-1, in_channels, -1, -1).clone()


def consensus(logits: torch.Tensor) -> torch.Tensor:
    """Segmental consensus: ``[B, S, C]`` snippet logits -> ``[B, C]`` video logits (average)."""
    return logits.mean(dim=1)


def fuse(rgb_logits: torch.Tensor, flow_logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Late fusion of softmax scores with ``weights`` = (w_rgb, w_flow); returns log-probabilities ``[B, C]``."""
    w = weights / weights.sum()
    p = w[0] * rgb_logits.softmax(dim=-1) + w[1] * flow_logits.softmax(dim=-1)
    return torch.log(p.clamp_min(1e-12))


def validation_weights(rgb_probs: torch.Tensor, flow_probs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(w_rgb, w_flow), summing to 1, under which the fused scores ``w_rgb p_rgb + w_flow p_flow``
    classify the most of ``labels`` right (top-1), on a grid of :data:`FUSION_GRID` weights. Among
    equally accurate weights the stream that is more accurate alone gets as much as it can (equally
    accurate streams: the highest mean log-likelihood decides).

    A stream that does not generalise (no better than chance on held-out videos, or confidently
    wrong) gets little or no weight, so it cannot drown the stream that does. Accuracy rather than
    likelihood: a stream at chance has near-uniform scores, and by likelihood it would win a large
    weight as a mere smoother of the other stream's overconfident mistakes.
    """
    w = torch.linspace(0, 1, FUSION_GRID, device=rgb_probs.device)[:, None, None]
    fused = w * rgb_probs[None] + (1 - w) * flow_probs[None]  # [grid, N, C]
    correct = (fused.argmax(dim=-1) == labels[None]).float().mean(dim=1)
    acc_rgb, acc_flow = float(correct[-1]), float(correct[0])
    if acc_rgb != acc_flow:
        prefer = w.view(-1) if acc_rgb > acc_flow else 1 - w.view(-1)
    else:
        loglik = fused.gather(2, labels[None, :, None].expand(len(w), -1, 1)).clamp_min(1e-12).log().mean(dim=(1, 2))
        prefer = torch.sigmoid(loglik)
    score = correct + 1e-3 * prefer  # the tie-breaker stays below one video's share of accuracy
    best = float(w[int(score.argmax()), 0, 0])
    return best, 1.0 - best


class TwoStreamNet(nn.Module):
    """RGB and/or temporal stream with segmental consensus and late fusion, per ``mode``."""

    def __init__(
        self,
        num_classes: int,
        mode: str = "two_stream",
        backbone: str = "resnet18",
        flow_length: int = 5,
        pretrained: bool = False,
        pretrained_path: str | None = None,
        fusion: str = "weighted",
        fusion_weights: tuple[float, float] = (1.0, 1.5),
        dropout: float = 0.5,
        flow_init: str | None = None,
        flow_channels: int | None = None,
        cnn_widths: tuple[int, ...] | None = None,
    ):
        """``flow_init``: weights the temporal stream starts from (:func:`flow_init_state`; None: none);
        ``flow_channels``: the temporal stream's input channels (None: 2 x flow_length); ``cnn_widths``:
        ``small_cnn``'s layer widths (None: :data:`SmallCNN.WIDTHS`)."""
        super().__init__()
        if mode not in MODES:
            raise ModelConfigError(f"model.mode must be one of {MODES}, got {mode!r}")
        if fusion not in FUSIONS:
            raise ModelConfigError(f"model.fusion must be one of {FUSIONS}, got {fusion!r}")
        if num_classes < 2:
            raise ModelConfigError(f"need at least 2 classes, got {num_classes}")
        if len(fusion_weights) != 2 or min(fusion_weights) <= 0:
            raise ModelConfigError(f"model.fusion_weights must be two positive numbers, got {fusion_weights}")
        self.mode = mode
        self.flow_length = flow_length
        if cnn_widths is not None and (backbone != "small_cnn" or not cnn_widths or min(cnn_widths) < 1):
            raise ModelConfigError(f"model.cnn_widths (positive layer widths) is for small_cnn only, got {cnn_widths} for {backbone}")
        state = pretrained_state(backbone, pretrained_path) if pretrained else None
        kwargs = dict(num_classes=num_classes, dropout=dropout, state=state, widths=tuple(cnn_widths) if cnn_widths else None)
        self.rgb = Stream(backbone, 3, **kwargs) if mode in ("rgb", "two_stream") else None
        flow_channels = flow_channels or 2 * flow_length
        self.flow = Stream(backbone, flow_channels, **kwargs) if mode in ("flow", "two_stream") else None
        if flow_init is not None and self.flow is not None:
            self._init_flow(flow_init, backbone, flow_channels)
        init = torch.tensor([math.log(w) for w in fusion_weights])
        if fusion == "learned":
            self.fusion_logits = nn.Parameter(init)
        else:
            self.register_buffer("fusion_logits", init)

    def _init_flow(self, spec: str, backbone: str, in_channels: int) -> None:
        """Load the temporal stream's pre-trained network, all but its classifier head (this task's, fresh)."""
        state = flow_init_state(spec, backbone, in_channels)
        try:
            missing, unexpected = self.flow.net.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # a tensor of another shape (other cnn_widths)
            raise ModelConfigError(f"model.flow_init {spec!r} does not fit the {backbone} stream: "
                                   f"{str(exc).splitlines()[-1].strip()[:200]}") from None
        if unexpected or set(missing) != head_keys(self.flow.net.state_dict()):
            raise ModelConfigError(f"model.flow_init {spec!r} does not fit the {backbone} stream "
                                   f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
        logger.info("temporal stream initialised from %s", spec)

    @property
    def streams(self) -> list[str]:
        """Names of the outputs: the streams this mode has, then ``two_stream`` when both."""
        return {"rgb": ["rgb"], "flow": ["flow"], "two_stream": ["rgb", "flow", "two_stream"]}[self.mode]

    def forward(self, rgb: torch.Tensor | None = None, flow: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Normalised ``rgb [B, S, 3, H, W]`` and/or ``flow [B, S, 2L, H, W]`` -> ``{stream: [B, C]}``.

        ``rgb``/``flow`` are logits after consensus; ``two_stream`` is the fused log-probability.
        """
        out = {}
        for name, stream, x in (("rgb", self.rgb, rgb), ("flow", self.flow, flow)):
            if stream is None:
                continue
            if x is None:
                raise ValueError(f"mode {self.mode!r} needs {name} input")
            b, s = x.shape[:2]
            out[name] = consensus(stream(x.flatten(0, 1)).view(b, s, -1))
        if self.mode == "two_stream":
            out["two_stream"] = fuse(out["rgb"], out["flow"], self.fusion_logits.exp())
        return out
