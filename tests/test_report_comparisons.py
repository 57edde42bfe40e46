"""The report's comparisons as a study needs them: paired t-tests where seeds pair, Welch's
otherwise, each difference with its interval, the Holm family stated, and each run's Wilson
interval for the test set's own sampling error; all against hand-worked figures."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from cifar_lightning.report import stats, tables, testset
from cifar_lightning.report.cli import main as report_main
from cifar_lightning.report.console import print_report
from cifar_lightning.report.groups import group_runs
from cifar_lightning.report.runs import find_runs
from cifar_lightning.report.summary import compare, per_class_means, run_intervals, sampling_errors
from cifar_lightning.results import CORRECT_NAME
from tests.conftest import REPO
from tests.test_report_stats import PROV, make_run, results, write_study


@pytest.fixture
def study(tmp_path: Path) -> Path:
    return write_study(tmp_path)


def test_paired_difference_and_interval_by_hand():
    a = [0.770, 0.772, 0.768, 0.775, 0.766]
    b = [0.780, 0.785, 0.777, 0.784, 0.781]
    # d = a - b = -0.010, -0.013, -0.009, -0.009, -0.015: mean -0.0112; squared deviations sum
    # to 28.8e-6, so var(d) = 7.2e-6 and se = sqrt(7.2e-6 / 5) = 0.0012; t = -9.333 on 4 df.
    d = stats.paired(a, b)
    assert (d.test, d.pairs) == ("paired", 5)
    assert d.diff == pytest.approx(-0.0112)
    half = 2.776445 * 0.0012  # t_{0.975,4} from a table
    assert (d.ci_low, d.ci_high) == (pytest.approx(-0.0112 - half, abs=1e-7),
                                     pytest.approx(-0.0112 + half, abs=1e-7))  # fmt: skip
    assert d.p == pytest.approx(2 * sps.t.sf(0.0112 / 0.0012, 4))
    # The seeds' shared part cancels in d; Welch, blind to the pairing, sees more noise.
    assert stats.welch(a, b).p > d.p
    assert stats.paired([0.5], [0.4]).note == "n < 2"
    flat = stats.paired([0.5, 0.6], [0.4, 0.5])  # every pair differs by 0.1: no spread
    assert (flat.p, flat.note) == (None, "no variance") and flat.diff == pytest.approx(0.1)


def test_welch_difference_and_satterthwaite_interval_by_hand():
    a, b = [0.50, 0.52, 0.54], [0.40, 0.44, 0.48, 0.52]
    # means 0.52, 0.46; variances 0.0004 and 0.008 / 3; se² = 0.0004/3 + 0.008/12 = 0.0008.
    va, vb = 0.0004 / 3, 0.008 / 12
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    assert (se, df) == (pytest.approx(math.sqrt(0.0008)), pytest.approx(4.0755, abs=1e-4))
    d = stats.welch(a, b)
    assert (d.test, d.pairs, d.diff) == ("Welch", 0, pytest.approx(0.06))
    half = sps.t.ppf(0.975, df) * se
    assert (d.ci_low, d.ci_high) == (pytest.approx(0.06 - half), pytest.approx(0.06 + half))
    assert d.p == pytest.approx(2 * sps.t.sf(0.06 / se, df))
    assert stats.welch(a, [0.4]).note == "n < 2"


def test_wilson_interval_by_hand():
    z = 1.959964  # the normal's 97.5 % point
    for k, n in ((9000, 10000), (7693, 10000), (3, 20)):
        p = k / n
        centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
        half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
        assert stats.wilson(k, n) == (pytest.approx(centre - half, abs=1e-6),
                                      pytest.approx(centre + half, abs=1e-6))  # fmt: skip
    low, high = stats.wilson(9000, 10000)
    assert (high - low) / 2 == pytest.approx(0.0059, abs=1e-4)  # ~0.6 pp at 90 % of 10,000
    assert stats.wilson(0, 10)[0] == pytest.approx(0.0, abs=1e-12)


def test_runs_are_paired_only_when_every_seed_of_one_group_has_its_twin(tmp_path: Path):
    def run(opt: str, seed: int, test: float) -> None:
        make_run(tmp_path, [f"optimizer={opt}", f"seed={seed}", f"x={test}"],
                 results(test, seed=seed))  # fmt: skip

    x = [0.50, 0.55, 0.53]
    for seed, t in enumerate(x):
        run("x", seed, t)
    y = [0.45, 0.49, 0.50, 0.30]  # seeds 0-3: x's three have twins; seed 3 is left out
    for seed, t in enumerate(y):
        run("y", seed, t)
    run("z", 5, 0.40)  # z: no twin anywhere
    run("z", 6, 0.42)
    found = {(c.a, c.b): c for c in compare(group_runs(find_runs([tmp_path]), ["optimizer"]))
             if c.metric == "test_acc"}  # fmt: skip
    xy = found[("x", "y")].result
    d = [a - b for a, b in zip(x, y[:3], strict=True)]
    t = statistics.fmean(d) / (statistics.stdev(d) / math.sqrt(3))
    assert (xy.test, xy.pairs) == ("paired", 3) and xy.diff == pytest.approx(statistics.fmean(d))
    assert xy.p == pytest.approx(2 * sps.t.sf(abs(t), 2))
    xz = found[("x", "z")].result
    assert xz.test == "Welch" and xz.diff == pytest.approx(statistics.fmean(x) - 0.41)
    # Two runs of one seed in a group: no unique twin, Welch.
    run("y", 0, 0.47)
    again = [c for c in compare(group_runs(find_runs([tmp_path]), ["optimizer"]))
             if c.metric == "test_acc" and (c.a, c.b) == ("x", "y")]  # fmt: skip
    assert again[0].result.test == "Welch"


def test_holm_family_is_stated_and_holm_over_all_joins_the_metrics(study: Path, capsys):
    grouping = group_runs(find_runs([study]), ["optimizer"])
    apart, joint = compare(grouping), compare(grouping, holm_over="all")
    assert [c.family for c in apart] == [("test_acc",)] * 3 + [("gap",)] * 3  # no val_acc here
    raw = [c.p for c in joint]
    order = sorted(range(6), key=lambda i: raw[i])
    by_hand, running = [0.0] * 6, 0.0
    for rank, i in enumerate(order):  # Holm over 6: (6 - rank) x p, monotone, capped at 1
        running = max(running, min(1.0, (6 - rank) * raw[i]))
        by_hand[i] = running
    assert [c.p_holm for c in joint] == pytest.approx(by_hand)
    assert [c.p for c in apart] == pytest.approx(raw)  # the family changes Holm p only
    assert tables.families(joint) == (
        "Holm over the 6 pairs of test acc and gap (clean train − plain test).")  # fmt: skip
    assert report_main([str(study), "--group-by", "optimizer", "--holm-over", "test_acc"]) == 0
    assert ("Holm over the 3 pairs of test acc; Holm over the 3 pairs of gap (clean train − "
            "plain test).") in (study / "report.md").read_text()  # fmt: skip
    (study / "report.md").unlink()
    assert report_main([str(study), "--holm-over", "test_ac"]) == 2
    assert "--holm-over test_ac: give metric, all, or a comma list" in capsys.readouterr().err
    assert not (study / "report.md").exists()  # refused before writing


def test_each_run_gets_the_wilson_interval_of_its_test_images_or_says_they_are_unknown(
    tmp_path: Path,
):
    whole = {"trainer": {"limit_test_batches": 1.0}}
    recorded = make_run(tmp_path, ["seed=0"], results(0.5, seed=0, test_images=200))
    split = make_run(tmp_path, ["seed=1"], results(0.55, seed=1, provenance=PROV), config=whole)
    limited = make_run(tmp_path, ["seed=2"], results(0.6, seed=2, provenance=PROV),
                       config={"trainer": {"limit_test_batches": 5}})  # fmt: skip
    unsaved = make_run(tmp_path, ["seed=3"], results(0.6, seed=3, provenance=PROV))  # no config
    odd = make_run(tmp_path, ["seed=4"], results(0.5033, seed=4, test_images=200))
    grouping = group_runs(find_runs([tmp_path]))
    found = {t.path: t for t in run_intervals(grouping)}
    z = 1.959964
    for path, k in ((recorded, 100), (split, 110)):  # PROV's test split: 200 images
        p, n = k / 200, 200
        centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
        half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
        assert found[path].n == 200
        assert found[path].ci_low == pytest.approx(centre - half, abs=1e-6)
        assert found[path].ci_high == pytest.approx(centre + half, abs=1e-6)
    assert (found[limited].n, found[limited].ci_low, found[limited].note) == (
        None, None, "test images unknown")  # fmt: skip
    assert found[unsaved].n is None
    assert found[odd].note == "test acc is not a count of 200 images"
    assert report_main([str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "## Test-set sampling error" in text and "| all runs | 2 | `seed=2` | 60.00 |" in text
    assert "which that interval does not include, is ± " in text


def test_the_committed_study_gives_the_reviews_figures():
    finals = REPO / "docs" / "optimizer_study" / "runs"
    paths = [finals / d for d in ("finals", "finals_a2s", "finals_s45", "finals_a2s_s45")]
    grouping = group_runs(find_runs(paths), ["optimizer"])

    def test_acc(holm_over: str) -> dict[tuple[str, str], Any]:
        return {(c.a, c.b): c for c in compare(grouping, holm_over=holm_over)
                if c.metric == "test_acc"}  # fmt: skip

    apart, with_gap = test_acc("metric"), test_acc("test_acc,gap")
    adam, a2s = apart[("adam", "sgd_nesterov")], apart[("adam_to_sgd", "sgd_nesterov")]
    assert adam.result.test == "paired" and adam.result.pairs == 5
    assert (round(adam.p, 4), round(a2s.p, 3)) == (0.0019, 0.021)
    assert round(a2s.p_holm, 3) == 0.062
    assert round(with_gap[("adam_to_sgd", "sgd_nesterov")].p_holm, 3) == 0.187
    gaps = [[r.metric("gap") for r in grouping.groups[g]] for g in ("adam", "sgd_nesterov")]
    welch = stats.welch(*gaps)  # the review's gap interval is Welch's
    assert [round(100 * x, 2) for x in (welch.diff, welch.ci_low)] == [-0.38, -1.05]
    assert round(100 * welch.ci_high, 1) == 0.3  # +0.297: the review's +0.29 was rounded down


def test_report_out_folder_and_the_no_folder_message(study: Path, tmp_path: Path, capsys):
    out = tmp_path / "elsewhere"
    assert report_main([str(study), "--out", str(out)]) == 0
    assert (out / "report.md").is_file() and not (study / "report.md").exists()
    with pytest.raises(SystemExit):
        report_main([])
    err = capsys.readouterr().err
    assert "give the run folder(s) to report on" in err and "--group-by" not in err.split(":")[-1]
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    assert report_main([str(study), "--out", str(blocked / "report")]) == 2  # cannot be made
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the report into") and "Traceback" not in err


def test_a_class_without_test_images_has_no_accuracy(tmp_path: Path, caplog):
    make_run(tmp_path, ["seed=0"], results(per_class_acc={"plane": 0.5, "car": None}))
    make_run(tmp_path, ["seed=1"], results(per_class_acc={"plane": 0.7, "car": 0.6}))
    per_class = per_class_means(group_runs(find_runs([tmp_path])))
    assert per_class.means["all runs"] == pytest.approx([0.6, 0.6])  # car: seed 1's alone
    with caplog.at_level("INFO", logger="cifar_lightning"):
        print_report(0.5, {"plane": 0.5, "car": None})
    assert "Class car has no test images: no accuracy" in caplog.text
    assert "Accuracy for class car" not in caplog.text


def test_a_constant_difference_in_float32_is_no_test_not_a_tiny_p():
    # Accuracies arrive as float32: a 12-image gap on every seed differs by ~1e-8 from seed to
    # seed, which an exact zero-variance check misses (t ~ 1e8, p ~ 1e-10).
    f32 = [0.7693, 0.7701, 0.7650]
    a = [float(np.float32(x)) for x in f32]
    b = [float(np.float32(x - 0.0012)) for x in f32]
    d = stats.paired(a, b)
    assert d.p is None and d.note == "no variance" and d.diff == pytest.approx(0.0012, abs=1e-6)
    assert stats.welch([0.5, 0.5], [float(np.float32(0.5)), 0.5]).note == "no variance"
    assert stats.paired([0.9, 0.91, 0.95], [0.8, 0.81, 0.82]).p is not None  # real spread


def test_the_worst_case_bound_and_its_z_by_hand():
    # Adam 76.93 % and SGD+Nesterov 78.27 % on the same 10,000 images: errors 0.2307 + 0.2173.
    se = testset.bound(0.7693, 0.7827, 10_000)
    assert se == pytest.approx(math.sqrt(0.448 / 10_000))  # 0.669 pp
    assert testset.two_sided_p(-0.0134 / se) == pytest.approx(0.045, abs=5e-4)
    with pytest.raises(ValueError, match="accuracies in 0..1"):
        testset.bound(1.2, 0.5, 100)
    # The bound holds: disagreements can be no more than the images either gets wrong.
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.random(500) < rng.uniform(0.5, 0.95), rng.random(500) < rng.uniform(0.5, 0.95)
        exact = (a.astype(float) - b).std(ddof=0) / math.sqrt(500)
        assert exact <= testset.bound(a.mean(), b.mean(), 500) + 1e-12


def simulate(rng: np.random.Generator, n: int, k: int, image_sd: float, seed_sd: float,
             cell_sd: float) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Two groups' (seeds, images) correctness on n images drawn afresh from a population and k
    seed pairs drawn afresh: a shared image difficulty, an image effect of its own for B, a
    seed effect per seed (shared by the pair), an image-by-seed effect per run."""
    shared = rng.normal(0, 1.5, n)  # both fail the hard images
    own = rng.normal(0, image_sd, n)
    seed = rng.normal(0, seed_sd, (k, 1))
    logit_a = 1.2 + shared + seed + rng.normal(0, cell_sd, (k, n))
    logit_b = 1.0 + shared + own - seed + rng.normal(0, cell_sd, (k, n))  # the pair moves apart
    draw = lambda logit: rng.random(logit.shape) < 1 / (1 + np.exp(-logit))  # noqa: E731
    return draw(logit_a), draw(logit_b)


