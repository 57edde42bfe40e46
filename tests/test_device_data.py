"""BatchAugment and DeviceBatches against the torchvision DataLoader path they replace."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import pytorch_lightning as L
import torch
import yaml
from kornia.geometry.transform import warp_perspective
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from cifar_lightning.data.augment import AugmentPreset, eval_transform, train_transform
from cifar_lightning.data.batch_augment import BatchAugment
from cifar_lightning.data.device_loader import DeviceBatches
from cifar_lightning.data.loaders import ImageTensorDataset
from cifar_lightning.data.photometric import normalize
from cifar_lightning.data.warp import interval_mask, row_intervals, sampling_grid
from tests.synthetic import make_images

CONF = Path(__file__).resolve().parents[1] / "conf" / "augment"
RAW = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # outputs stay in [0, 1]
BILINEAR, NEAREST = F.InterpolationMode.BILINEAR, F.InterpolationMode.NEAREST
CORNERS = [[0, 0], [31, 0], [31, 31], [0, 31]]


@pytest.fixture(autouse=True)
def one_thread():
    # Per-image torchvision ops are tiny: on a busy machine two intra-op threads make them up
    # to 50x slower (each op waits for the slower thread), one thread keeps the tests quick.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def preset(name: str) -> AugmentPreset:
    return AugmentPreset.from_config(yaml.safe_load((CONF / f"{name}.yaml").read_text()))


def images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)


def structured(n_per_class: int) -> torch.Tensor:
    x, _ = make_images(n_per_class, 0)
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()


def collect(batches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*batches, strict=True)
    return torch.cat(xs), torch.cat(ys)


def augment(aug: BatchAugment, x: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """The whole batch x augmented (image ids = positions in x)."""
    return aug.gather(x, torch.arange(len(x)), seed, epoch)


def reference(
    aug: BatchAugment, source: torch.Tensor, index: torch.Tensor, seed: int, epoch: int
) -> torch.Tensor:
    """What gather must return, the plain way: draw the parameters as gather does, gather the
    batch, then pad, crop and flip each image with ordinary slicing (presets without warps) or
    apply() the warp; the colour jitter and normalisation are BatchAugment's own."""
    x = source[index]
    params = aug.sample(len(index), torch.Generator().manual_seed(seed), torch.device("cpu"))
    if aug.alternating_flip and aug.preset.flip:
        params["flip"] = aug.fixed_half(index) ^ bool(epoch % 2)
    if aug.warps:
        return aug.apply(x, params)
    pad = aug.preset.crop_padding
    padded = torch.nn.functional.pad(x, [pad] * 4)
    out = []
    for i in range(len(x)):
        top, left = int(params["top"][i]) if pad else 0, int(params["left"][i]) if pad else 0
        img = padded[i, :, top : top + 32, left : left + 32]
        out.append(img.flip(-1) if "flip" in params and params["flip"][i] else img)
    return aug._unwarped(torch.stack(out), params)


# --- the DataLoader contract ----------------------------------------------------------------


def test_eval_batches_equal_the_dataloader_path():
    p = preset("none")
    x, y = images(70), torch.arange(70) % 10
    ours = DeviceBatches(x, y, 16, shuffle=False, mean=p.mean, std=p.std)
    theirs = DataLoader(ImageTensorDataset(x, y, eval_transform(p)), batch_size=16)
    assert len(ours) == len(theirs) == 5
    for (xa, ya), (xb, yb) in zip(ours, theirs, strict=True):
        assert xa.shape == xb.shape and xa.dtype == xb.dtype == torch.float32
        assert ya.dtype == yb.dtype == torch.int64
        torch.testing.assert_close(xa, xb, atol=1e-5, rtol=0)
        assert torch.equal(ya, yb)


