"""Batched augmentation: a preset's random transforms for a whole uint8 batch at once.

The torchvision pipeline (data.augment.train_transform) runs six transforms per image in CPU
workers; for 32x32 images that per-image Python overhead dominates. BatchAugment draws the same
random parameters for a whole batch at once, folds every geometric step into one 3x3 matrix per
image and does a single warp (data.warp), so a batch costs a handful of tensor ops on any device.
Presets without warps read their crops and flips straight out of a padded copy of the images.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from cifar_lightning.data.augment import AugmentPreset
from cifar_lightning.data.order import derive_seed
from cifar_lightning.data.photometric import color_jitter, normalize, normalize_float
from cifar_lightning.data.warp import (
    CORNERS,
    SIZE,
    canvas_masks,
    constant,
    forward_maps,
    sampling_grid,
)


@functools.cache
def _row_offsets(width: int, device: torch.device) -> torch.Tensor:
    # (1, 3, 32): where row i of channel c starts in a (3, width, width) image, relative to its
    # top-left pixel. Made once per width and device; never modified in place.
    channel = torch.arange(3, device=device).view(1, 3, 1) * (width * width)
    return channel + torch.arange(SIZE, device=device).view(1, 1, SIZE) * width


def _range(value: Any, center: float, name: str) -> tuple[float, float]:
    # torchvision's conventions: a number v means [center - v, center + v], a pair is (min, max).
    if isinstance(value, (int, float)):
        return center - float(value), center + float(value)
    if len(value) == 2:
        return float(value[0]), float(value[1])
    raise ValueError(f"{name}={value} must be a number or a (min, max) pair")


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
        if self.warps and preset.crop_padding and preset.padding_mode != "constant":
            raise ValueError(
                f"augment.padding_mode={preset.padding_mode} needs a preset of crops and flips "
                f"only: the batched warp fills with zeros. Use padding_mode=constant here."
            )
        self._buffers: dict[tuple, torch.Tensor] = {}  # see _buffer
        self._padded: tuple[torch.Tensor, torch.Tensor] | None = None  # see prepare
        self._half: tuple[tuple, torch.Tensor] | None = None  # see _flips

    def _buffer(
        self, name: str, shape: tuple, dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """A work tensor kept from batch to batch (zeros when new). Only for intermediates that
        never leave apply(): on CPU a fresh multi-MB tensor per step comes from new pages of
        memory, and the page faults cost as much as the arithmetic."""
        key = (name, shape, dtype, device)
        if key not in self._buffers:
            self._buffers[key] = torch.zeros(shape, dtype=dtype, device=device)
        return self._buffers[key]

    def sample(
        self, n: int, generator: torch.Generator, device: torch.device, flips: bool = True
    ) -> dict:
        """Per-image parameters, named and distributed as in torchvision's make_params.
        flips=False: no random flips drawn (alternating flips replace them); only for presets
        that draw nothing after the flips (crops come before them), so that leaving them out
        changes no other parameter."""
        g, p = generator, self.preset
        kw = {"generator": g, "device": device}

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return torch.rand(n, **kw) * (hi - lo) + lo

        out: dict[str, torch.Tensor] = {}
        if p.crop_padding:  # RandomCrop: top, left ~ randint(0, 2 * padding + 1)
            out["top"] = torch.randint(0, 2 * p.crop_padding + 1, (n,), **kw)
            out["left"] = torch.randint(0, 2 * p.crop_padding + 1, (n,), **kw)
        if p.flip and flips:  # RandomHorizontalFlip(p=0.5)
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
            sign = constant(((1, 1), (-1, 1), (-1, -1), (1, -1)), device)
            applied = (torch.rand(n, **kw) < self.perspective_p).view(n, 1, 1)
            out["corners"] = constant(CORNERS, device) + torch.where(applied, sign * inward, 0.0)
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

    def _flips(self, index: torch.Tensor, epoch: int, size: int) -> torch.Tensor:
        """Alternating flips of images `index` of a source of `size` images: fixed_half of
        every id, hashed once per source and looked up (one op per batch instead of a dozen)."""
        key = (size, index.device)
        if self._half is None or self._half[0] != key:
            self._half = (key, self.fixed_half(torch.arange(size, device=index.device)))
        flip = self._half[1].index_select(0, index)
        # airbench: every image is flipped on every other epoch instead of at random, so
        # consecutive epochs always see both orientations.
        return ~flip if epoch % 2 else flip

    def _params(
        self,
        seeds: Sequence[int],
        sizes: Sequence[int],
        epoch: int,
        index: torch.Tensor,
        source_size: int,
    ) -> dict:
        """Parameters for consecutive batches of `sizes` images, batch b's drawn from a generator
        seeded with seeds[b], of images `index` (all batches') of a source of `source_size`."""
        device, alternating = index.device, self.alternating_flip and self.preset.flip
        # Skip drawing the flips alternating ones replace, unless draws follow them (a warp,
        # jitter): those must stay the draws they were.
        later = self.degrees or self.distortion is not None or self.jitter or self.rotation
        drawn = [self.sample(n, torch.Generator(device=device).manual_seed(seed), device,
                             flips=not alternating or bool(later))
                 for seed, n in zip(seeds, sizes, strict=True)]  # fmt: skip
        params = drawn[0] if len(drawn) == 1 else {
            k: torch.cat([d[k] for d in drawn]) for k in drawn[0]}  # fmt: skip
        if alternating:
            params["flip"] = self._flips(index, epoch, source_size)
        return params

    def gather(
        self, source: torch.Tensor, index: torch.Tensor, seed: int, epoch: int
    ) -> torch.Tensor:
        """The images source[index] (`index`: their dataset ids), augmented with parameters
        drawn from a generator seeded with `seed`; `epoch` decides alternating flips.

        Presets with warps gather the batch and apply() them. Presets without read the crops
        and flips straight out of a zero-padded copy of `source` (and of its mirror image, when
        images flip), made once (see prepare) and kept as long as `source` is the same tensor,
        which must not change in place. Per batch that leaves one gather of image rows where
        augmenting the gathered batch would copy it and its mirror image into a padded buffer
        and gather again."""
        return self.gather_batches(source, index, [seed], [len(index)], epoch)

    def gather_batches(
        self,
        source: torch.Tensor,
        index: torch.Tensor,
        seeds: Sequence[int],
        sizes: Sequence[int],
        epoch: int,
    ) -> torch.Tensor:
        """gather() of consecutive batches in one go: `index` holds their images in order,
        batch b has sizes[b] of them and its parameters drawn from seeds[b]. The result is
        exactly the batches one gather() per batch gives, one after another, made with a few
        large ops in place of a dozen small ones per batch (on a GPU, kernel launches the
        training step would wait behind). Presets with warps go batch by batch."""
        if self.warps:
            out, lo = [], 0
            for seed, n in zip(seeds, sizes, strict=True):
                idx = index if len(sizes) == 1 else index[lo : lo + n]
                params = self._params([seed], [n], epoch, idx, len(source))
                out.append(self.apply(source.index_select(0, idx), params))
                lo += n
            return out[0] if len(out) == 1 else torch.cat(out)
        params = self._params(seeds, sizes, epoch, index, len(source))
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
            if self.preset.padding_mode == "reflect" and pad:
                # Rows and columns -pad..side+pad-1 (square images, as _crop_flip reads them)
                # read from their mirror images inside, as F.pad's reflect does, by an index
                # gather that any dtype and device has. The mirrored copy reflects the mirrored
                # image: flip and reflection commute.
                i = torch.arange(-pad, h + pad, device=source.device).abs()
                i = torch.where(i >= h, 2 * (h - 1) - i, i)
                padded[0] = source.index_select(2, i).index_select(3, i)
                if copies == 2:
                    padded[1] = padded[0].flip(3)
            else:
                padded[0, :, :, pad : pad + h, pad : pad + w] = source
                if copies == 2:
                    padded[1, :, :, pad : pad + h, pad : pad + w] = source.flip(3)
            self._padded = (source, padded)
        return self._padded[1]

    def apply(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        """Apply given per-image parameters (as from sample()) to a uint8 batch: one fused warp
        (see data.warp). Only for presets with warps; gather() handles every preset."""
        if not self.warps:
            raise ValueError("apply() is for presets with warps; use gather() for crops and flips")
        p, n = self.preset, len(x)
        matrix, stages, rot = forward_maps(params, p.crop_padding, n, x.device)
        # Pixel values stay in 0..255 until the final normalisation (one pass fewer).
        src = self._buffer("src", x.shape, torch.float32, x.device).copy_(x)
        img = F.grid_sample(
            src, sampling_grid(matrix), mode=self.mode, padding_mode="zeros", align_corners=True
        )

        # What torchvision's step-by-step pipeline crops in between (see canvas_masks): the
        # earlier canvases' mask now, before the jitter; the rotation's after it (see below).
        earlier, rot_mask = canvas_masks(stages, rot)
        if earlier is not None:
            img.mul_(earlier)

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
            img = color_jitter(img, params, weight=rot_mask)
        if rot_mask is not None:
            img.mul_(rot_mask)
        return normalize_float(img, p.mean, p.std, scale=1.0 / 255)

    def _unwarped(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        """The rest of a preset without warps for cropped and flipped uint8 images x: colour
        jitter, if any, then the normalisation: exactly torchvision's order."""
        p = self.preset
        if "jitter" not in params:
            return normalize(x, p.mean, p.std)
        out = color_jitter(x.float(), params, weight=None)  # in 0..255 units (photometric)
        return normalize_float(out, p.mean, p.std, scale=1.0 / 255)

    def _crop_flip(self, src: torch.Tensor, image: torch.Tensor, params: dict) -> torch.Tensor:
        """Crops (the preset's padding) and flips of images `image` of a padded copy (see prepare)
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
