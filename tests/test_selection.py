"""The selection rule of docs/fast_cpu/selection-2.md as cifar_lightning.report.selection applies
it: the paired one-sided non-inferiority test against hand-worked figures, Holm over the
finalists, the choice by fit time and its FLOPs tie-break, the FLOPs table recounted, and the
errors a selection must not pass silently."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from scipy import stats as sps
from torch.utils.flop_counter import FlopCounterMode

from cifar_lightning.models.fastnet import FastNet
from cifar_lightning.report import selection, stats
from tests.test_report_stats import make_run, results

pytestmark = pytest.mark.usefixtures("one_thread")

P7 = ["trainer.max_epochs=7", "module.train_resolution=[16,16,24,24,24,32]"]
V1 = {"model": {"widths": [64, 256, 256]}, "trainer": {"max_epochs": 9},
      "module": {"train_resolution": [24, 24, 24, 24, 24, 32]}}  # fmt: skip


def write(root: Path, name: str, seed: int, val: float, fit: float, extra: list[str]) -> None:
    run = make_run(root, [f"seed={seed}", *extra], results(test=None, val=val, val_acc=val,
                   fit_seconds=fit), config=V1)  # fmt: skip
    run.rename(root / f"{name}_seed{seed}")


def test_noninferiority_by_hand():
    a, b = [89.0, 89.4, 88.8, 89.2, 89.1], [89.3, 89.5, 89.2, 89.3, 89.4]
    # d = -0.3, -0.1, -0.4, -0.1, -0.3: mean -0.24, var 0.018, se = sqrt(0.018 / 5) = 0.06;
    # with a 0.3 margin t = (-0.24 + 0.3) / 0.06 = 1.0 on 4 df.
    t = stats.noninferiority(a, b, 0.3)
    assert (t.pairs, t.diff, t.t) == (5, pytest.approx(-0.24), pytest.approx(1.0))
    assert t.p == pytest.approx(sps.t.sf(1.0, 4)) and 0.18 < t.p < 0.19
    assert t.ci_low == pytest.approx(-0.24 - 2.776445 * 0.06, abs=1e-6)
    assert stats.noninferiority(a, b, 0.5).p < 0.01  # a wider margin: rejected
    assert stats.noninferiority([1.0], [1.0], 0.3).p is None
    with pytest.raises(ValueError, match="not pairs"):
        stats.noninferiority(a, b[:3], 0.3)


@pytest.mark.parametrize("size", [16, 24, 32])
def test_the_flops_table_is_what_flop_counter_mode_counts(size):
    net = FastNet(widths=(64, 256, 256)).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 3, size, size))
    assert counter.get_total_flops() / 1e6 == pytest.approx(selection.FORWARD_MFLOP[size], abs=0.05)


def study(root: Path, s8_fit: float, s2_fit: float) -> None:
    ref = [90.0, 90.4, 89.8, 90.2, 90.1]
    for seed, acc in enumerate(ref, start=1):
        write(root, "v1", seed, acc / 100, 370.0, [])
        write(root, "S8", seed, (acc - 0.05 + 0.02 * seed) / 100, s8_fit, P7)  # close to v1
        write(root, "S2", seed, (acc - 1.0 + 0.03 * seed) / 100, s2_fit, P7)  # a point below


def test_a_finalist_shown_non_inferior_is_chosen_and_the_worse_one_is_not(tmp_path, capsys):
    study(tmp_path, s8_fit=230.0, s2_fit=200.0)
    out = tmp_path / "decision.json"
    argv = [str(tmp_path), "--reference", "v1", "--finalists", "S8", "S2", "--seeds", "1", "2",
            "3", "4", "5", "--out", str(out), "--figure", str(tmp_path / "frontier.png"),
            "--untimed", "S2_seed1"]  # fmt: skip
    assert selection.main(argv) == 0
    printed = capsys.readouterr().out
    assert "choice: S8 (the only finalist shown non-inferior)" in printed
    decision = selection.decide(selection.collect([tmp_path]), "v1", ["S8", "S2"],
                                [1, 2, 3, 4, 5], 0.3, 0.05, 0.03)  # fmt: skip
    s8, s2 = decision["finalists"]
    assert s8["rejected"] and not s2["rejected"]  # S2 is faster, but a point worse
    assert s8["p_holm"] == pytest.approx(2 * s8["p"])  # the smaller p is doubled (m = 2)
    assert decision["reference"]["cost"] == pytest.approx(6.61, abs=0.01)  # the protocol's table
    assert s8["cost"] == pytest.approx(3.96, abs=0.01)
    assert out.is_file() and (tmp_path / "frontier.png").stat().st_size > 0


def test_without_a_rejection_the_reference_stays(tmp_path):
    study(tmp_path, s8_fit=230.0, s2_fit=200.0)
    decision = selection.decide(selection.collect([tmp_path]), "v1", ["S2"], [1, 2, 3, 4, 5],
                                0.3, 0.05, 0.03)  # fmt: skip
    assert decision["choice"] == "v1" and "v1 stays" in decision["why"]


def test_fit_times_within_the_tie_go_to_the_one_with_fewer_flops(tmp_path):
    runs = {
        name: {
            s: selection.Scored(name, s, 90.0 + 0.01 * s * (name == "A"), fit, cost)
            for s in (1, 2, 3)
        }
        for name, fit, cost in (("ref", 300.0, 6.6), ("A", 200.0, 4.1), ("B", 205.0, 3.9))
    }
    runs["B"] = {s: selection.Scored("B", s, 90.0 - 0.02 * s, 205.0, 3.9) for s in (1, 2, 3)}
    decision = selection.decide(runs, "ref", ["A", "B"], [1, 2, 3], 0.3, 0.05, 0.03)
    assert [r["rejected"] for r in decision["finalists"]] == [True, True]
    assert decision["choice"] == "B" and "fewer FLOPs" in decision["why"]
    decision = selection.decide(runs, "ref", ["A", "B"], [1, 2, 3], 0.3, 0.05, 0.01)
    assert decision["choice"] == "A" and "faster" in decision["why"]


def test_a_missing_seed_or_a_misnamed_run_is_one_error(tmp_path, capsys):
    study(tmp_path, s8_fit=230.0, s2_fit=200.0)
    argv = [str(tmp_path), "--reference", "v1", "--finalists", "S8", "--seeds", "1", "2", "6"]
    assert selection.main(argv) == 2
    assert "error: v1: no run for seed(s) [6]" in capsys.readouterr().err
    make_run(tmp_path, ["seed=9"], results(test=None, val_acc=0.9), config=V1)
    assert selection.main(argv[:-1]) == 2
    assert "not named <candidate>_seed<S>" in capsys.readouterr().err


def test_a_retimed_run_must_score_the_same_and_its_time_is_drawn(tmp_path, capsys):
    first, again = tmp_path / "first", tmp_path / "again"
    first.mkdir(), again.mkdir()
    write(first, "S1", 0, 0.8852, 913.8, P7)  # on shared cores
    write(again, "S1", 0, 0.8852, 275.6, P7)  # alone
    assert selection.collect([first, again])["S1"][0].fit_seconds == 275.6
    write(again, "S3", 0, 0.8914, 300.0, P7)
    write(first, "S3", 0, 0.8910, 900.0, P7)
    with pytest.raises(selection.UserError, match="a second run of S3 seed 0 scored 89.10 %"):
        selection.collect([again, first])


def test_an_output_that_cannot_be_written_is_one_error(tmp_path, capsys):
    study(tmp_path / "runs", s8_fit=230.0, s2_fit=200.0)
    (tmp_path / "a_file").write_text("")
    argv = [str(tmp_path / "runs"), "--reference", "v1", "--finalists", "S8", "--seeds", "1",
            "2", "--out", str(tmp_path / "a_file" / "decision.json")]  # fmt: skip
    assert selection.main(argv) == 2
    assert "error: cannot write" in capsys.readouterr().err
