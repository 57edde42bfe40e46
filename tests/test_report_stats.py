"""The report's statistics, grouping, best-run choice and provenance checks, on made-up run
folders (no training: .hydra/overrides.yaml, results.json and metrics.csv written by hand)."""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from scipy import stats as sps

from cifar_lightning import provenance
from cifar_lightning.report import stats, tables
from cifar_lightning.report.cli import main as report_main
from cifar_lightning.report.groups import group_runs
from cifar_lightning.report.runs import Run, find_runs
from cifar_lightning.report.summary import compare, last_loss_change, per_class_means
from tests.conftest import REPO

CLASSES = ("plane", "car")
PROV = {
    "code": {"commit": "a" * 40, "dirty": False, "version": "0.1.0"},
    "torch": "2.5.0", "lightning": "2.6.0", "cuda": None, "device": "AMD EPYC (2 cores)",
    "precision": "32-true", "data": {"fingerprint": "f1", "train": 900, "val": 100, "test": 200},
}  # fmt: skip


def results(test: float | None = 0.5, val: float | None = 0.55, clean: float | None = 0.7,
            **extra: Any) -> dict[str, Any]:  # fmt: skip
    tested = test is not None
    return {
        "test_acc": test, "test_loss": 1.0 if tested else None,
        "per_class_acc": {c: test for c in CLASSES} if tested else None,
        "train_acc": 0.6, "train_loss": 1.1, "train_acc_clean": clean, "best_val_acc": val,
        "epochs": 2, "fit_seconds": 10.0, "seed": 0, "health": [], **extra,
    }  # fmt: skip


def make_run(root: Path, overrides: list[str], res: dict[str, Any] | None,
             config: dict | None = None, choices: dict | None = None) -> Path:  # fmt: skip
    run = root / ",".join(overrides)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if config is not None:
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if choices is not None:
        hydra = {"hydra": {"runtime": {"choices": choices}}}
        (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    if res is not None:
        (run / "results.json").write_text(json.dumps(res))
        with (run / "metrics.csv").open("w") as f:
            f.write("epoch,step,train/loss,val/acc\n0,10,2.0,0.3\n1,20,1.5,")
            f.write(f"{res['best_val_acc'] or ''}\n")
    return run


# Three optimizers x three seeds: test accuracy, clean training accuracy, best val accuracy.
STUDY = {
    "adam": ([0.52, 0.55, 0.50], [0.70, 0.74, 0.69], [0.53, 0.56, 0.52]),
    "sgd_nesterov": ([0.40, 0.43, 0.37], [0.60, 0.58, 0.62], [0.41, 0.44, 0.38]),
    "adamw": ([0.51, 0.49, 0.53], [0.71, 0.70, 0.75], [0.52, 0.50, 0.54]),
}


def write_study(tmp_path: Path) -> Path:
    """STUDY's 9 runs (3 optimizers x seeds 0-2) as results folders under tmp_path."""
    for opt, (tests, cleans, vals) in STUDY.items():
        for seed, (t, c, v) in enumerate(zip(tests, cleans, vals, strict=True)):
            make_run(tmp_path, [f"optimizer={opt}", f"seed={seed}"],
                     results(t, v, c, provenance=PROV, seed=seed))  # fmt: skip
    return tmp_path


@pytest.fixture
def study(tmp_path: Path) -> Path:
    return write_study(tmp_path)


def csv_rows(folder: Path) -> dict[str, dict[str, str]]:
    return {r["group"]: r for r in csv.DictReader((folder / "summary.csv").open())}


def test_describe_is_mean_sample_std_and_t_interval():
    xs = [0.52, 0.55, 0.50, 0.58]
    s = stats.describe(xs)
    std = statistics.stdev(xs)  # ddof=1
    half = sps.t.ppf(0.975, 3) * std / math.sqrt(4)
    assert (s.n, s.mean, s.std) == (4, pytest.approx(statistics.fmean(xs)), pytest.approx(std))
    assert (s.ci_low, s.ci_high) == (pytest.approx(s.mean - half), pytest.approx(s.mean + half))
    assert half == pytest.approx(3.182446 * std / 2, rel=1e-6)  # t_{0.975,3} from a table
    one = stats.describe([0.5])
    assert (one.n, one.mean, one.std, one.ci_low, one.ci_high) == (1, 0.5, None, None, None)
    assert stats.describe([]).mean is None


def test_welch_p_matches_scipy_and_needs_two_runs_and_some_spread():
    a, b = [0.52, 0.55, 0.50], [0.40, 0.43, 0.37, 0.45]
    assert stats.welch_p(a, b) == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue)
    assert stats.welch_p(a, [0.4]) is None
    assert stats.welch_p([0.5, 0.5], [0.4, 0.4]) is None  # no spread: t is infinite
    assert stats.welch_p([0.5, 0.5], [0.4, 0.45]) is not None