def test_training_batches_keep_images_with_their_labels():
    p = preset("standard")
    x, y = images(50), torch.arange(50)  # label = dataset index
    ours = DeviceBatches(x, y, 16, shuffle=True, mean=p.mean, std=p.std, seed=1, drop_last=True)
    theirs = DataLoader(ImageTensorDataset(x, y, train_transform(p)), batch_size=16, drop_last=True)
    assert len(ours) == len(theirs) == 3
    for (xa, ya), (xb, yb) in zip(ours, theirs, strict=True):
        assert xa.shape == xb.shape and xa.dtype == xb.dtype and ya.dtype == yb.dtype
        torch.testing.assert_close(xa, normalize(x[ya], p.mean, p.std))  # no augment: exact
    xs, ys = collect(DeviceBatches(x, y, 16, shuffle=True, augment=BatchAugment(p), seed=1))
    assert xs.shape == (50, 3, 32, 32) and sorted(ys.tolist()) == list(range(50))


@pytest.mark.parametrize("name, alternating", [("fast", True), ("standard", False)])
@pytest.mark.parametrize("drop_last", [True, False])
def test_chunked_training_batches_equal_one_gather_per_batch(
    monkeypatch, name, alternating, drop_last
):
    """DeviceBatches augments chunks of batches at once (gather_batches): every batch, a resumed
    pass's too, must be exactly what one gather per batch with that batch's seed gives."""
    from cifar_lightning.data import device_loader

    monkeypatch.setattr(device_loader, "CHUNK_IMAGES", 24)  # chunks of 3 batches of 8
    x, y = images(60), torch.arange(60)
    aug = BatchAugment(preset(name), alternating_flip=alternating, flip_seed=5)
    ours = DeviceBatches(x, y, 8, shuffle=True, augment=aug, seed=3, drop_last=drop_last)
    for epoch, resume in ((0, 0), (1, 0), (1, 4)):
        ours.load_state_dict({"epoch": epoch, "position": resume})
        got = list(ours)
        index = ours.order.indices(epoch)
        assert len(got) == len(ours) - resume == (7 if drop_last else 8) - resume
        for b, (xb, yb) in enumerate(got, start=resume):
            idx = index[b * 8 : (b + 1) * 8]
            want = aug.gather(x, idx, ours.order.batch_seed(epoch, b), epoch)
            assert torch.equal(yb, y[idx]) and torch.equal(xb, want)


def test_evaluation_batches_are_never_augmented():
    p = preset("standard")
    x, y = images(40), torch.arange(40)
    batches = DeviceBatches(x, y, 16, shuffle=False, mean=p.mean, std=p.std)
    first = collect(batches)
    batches.set_epoch(3)
    again = collect(batches)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], y)
    torch.testing.assert_close(first[0], normalize(x, p.mean, p.std))
    with pytest.raises(ValueError, match="never augmented"):
        DeviceBatches(x, y, 16, shuffle=False, augment=BatchAugment(p))


# --- per-image randomness and determinism ---------------------------------------------------


@pytest.mark.parametrize("name, distinct", [("standard", 40), ("seed", 64)])
def test_each_image_gets_its_own_parameters(name, distinct):
    x = images(1).expand(64, 3, 32, 32).contiguous()  # one image, 64 times
    out = augment(BatchAugment(preset(name)), x, seed=0, epoch=0)
    assert len({o.numpy().round(4).tobytes() for o in out}) >= distinct