def test_both_sources_match_the_spread_over_fresh_test_sets_and_seeds():
    """Over 300 fresh test sets and seed draws per case, the estimated variance of the
    difference of seed means matches its actual spread; each wrong way (the images alone, the
    seeds alone, both added with the image-by-seed part twice) misses it in some case."""
    rng = np.random.default_rng(1)
    cases = [(1.0, 0.0, 0.3),  # the images dominate; no seed effect, the cells count twice
             (0.3, 0.25, 0.3),  # the seeds dominate: the images alone are far too small
             (0.5, 0.1, 1.0)]  # a large image-by-seed part  # fmt: skip
    wrong: dict[str, list[float]] = {"images": [], "seeds": [], "added": []}
    for image_sd, seed_sd, cell_sd in cases:
        parts = [testset.components(*simulate(rng, 2000, 5, image_sd, seed_sd, cell_sd),
                                    paired=True) for _ in range(300)]  # fmt: skip
        truth = np.var([c.diff for c in parts], ddof=1)
        assert np.mean([c.se_both**2 for c in parts]) / truth == pytest.approx(1, abs=0.2)
        wrong["images"].append(np.mean([c.images for c in parts]) / truth)
        wrong["seeds"].append(np.mean([c.seeds for c in parts]) / truth)
        wrong["added"].append(np.mean([c.images + c.seeds for c in parts]) / truth)
    for way, ratios in wrong.items():
        assert max(abs(r - 1) for r in ratios) > 0.3, (way, ratios)
    # Groups that do not pair (Welch's case): 4 seeds of A, 3 others of B, the same images.
    parts = []
    for _ in range(300):
        a, b = simulate(rng, 2000, 7, 0.5, 0.2, 0.5)  # seeds 0-3 for A, 4-6 for B
        parts.append(testset.components(a[:4], b[4:], paired=False))
    truth = np.var([c.diff for c in parts], ddof=1)
    assert np.mean([c.se_both**2 for c in parts]) / truth == pytest.approx(1, abs=0.2)


