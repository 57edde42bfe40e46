"""Geometry of BatchAugment's fused warp: per-image 3x3 maps, the sampling grid, canvas masks.

Every geometric step of a preset (crop, flip, affine, perspective, rotation) is a 3x3 matrix in
pixel-index coordinates (pixel i at i); their product is resampled once with grid_sample, and
masks black out what torchvision's step-by-step pipeline would have cropped in between.
"""

from __future__ import annotations

import functools
import math

import torch

SIZE = 32  # CIFAR images are 32x32; the matrices below are built in pixel-index coordinates
CENTER = (SIZE - 1) / 2  # torchvision rotates about the image centre, pixel index 15.5
CORNERS = ((0.0, 0.0), (SIZE - 1.0, 0.0), (SIZE - 1.0, SIZE - 1.0), (0.0, SIZE - 1.0))


@functools.cache
def constant(values: tuple, device: torch.device) -> torch.Tensor:
    """A small constant float32 tensor, made once per device: torch.tensor(..., device="cuda")
    on every batch would be a blocking host-to-device copy each time. Never modify it in place."""
    return torch.tensor(values, dtype=torch.float32, device=device)


def eye(n: int, device: torch.device) -> torch.Tensor:
    return torch.eye(3, device=device).expand(n, 3, 3).clone()