def test_batches_are_deterministic_and_leave_the_global_rng_alone():
    aug, x = BatchAugment(preset("seed")), images(32)
    state = torch.get_rng_state()
    a, b = augment(aug, x, seed=5, epoch=0), augment(aug, x, seed=5, epoch=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, augment(aug, x, seed=6, epoch=0))

    def epoch(seed: int, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        d = DeviceBatches(x, torch.arange(32), 8, shuffle=True, augment=aug, seed=seed)
        d.set_epoch(e)
        return collect(d)

    assert all(torch.equal(u, v) for u, v in zip(epoch(0, 0), epoch(0, 0), strict=True))
    assert not torch.equal(epoch(0, 0)[1], epoch(0, 1)[1])  # a new order every epoch
    assert not torch.equal(epoch(0, 0)[1], epoch(1, 0)[1])


@pytest.mark.parametrize(
    "name, alternating",
    [("standard", False), ("fast", True), ("seed", False),
     ("jitter", False), ("noflip", False), ("flip", True)],
)  # fmt: skip
def test_gather_equals_augmenting_the_gathered_batch(name, alternating):
    # gather reads crops from a padded copy of the whole source instead of the batch: the
    # numbers must be those of a plain crop and flip of the batch, image for image.
    presets = {
        "jitter": AugmentPreset(crop_padding=2, flip=True, color_jitter={"contrast": 0.5}),
        "noflip": AugmentPreset(crop_padding=3),
        "flip": AugmentPreset(flip=True),
    }
    p = presets[name] if name in presets else preset(name)
    aug = BatchAugment(p, alternating_flip=alternating, flip_seed=3)
    source = images(100)
    for epoch, index in enumerate([torch.randperm(100)[:40], torch.arange(99, 59, -1)]):
        want = reference(aug, source, index, seed=epoch, epoch=epoch)
        assert torch.equal(aug.gather(source, index, seed=epoch, epoch=epoch), want)
    other = images(100, seed=1)  # a new source gets its own padded copy
    assert torch.equal(aug.gather(other, index, 0, 0), reference(aug, other, index, 0, 0))


# --- the same transforms as torchvision -----------------------------------------------------


def test_fixed_parameters_reproduce_torchvision_functional():
    x = images(1)
    xf = x.float() / 255
    ones = torch.ones_like(xf)

    def interior_close(ours, tv_fn):  # away from the canvas edges, where fills interpolate
        inner = tv_fn(ones) > 0.999
        torch.testing.assert_close(ours[inner], tv_fn(xf)[inner], atol=1e-4, rtol=0)

    affine = AugmentPreset(affine={"degrees": 40, "translate": [0.1, 0.1], "scale": [0.9, 1.1],
                                   "shear": [-10, 10, -5, 5]}, **RAW)  # fmt: skip
    params = {"angle": torch.tensor([23.0]), "translate": torch.tensor([[2.0, -3.0]]),
              "scale": torch.tensor([1.07]), "shear_x": torch.tensor([7.0]),
              "shear_y": torch.tensor([-3.0])}  # fmt: skip
    interior_close(BatchAugment(affine).apply(x, params),
                   lambda t: F.affine(t, angle=23.0, translate=[2, -3], scale=1.07,
                                      shear=[7.0, -3.0], interpolation=BILINEAR))  # fmt: skip

    end = [[3, 1], [29, 2], [30, 28], [1, 31]]
    persp = AugmentPreset(perspective={"distortion_scale": 0.2, "p": 1.0}, **RAW)
    ours = BatchAugment(persp).apply(x, {"corners": torch.tensor([end], dtype=torch.float32)})
    interior_close(ours, lambda t: F.perspective(t, CORNERS, end, interpolation=BILINEAR))

    ours = BatchAugment(AugmentPreset(rotation=30, **RAW)).apply(
        x, {"rotation": torch.tensor([17.0])}
    )
    interior_close(ours, lambda t: F.rotate(t, 17.0, interpolation=BILINEAR))

    # Crops and flips without a warp: test_gather_crops_and_flips_as_torchvision.
    crop = {"top": torch.tensor([1]), "left": torch.tensor([6]), "flip": torch.tensor([True])}
    expected = F.horizontal_flip(F.crop(F.pad(xf, [4]), 1, 6, 32, 32))
    warped = BatchAugment(AugmentPreset(crop_padding=4, flip=True, rotation=30, **RAW)).apply(
        x, {**crop, "rotation": torch.tensor([0.0])})  # fmt: skip
    torch.testing.assert_close(warped, expected, atol=1e-5, rtol=0)


def test_gather_jitters_as_torchvision():
    # Colour jitter without a warp, image by image against torchvision's functional ops with
    # the factors and order gather drew (seed 1): every one of the six orders occurs.
    jitter = BatchAugment(AugmentPreset(color_jitter={"brightness": 0.5, "contrast": 0.5,
                                                      "saturation": 0.5}, **RAW))  # fmt: skip
    ops = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation]
    x = images(48)
    params = jitter.sample(len(x), torch.Generator().manual_seed(1), torch.device("cpu"))
    assert len({tuple(o) for o in params["order"].tolist()}) == 6
    ours = augment(jitter, x, seed=1, epoch=0)
    for i in range(len(x)):
        expected = x[i].float() / 255
        for op in params["order"][i].tolist():
            expected = ops[op](expected, float(params["jitter"][i, op]))
        torch.testing.assert_close(ours[i], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "padding, flip, mode",
    [(4, True, "constant"), (2, False, "constant"), (0, True, "constant"), (2, True, "reflect")],
)
def test_gather_crops_and_flips_as_torchvision(padding, flip, mode):
    # gather straight against torchvision's functional ops, image by image: a wrong offset into
    # the padded copy would pass a comparison with the batch path only if both were wrong.
    aug = BatchAugment(AugmentPreset(crop_padding=padding, flip=flip, padding_mode=mode, **RAW))
    source, index = images(50), torch.tensor([7, 0, 49, 7, 23, 31, 12, 3])
    g = torch.Generator().manual_seed(1)
    params = aug.sample(len(index), g, torch.device("cpu"))  # what gather draws with seed 1
    ours = aug.gather(source, index, seed=1, epoch=0)
    for i, k in enumerate(index.tolist()):
        t = F.pad(source[k].float() / 255, [padding], padding_mode=mode)
        if padding:
            t = F.crop(t, int(params["top"][i]), int(params["left"][i]), 32, 32)
        t = F.horizontal_flip(t) if flip and params["flip"][i] else t
        torch.testing.assert_close(ours[i], t, atol=1e-6, rtol=0)


