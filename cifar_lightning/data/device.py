"""Data loading without a DataLoader: uint8 images on the training device, augmented per batch.

The torchvision pipeline (cifar_lightning.augment.train_transform) runs six transforms per image
in CPU workers; for 32x32 images that per-image Python overhead dominates. BatchAugment draws the
same random parameters for a whole batch at once, folds every geometric step into one 3x3 matrix
per image and does a single warp, so a batch costs a handful of tensor ops on any device.
DeviceBatches replaces the DataLoader: it shuffles, shards across ranks, slices and augments
tensors that already live on the device, and can resume mid-epoch from a checkpoint.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from kornia.geometry.transform import get_perspective_transform, get_rotation_matrix2d

from cifar_lightning.augment import CIFAR_MEAN, CIFAR_STD, AugmentPreset

SIZE = 32  # CIFAR images are 32x32; the matrices below are built in pixel-index coordinates
CENTER = (SIZE - 1) / 2  # torchvision rotates about the image centre, pixel index 15.5
CORNERS = ((0.0, 0.0), (SIZE - 1.0, 0.0), (SIZE - 1.0, SIZE - 1.0), (0.0, SIZE - 1.0))
GRAY = (0.2989, 0.587, 0.114)  # torchvision's grayscale weights (kornia uses 0.299)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from several ints (splitmix-style mixing), stable across processes, Python
    versions and ranks. Both data paths seed their per-epoch and per-batch generators with it."""
    h = 0x9E3779B97F4A7C15
    for i in parts:
        h = ((h ^ (i & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


@functools.cache
def _const(values: tuple, device: torch.device) -> torch.Tensor:
    # Small constant tensors, made once per device: torch.tensor(..., device="cuda") on every
    # batch would be a blocking host-to-device copy each time. Never modified in place.
    return torch.tensor(values, dtype=torch.float32, device=device)


@functools.cache
def _row_offsets(width: int, device: torch.device) -> torch.Tensor:
    # (1, 3, 32): where row i of channel c starts in a (3, width, width) image, relative to its
    # top-left pixel. Made once per width and device; never modified in place.
    channel = torch.arange(3, device=device).view(1, 3, 1) * (width * width)
    return channel + torch.arange(SIZE, device=device).view(1, 1, SIZE) * width


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32: v2.ToDtype(scale=True) + v2.Normalize up to float rounding."""
    return _normalize_float(x.float(), mean, std, scale=1.0 / 255)


def _normalize_float(
    x: torch.Tensor, mean: Sequence[float], std: Sequence[float], scale: float = 1.0
) -> torch.Tensor:
    """(x * scale - mean) / std in place, with x * scale in [0, 1]: two passes, not three."""
    k = _const(tuple(scale / s for s in std), x.device).view(1, -1, 1, 1)
    b = _const(tuple(m / s for m, s in zip(mean, std, strict=True)), x.device).view(1, -1, 1, 1)
    return x.mul_(k).sub_(b)


def _range(value: Any, center: float, name: str) -> tuple[float, float]:
    # torchvision's conventions: a number v means [center - v, center + v], a pair is (min, max).
    if isinstance(value, (int, float)):
        return center - float(value), center + float(value)
    if len(value) == 2:
        return float(value[0]), float(value[1])
    raise ValueError(f"{name}={value} must be a number or a (min, max) pair")


def _eye(n: int, device: torch.device) -> torch.Tensor:
    return torch.eye(3, device=device).expand(n, 3, 3).clone()


def _translation(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    m = _eye(len(tx), tx.device)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def _affine_matrix(
    angle: torch.Tensor,
    translate: torch.Tensor,
    scale: torch.Tensor,
    shear_x: torch.Tensor,
    shear_y: torch.Tensor,
) -> torch.Tensor:
    """torchvision's forward affine (functional._get_inverse_affine_matrix, inverted=False),
    batched: T(center + t) @ RotateScaleShear @ T(-center). Written out rather than taken from
    kornia because kornia parameterises shear differently."""
    rot, sx, sy = torch.deg2rad(angle), torch.deg2rad(shear_x), torch.deg2rad(shear_y)
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -(a * torch.tan(sx) + torch.sin(rot))
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = torch.cos(rot) - c * torch.tan(sx)
    m = _eye(len(angle), angle.device)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = a * scale, b * scale, c * scale, d * scale
    m[:, 0, 2] = CENTER + translate[:, 0] - m[:, 0, 0] * CENTER - m[:, 0, 1] * CENTER
    m[:, 1, 2] = CENTER + translate[:, 1] - m[:, 1, 0] * CENTER - m[:, 1, 1] * CENTER
    return m


class BatchAugment:
    """The preset's random transforms for a whole batch: uint8 (N, 3, 32, 32) -> normalised float.

    Parameters are drawn per image from the same distributions as the torchvision v2 transforms
    (RandomCrop, RandomHorizontalFlip, RandomAffine, RandomPerspective, ColorJitter,
    RandomRotation), from a generator seeded by the caller: deterministic and independent of the
    global RNG. Known differences from the per-image pipeline, all at the interpolation level:
    one bilinear resampling instead of three (RandomAffine and RandomRotation default to nearest,
    RandomPerspective to bilinear), float arithmetic instead of rounding to uint8 after every step,
    and colour jitter applied after the fused warp (see apply()).
    """

    def __init__(
        self,
        preset: AugmentPreset,
        alternating_flip: bool = False,
        flip_seed: int = 0,
        mode: str = "bilinear",
    ) -> None:
        self.preset, self.alternating_flip, self.mode = preset, alternating_flip, mode
        self.flip_salt = derive_seed(flip_seed) & 0x7FFFFFFF
        affine, persp = dict(preset.affine or {}), dict(preset.perspective or {})
        if set(affine) - {"degrees", "translate", "scale", "shear"}:
            raise ValueError(f"unsupported augment.affine keys: {sorted(affine)}")
        self.degrees = _range(affine["degrees"], 0.0, "degrees") if affine else None
        self.translate = affine.get("translate")
        self.scale = tuple(affine["scale"]) if affine.get("scale") else None
        shear = affine.get("shear") or 0  # x range, then y range (y only with four values)
        if isinstance(shear, Sequence) and len(shear) == 4:
            self.shear = tuple(float(s) for s in shear)
        else:
            self.shear = (*_range(shear, 0.0, "shear"), 0.0, 0.0)
        self.distortion = persp.get("distortion_scale", 0.5) if persp else None
        self.perspective_p = persp.get("p", 0.5)
        jitter = dict(preset.color_jitter or {})
        if set(jitter) - {"brightness", "contrast", "saturation"}:
            raise ValueError(
                f"augment.color_jitter supports brightness/contrast/saturation, "
                f"got {sorted(jitter)}"
            )
        # (min, max) per factor in the order brightness, contrast, saturation; 1 = identity.
        ranges = [
            _range(jitter.get(k) or 0, 1.0, k) for k in ("brightness", "contrast", "saturation")
        ]
        self.jitter = [(max(0.0, lo), hi) for lo, hi in ranges] if jitter else None
        self.rotation = _range(preset.rotation, 0.0, "rotation") if preset.rotation else None
        # Crop and flip alone are integer pixel moves: no warp needed (the `standard` preset).
        self.warps = bool(self.degrees or self.distortion or self.rotation)
        self._buffers: dict[tuple, torch.Tensor] = {}  # see _buffer
        self._padded: tuple[torch.Tensor, torch.Tensor] | None = None  # see gather

    def _buffer(self, name: str, shape: tuple, dtype: torch.dtype, device: torch.device):
        """A work tensor kept from batch to batch (zeros when new). Only for intermediates that
        never leave apply(): on CPU a fresh multi-MB tensor per step comes from new pages of
        memory, and the page faults cost as much as the arithmetic."""
        key = (name, shape, dtype, device)
        if key not in self._buffers:
            self._buffers[key] = torch.zeros(shape, dtype=dtype, device=device)
        return self._buffers[key]

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> dict:
        """Per-image parameters, named and distributed as in torchvision's make_params."""
        g, p = generator, self.preset
        kw = {"generator": g, "device": device}

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return torch.rand(n, **kw) * (hi - lo) + lo

        out: dict[str, torch.Tensor] = {}
        if p.crop_padding:  # RandomCrop: top, left ~ randint(0, 2 * padding + 1)
            out["top"] = torch.randint(0, 2 * p.crop_padding + 1, (n,), **kw)
            out["left"] = torch.randint(0, 2 * p.crop_padding + 1, (n,), **kw)
        if p.flip:  # RandomHorizontalFlip(p=0.5)
            out["flip"] = torch.rand(n, **kw) < 0.5
        if self.degrees:  # RandomAffine: angle, integer translate, scale, shear
            out["angle"] = uniform(*self.degrees)
            t = torch.zeros(n, 2, device=device)
            if self.translate:
                for i, frac in enumerate(self.translate):
                    t[:, i] = uniform(-frac * SIZE, frac * SIZE).round()
            out["translate"] = t
            out["scale"] = uniform(*self.scale) if self.scale else torch.ones(n, device=device)
            out["shear_x"], out["shear_y"] = uniform(*self.shear[:2]), uniform(*self.shear[2:])
        if self.distortion is not None:  # RandomPerspective: each corner moves inwards
            bound = int(self.distortion * (SIZE // 2)) + 1
            inward = torch.randint(0, bound, (n, 4, 2), **kw).float()
            # Corners TL, TR, BR, BL; the sign says which way "inwards" is for x and y, as
            # randint(w - bound, w) = (w - 1) - randint(0, bound) in distribution.
            sign = _const(((1, 1), (-1, 1), (-1, -1), (1, -1)), device)
            applied = (torch.rand(n, **kw) < self.perspective_p).view(n, 1, 1)
            out["corners"] = _const(CORNERS, device) + torch.where(applied, sign * inward, 0.0)
        if self.jitter:  # ColorJitter: three factors, applied in a random order per image
            out["jitter"] = torch.stack([uniform(lo, hi) for lo, hi in self.jitter], dim=1)
            out["order"] = torch.rand(n, 3, **kw).argsort(dim=1)  # a uniform permutation
        if self.rotation:  # RandomRotation
            out["rotation"] = uniform(*self.rotation)
        return out

    def fixed_half(self, index: torch.Tensor) -> torch.Tensor:
        """A fixed pseudo-random half of the image ids (an integer hash of id and flip_seed)."""
        h = (index.long() ^ self.flip_salt) & 0x7FFFFFFF
        for _ in range(3):  # xorshift-multiply rounds; every product stays below 2**62
            h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & 0x7FFFFFFF
        return ((h >> 16) & 1).bool()

    def _params(self, n: int, seed: int, epoch: int, index: torch.Tensor | None, device) -> dict:
        g = torch.Generator(device=device).manual_seed(seed)
        params = self.sample(n, g, device)
        if self.alternating_flip and self.preset.flip:
            # airbench: every image is flipped on every other epoch instead of at random, so
            # consecutive epochs always see both orientations.
            ids = torch.arange(n, device=device) if index is None else index
            params["flip"] = self.fixed_half(ids) ^ bool(epoch % 2)
        return params

    def __call__(
        self, x: torch.Tensor, seed: int, epoch: int, index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Augment a uint8 batch. `index`: dataset ids of the images, used by alternating_flip
        (default: their positions in x)."""
        return self.apply(x, self._params(len(x), seed, epoch, index, x.device))

    def gather(
        self, source: torch.Tensor, index: torch.Tensor, seed: int, epoch: int
    ) -> torch.Tensor:
        """self(source[index], seed, epoch, index), the same numbers, faster when the preset
        needs no warp: the crops and flips are then read straight out of a zero-padded copy of
        `source` (and of its mirror image, when images flip), made once (see prepare) and kept
        as long as `source` is the same tensor, which must not change in place. Per batch that
        leaves one gather of image rows where the batch path gathers the batch, copies it and
        its mirror image into a padded buffer and gathers again."""
        params = self._params(len(index), seed, epoch, index, source.device)
        if self.warps:
            return self.apply(source.index_select(0, index), params)
        if "top" in params or "flip" in params:
            x = self._crop_flip(self.prepare(source), index, params)
        else:
            x = source.index_select(0, index)
        return self._unwarped(x, params)

    def prepare(self, source: torch.Tensor) -> torch.Tensor | None:
        """The padded copy of `source` that gather reads crops and flips from, made on the first
        call for this source; None for presets that have no use for one. Its size is
        (1 + flip) (32 + 2 crop_padding)^2 / 32^2 times that of source: for the 50,000 CIFAR-10
        training images with flips, 0.39 GB at padding 2 and 0.48 GB at padding 4."""
        if self.warps or not (self.preset.crop_padding or self.preset.flip):
            return None
        if self._padded is None or self._padded[0] is not source:
            self._padded = None  # the old copy goes before the new one is made
            pad, (n, c, h, w) = self.preset.crop_padding, source.shape
            copies = 2 if self.preset.flip else 1  # the mirror images follow the plain ones
            padded = torch.zeros(copies, n, c, h + 2 * pad, w + 2 * pad, dtype=source.dtype,
                                 device=source.device)  # fmt: skip
            padded[0, :, :, pad : pad + h, pad : pad + w] = source
            if copies == 2:
                padded[1, :, :, pad : pad + h, pad : pad + w] = source.flip(3)
            self._padded = (source, padded)
        return self._padded[1]

    def apply(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        """Apply given per-image parameters (as from sample()) to a uint8 batch."""
        p, n = self.preset, len(x)
        if not self.warps:
            if "top" in params or "flip" in params:
                image = torch.arange(len(x), device=x.device)
                x = self._crop_flip(self._pad_batch(x, params), image, params)
            return self._unwarped(x, params)

        # Forward maps (source pixel -> output pixel) in the seed's order; the output is
        # rotation @ perspective @ affine @ flip @ crop applied to the source.
        eye = _eye(n, x.device)
        crop = eye
        if "top" in params:  # RandomCrop with zero padding = integer translation, zero fill
            pad = p.crop_padding
            crop = _translation((pad - params["left"]).float(), (pad - params["top"]).float())
        flip = eye
        if "flip" in params:
            mirror = _const(((-1, 0, SIZE - 1), (0, 1, 0), (0, 0, 1)), x.device)
            flip = torch.where(params["flip"].view(n, 1, 1), mirror, eye)
        stages = []  # the steps between flip and rotation: affine, perspective
        if "angle" in params:
            a = _affine_matrix(params["angle"], params["translate"], params["scale"],
                               params["shear_x"], params["shear_y"])  # fmt: skip
            stages.append(a)
        if "corners" in params:
            # torchvision solves the homography on corner coordinates in which pixel i spans
            # [i, i + 1]; in pixel-index coordinates (pixel i at i) both point sets move by -0.5.
            start = _const(CORNERS, x.device).expand(n, 4, 2)
            stages.append(get_perspective_transform(start - 0.5, params["corners"] - 0.5))
        rot = None
        if "rotation" in params:
            # kornia's positive angle is counter-clockwise, as is torchvision's F.rotate.
            center = torch.full((n, 2), CENTER, device=x.device)
            r = get_rotation_matrix2d(center, params["rotation"], torch.ones(n, 2, device=x.device))
            rot = torch.cat([r, eye[:, 2:]], dim=1)

        matrix = flip @ crop
        for m in stages:
            matrix = m @ matrix
        if rot is not None:
            matrix = rot @ matrix
        # Pixel values stay in 0..255 until the final normalisation (one pass fewer).
        src = self._buffer("src", x.shape, torch.float32, x.device).copy_(x)
        img = F.grid_sample(
            src, _sampling_grid(matrix), mode=self.mode, padding_mode="zeros", align_corners=True
        )

        # torchvision crops every intermediate image to 32x32: a pixel the affine step moved
        # outside the canvas is black even if the rotation would bring it back. One fused warp
        # would show it, so map the output back to the rotation's input canvas, the perspective's
        # and the affine's, and black out the pixels any of them lost. (The crop and flip canvases
        # equal the affine's input canvas, the flip maps it onto itself, and the source canvas is
        # the warp's own zero padding.)
        backs, back = [], eye
        for m in ([] if rot is None else [rot]) + stages[::-1]:
            back = torch.linalg.inv_ex(m).inverse @ back
            backs.append(back)
        lo, hi = (t.view(len(backs), n, SIZE) for t in _row_intervals(torch.cat(backs)))
        rot_mask = None
        if rot is not None:  # the rotation's canvas: jitter first, then this mask (see below)
            rot_mask, lo, hi = _interval_mask(lo[0], hi[0]), lo[1:], hi[1:]
        if len(lo):  # the earlier canvases: one mask, applied before the jitter
            img.mul_(_interval_mask(lo.amax(0), hi.amin(0)))

        if "jitter" in params:
            # ColorJitter sits between perspective and rotation in the seed's order. It is
            # pointwise apart from contrast's image mean, so it commutes with the rotation up to
            # interpolation; applying it here, after the single warp, keeps torchvision's
            # treatment of the black fill: fill from crop/affine/perspective is jittered (contrast
            # below 1 turns it grey, exactly as when torchvision jitters the intermediate image),
            # while the rotation's fill, added after the jitter in torchvision, is masked back to
            # black below. Contrast's mean is taken over the pixels the rotation keeps, i.e. over
            # the (resampled) pre-rotation image. Jittering before the warp instead would leave
            # all fill black and take the mean without the black borders: both differ from
            # torchvision whenever the contrast factor is not 1.
            img = self._jitter(img, params, weight=rot_mask)
        if rot_mask is not None:
            img.mul_(rot_mask)
        return _normalize_float(img, p.mean, p.std, scale=1.0 / 255)

    def _unwarped(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        """The rest of a preset without warps for cropped and flipped uint8 images x: colour
        jitter, if any, then the normalisation: exactly torchvision's order."""
        p = self.preset
        if "jitter" not in params:
            return normalize(x, p.mean, p.std)
        out = self._jitter(x.float(), params, weight=None)  # in 0..255 units, see _jitter
        return _normalize_float(out, p.mean, p.std, scale=1.0 / 255)

    def _pad_batch(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        """x zero-padded, followed by its mirror image when images may flip: (1 or 2, N, 3, w, w).
        The buffer is kept between batches: only its interior is rewritten, the zero border
        never changes (zero-filling it anew cost as much as the gather itself)."""
        n, pad = len(x), self.preset.crop_padding
        w = SIZE + 2 * pad
        flip = "flip" in params
        src = self._buffer("padded", (2 if flip else 1, n, 3, w, w), x.dtype, x.device)
        src[0, :, :, pad : pad + SIZE, pad : pad + SIZE] = x
        if flip:
            src[1, :, :, pad : pad + SIZE, pad : pad + SIZE] = x.flip(3)
        return src

    def _crop_flip(self, src: torch.Tensor, image: torch.Tensor, params: dict) -> torch.Tensor:
        """Crops (zero padding) and flips of images `image` of a padded buffer (see _pad_batch)
        as one index_select of 32-pixel rows: flip(crop(x, left)) = crop(flip(x), 2 * pad -
        left), so a flipped crop reads plain rows of the mirrored copy."""
        n, pad, w = len(image), self.preset.crop_padding, src.shape[-1]
        top, left = params.get("top", 0), params.get("left", 0)
        first = image * (3 * w * w) + top * w + left  # the crop's top-left pixel in src
        if "flip" in params:
            # The mirrored copy follows the plain one; the crop's left edge mirrors too.
            first = first + params["flip"] * (src.shape[1] * 3 * w * w + 2 * pad - 2 * left)
        # Output row (image, channel, i) is the 32 bytes starting at first + this offset.
        starts = (first.view(n, 1, 1) + _row_offsets(w, src.device)).view(-1)
        # A view with one row per byte offset (overlapping, no copy), so the gather is a single
        # index_select of contiguous 32-byte rows: far faster than gathering pixel by pixel.
        windows = src.view(-1).as_strided((src.numel() - SIZE + 1, SIZE), (1, 1))
        return windows.index_select(0, starts).view(n, 3, SIZE, SIZE)

    def _jitter(self, x: torch.Tensor, params: dict, weight: torch.Tensor | None) -> torch.Tensor:
        """ColorJitter's brightness/contrast/saturation in a per-image random order, vectorised.

        All three are blends clamp(f * x + (1 - f) * target) with target 0 (brightness), the
        grey mean (contrast) or the grey image (saturation), so each of the three steps is one
        blend whose factor and target are picked per image by that image's order. `weight`
        (N, 1, 32, 32) restricts contrast's mean to some pixels. x is in 0..255 units (float):
        the blends are scale-free, only the clamp needs the top of the range."""
        n = len(x)
        to_gray = _const(GRAY, x.device)
        for step in range(3):
            op = params["order"][:, step]
            f = params["jitter"].gather(1, op.view(n, 1)).view(n, 1, 1, 1)
            gray = (to_gray @ x.view(n, 3, -1)).view(n, 1, SIZE, SIZE)
            if weight is None:
                mean = gray.mean(dim=(1, 2, 3), keepdim=True)
            else:
                total = weight.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1)
                mean = (gray * weight).sum(dim=(1, 2, 3), keepdim=True) / total
            is_c, is_s = (op == 1).view(n, 1, 1, 1), (op == 2).view(n, 1, 1, 1)
            target = torch.where(is_s, gray, mean * is_c)
            # f * x + (1 - f) * target, in place (a fresh 6 MB output per step cost page faults)
            # and broadcast (lerp with expand_as'd, stride-0 operands ran 8x slower).
            x = x.lerp_(target, 1 - f).clamp_(0, 255)
        return x


def _row_intervals(back: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which output pixels `back` (N, 3, 3) maps into the 32x32 canvas, as one x interval
    [lo, hi] per output row: (N, 32) each.

    The canvas is the square -0.5 <= x, y < 31.5 (pixel i covers [i - 0.5, i + 0.5), as with
    nearest-neighbour rounding), whose preimage under a projective map is a convex quadrilateral:
    four half-planes e . (x, y, 1) >= 0, with e a combination of back's rows (assuming w > 0,
    true for these mild maps). Per row each half-plane bounds x on one side, so 4 x 32 bounds per
    image replace 1024 per-pixel point transforms."""
    bx, by, bw = back[:, 0], back[:, 1], back[:, 2]
    lim = SIZE - 0.5
    edges = torch.stack([bx + 0.5 * bw, lim * bw - bx, by + 0.5 * bw, lim * bw - by], dim=1)
    ys = torch.arange(SIZE, device=back.device, dtype=back.dtype)
    # Edge k in row y: a * x + c >= 0, with c = b * y + const; a lower bound on x where a > 0,
    # an upper bound where a < 0. Where a = 0 the row is all in (c >= 0) or all out (c < 0), and
    # IEEE division says so by itself once a is +0 (adding 0.0 turns -0 into +0): -c / +0 is
    # -inf for c > 0, +inf for c < 0, and nan for c = 0, which becomes -inf. Plain float
    # arithmetic here, no boolean masks of the (N, 4, 32) bounds: five times faster on a CPU.
    a = edges[:, :, 0:1] + 0.0  # not a no-op: -0.0 + 0.0 = +0.0 (keep it if ever compiled)
    bound = (edges[:, :, 1:2] * ys + edges[:, :, 2:3]).div_(a).neg_()  # (N, 4, 32)
    lower = a >= 0
    lo = torch.where(lower, bound, -math.inf)
    lo = lo.nan_to_num_(nan=-math.inf, posinf=math.inf, neginf=-math.inf).amax(dim=1)
    hi = torch.where(lower, math.inf, bound).amin(dim=1)
    return lo, hi


def _sampling_grid(forward: torch.Tensor) -> torch.Tensor:
    """grid_sample's grid (N, 32, 32, 2) for forward maps (N, 3, 3) in pixel-index coordinates:
    the source point of every output pixel, scaled to [-1, 1] as align_corners=True reads it.

    kornia's warp_perspective computes the same grid with a broadcast matrix product over all
    pixels. Here each homogeneous coordinate is a (32, 32) plane, the sum of a per-row and a
    per-column term, so every pass runs over rows of 32 floats; with the coordinates last
    (N, 32, 32, 3), as kornia and an earlier version of this function had them, each pass ran
    over rows of 3 and took five times as long on a CPU. The result is a permuted view, which
    grid_sample reads as fast as a contiguous grid on a CPU (cuDNN's sampler copies it)."""
    dev = forward.device
    to_unit = _const(((2 / (SIZE - 1), 0, -1), (0, 2 / (SIZE - 1), -1), (0, 0, 1)), dev)
    back = to_unit @ torch.linalg.inv_ex(forward).inverse
    ar = torch.arange(SIZE, dtype=back.dtype, device=dev)
    # Homogeneous source point of output pixel (column j, row i) = back @ (j, i, 1).
    rows = back[:, :, 1:2] * ar + back[:, :, 2:3]  # (N, 3, 32): the terms of row i
    cols = back[:, :, 0:1] * ar  # (N, 3, 32): the terms of column j
    points = rows.unsqueeze(-1) + cols.unsqueeze(-2)  # (N, 3, 32, 32)
    return (points[:, :2] / points[:, 2:]).permute(0, 2, 3, 1)


def _interval_mask(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(N, 32) row intervals -> float mask (N, 1, 32, 32): 1 where lo <= x <= hi."""
    xs = torch.arange(SIZE, device=lo.device, dtype=lo.dtype)
    # Columns are integers: inside iff ceil(lo) <= x <= floor(hi), i.e. iff both distances
    # below are >= 1 (they are integers). min(..).clamp(0, 1) is then the mask, in three float
    # ops instead of two comparisons, an and and a conversion (3x faster on a CPU).
    first = lo.ceil().clamp_(0, SIZE).unsqueeze(-1)
    last = hi.floor().clamp_(-1, SIZE - 1).unsqueeze(-1)
    return torch.minimum(xs - first + 1, last + 1 - xs).clamp_(0, 1).unsqueeze(1)


class DeviceBatches:
    """An iterable of (x, y) batches over tensors already on the training device.

    Lightning's Trainer.fit accepts it in place of a DataLoader. Training (shuffle=True): a new
    permutation every epoch from a generator seeded by (seed, epoch), the same on every rank;
    rank r takes perm[r::world_size] cut to a common length so all ranks run the same number of
    steps; batch b is augmented with a seed derived from (seed, epoch, b, rank), so a resumed run
    sees exactly the batches the uninterrupted run would have. Evaluation (shuffle=False): fixed
    order, normalisation only, nothing dropped (with world_size > 1 the ranks' shards may then
    differ by one image, as nothing is padded or duplicated).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        augment: BatchAugment | None = None,
        mean: Sequence[float] = CIFAR_MEAN,
        std: Sequence[float] = CIFAR_STD,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if x.dtype != torch.uint8 or x.dim() != 4 or len(x) != len(y):
            raise ValueError(f"expected uint8 images (N, 3, H, W) and N labels, got {x.dtype} "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")  # fmt: skip
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch_size={batch_size}, rank={rank}, world_size={world_size}")
        if not shuffle and (augment is not None or drop_last):
            raise ValueError("evaluation batches (shuffle=False) are never augmented or dropped")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.augment, self.mean, self.std = shuffle, augment, mean, std
        self.seed, self.drop_last, self.rank, self.world_size = seed, drop_last, rank, world_size
        # Lightning calls iterable.sampler.set_epoch(epoch) every epoch, and reads
        # batch_sampler whenever sampler exists (to tell whether evaluation data is shuffled).
        self.sampler, self.batch_sampler = self, None
        if augment is not None:
            augment.prepare(x)  # a one-time copy, made with the data rather than in a step
        self.epoch = 0
        self.position = 0  # batches of self.epoch already yielded: what a checkpoint records
        self._resume_at = 0  # where the next pass starts; only load_state_dict sets it

    def _shard(self, epoch: int) -> torch.Tensor:
        n = len(self.y)
        if not self.shuffle:
            return torch.arange(self.rank, n, self.world_size)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        perm = torch.randperm(n, generator=generator)  # on CPU: identical on every rank
        return perm[self.rank :: self.world_size][: n // self.world_size]

    def __len__(self) -> int:
        n = len(self.y) // self.world_size if self.shuffle else len(self._shard(0))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # a new epoch starts at its first batch
            self.epoch, self.position, self._resume_at = epoch, 0, 0

    # Checkpointing, as Lightning 2.x does it (pytorch_lightning/loops/fit_loop.py,
    # utilities/combined_loader.py, loops/fetchers.py):
    # - Save: FitLoop.on_save_checkpoint stores [state_dict() of every train iterable that has
    #   state_dict and load_state_dict] under loops.fit_loop.state_dict.combined_loader. Saves
    #   happen in hooks (ModelCheckpoint: on_train_batch_end, epoch end, validation end), i.e.
    #   after the current batch was fetched and used. Because this class has __len__, the
    #   training fetcher (_PrefetchDataFetcher) does not read ahead, so the state counts exactly
    #   the batches consumed, the current one included. (Without __len__ it would prefetch one
    #   batch and the saved position would be one batch ahead.)
    # - Restore: FitLoop.setup_data calls load_state_dict() (only when restarting from a
    #   checkpoint), then iter(); on_advance_start then calls sampler.set_epoch(epochs done),
    #   still before the first next(); the epoch loop continues its batch_idx where it stopped.
    #   Validation iterables are not saved or restored.
    # Hence: position = batches yielded so far, advanced before each yield; the next pass
    # starts there; set_epoch with the same epoch keeps it. Verified by tests that resume
    # Trainer.fit mid-epoch and at an epoch boundary and compare with an uninterrupted run.
    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._resume_at = state["position"]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A generator: nothing below runs until the first next(). Lightning calls iter() before
        # set_epoch() (FitLoop.setup_data, then on_advance_start), so the epoch and resume point
        # are read only once they are final, as DataLoader's samplers do.
        epoch, start, n_batches = self.epoch, self._resume_at, len(self)
        self._resume_at = 0  # one-shot: an abandoned pass (limit_*_batches) restarts at 0
        index = self._shard(epoch).to(self.x.device)
        contiguous = not self.shuffle and self.world_size == 1
        for b in range(start, n_batches):
            lo, hi = b * self.batch_size, (b + 1) * self.batch_size
            if contiguous:  # evaluation on one device: plain slices, no gather
                x, y = normalize(self.x[lo:hi], self.mean, self.std), self.y[lo:hi]
            else:
                idx = index[lo:hi]
                y = self.y[idx]
                if self.augment is None:
                    # index_select, not x[idx]: on a CPU the latter took 6x as long for a batch
                    # of CIFAR images.
                    x = normalize(self.x.index_select(0, idx), self.mean, self.std)
                else:
                    seed = derive_seed(self.seed, epoch, b, self.rank)  # rank: no shared crops
                    x = self.augment.gather(self.x, idx, seed, epoch)
            # Advance the state before yielding: the consumer may never call next() again
            # (Lightning stops after len(self) batches), and a checkpoint taken while this batch
            # is being used must say "resume after it". After the last batch that is the start
            # of the next epoch, so plain loops without set_epoch() also reshuffle.
            self.position = b + 1
            if self.shuffle and self.position == n_batches:
                self.epoch, self.position = epoch + 1, 0
            yield x, y