def test_holm_by_hand_for_three_pairs():
    # Sorted: 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> 0.06 (monotone).
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # Capped at 1: 0.02 x 3 = 0.06; 0.5 x 2 = 1.0; 0.6 x 1 = 0.6 -> 1.0.
    assert stats.holm([0.5, 0.6, 0.02]) == pytest.approx([1.0, 1.0, 0.06])
    assert stats.holm([]) == []


def test_group_statistics_and_pairwise_tests_of_a_study(study: Path, capsys):
    assert report_main([str(study), "--group-by", "optimizer"]) == 0
    rows = csv_rows(study)
    assert set(rows) == set(STUDY)
    for opt, (tests, cleans, vals) in STUDY.items():
        row = rows[opt]
        half = sps.t.ppf(0.975, 2) * statistics.stdev(tests) / math.sqrt(3)
        assert row["runs"] == "3" and row["test_acc_n"] == "3"
        assert float(row["test_acc_mean"]) == pytest.approx(statistics.fmean(tests))
        assert float(row["test_acc_std"]) == pytest.approx(statistics.stdev(tests))
        assert float(row["test_acc_ci_low"]) == pytest.approx(statistics.fmean(tests) - half)
        assert float(row["test_acc_ci_high"]) == pytest.approx(statistics.fmean(tests) + half)
        gaps = [c - t for c, t in zip(cleans, tests, strict=True)]  # no TTA: test_acc is plain
        assert float(row["gap_mean"]) == pytest.approx(statistics.fmean(gaps))
        assert float(row["train_acc_clean_mean"]) == pytest.approx(statistics.fmean(cleans))
        assert float(row["best_val_acc_mean"]) == pytest.approx(statistics.fmean(vals))
        # metrics.csv: training loss 2.0, then 1.5 in the last epoch: -25 %, not flattened.
        assert float(row["train_loss_final_mean"]) == pytest.approx(1.5)
        assert float(row["train_loss_last_change_mean"]) == pytest.approx(-0.25)

    runs = find_runs([study])
    comparisons = [c for c in compare(group_runs(runs, ["optimizer"])) if c.metric == "test_acc"]
    assert [(c.a, c.b) for c in comparisons] == [
        ("adam", "adamw"), ("adam", "sgd_nesterov"), ("adamw", "sgd_nesterov")]  # fmt: skip
    # Every group ran seeds 0, 1, 2: paired, t = mean(d) / (sd(d) / sqrt(3)) on 2 df.
    raw = []
    for c in comparisons:
        d = [x - y for x, y in zip(STUDY[c.a][0], STUDY[c.b][0], strict=True)]
        t = statistics.fmean(d) / (statistics.stdev(d) / math.sqrt(3))
        raw.append(2 * sps.t.sf(abs(t), 2))
    assert all(c.result.test == "paired" and c.result.pairs == 3 for c in comparisons)
    assert [c.p for c in comparisons] == pytest.approx(raw)
    order = sorted(range(3), key=lambda i: raw[i])
    by_hand = [0.0] * 3
    by_hand[order[0]] = min(1, 3 * raw[order[0]])
    by_hand[order[1]] = max(by_hand[order[0]], min(1, 2 * raw[order[1]]))
    by_hand[order[2]] = max(by_hand[order[1]], min(1, raw[order[2]]))
    assert [c.p_holm for c in comparisons] == pytest.approx(by_hand)
    diff = statistics.fmean(STUDY["adam"][0]) - statistics.fmean(STUDY["sgd_nesterov"][0])
    assert comparisons[1].result.diff == pytest.approx(diff)

    text = (study / "report.md").read_text()
    assert "| optimizer | n |" in text and "| adam | 3 |" in text
    assert "| 1.500 (-25.0 %) |" in text
    # Per-class table: results() gives every class the run's test accuracy.
    adamw = statistics.fmean(STUDY["adamw"][0])
    assert f"| adamw | {100 * adamw:.1f} | {100 * adamw:.1f} |" in text
    r = statistics.correlation(STUDY["adam"][0], STUDY["sgd_nesterov"][0])  # the pairs' r
    assert comparisons[1].result.r == pytest.approx(r)
    assert (
        f"| adam | sgd_nesterov | test acc | paired (3 seeds) | {r:+.2f} | {100 * diff:+.2f} ["
        in text
    )
    assert "Holm over the 3 pairs of test acc;" in text
    assert "| adam | adamw | gap (clean train − plain test) |" in text
    assert "WARNING" not in text + capsys.readouterr().out


