"""Augmentation presets (conf/augment) turned into torchvision transforms.

A preset is a flat set of parameters rather than a list of transform objects, so the per-image
torchvision pipeline here and a batched on-device pipeline can be built from the same numbers.
Train and eval transforms are separate: eval only converts and normalises, never randomises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torchvision.transforms import v2

# CIFAR-10's per-channel training-set statistics: written here only (conf/augment presets that
# normalise with them leave mean/std out).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class AugmentPreset:
    crop_padding: int = 0  # RandomCrop(32, padding=...); 0 = off
    padding_mode: str = "constant"  # the crop's fill: zeros (constant) or the image mirrored
    flip: bool = False  # RandomHorizontalFlip(p=0.5)
    affine: Mapping[str, Any] | None = None  # RandomAffine(**affine)
    perspective: Mapping[str, Any] | None = None  # RandomPerspective(**perspective)
    color_jitter: Mapping[str, Any] | None = None  # ColorJitter(**color_jitter)
    rotation: float | None = None  # RandomRotation(rotation)
    mean: Sequence[float] = field(default=CIFAR_MEAN)
    std: Sequence[float] = field(default=CIFAR_STD)

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")
        if self.padding_mode not in ("constant", "reflect"):
            raise ValueError(f"augment.padding_mode must be constant or reflect, got "
                             f"{self.padding_mode!r}")  # fmt: skip

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> AugmentPreset:
        return cls(**dict(cfg or {}))

    @property
    def is_random(self) -> bool:
        return bool(
            self.crop_padding
            or self.flip
            or self.affine
            or self.perspective
            or self.color_jitter
            or self.rotation
        )


def _to_float(preset: AugmentPreset) -> list[v2.Transform]:
    # ToTensor() + Normalize() of the classic pipeline, on uint8 tensors.
    return [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(preset.mean), std=list(preset.std)),
    ]


def train_transform(preset: AugmentPreset) -> v2.Compose:
    """Per-image random transforms in the seed's order, then conversion and normalisation."""
    steps: list[v2.Transform] = []
    if preset.crop_padding:
        steps.append(v2.RandomCrop(32, padding=preset.crop_padding,
                                   padding_mode=preset.padding_mode))  # fmt: skip
    if preset.flip:
        steps.append(v2.RandomHorizontalFlip())
    if preset.affine:
        affine = dict(preset.affine)
        if "scale" in affine:
            affine["scale"] = tuple(affine["scale"])
        steps.append(v2.RandomAffine(**affine))
    if preset.perspective:
        steps.append(v2.RandomPerspective(**dict(preset.perspective)))
    if preset.color_jitter:
        steps.append(v2.ColorJitter(**dict(preset.color_jitter)))
    if preset.rotation:
        steps.append(v2.RandomRotation(preset.rotation))
    return v2.Compose(steps + _to_float(preset))


def eval_transform(preset: AugmentPreset) -> v2.Compose:
    """Deterministic: conversion and the preset's normalisation only."""
    return v2.Compose(_to_float(preset))
