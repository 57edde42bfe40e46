"""The time-to-accuracy benchmark's summary over seeds (its arithmetic, not its timings)."""

import pytest

from benchmarks.time_to_accuracy import seed_summary


def _run(seed: int, acc: float | None, train_s: float, to_target: float | None) -> dict:
    return {"seed": seed, "final_test_acc": acc, "train_s": train_s, "fit_setup_s": 1.0,
            "time_to_target_s": to_target}  # fmt: skip


def test_seed_summary_means_and_per_seed_time_to_target(capsys):
    runs = [_run(0, 0.90, 800.0, 790.0), _run(1, 0.88, 700.0, None), _run(2, None, 0.0, None)]
    summary = seed_summary(runs)
    assert summary["seeds"] == [0, 1]  # a run without a finished epoch is left out
    assert summary["mean_final_test_acc"] == pytest.approx(0.89)
    assert summary["max_train_s"] == 800.0
    assert summary["time_to_target_s_per_seed"] == [790.0, None]
    assert "790.00" in capsys.readouterr().out


def test_seed_summary_refuses_runs_without_an_epoch():
    with pytest.raises(SystemExit, match="no run finished an epoch"):
        seed_summary([_run(0, None, 0.0, None)])