def test_reflect_padding_is_for_crops_and_flips_only():
    with pytest.raises(ValueError, match="padding_mode=constant here"):
        BatchAugment(AugmentPreset(crop_padding=2, padding_mode="reflect", rotation=10.0))
    with pytest.raises(ValueError, match="constant or reflect"):
        AugmentPreset(crop_padding=2, padding_mode="edge")
    crop = train_transform(AugmentPreset(crop_padding=2, padding_mode="reflect")).transforms[0]
    assert isinstance(crop, v2.RandomCrop) and crop.padding_mode == "reflect"


def test_canvas_masks_match_a_per_pixel_check():
    # row_intervals + interval_mask against the definition: output pixel (x, y) is kept iff
    # back maps it into the canvas -0.5 <= u, v < 31.5.
    def check(back: torch.Tensor, tolerance: float) -> torch.Tensor:
        mask = interval_mask(*row_intervals(back))[:, 0]
        assert ((mask == 0) | (mask == 1)).all()  # it multiplies images: no nan, nothing else
        mask = mask.bool()
        ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        u, v, w = (back @ torch.stack([xs, ys, torch.ones_like(xs)]).view(3, -1)).unbind(1)
        u, v = u / w, v / w
        inside = ((u >= -0.5) & (u < 31.5) & (v >= -0.5) & (v < 31.5)).view(-1, 32, 32)
        # Within `tolerance` of the canvas edge, float rounding may decide either way.
        edge = torch.stack([u + 0.5, u - 31.5, v + 0.5, v - 31.5]).abs().amin(0) < tolerance
        differ = (mask != inside) & ~edge.view(-1, 32, 32)
        assert not differ.any(), differ.nonzero()[:5]
        return inside

    g = torch.Generator().manual_seed(0)
    maps = torch.eye(3) + 0.15 * torch.randn(40, 3, 3, generator=g)  # mild random maps
    maps[:, :2, 2] = 6 * torch.randn(40, 2, generator=g)
    maps[:, 2] = torch.tensor([0.0, 0.0, 1.0])
    maps[:, 2, :2] = 2e-3 * torch.randn(40, 2, generator=g)
    check(maps, tolerance=1e-4)
    # Exact in floats, so no tolerance: edges with zero and negative-zero coefficients (the
    # identity, a 180-degree turn, swapped axes, -0.0 in the last row), rows shifted out of the
    # canvas, and rows that land exactly on its top edge v = -0.5 (where a = c = 0).
    exact = torch.tensor([
        [[1.0, 0, 0], [0, 1, 0], [0, 0, 1]],
        [[-1.0, 0, 31], [0, -1, 31], [0, 0, 1]],
        [[0.0, 1, 0], [1, 0, 0], [0, 0, 1]],
        [[1.0, 0, 0], [0, 1, 0], [-0.0, -0.0, 1]],
        [[1.0, 0, 0], [0, 1, -20], [0, 0, 1]],
        [[1.0, 0, 0], [0, 1, -3.5], [0, 0, 1]],
    ])  # fmt: skip
    inside = check(exact, tolerance=0.0)
    assert inside[:4].all() and inside[4].float().mean() == 12 / 32
    assert inside[5, 3:].all() and not inside[5, :3].any()