def test_default_labels_are_the_swept_overrides_a_run_sets(tmp_path: Path):
    make_run(tmp_path, ["optimizer=adam", "seed=0"], results())
    make_run(tmp_path, ["optimizer=adam_to_sgd", "seed=0"], results())
    make_run(tmp_path, ["optimizer=adam_to_sgd", "optimizer.sgd_lr=0.01", "seed=0"], results())
    make_run(tmp_path, ["optimizer=adam_to_sgd", "optimizer.sgd_lr=0.01", "seed=1"], results())
    assert report_main([str(tmp_path)]) == 0
    rows = csv_rows(tmp_path)
    assert set(rows) == {"optimizer=adam", "optimizer=adam_to_sgd",
                         "optimizer=adam_to_sgd, optimizer.sgd_lr=0.01"}  # fmt: skip
    assert rows["optimizer=adam_to_sgd, optimizer.sgd_lr=0.01"]["runs"] == "2"
    # 3 pairs of groups x 2 metrics (test acc, gap), each with one run on a side: counted only.
    text = (tmp_path / "report.md").read_text()
    assert "no test (6 comparisons, pairs of groups x metrics)." in text
    assert "| group A |" not in text


def test_group_by_values_come_from_overrides_or_the_saved_config(tmp_path: Path, capsys):
    make_run(tmp_path, ["optimizer=sgd_nesterov", "seed=0"], results())
    # No optimizer override: the choice Hydra saved; optimizer.lr from config.yaml.
    make_run(tmp_path, ["seed=1"], results(), config={"optimizer": {"lr": 0.001}},
             choices={"optimizer": "adam"})  # fmt: skip
    make_run(tmp_path, ["optimizer=adam", "seed=2"], results(), config={"optimizer": {"lr": 0.001}})
    assert report_main([str(tmp_path), "--group-by=optimizer,optimizer.lr"]) == 0
    rows = csv_rows(tmp_path)
    assert set(rows) == {"adam / 0.001", "sgd_nesterov / –"}
    assert rows["adam / 0.001"]["runs"] == "2"
    assert report_main([str(tmp_path), "--group-by", "optimzer"]) == 2
    assert "--group-by optimzer: no run has this key" in capsys.readouterr().err


