"""Procedural optical-flow training pairs in the spirit of FlyingChairs, rendered batched on any device.

A scene is a textured background plus several textured foreground layers with random
shapes (superellipses with harmonic wobbles and optional holes, hard or soft edges). Each
layer moves between the two frames by its own random affine map ``M`` (translation with a
heavy-tailed, log-uniform magnitude, rotation, zoom, shear), the background by its own.
Layers are composited in painter's order, so occlusions are exact: the ground-truth flow
at a frame-1 pixel ``p`` is ``M_k(p) - p`` for the top-most layer ``k`` there.

Textures are real photographs bundled with scikit-image (randomly cropped, scaled,
rotated and colour-shifted through the per-layer texture map) and procedural patterns
(multi-octave value noise, stripes, checkerboards). Rendering is ``grid_sample`` of
texture tensors under per-layer affine grids: no per-pixel Python. Frame 2 may get
per-layer photometric changes, then both frames noise and blur.

Everything is drawn from a ``torch.Generator``: the same seed gives the same batch on the
same device.

Example::

    gen = SyntheticFlow(384, 512, device="cuda", seed=0)
    img1, img2, flow, valid = gen.sample(8)   # [8,3,H,W] in [0,1], flow [8,2,H,W] px
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# Photographs bundled in the scikit-image wheel (no download): name -> is it a colour image.
SKIMAGE_PHOTOS: dict[str, bool] = {
    "astronaut": True, "coffee": True, "chelsea": True, "rocket": True, "hubble_deep_field": True,
    "immunohistochemistry": True, "retina": True, "colorwheel": True, "stereo_motorcycle": True,
    "logo": True, "camera": False, "coins": False, "moon": False, "page": False, "text": False,
    "brick": False, "grass": False, "gravel": False, "clock": False, "cell": False,
}
PHOTO_SIZE = 256  # side of the square photo textures, pixels
NOISE_SIZE = 128  # side of the procedural noise textures, pixels


@dataclass
class SyntheticBatch:
    """One rendered batch. Images float [B,3,H,W] in [0,1]; flow [B,2,H,W] in pixels (frame 1 -> 2).

    ``layer1`` long [B,H,W]: the top-most layer at each frame-1 pixel (0 = background).
    ``visible`` bool [B,H,W]: that pixel's surface point is inside frame 2 and not covered there.
    """

    img1: torch.Tensor
    img2: torch.Tensor
    flow: torch.Tensor
    valid: torch.Tensor
    layer1: torch.Tensor
    visible: torch.Tensor


@functools.lru_cache(maxsize=1)
def _photo_bank_cpu() -> tuple[torch.Tensor, torch.Tensor]:
    """Square crops of the bundled photos: uint8 [N,3,S,S] and bool [N] "was grey"."""
    import skimage.data  # scikit-image loads slowly: only when photo textures are drawn

    crops: list[np.ndarray] = []
    grey: list[bool] = []
    for name, colour in SKIMAGE_PHOTOS.items():
        try:
            img = getattr(skimage.data, name)()
        except Exception as e:  # a trimmed scikit-image install: train on what is there
            log.warning("skimage.data.%s unavailable (%s); skipping that texture", name, e)
            continue
        img = np.asarray(img[0] if isinstance(img, tuple) else img)
        if img.dtype != np.uint8:
            img = (np.clip(img.astype(np.float64), 0, 1) * 255).astype(np.uint8) if img.dtype != bool else img.astype(np.uint8) * 255
        if img.ndim == 3 and img.shape[2] == 4:  # logo: composite its alpha on white
            a = img[:, :, 3:4].astype(np.float32) / 255
            img = (img[:, :, :3] * a + 255 * (1 - a)).astype(np.uint8)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        h, w = img.shape[:2]
        side = min(h, w)
        # The central square, and for big photos four more squares so details get their own texture.
        boxes = [((h - side) // 2, (w - side) // 2, side)]
        if side >= 600:
            half = side // 2
            boxes += [(y, x, half) for y in (0, h - half) for x in (0, w - half)]
        for y, x, s in boxes:
            crop = cv2.resize(img[y : y + s, x : x + s], (PHOTO_SIZE, PHOTO_SIZE), interpolation=cv2.INTER_AREA)
            crops.append(crop)
            grey.append(not colour)
    if not crops:
        return torch.zeros(0, 3, PHOTO_SIZE, PHOTO_SIZE, dtype=torch.uint8), torch.zeros(0, dtype=torch.bool)
    bank = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    return bank, torch.tensor(grey)


def _rot(theta: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [...,2,2] for angles [...] (radians)."""
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def _homogeneous(linear: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """3x3 affine matrices [...,3,3] from linear parts [...,2,2] and offsets [...,2]."""
    top = torch.cat([linear, offset.unsqueeze(-1)], -1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 2] = 1.0
    return torch.cat([top, bottom], -2)


def gaussian_blur(img: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blurs each image [B,C,H,W] with its own Gaussian sigma [B] (pixels; 0 = unchanged)."""
    b, c, h, w = img.shape
    radius = 3
    x = torch.arange(-radius, radius + 1, device=img.device, dtype=img.dtype)
    s = sigma.to(img.dtype).clamp_min(1e-3)[:, None]
    k = torch.exp(-0.5 * (x[None] / s) ** 2)
    k = k / k.sum(1, keepdim=True)  # [B,7]
    k = k.repeat_interleave(c, 0)  # one kernel per (image, channel)
    flat = F.pad(img.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, k[:, None, None, :], groups=b * c)
    flat = F.conv2d(flat, k[:, None, :, None], groups=b * c)
    return flat.reshape(b, c, h, w)


class SyntheticFlow:
    """Renders random two-frame scenes with exact ground-truth flow, batched on ``device``.

    Args:
        height, width: frame size in pixels.
        device: where to render (``"cuda"`` inside a training loop, ``"cpu"`` for tests).
        seed: seed of the internal ``torch.Generator``.
        num_layers: inclusive range of the number of foreground layers per scene.
        min_displacement, max_displacement: range (pixels) of the log-uniform translation
            magnitude of every layer and of the background; rotation and zoom add to it.
            Change ``max_displacement`` between calls for a curriculum.
        photometric: per-layer brightness/contrast/gamma change in frame 2.
        noise, blur: sensor noise (independent per frame) and defocus blur (same for both).
        photo_prob: probability that a layer gets a photograph rather than a procedural texture.
    """

    def __init__(
        self,
        height: int,
        width: int,
        device: str | torch.device = "cpu",
        seed: int = 0,
        *,
        num_layers: tuple[int, int] = (2, 8),
        min_displacement: float = 0.1,
        max_displacement: float = 160.0,
        photometric: bool = True,
        noise: bool = True,
        blur: bool = True,
        photo_prob: float = 0.6,
    ):
        if height < 8 or width < 8:
            raise ValueError(f"SyntheticFlow needs frames of at least 8x8 pixels, got {height}x{width}")
        if not 0 <= num_layers[0] <= num_layers[1]:
            raise ValueError(f"num_layers must be an increasing (min, max) pair, got {num_layers}")
        if not 0 < min_displacement <= max_displacement:
            raise ValueError(f"need 0 < min_displacement <= max_displacement, got {min_displacement}, {max_displacement}")
        self.height, self.width = int(height), int(width)
        self.device = torch.device(device)
        self.num_layers = (int(num_layers[0]), int(num_layers[1]))
        self.min_displacement = float(min_displacement)
        self.max_displacement = float(max_displacement)
        self.photometric, self.noise, self.blur = photometric, noise, blur
        self.photo_prob = float(photo_prob)
        self.generator = torch.Generator(self.device)
        self.generator.manual_seed(int(seed))
        bank, grey = _photo_bank_cpu()
        self.photos = bank.to(self.device, torch.float32) / 255
        self.photo_grey = grey.to(self.device)
        ys, xs = torch.meshgrid(
            torch.arange(self.height, dtype=torch.float32, device=self.device),
            torch.arange(self.width, dtype=torch.float32, device=self.device),
            indexing="ij",
        )
        self._pixels = torch.stack([xs, ys, torch.ones_like(xs)], -1)  # [H,W,3] homogeneous (x, y, 1)

    # ------------------------------------------------------------------ random helpers

    def _u(self, *shape: int, lo: float = 0.0, hi: float = 1.0, g: torch.Generator) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=g, device=self.device)

    def _n(self, *shape: int, std: float = 1.0, g: torch.Generator) -> torch.Tensor:
        return std * torch.randn(*shape, generator=g, device=self.device)

    def _log_u(self, *shape: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
        return torch.exp(self._u(*shape, lo=math.log(lo), hi=math.log(hi), g=g))

    # ------------------------------------------------------------------ public API

    def sample(self, batch: int, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch ``(img1, img2, flow, valid)``: float [B,3,H,W] in [0,1] twice, flow [B,2,H,W] px, bool [B,H,W]."""
        r = self.render(batch, seed)
        return r.img1, r.img2, r.flow, r.valid

    @torch.no_grad()
    def render(self, batch: int, seed: int | None = None) -> SyntheticBatch:
        """Renders ``batch`` scenes. With ``seed`` the batch depends only on it, else on the generator's state."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        g = self.generator
        if seed is not None:
            g = torch.Generator(self.device)
            g.manual_seed(int(seed))
        B, H, W = batch, self.height, self.width
        K = self.num_layers[1] + 1  # slot 0 is the background
        motion, object_map, radius = self._layer_geometry(B, K, g)  # [B,K,3,3] each, radius [B,K] px
        # Frame-1 pixel -> object coords is object_map; frame 2 undoes the motion first.
        maps = (object_map, object_map @ torch.linalg.inv(motion))
        shapes = self._layer_shapes(B, K, g)
        shapes["radius_px"] = radius
        textures = self._layer_textures(B, K, radius, g)
        change = self._photometric_change(B, K, g) if self.photometric else None

        n_fg = torch.randint(self.num_layers[0], self.num_layers[1] + 1, (B,), generator=g, device=self.device)
        active = torch.arange(K, device=self.device)[None] <= n_fg[:, None]  # [B,K]; slot 0 always on

        imgs, layers = [], []
        flow = torch.zeros(B, 2, H, W, device=self.device)
        for frame, to_object in enumerate(maps):
            img = torch.zeros(B, 3, H, W, device=self.device)
            top = torch.zeros(B, H, W, dtype=torch.long, device=self.device)
            for k in range(K):
                q = torch.einsum("hwj,bij->bhwi", self._pixels, to_object[:, k, :2, :])  # [B,H,W,2] object coords
                colour = self._texture_colour(textures, k, q)
                if frame == 1 and change is not None:
                    contrast, brightness, gamma = change[:, k, 0], change[:, k, 1], change[:, k, 2]
                    colour = ((colour - 0.5) * contrast[:, None, None, None] + 0.5 + brightness[:, None, None, None])
                    colour = colour.clamp(1e-4, 1).pow(gamma[:, None, None, None])
                if k == 0:
                    alpha = torch.ones(B, 1, H, W, device=self.device)
                else:
                    alpha = self._alpha(shapes, k, q) * active[:, k, None, None, None]
                img = alpha * colour + (1 - alpha) * img
                covers = alpha[:, 0] > 0.5
                top = torch.where(covers, torch.full_like(top, k), top)
                if frame == 0:
                    m = motion[:, k]  # flow = M(p) - p = (L - I) p + offset
                    disp = torch.einsum("hwj,bij->bihw", self._pixels, m[:, :2, :]) - self._pixels[..., :2].permute(2, 0, 1)
                    flow = torch.where(covers[:, None], disp, flow)
            imgs.append(img)
            layers.append(top)

        img1, img2 = imgs
        if self.blur:
            on = torch.rand(B, generator=g, device=self.device) < 0.5
            sigma = self._u(B, lo=0.3, hi=1.2, g=g) * on
            img1, img2 = gaussian_blur(img1, sigma), gaussian_blur(img2, sigma)
        if self.noise:
            std = self._log_u(B, 1, 1, 1, lo=0.002, hi=0.03, g=g)
            img1 = img1 + std * torch.randn(img1.shape, generator=g, device=self.device)
            img2 = img2 + std * torch.randn(img2.shape, generator=g, device=self.device)
        visible = self._visible(layers[0], layers[1], flow)
        valid = torch.ones(B, H, W, dtype=torch.bool, device=self.device)
        return SyntheticBatch(img1.clamp(0, 1), img2.clamp(0, 1), flow, valid, layers[0], visible)

    # ------------------------------------------------------------------ scene parts

    def _layer_geometry(self, B: int, K: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per layer: motion M (frame-1 px -> frame-2 px), frame-1 px -> object-coords map [B,K,3,3], radius [B,K] px."""
        H, W = self.height, self.width
        side = min(H, W)
        # Object centres anywhere over the frame (a little beyond); the background centred.
        centre = torch.stack([self._u(B, K, lo=-0.1, hi=1.1, g=g) * W, self._u(B, K, lo=-0.1, hi=1.1, g=g) * H], -1)
        centre[:, 0] = torch.tensor([(W - 1) / 2, (H - 1) / 2], device=self.device)
        radius = self._log_u(B, K, lo=0.08, hi=0.4, g=g) * side
        radius[:, 0] = max(H, W) / 2
        aspect = torch.exp(self._n(B, K, std=0.35, g=g)).clamp(0.4, 2.5)
        aspect[:, 0] = 1.0
        orient = self._u(B, K, lo=-math.pi, hi=math.pi, g=g)
        scale = torch.stack([1 / (radius * aspect), aspect / radius], -1)
        lin = scale[..., :, None] * _rot(-orient)  # diag(scale) @ R(-orient)
        object_map = _homogeneous(lin, -(lin @ centre[..., None])[..., 0])

        # Motion about the layer centre: heavy-tailed translation, rotation, zoom, a little shear.
        fg = torch.ones(B, K, device=self.device)
        fg[:, 0] = 0.0
        mag = self._log_u(B, K, lo=self.min_displacement, hi=self.max_displacement, g=g)
        direction = self._u(B, K, lo=-math.pi, hi=math.pi, g=g)
        shift = mag[..., None] * torch.stack([torch.cos(direction), torch.sin(direction)], -1)
        # Rotation/zoom shrink with the displacement budget, so a small-motion curriculum stays small.
        budget = min(1.0, self.max_displacement / 40.0)
        angle = self._n(B, K, g=g) * torch.deg2rad(3.0 + 7.0 * fg) * budget
        zoom = torch.exp(self._n(B, K, g=g) * (0.04 + 0.06 * fg) * budget)
        shear = self._n(B, K, g=g) * 0.03 * fg * budget
        stretch = torch.eye(2, device=self.device).expand(B, K, 2, 2).clone()
        stretch[..., 0, 1] = shear
        L = zoom[..., None, None] * _rot(angle) @ stretch
        offset = centre + shift - (L @ centre[..., None])[..., 0]
        return _homogeneous(L, offset), object_map, radius

    def _layer_shapes(self, B: int, K: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        """Random shape parameters of each layer (superellipse, harmonic wobble, hole, edge softness)."""
        n_harm = 5  # harmonics 2..6
        harm = torch.arange(2, 2 + n_harm, device=self.device, dtype=torch.float32)
        amp = self._u(B, K, 1, lo=0.0, hi=0.5, g=g) * self._u(B, K, n_harm, lo=-1, hi=1, g=g) / harm
        hard = torch.rand(B, K, generator=g, device=self.device) < 0.7
        return {
            "power": self._log_u(B, K, lo=0.8, hi=8.0, g=g),
            "harm": harm,
            "amp": amp,
            "phase": self._u(B, K, n_harm, lo=0, hi=2 * math.pi, g=g),
            # Edge width in object units: ~0.25 px for hard edges, up to ~3 px for soft ones.
            "edge_px": torch.where(hard, torch.full((B, K), 0.25, device=self.device), self._u(B, K, lo=0.5, hi=3.0, g=g)),
            "has_hole": torch.rand(B, K, generator=g, device=self.device) < 0.25,
            "hole_centre": self._u(B, K, 2, lo=-0.4, hi=0.4, g=g),
            "hole_radius": self._u(B, K, lo=0.12, hi=0.35, g=g),
        }

    def _alpha(self, shapes: dict[str, torch.Tensor], k: int, q: torch.Tensor) -> torch.Tensor:
        """Coverage [B,1,H,W] in [0,1] of layer k at object coords q [B,H,W,2]."""
        p = shapes["power"][:, k, None, None]
        d0 = (q[..., 0].abs().pow(p) + q[..., 1].abs().pow(p) + 1e-12).pow(1 / p)
        theta = torch.atan2(q[..., 1], q[..., 0])
        wobble = 1 + (shapes["amp"][:, k, None, None, :] * torch.cos(shapes["harm"] * theta[..., None] + shapes["phase"][:, k, None, None, :])).sum(-1)
        d = d0 / wobble.clamp_min(0.3)
        # Object units are ~radius px, so (1 - d) * radius / edge_px is roughly a pixel distance / edge width.
        sharp = (shapes["radius_px"][:, k] / shapes["edge_px"][:, k])[:, None, None]
        alpha = torch.sigmoid((1 - d) * sharp)
        hole_d = (q - shapes["hole_centre"][:, k, None, None, :]).norm(dim=-1) / shapes["hole_radius"][:, k, None, None]
        hole = torch.sigmoid((1 - hole_d) * sharp * shapes["hole_radius"][:, k, None, None]) * shapes["has_hole"][:, k, None, None]
        return (alpha * (1 - hole))[:, None]

    def _layer_textures(self, B: int, K: int, radius: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
        """Per layer: texture map (object coords -> texture coords), photo choice and colour transform, procedural noise."""
        n_photos = self.photos.shape[0]
        use_photo = (torch.rand(B, K, generator=g, device=self.device) < self.photo_prob) & (n_photos > 0)
        photo_idx = torch.randint(0, max(n_photos, 1), (B, K), generator=g, device=self.device)
        # Texture pixels per frame pixel (log-uniform), a random rotation and offset into the texture.
        density = self._log_u(B, K, lo=0.4, hi=2.5, g=g)
        spin = self._u(B, K, lo=-math.pi, hi=math.pi, g=g)
        offset = self._u(B, K, 2, lo=-1, hi=1, g=g)
        tex_scale = density * radius / (PHOTO_SIZE / 2)
        tex_lin = tex_scale[..., None, None] * _rot(spin)
        # Colour: random channel gains, a channel permutation now and then, sometimes inverted; grey photos tinted.
        gains = torch.exp(self._n(B, K, 3, std=0.25, g=g))
        perm = torch.argsort(torch.rand(B, K, 3, generator=g, device=self.device), -1)
        keep_order = torch.rand(B, K, 1, generator=g, device=self.device) < 0.6
        perm = torch.where(keep_order, torch.arange(3, device=self.device).expand(B, K, 3), perm)
        invert = torch.rand(B, K, generator=g, device=self.device) < 0.1
        # Procedural: multi-octave value noise in NOISE_SIZE^2 textures plus analytic stripes/checkers.
        noise = torch.zeros(B * K, 4, NOISE_SIZE, NOISE_SIZE, device=self.device)
        persistence = self._u(B * K, 1, 1, 1, lo=0.35, hi=0.8, g=g)
        amp = torch.ones_like(persistence)
        for res in (4, 8, 16, 32, 64):
            octave = torch.rand(B * K, 4, res, res, generator=g, device=self.device)
            noise = noise + amp * F.interpolate(octave, size=(NOISE_SIZE, NOISE_SIZE), mode="bicubic", align_corners=False)
            amp = amp * persistence
        lo_, hi_ = noise.amin((2, 3), keepdim=True), noise.amax((2, 3), keepdim=True)
        noise = (noise - lo_) / (hi_ - lo_ + 1e-6)
        return {
            "use_photo": use_photo,
            "photo_idx": photo_idx,
            "tex_lin": tex_lin,
            "tex_offset": offset,
            "gains": gains,
            "perm": perm,
            "invert": invert,
            "noise": noise.reshape(B, K, 4, NOISE_SIZE, NOISE_SIZE),
            "noise_scale": self._log_u(B, K, lo=1.0, hi=4.0, g=g),
            "colours": self._u(B, K, 2, 3, g=g),  # two colours the pattern blends between
            "pattern": torch.randint(0, 3, (B, K), generator=g, device=self.device),  # noise, stripes, checkers
            "freq": self._log_u(B, K, 2, lo=1.0, hi=12.0, g=g),
            "sharpness": self._log_u(B, K, lo=1.0, hi=30.0, g=g),
            "detail": self._u(B, K, lo=0.05, hi=0.4, g=g),
        }

    def _texture_colour(self, tex: dict[str, torch.Tensor], k: int, q: torch.Tensor) -> torch.Tensor:
        """Colour [B,3,H,W] of layer k at object coords q [B,H,W,2]."""
        u = torch.einsum("bhwj,bij->bhwi", q, tex["tex_lin"][:, k]) + tex["tex_offset"][:, k, None, None, :]
        # Photo: reflection padding makes every texture an endless mirrored tiling.
        photo = self.photos[tex["photo_idx"][:, k]] if self.photos.shape[0] else None
        colour_proc = self._procedural(tex, k, u)
        if photo is None:
            return colour_proc
        colour_photo = F.grid_sample(photo, u, mode="bilinear", padding_mode="reflection", align_corners=False)
        colour_photo = torch.gather(colour_photo, 1, tex["perm"][:, k, :, None, None].expand_as(colour_photo))
        colour_photo = (colour_photo * tex["gains"][:, k, :, None, None]).clamp(0, 1)
        colour_photo = torch.where(tex["invert"][:, k, None, None, None], 1 - colour_photo, colour_photo)
        return torch.where(tex["use_photo"][:, k, None, None, None], colour_photo, colour_proc)

    def _procedural(self, tex: dict[str, torch.Tensor], k: int, u: torch.Tensor) -> torch.Tensor:
        """Procedural colour [B,3,H,W] at texture coords u [B,H,W,2]."""
        u_noise = u * tex["noise_scale"][:, k, None, None, None]
        n = F.grid_sample(tex["noise"][:, k, :1], u_noise, mode="bilinear", padding_mode="reflection", align_corners=False)
        # The coloured detail comes from a finer sampling of the same noise, so flat areas still have texture.
        fine = F.grid_sample(tex["noise"][:, k, 1:], 5 * u_noise, mode="bilinear", padding_mode="reflection", align_corners=False)
        freq = tex["freq"][:, k]  # [B,2] cycles per texture unit
        stripes = torch.sin(math.pi * freq[:, 0, None, None] * u[..., 0])
        checkers = torch.sin(math.pi * freq[:, 0, None, None] * u[..., 0]) * torch.sin(math.pi * freq[:, 1, None, None] * u[..., 1])
        noise_pattern = 2 * n[:, 0] - 1
        kind = tex["pattern"][:, k, None, None]
        pattern = torch.where(kind == 0, noise_pattern, torch.where(kind == 1, stripes, checkers))
        weight = torch.sigmoid(tex["sharpness"][:, k, None, None] * pattern)[:, None]  # [B,1,H,W]
        c0, c1 = tex["colours"][:, k, 0, :, None, None], tex["colours"][:, k, 1, :, None, None]
        colour = c0 + (c1 - c0) * weight
        colour = colour + tex["detail"][:, k, None, None, None] * (fine - 0.5)
        return colour.clamp(0, 1)

    def _photometric_change(self, B: int, K: int, g: torch.Generator) -> torch.Tensor:
        """Frame-2 change per layer [B,K,3]: contrast factor, brightness offset, gamma."""
        contrast = torch.exp(self._n(B, K, std=0.08, g=g))
        brightness = self._n(B, K, std=0.03, g=g)
        gamma = torch.exp(self._n(B, K, std=0.08, g=g))
        return torch.stack([contrast, brightness, gamma], -1)

    def _visible(self, layer1: torch.Tensor, layer2: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """Frame-1 pixels whose layer is the one seen at their frame-2 position (nearest pixel) inside frame 2."""
        H, W = self.height, self.width
        x2 = (self._pixels[..., 0] + flow[:, 0]).round().long()
        y2 = (self._pixels[..., 1] + flow[:, 1]).round().long()
        inside = (x2 >= 0) & (x2 < W) & (y2 >= 0) & (y2 < H)
        idx = (y2.clamp(0, H - 1) * W + x2.clamp(0, W - 1)).flatten(1)
        seen = torch.gather(layer2.flatten(1), 1, idx).view_as(layer1)
        return inside & (seen == layer1)