def test_sampling_grid_warps_as_kornia_warp_perspective():
    # The fused warp is grid_sample over sampling_grid; kornia's warp_perspective, which it
    # replaces for speed, must give the same image for any projective map.
    g = torch.Generator().manual_seed(0)
    x = images(8).float() / 255
    m = torch.eye(3) + 0.1 * torch.randn(8, 3, 3, generator=g)
    m[:, :2, 2] = 4 * torch.randn(8, 2, generator=g)  # translations of a few pixels
    m[:, 2, :2] = 2e-3 * torch.randn(8, 2, generator=g)  # mildly projective
    m[:, 2, 2] = 1
    ours = torch.nn.functional.grid_sample(x, sampling_grid(m), align_corners=True)
    expected = warp_perspective(x, m, (32, 32), align_corners=True)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


def test_fused_warp_blacks_out_what_each_step_cropped():
    # torchvision resamples (and crops to 32x32) after every step; the single warp must lose
    # the same pixels. With nearest interpolation only pixels on the canvas edges may differ.
    p = AugmentPreset(crop_padding=4, flip=True, perspective={"distortion_scale": 0.2, "p": 1},
                      affine={"degrees": 40, "scale": [0.9, 1.1], "shear": 0}, rotation=30,
                      **RAW)  # fmt: skip
    aug = BatchAugment(p, mode="nearest")
    x = images(16)
    params = aug.sample(16, torch.Generator().manual_seed(3), torch.device("cpu"))
    ours = aug.apply(x, params)
    for i in range(16):
        t = x[i].float() / 255
        t = F.crop(F.pad(t, [4]), int(params["top"][i]), int(params["left"][i]), 32, 32)
        t = F.horizontal_flip(t) if params["flip"][i] else t
        t = F.affine(
            t,
            angle=float(params["angle"][i]),
            translate=[0, 0],
            scale=float(params["scale"][i]),
            shear=[0.0, 0.0],
            interpolation=NEAREST,
        )
        t = F.perspective(t, CORNERS, params["corners"][i].int().tolist(), interpolation=NEAREST)
        t = F.rotate(t, float(params["rotation"][i]), interpolation=NEAREST)
        black_tv, black_ours = t.amax(0) == 0, ours[i].amax(0) == 0
        assert (black_tv != black_ours).float().mean() < 0.05
        assert 0.1 < black_tv.float().mean()  # the masks had something to do


