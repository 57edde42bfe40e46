"""The test set's own sampling error in a difference between two groups scored on the same test
images, which the seed interval leaves out (every seed is scored on the same images, so it does
not average out over seeds).

Two estimates, by what the runs kept:

- Without per-image correctness: a worst-case bound. Over a population of images, a seed-mean
  accuracy difference is the mean over n test images of c_A(i) − c_B(i), c the fraction of a
  group's seeds that got image i right. Its variance is at most E[(c_A − c_B)²] / n ≤
  E[|c_A − c_B|] / n ≤ (e_A + e_B) / n, e the error rates (|c_A − c_B| ≤ (1 − c_A) + (1 − c_B)):
  SE ≤ √((e_A + e_B) / n). It is reached when the two groups never fail on the same image.
- With per-image correctness in every run (results.CORRECT_NAME): both sources at once, from
  the (seeds x images) correctness tables, as a crossed random-effects design (images and
  seeds both drawn at random; each run's figure one image-by-seed cell per image). The
  variance of the difference of seed means is
      V = V_images + V_seeds − V_cells,
  V_images = var over images of the per-image difference of seed means / n (a new test set,
  the same seeds), V_seeds = the seed test's squared standard error (new seeds, the same
  images: var over seeds of the per-seed difference / k paired, or the two groups' var / k
  added, Welch), and V_cells = the image-by-seed residual mean square / (n·k) per group (or of
  the paired differences), which each of the other two contains once: subtracted, it counts
  once. Each term is an unbiased moment estimate. (A bootstrap over images and seeds at once
  counts that residual up to three times, and McNemar's test compares two single models, not
  two groups' seed means.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


def two_sided_p(z: float) -> float:
    return float(2 * stats.norm.sf(abs(z)))


def bound(acc_a: float, acc_b: float, n: int) -> float:
    """The worst-case standard error, over test images, of acc_a − acc_b when both are scored on
    the same n images: √((e_a + e_b) / n), e = 1 − acc."""
    if n < 1 or not (0 <= acc_a <= 1 and 0 <= acc_b <= 1):
        raise ValueError(f"bound: accuracies in 0..1 of n >= 1 images, got {acc_a}, {acc_b}, {n}")
    return math.sqrt((2 - acc_a - acc_b) / n)


@dataclass(frozen=True)
class Components:
    """Variances of a difference of seed means (in squared accuracy units), see the module."""

    diff: float  # mean over seeds of acc_a, minus the same of acc_b
    images: float  # V_images: a new test set, the same seeds
    seeds: float  # V_seeds: new seeds, the same test set (the seed test's se²)
    cells: float  # V_cells: the image-by-seed residual, in each of the two above

    @property
    def se_images(self) -> float:
        return math.sqrt(self.images)

    @property
    def se_both(self) -> float:
        """√(V_images + V_seeds − V_cells). The true V is at least each of V_images and V_seeds
        (each holds one source and the residual): an estimate below them, which chance can give,
        is raised to the larger."""
        return math.sqrt(max(self.images + self.seeds - self.cells, self.images, self.seeds))


def _residual(x: np.ndarray) -> float:
    """The image-by-seed residual mean square of a (seeds, images) table."""
    k, n = x.shape
    resid = x - x.mean(1, keepdims=True) - x.mean(0, keepdims=True) + x.mean()
    return float((resid**2).sum() / ((k - 1) * (n - 1)))


def components(a: np.ndarray, b: np.ndarray, paired: bool) -> Components:
    """a, b: (seeds, images) per-image correctness (0/1) of two groups on the same test images,
    image i in column i of both, at least two seeds each. paired: row j of a and of b share a
    seed (the same number of rows)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] < 2:
        raise ValueError(f"components: two (seeds, images) tables over the same images, got "
                         f"{a.shape} and {b.shape}")  # fmt: skip
    if min(len(a), len(b)) < 2 or (paired and len(a) != len(b)):
        raise ValueError(f"components: {len(a)} and {len(b)} seeds: at least two each"
                         + (", the same number when paired" if paired else ""))  # fmt: skip
    n = a.shape[1]
    per_image = a.mean(0) - b.mean(0)
    images = float(per_image.var(ddof=1) / n)
    if paired:
        d = a - b
        k = len(d)
        seeds = float(d.mean(1).var(ddof=1) / k)
        cells = _residual(d) / (n * k)
    else:
        seeds = sum(float(x.mean(1).var(ddof=1) / len(x)) for x in (a, b))
        cells = sum(_residual(x) / (n * len(x)) for x in (a, b))
    return Components(float(a.mean() - b.mean()), images, seeds, cells)