def test_the_report_uses_per_image_correctness_when_every_run_has_it(tmp_path: Path, capsys):
    rng = np.random.default_rng(2)
    a, b = simulate(rng, 400, 3, 0.5, 0.1, 0.5)
    for opt, table in (("adam", a), ("sgd", b)):
        for seed, flags in enumerate(table):
            run = make_run(tmp_path, [f"optimizer={opt}", f"seed={seed}"],
                           results(float(flags.mean()), seed=seed, test_images=400))  # fmt: skip
            np.save(run / CORRECT_NAME, flags)
    grouping = group_runs(find_runs([tmp_path]), ["optimizer"])
    [error] = sampling_errors(grouping, compare(grouping))
    c = testset.components(a, b, paired=True)
    assert (error.method, error.images) == ("per-image", 400)
    assert error.se_both == pytest.approx(c.se_both) and error.diff == pytest.approx(c.diff)
    [test_acc] = [c for c in compare(grouping) if c.metric == "test_acc"]
    assert error.se_seeds == pytest.approx(test_acc.result.se)  # the paired test's
    assert report_main([str(tmp_path), "--group-by", "optimizer"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert f"| {100 * c.se_images:.2f} | z " in text and "per-image correctness |" in text
    # One run without its file: the bound, and the report says why.
    (tmp_path / "optimizer=sgd,seed=1" / CORRECT_NAME).unlink()
    [error] = sampling_errors(grouping := group_runs(find_runs([tmp_path]), ["optimizer"]),
                             compare(grouping))  # fmt: skip
    assert error.method == "bound" and error.note == "1 of 6 runs keep no per-image correctness"
    assert error.se_images == pytest.approx(testset.bound(a.mean(), b.mean(), 400), rel=1e-5)
    # A file that is not the run's test is one clear error, not a silent use.
    np.save(tmp_path / "optimizer=sgd,seed=1" / CORRECT_NAME, ~b[1])
    assert report_main([str(tmp_path), "--group-by", "optimizer"]) == 2
    assert "not this run's test" in capsys.readouterr().err