def test_best_run_is_picked_by_validation_only(tmp_path: Path):
    high_val = make_run(tmp_path, ["optimizer=adam", "seed=0"], results(test=0.40, val=0.60))
    high_test = make_run(tmp_path, ["optimizer=adam", "seed=1"], results(test=0.70, val=0.50))
    # Tied on validation with the first: the test set breaks no ties either.
    tied = make_run(tmp_path, ["optimizer=adam", "seed=2"], results(test=0.90, val=0.60))
    for run in (high_val, high_test, tied):
        (run / "confusion_matrix.png").write_bytes(run.name.encode())
    assert report_main([str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert f"`{high_val.name}` (best val acc 60.00 %, test acc 40.00 %)" in text
    assert (tmp_path / "best_confusion_matrix.png").read_bytes() == high_val.name.encode()


def test_the_tested_checkpoints_val_acc_selects_before_the_per_epoch_best(tmp_path: Path):
    # val_acc (the tested checkpoint with TTA) decides; best_val_acc only stands in without it.
    low_epoch = make_run(tmp_path, ["seed=0"], results(val=0.50, val_acc=0.65))
    make_run(tmp_path, ["seed=1"], results(val=0.60, val_acc=0.62))
    assert report_main([str(tmp_path)]) == 0
    assert f"`{low_epoch.name}` (val acc 65.00 %," in (tmp_path / "report.md").read_text()
    row = csv_rows(tmp_path)["all runs"]
    assert float(row["val_acc_mean"]) == pytest.approx(0.635)


def test_without_validation_no_best_run_is_picked(tmp_path: Path):
    for seed in (0, 1):
        run = make_run(tmp_path, ["optimizer=adam", f"seed={seed}"], results(val=None))
        (run / "confusion_matrix.png").write_bytes(b"png")
    (tmp_path / "best_confusion_matrix.png").write_bytes(b"an older report's")
    assert report_main([str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "no validation split: no best run is picked" in text
    assert not (tmp_path / "best_confusion_matrix.png").exists()
    assert csv_rows(tmp_path)["all runs"]["best_val_acc_n"] == "0"


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [(("code", "commit"), "b" * 40, "code commit"), (("code", "dirty"), True, "dirty state"),
     (("data", "fingerprint"), "f2", "data fingerprint"), (("device",), "NVIDIA H100", "device")],
)  # fmt: skip
def test_runs_differing_in_provenance_get_a_warning(tmp_path: Path, capsys, field, value, named):
    other = json.loads(json.dumps(PROV))
    node = other
    for part in field[:-1]:
        node = node[part]
    node[field[-1]] = value
    make_run(tmp_path, ["optimizer=adam", "seed=0"], results(provenance=PROV))
    make_run(tmp_path, ["optimizer=adam", "seed=1"], results(provenance=other))
    assert report_main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    text = (tmp_path / "report.md").read_text()
    [line] = [ln for ln in out.splitlines() if ln.startswith("WARNING")]
    assert f"differ in {named}" in line and line in text
    assert "## Provenance" in text and "- device: AMD EPYC (2 cores)" in text


def test_runs_without_provenance_next_to_runs_with_it_get_a_warning(tmp_path: Path, capsys):
    make_run(tmp_path, ["optimizer=adam", "seed=0"], results(provenance=PROV))
    make_run(tmp_path, ["optimizer=adam", "seed=1"], results())
    assert report_main([str(tmp_path)]) == 0
    assert "WARNING: 1 of 2 complete runs record no provenance" in capsys.readouterr().out


def test_untested_runs_are_reported_with_their_validation_figures(tmp_path: Path):
    # test=false: results.json holds validation and clean-train figures, test fields null.
    for seed, val in enumerate([0.50, 0.54]):
        make_run(tmp_path, ["optimizer=sgd", f"seed={seed}"], results(test=None, val=val))
    make_run(tmp_path, ["optimizer=adam", "seed=0"], results(test=0.6, val=0.62))
    make_run(tmp_path, ["optimizer=adam", "seed=1"], None)  # died: no results.json
    assert report_main([str(tmp_path), "--group-by", "optimizer"]) == 0
    rows = csv_rows(tmp_path)
    sgd = rows["sgd"]
    assert (sgd["runs"], sgd["test_acc_n"], sgd["test_acc_mean"]) == ("2", "0", "")
    assert sgd["gap_n"] == "0"
    assert float(sgd["best_val_acc_mean"]) == pytest.approx(0.52)
    assert sgd["train_acc_clean_n"] == "2"
    assert rows["adam"]["failed"] == "1" and rows["adam"]["test_acc_std"] == ""
    text = (tmp_path / "report.md").read_text()
    assert "(2 not tested)" in text and "| sgd | 2 | – | – |" in text  # no val_acc, no test
    assert "| adam | 1 (+1 failed) | – | 60.00 ± – |" in text
    assert "`optimizer=adam,seed=1`: no results.json" in text


def test_only_untested_runs_make_no_heatmap_and_no_comparison(tmp_path: Path):
    for seed in (0, 1):
        make_run(tmp_path, ["optimizer=sgd", f"seed={seed}"], results(test=None, val=0.5))
    assert report_main([str(tmp_path)]) == 0
    assert not (tmp_path / "per_class_heatmap.png").exists()
    assert "nothing to compare" in (tmp_path / "report.md").read_text()


def test_gap_uses_the_plain_test_accuracy_and_no_tta_one(tmp_path: Path):
    plain = make_run(tmp_path, ["seed=0"], results(test=0.62, clean=0.8, test_acc_plain=0.6))
    no_tta = make_run(tmp_path, ["seed=1"], results(test=0.5, clean=0.8))
    tta_cfg = make_run(tmp_path, ["seed=2"], results(test=0.6, clean=0.8),
                       config={"module": {"tta_level": 2}})  # fmt: skip
    tta_override = make_run(tmp_path, ["module.tta_level=1", "seed=3"], results(clean=0.8))
    old = make_run(tmp_path, ["seed=4"], results(clean=None))  # before train_acc_clean existed
    gaps = {r.path: r.gap for r in find_runs([tmp_path])}
    assert gaps[plain] == pytest.approx(0.2) and gaps[no_tta] == pytest.approx(0.3)
    assert gaps[tta_cfg] is None and gaps[tta_override] is None and gaps[old] is None


def test_provenance_of_this_checkout():
    prov = provenance.collect("bf16-mixed", "abc123", {"train": 45000, "val": 5000, "test": 10000})
    assert set(prov) == {"code", "torch", "lightning", "cuda", "device", "precision", "data"}
    assert re.fullmatch(r"[0-9a-f]{40}", prov["code"]["commit"])
    assert isinstance(prov["code"]["dirty"], bool) and isinstance(prov["code"]["version"], str)
    assert prov["precision"] == "bf16-mixed" and isinstance(prov["device"], str)
    assert prov["data"] == {"fingerprint": "abc123", "train": 45000, "val": 5000, "test": 10000}
    assert isinstance(prov["torch"], str) and isinstance(prov["lightning"], str)
    json.dumps(prov)  # results.json holds it as it is


def test_provenance_outside_git_or_without_git(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(provenance, "PACKAGE_DIR", tmp_path)  # not a git checkout
    assert provenance.git_state() == (None, None)
    monkeypatch.undo()

    def missing(*args: Any, **kwargs: Any) -> None:
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", missing)
    assert provenance.git_state() == (None, None)
    assert "cores)" in provenance.cpu_name()


def test_command_line(study: Path):
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "cifar_lightning.report", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    proc = run(str(study), "--group-by", "optimizer", "--target", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert "| adam | 3 |" in proc.stdout and "wrote" in proc.stdout
    proc = run("--group-by", "optimizer", str(study))  # the folder taken for a key
    assert proc.returncode == 2 and "give the run folder(s) before --group-by" in proc.stderr


def test_versus_plots_validation_against_each_runs_swept_rate(tmp_path: Path):
    from cifar_lightning.report.groups import group_runs
    from cifar_lightning.report.plots import plot_versus, versus_points
    from cifar_lightning.report.runs import find_runs

    for opt, key, rates in (("adam", "optimizer.lr", ["1e-3", "1e-2"]),
                            ("adam_to_sgd", "optimizer.sgd_lr", ["0.1"])):  # fmt: skip
        for i, lr in enumerate(rates):
            for seed, val in ((0, 0.5 + i / 10), (1, 0.6 + i / 10)):
                make_run(tmp_path, [f"optimizer={opt}", f"{key}={lr}", f"seed={seed}"],
                         results(val_acc=val))  # fmt: skip
    keys = ["optimizer.sgd_lr", "optimizer.lr"]  # adam_to_sgd's own rate comes first
    grouping = group_runs(find_runs([tmp_path]), ["optimizer", *keys])
    points = versus_points(grouping, keys)
    plot_versus(points, tmp_path / "v.png")
    assert points.metric == "val_acc"
    found = {name: {x: sorted(v) for x, v in xs.items()} for name, xs in points.series.items()}
    assert found == {"adam": {1e-3: [0.5, 0.6], 1e-2: [0.6, 0.7]}, "adam_to_sgd": {0.1: [0.5, 0.6]}}
    assert (tmp_path / "v.png").stat().st_size > 0
    assert report_main([str(tmp_path), "--group-by", "optimizer", "--versus", *keys]) == 0
    assert (
        "![validation accuracy against optimizer.sgd_lr](val_acc_versus.png)"
        in (tmp_path / "report.md").read_text()
    )
    before = (tmp_path / "summary.csv").read_bytes()
    assert report_main([str(tmp_path), "--versus", "optimizer.momentum"]) == 2
    assert (tmp_path / "summary.csv").read_bytes() == before  # refused before writing anything
    assert report_main([str(tmp_path)]) == 0
    assert not (tmp_path / "val_acc_versus.png").exists()  # not asked for: an old one goes


def test_a_list_left_at_its_default_groups_as_the_override_would_write_it(tmp_path: Path):
    make_run(tmp_path, ["seed=0"], results(), config={"model": {"widths": [64, 256, 256]}})
    make_run(tmp_path, ["model.widths=[64,192,192]", "seed=0"], results(),
             config={"model": {"widths": [64, 192, 192]}})  # fmt: skip
    assert report_main([str(tmp_path), "--group-by", "model.widths"]) == 0
    assert set(csv_rows(tmp_path)) == {"[64,256,256]", "[64,192,192]"}


def test_last_loss_change_needs_two_consecutive_finite_epochs(tmp_path: Path):
    def run(losses: dict[int, float]) -> Run:
        return Run(tmp_path, {}, results(), {"train/loss": losses})

    assert last_loss_change(run({1: 2.0, 2: 1.6, 3: 1.2})) == pytest.approx((1.2, -0.25))
    assert last_loss_change(run({1: 2.0})) is None
    assert last_loss_change(run({1: 2.0, 3: 1.5})) is None  # epoch 2 missing: no "epoch before"
    assert last_loss_change(run({1: 2.0, 2: math.nan})) is None  # diverged
    assert last_loss_change(run({1: math.inf, 2: 1.0})) is None


def test_per_class_table_has_every_class_any_run_reports(tmp_path: Path):
    make_run(tmp_path, ["optimizer=adam", "seed=0"],
             results(per_class_acc={"plane": 0.5, "car": 0.7}))  # fmt: skip
    make_run(tmp_path, ["optimizer=sgd", "seed=0"],
             results(per_class_acc={"car": 0.6, "bird": 0.4}))  # fmt: skip
    per_class = per_class_means(group_runs(find_runs([tmp_path]), ["optimizer"]))
    assert per_class.names == ["plane", "car", "bird"]
    assert per_class.means["adam"][:2] == [0.5, 0.7] and math.isnan(per_class.means["adam"][2])
    assert tables.per_class_table(per_class, "optimizer").splitlines() == [
        "| optimizer | plane | car | bird |", "|---|---|---|---|",
        "| adam | 50.0 | 70.0 | – |", "| sgd | – | 60.0 | 40.0 |",
    ]  # fmt: skip


def test_loss_cell_says_how_many_runs_it_covers(tmp_path: Path):
    make_run(tmp_path, ["optimizer=adam", "seed=0"], results())
    short = make_run(tmp_path, ["optimizer=adam", "seed=1"], results())
    (short / "metrics.csv").write_text("epoch,step,train/loss,val/acc\n0,10,2.0,0.55\n")
    assert report_main([str(tmp_path), "--group-by", "optimizer"]) == 0
    assert "| 1.500 (-25.0 %) (n=1) |" in (tmp_path / "report.md").read_text()
    assert csv_rows(tmp_path)["adam"]["train_loss_n"] == "1"


# --- paired and Welch differences with their intervals, Holm families, Wilson intervals -------