def test_parameters_follow_torchvision_distributions():
    p = preset("seed")
    steps = train_transform(p).transforms  # the instances the DataLoader path uses
    crop, _, affine, persp, jitter, rotation = steps[:6]
    assert isinstance(jitter, v2.ColorJitter) and isinstance(rotation, v2.RandomRotation)
    n, img = 3000, [torch.zeros(3, 32, 32, dtype=torch.uint8)]
    ours = BatchAugment(p).sample(20000, torch.Generator().manual_seed(0), torch.device("cpu"))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        tv_crop = torch.tensor([[(q := crop.make_params(img))["top"], q["left"]] for _ in range(n)])
        tv_aff = [affine.make_params(img) for _ in range(n)]
        tv_persp = [persp.make_params(img)["coefficients"] for _ in range(n)]
        tv_jit = [jitter.make_params(img) for _ in range(n)]
        tv_rot = torch.tensor([rotation.make_params(img)["angle"] for _ in range(n)])

    def same(a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = a.double().flatten(), b.double().flatten()
        spread = float(b.max() - b.min())
        assert abs(a.mean() - b.mean()) < 0.05 * spread and abs(a.std() - b.std()) < 0.05 * spread
        assert abs(a.min() - b.min()) <= 0.02 * spread and abs(a.max() - b.max()) <= 0.02 * spread

    same(torch.stack([ours["top"], ours["left"]], 1), tv_crop)
    assert abs(ours["flip"].float().mean() - 0.5) < 0.02
    same(ours["angle"], torch.tensor([q["angle"] for q in tv_aff]))
    same(ours["scale"], torch.tensor([q["scale"] for q in tv_aff]))
    assert not ours["translate"].any() and not ours["shear_x"].any() and not ours["shear_y"].any()
    assert all(q["translate"] == (0, 0) and q["shear"] == (0.0, 0.0) for q in tv_aff)
    same(ours["rotation"], tv_rot)

    # torchvision returns the homography end -> start; map the start corners back to get the
    # corner displacements it drew. (The p=0.5 coin is tossed in forward(), not make_params.)
    inv = torch.tensor([c + [1.0] for c in tv_persp], dtype=torch.float64).view(n, 3, 3)
    start = torch.tensor([[x, y, 1.0] for x, y in CORNERS], dtype=torch.float64)
    end = torch.linalg.inv(inv) @ start.T
    tv_shift = (end[:, :2] / end[:, 2:]).transpose(1, 2) - start[:, :2]
    shift = ours["corners"] - torch.tensor(CORNERS)
    moved = shift.flatten(1).any(1)
    assert abs(moved.float().mean() - persp.p) < 0.03
    same(shift[moved], tv_shift.round())

    for k, name in enumerate(["brightness_factor", "contrast_factor", "saturation_factor"]):
        same(ours["jitter"][:, k], torch.tensor([q[name] for q in tv_jit]))
    # The order of the three ops: all six permutations equally likely in both.
    tv_orders = [tuple(i for i in q["fn_idx"].tolist() if i < 3) for q in tv_jit]
    our_orders = [tuple(o) for o in ours["order"].tolist()]
    for perm in itertools.permutations(range(3)):
        assert abs(our_orders.count(perm) / len(our_orders) - 1 / 6) < 0.02
        assert abs(tv_orders.count(perm) / n - 1 / 6) < 0.03


@pytest.mark.parametrize("name, tol", [("seed", 0.05), ("standard", 0.02)])
def test_augmented_statistics_match_torchvision(name, tol):
    p = preset(name)
    x = structured(40)  # 400 coloured, textured images
    with torch.random.fork_rng():
        torch.manual_seed(0)
        tf = train_transform(p)
        tv = torch.stack([tf(img) for img in x])
    ours = augment(BatchAugment(p), x, seed=0, epoch=0)
    black = (-torch.tensor(p.mean) / torch.tensor(p.std)).view(1, 3, 1, 1)

    def stats(o: torch.Tensor) -> torch.Tensor:
        is_black = ((o - black).abs().amax(1) < 1e-4).float().mean()
        return torch.cat([o.mean((0, 2, 3)), o.std((0, 2, 3)), is_black.view(1)])

    # Means and stds per channel, fraction of fill pixels. The remaining gap on `seed` is
    # torchvision's uint8 truncation after every step (about -0.5/255 each), not geometry.
    torch.testing.assert_close(stats(ours), stats(tv), atol=tol, rtol=0)


# --- epochs, ranks, resuming ----------------------------------------------------------------


@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_get_disjoint_shards_of_equal_length(drop_last):
    x, y = images(103), torch.arange(103)
    for epoch in range(2):
        shards = []
        for rank in range(2):
            d = DeviceBatches(x, y, 8, shuffle=True, seed=4, drop_last=drop_last, rank=rank,
                              world_size=2)  # fmt: skip
            d.set_epoch(epoch)
            batches = list(d)
            assert len(batches) == len(d) == (6 if drop_last else 7)
            shards.append(torch.cat([b[1] for b in batches]))
        a, b = (set(s.tolist()) for s in shards)
        assert not a & b and len(a) == len(b) == (48 if drop_last else 51)


def test_state_dict_resumes_with_the_next_batch():
    aug, x, y = BatchAugment(preset("seed")), images(80), torch.arange(80)

    def make() -> DeviceBatches:
        return DeviceBatches(x, y, 16, shuffle=True, augment=aug, seed=2, drop_last=True)

    original = make()
    original.set_epoch(1)
    it = iter(original)
    for _ in range(3):
        next(it)
    state = original.state_dict()
    assert state == {"epoch": 1, "position": 3}
    fourth = next(it)
    resumed = make()
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # what Lightning calls after restoring: keeps the position
    batch = next(iter(resumed))
    assert torch.equal(batch[0], fourth[0]) and torch.equal(batch[1], fourth[1])
    list(it)  # the end of an epoch is the start of the next
    assert original.state_dict() == {"epoch": 2, "position": 0}


def test_alternating_flip_flips_each_image_every_other_epoch():
    p = AugmentPreset(flip=True, **RAW)
    aug, source = BatchAugment(p, alternating_flip=True, flip_seed=7), images(1200)
    index = torch.arange(1000, 1200)  # dataset ids, not batch positions
    x = source[index]

    def flipped(epoch: int) -> torch.Tensor:
        out = aug.gather(source, index, seed=epoch, epoch=epoch)
        return (out == normalize(x.flip(-1), p.mean, p.std)).flatten(1).all(1)

    e0, e1 = flipped(0), flipped(1)
    assert (e0 ^ e1).all() and torch.equal(e0, flipped(2))
    assert 0.35 < e0.float().mean() < 0.65


# --- with Lightning -------------------------------------------------------------------------


class _Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(3 * 32 * 32, 10)
        self.seen: list[tuple] = []
        self.val_batches: list[int] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append((self.current_epoch, batch_idx, y.tolist(), round(float(x.sum()), 2)))
        return torch.nn.functional.cross_entropy(self.net(x.flatten(1)), y % 10)

    def validation_step(self, batch, batch_idx):
        self.val_batches[-1] += 1

    def on_validation_epoch_start(self) -> None:
        self.val_batches.append(0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("stop_at", [4, 3])  # mid-epoch, and right at an epoch's end
def test_lightning_resume_sees_the_uninterrupted_batches(tmp_path, stop_at):
    x, y = images(60), torch.arange(60)
    aug = BatchAugment(preset("standard"))

    def fit(**kw) -> _Recorder:
        model = _Recorder()
        train = DeviceBatches(x, y, 16, shuffle=True, augment=aug, seed=1, drop_last=True)
        val = DeviceBatches(x[:20], y[:20], 8, shuffle=False)
        ckpt_path = kw.pop("ckpt_path", None)
        trainer = L.Trainer(max_epochs=3, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, accelerator="cpu", devices=1,
                            num_sanity_val_steps=1, **kw)  # fmt: skip
        trainer.fit(model, train_dataloaders=train, val_dataloaders=val, ckpt_path=ckpt_path)
        return model

    full = fit(enable_checkpointing=False)
    assert len(full.seen) == 9 and full.val_batches == [1, 3, 3, 3]  # sanity check, 3 epochs
    saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=stop_at,
                                        save_last=True)  # fmt: skip
    first = fit(max_steps=stop_at, callbacks=[saver])
    resumed = fit(enable_checkpointing=False, ckpt_path=str(tmp_path / "last.ckpt"))
    assert first.seen + resumed.seen == full.seen
