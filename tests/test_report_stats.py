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
from cifar_lightning.report.console import print_report
from cifar_lightning.report.groups import group_runs
from cifar_lightning.report.runs import Run, find_runs
from cifar_lightning.report.summary import compare, last_loss_change, per_class_means, run_intervals
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


@pytest.fixture
def study(tmp_path: Path) -> Path:
    for opt, (tests, cleans, vals) in STUDY.items():
        for seed, (t, c, v) in enumerate(zip(tests, cleans, vals, strict=True)):
            make_run(tmp_path, [f"optimizer={opt}", f"seed={seed}"],
                     results(t, v, c, provenance=PROV, seed=seed))  # fmt: skip
    return tmp_path


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
    assert f"| adam | sgd_nesterov | test acc | paired (3 seeds) | {100 * diff:+.2f} [" in text
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


def test_a_class_without_test_images_has_no_accuracy(tmp_path: Path, caplog):
    make_run(tmp_path, ["seed=0"], results(per_class_acc={"plane": 0.5, "car": None}))
    make_run(tmp_path, ["seed=1"], results(per_class_acc={"plane": 0.7, "car": 0.6}))
    per_class = per_class_means(group_runs(find_runs([tmp_path])))
    assert per_class.means["all runs"] == pytest.approx([0.6, 0.6])  # car: seed 1's alone
    with caplog.at_level("INFO", logger="cifar_lightning"):
        print_report(0.5, {"plane": 0.5, "car": None})
    assert "Class car has no test images: no accuracy" in caplog.text
    assert "Accuracy for class car" not in caplog.text
