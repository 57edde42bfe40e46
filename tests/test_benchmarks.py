"""The time-to-accuracy benchmark's summary over seeds and its command line (not its timings)."""

import pytest

from benchmarks.time_to_accuracy import parse_args, seed_summary


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


@pytest.mark.parametrize(
    "argv",
    [
        ["--seeds", "0", "1", "2", "data.root=x", "trainer.max_epochs=2"],
        ["data.root=x", "--seeds", "0", "1", "2", "trainer.max_epochs=2"],
        ["data.root=x", "trainer.max_epochs=2", "--seeds", "0", "1", "2"],
    ],
)
def test_overrides_may_follow_the_seeds(argv):
    args = parse_args([*argv, "--out=r=1.json", "~trainer.logger"])
    assert args.seeds == [0, 1, 2]
    assert args.overrides == ["data.root=x", "trainer.max_epochs=2", "~trainer.logger"]
    assert args.out == "r=1.json"


def test_a_seed_that_is_not_a_number_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--seeds", "0", "one"])
    assert "invalid int value: 'one'" in capsys.readouterr().err