def translation(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    m = eye(len(tx), tx.device)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def affine_matrix(
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
    m = eye(len(angle), angle.device)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = a * scale, b * scale, c * scale, d * scale
    m[:, 0, 2] = CENTER + translate[:, 0] - m[:, 0, 0] * CENTER - m[:, 0, 1] * CENTER
    m[:, 1, 2] = CENTER + translate[:, 1] - m[:, 1, 0] * CENTER - m[:, 1, 1] * CENTER
    return m


def forward_maps(
    params: dict, crop_padding: int, n: int, device: torch.device
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
    """Forward maps (source pixel -> output pixel) of n images with BatchAugment.sample's
    parameters, in the seed's order: (the whole map, [affine, perspective] as present, rotation
    or None). The whole map is rotation @ perspective @ affine @ flip @ crop."""
    identity = eye(n, device)
    crop = identity
    if "top" in params:  # RandomCrop with zero padding = integer translation, zero fill
        pad = crop_padding
        crop = translation((pad - params["left"]).float(), (pad - params["top"]).float())
    flip = identity
    if "flip" in params:
        mirror = constant(((-1, 0, SIZE - 1), (0, 1, 0), (0, 0, 1)), device)
        flip = torch.where(params["flip"].view(n, 1, 1), mirror, identity)
    stages = []  # the steps between flip and rotation: affine, perspective
    if "angle" in params:
        a = affine_matrix(params["angle"], params["translate"], params["scale"],
                          params["shear_x"], params["shear_y"])  # fmt: skip
        stages.append(a)
    if "corners" in params:
        # kornia is imported here, not at the top: its import costs up to 0.7 s of start-up and
        # only the perspective and rotation presets need it (fast94's crops and flips don't).
        from kornia.geometry.transform import get_perspective_transform

        # torchvision solves the homography on corner coordinates in which pixel i spans
        # [i, i + 1]; in pixel-index coordinates (pixel i at i) both point sets move by -0.5.
        start = constant(CORNERS, device).expand(n, 4, 2)
        stages.append(get_perspective_transform(start - 0.5, params["corners"] - 0.5))
    rot = None
    if "rotation" in params:
        from kornia.geometry.transform import get_rotation_matrix2d

        # kornia's positive angle is counter-clockwise, as is torchvision's F.rotate.
        center = torch.full((n, 2), CENTER, device=device)
        r = get_rotation_matrix2d(center, params["rotation"], torch.ones(n, 2, device=device))
        rot = torch.cat([r, identity[:, 2:]], dim=1)

    matrix = flip @ crop
    for m in stages:
        matrix = m @ matrix
    if rot is not None:
        matrix = rot @ matrix
    return matrix, stages, rot


def canvas_masks(
    stages: list[torch.Tensor], rot: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(mask of the earlier canvases, mask of the rotation's canvas), each (N, 1, 32, 32) or
    None, for the maps forward_maps returned.

    torchvision crops every intermediate image to 32x32: a pixel the affine step moved outside
    the canvas is black even if the rotation would bring it back. One fused warp would show it,
    so map the output back to the rotation's input canvas, the perspective's and the affine's,
    and black out the pixels any of them lost. (The crop and flip canvases equal the affine's
    input canvas, the flip maps it onto itself, and the source canvas is the warp's own zero
    padding.)"""
    last = rot if rot is not None else stages[-1]
    n = len(last)
    backs, back = [], eye(n, last.device)
    for m in ([] if rot is None else [rot]) + stages[::-1]:
        back = torch.linalg.inv_ex(m).inverse @ back
        backs.append(back)
    lo, hi = (t.view(len(backs), n, SIZE) for t in row_intervals(torch.cat(backs)))
    rot_mask = None
    if rot is not None:  # the rotation's canvas: the caller applies it after the colour jitter
        rot_mask, lo, hi = interval_mask(lo[0], hi[0]), lo[1:], hi[1:]
    earlier = interval_mask(lo.amax(0), hi.amin(0)) if len(lo) else None  # one mask for all
    return earlier, rot_mask


def row_intervals(back: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def sampling_grid(forward: torch.Tensor) -> torch.Tensor:
    """grid_sample's grid (N, 32, 32, 2) for forward maps (N, 3, 3) in pixel-index coordinates:
    the source point of every output pixel, scaled to [-1, 1] as align_corners=True reads it.

    kornia's warp_perspective computes the same grid with a broadcast matrix product over all
    pixels. Here each homogeneous coordinate is a (32, 32) plane, the sum of a per-row and a
    per-column term, so every pass runs over rows of 32 floats; with the coordinates last
    (N, 32, 32, 3), as kornia and an earlier version of this function had them, each pass ran
    over rows of 3 and took five times as long on a CPU. The result is a permuted view, which
    grid_sample reads as fast as a contiguous grid on a CPU (cuDNN's sampler copies it)."""
    dev = forward.device
    to_unit = constant(((2 / (SIZE - 1), 0, -1), (0, 2 / (SIZE - 1), -1), (0, 0, 1)), dev)
    back = to_unit @ torch.linalg.inv_ex(forward).inverse
    ar = torch.arange(SIZE, dtype=back.dtype, device=dev)
    # Homogeneous source point of output pixel (column j, row i) = back @ (j, i, 1).
    rows = back[:, :, 1:2] * ar + back[:, :, 2:3]  # (N, 3, 32): the terms of row i
    cols = back[:, :, 0:1] * ar  # (N, 3, 32): the terms of column j
    points = rows.unsqueeze(-1) + cols.unsqueeze(-2)  # (N, 3, 32, 32)
    return (points[:, :2] / points[:, 2:]).permute(0, 2, 3, 1)


def interval_mask(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(N, 32) row intervals -> float mask (N, 1, 32, 32): 1 where lo <= x <= hi."""
    xs = torch.arange(SIZE, device=lo.device, dtype=lo.dtype)
    # Columns are integers: inside iff ceil(lo) <= x <= floor(hi), i.e. iff both distances
    # below are >= 1 (they are integers). min(..).clamp(0, 1) is then the mask, in three float
    # ops instead of two comparisons, an and and a conversion (3x faster on a CPU).
    first = lo.ceil().clamp_(0, SIZE).unsqueeze(-1)
    last = hi.floor().clamp_(-1, SIZE - 1).unsqueeze(-1)
    return torch.minimum(xs - first + 1, last + 1 - xs).clamp_(0, 1).unsqueeze(1)
