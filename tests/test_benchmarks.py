"""The benchmarks run end to end on tiny synthetic data, in this process (wall_time.py starts
train.py as a subprocess): what their JSON holds and that their clocks and checks say what they
should. Their timings are not checked (this machine is shared)."""

import importlib
import json
import shlex
from pathlib import Path

import pytest
import torch
from torch.autograd import DeviceType
from torch.autograd.profiler_util import EventList, FunctionEvent

from benchmarks import (
    augment_throughput,
    common,
    cpu_limit,
    fit_ab,
    loop_overhead,
    op_count,
    profile_step,
    reference_table,
    step_ab,
    sync_check,
    time_to_accuracy,
    wall_time,
)
from cifar_lightning import optim
from tests.conftest import REPO, run_cli

# fast_cpu, sized for 400 synthetic training images: 8 steps of 50 an epoch.
TINY = ["data.batch_size=50", "data.eval_batch_size=50", "model.widths=[8,8,8]"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tta_runs(folder_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two epochs of fast_cpu, with the per-epoch diagnostics and without."""
    out = tmp_path_factory.mktemp("tta")
    runs = {}
    for name, extra in (("eval", []), ("no_eval", ["--no-epoch-eval", f"--keep={out / 'kept'}"])):
        argv = [f"data.root={folder_root}", *TINY, "trainer.max_epochs=2", *extra,
                f"--out={out / name}.json"]  # fmt: skip
        runs[name] = time_to_accuracy.main(argv)
        assert json.loads((out / f"{name}.json").read_text())["on_clock_s"] == pytest.approx(
            runs[name]["on_clock_s"]
        )
    return runs


def test_time_to_accuracy_keeps_the_run_folder_for_eval_py(
    tta_runs, folder_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    kept = Path(tta_runs["no_eval"]["run_dir"])
    results = json.loads((kept / "results.json").read_text())
    assert results["test_acc"] == tta_runs["no_eval"]["final_test_acc"]
    # The clock callback is not in the kept checkpoint's config: eval.py accepts it and, on
    # the same thread count, repeats the test to the last digit.
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    proc = run_cli("eval.py", f"ckpt_path={kept / 'checkpoints' / 'last.ckpt'}",
                   f"data.root={folder_root}", f"hydra.run.dir={tmp_path}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((tmp_path / "results.json").read_text())
    assert (again["test_acc"], again["per_class_acc"]) == (
        results["test_acc"], results["per_class_acc"])  # fmt: skip
    with pytest.raises(SystemExit, match="not empty"):
        time_to_accuracy.run(time_to_accuracy.parse_args([]), [], False, kept)


def test_time_to_accuracy_clock_parts_and_rows(tta_runs):
    r = tta_runs["eval"]
    assert list(r["on_clock"]) == ["build_s", "data_s", "fit_setup_s", "train_s", "to_test_s",
                                   "test_s"]  # fmt: skip
    assert all(v >= 0 for v in r["on_clock"].values())
    assert sum(r["on_clock"].values()) == pytest.approx(r["on_clock_s"])
    assert set(r["off_clock"]) == {"config_s", "epoch_eval_s", "after_test_s"}
    assert set(r["clock"]["on the clock"]) == set(r["on_clock"])
    assert {"process", *r["off_clock"]} == set(r["clock"]["off the clock"])
    rows = r["rows"]
    assert [row["epoch"] for row in rows] == [1, 2] and rows[-1]["steps"] == 16
    # A diagnostic after epoch 1; epoch 2's accuracy is the run's own test, on the clock.
    assert [row["test_acc"] is not None for row in rows] == [True, False]
    assert r["off_clock"]["epoch_eval_s"] == pytest.approx(sum(row["eval_s"] for row in rows))
    assert rows[-1]["cum_s"] < r["on_clock_s"]
    assert r["epochs"] == 2 and 0.0 <= r["final_test_acc"] <= 1.0
    assert r["target_reached_at"] is None or r["time_to_target_s"] <= r["on_clock_s"]


def test_time_to_accuracy_diagnostics_leave_the_training_unchanged(tta_runs):
    with_eval, without = tta_runs["eval"], tta_runs["no_eval"]
    assert without["off_clock"]["epoch_eval_s"] == 0.0
    assert all(row["test_acc"] is None for row in without["rows"])
    for key in ("train_loss", "train_acc"):
        assert [r[key] for r in with_eval["rows"]] == [r[key] for r in without["rows"]]
    assert with_eval["final_test_loss"] == without["final_test_loss"]
    assert with_eval["final_test_acc"] == without["final_test_acc"]


def test_seed_summary_means_and_per_seed_time_to_target(capsys):
    runs = [
        {"seed": 0, "final_test_acc": 0.90, "on_clock_s": 800.0, "time_to_target_s": 790.0},
        {"seed": 1, "final_test_acc": 0.88, "on_clock_s": 700.0, "time_to_target_s": None},
    ]
    summary = time_to_accuracy.seed_summary(runs)
    assert summary["mean_final_test_acc"] == pytest.approx(0.89)
    assert summary["max_on_clock_s"] == 800.0
    assert summary["time_to_target_s_per_seed"] == [790.0, None]
    assert "790.00" in capsys.readouterr().out


def test_time_to_accuracy_keeps_the_seeds_done_when_a_later_one_is_stopped(tmp_path, monkeypatch):
    # A time limit that stops the third seed leaves the first two on disk (gpu.sh's steps).
    done = []

    def fake_run(args, overrides, epoch_eval, keep=None):
        if len(done) == 2:
            raise KeyboardInterrupt  # as a time limit's signal would stop it
        done.append({"experiment": "fast94", "seed": len(done), "final_test_acc": 0.94,
                     "on_clock_s": 3.0, "time_to_target_s": 2.5})  # fmt: skip
        return done[-1]

    monkeypatch.setattr(time_to_accuracy, "run", fake_run)
    monkeypatch.setattr(time_to_accuracy, "print_run", lambda r: None)
    out = tmp_path / "clock.json"
    with pytest.raises(KeyboardInterrupt):
        time_to_accuracy.main(["--experiment", "fast94", "--seeds", "0", "1", "2", f"--out={out}"])
    kept = json.loads(out.read_text())
    assert [r["seed"] for r in kept["runs"]] == [0, 1] and kept["complete"] is False
    assert kept["mean_on_clock_s"] == 3.0

    # Stopped in its first timed run, a run with a warm-up keeps the warm-up's time.
    def warm_then_stop(args, overrides, epoch_eval, keep=None):
        if done:
            raise KeyboardInterrupt
        done.append("warm-up")
        return {"on_clock_s": 9.0}

    done.clear()
    monkeypatch.setattr(time_to_accuracy, "run", warm_then_stop)
    with pytest.raises(KeyboardInterrupt):
        time_to_accuracy.main(["--experiment", "fast94", "--seeds", "0", "--warmup-steps", "5",
                               f"--out={out}"])  # fmt: skip
    kept = json.loads(out.read_text())
    assert kept["runs"] == [] and kept["warmup"]["on_clock_s"] == 9.0 and not kept["complete"]


SEEDS_THEN_OVERRIDES = ["--seeds", "0", "1", "2", "data.root=x", "trainer.max_epochs=2"]
OVERRIDES_AROUND_SEEDS = ["data.root=x", "--seeds", "0", "1", "2", "trainer.max_epochs=2"]


@pytest.mark.parametrize("argv", [SEEDS_THEN_OVERRIDES, OVERRIDES_AROUND_SEEDS])
def test_overrides_may_follow_the_seeds(argv, capsys):
    args = time_to_accuracy.parse_args([*argv, "--out=r=1.json", "~trainer.logger"])
    assert args.seeds == [0, 1, 2] and args.out == "r=1.json"
    assert args.overrides == ["data.root=x", "trainer.max_epochs=2", "~trainer.logger"]
    with pytest.raises(SystemExit):
        time_to_accuracy.parse_args(["--seeds", "0", "one"])
    assert "invalid int value: 'one'" in capsys.readouterr().err


def test_loop_overhead_bare_and_train_py_configured(folder_root: Path, tmp_path: Path):
    out = tmp_path / "loop.json"
    r = loop_overhead.main([f"data.root={folder_root}", *TINY, "--steps", "2", "--repeats", "1",
                            f"--out={out}"])  # fmt: skip
    assert json.loads(out.read_text())["train_py_ratio"] == pytest.approx(r["train_py_ratio"])
    assert r["max_weight_diff"] == 0.0  # Lightning and the plain loop did the same work
    assert r["steps_per_run"] == 2 and r["steps_per_epoch"] == 8
    # fast_cpu's train.py trainer: its callbacks (Lightning's progress bar included), its logger.
    assert {"LastCheckpoint", "HealthCheck", "EpochSummary", "CSVLogger"} <= set(r["features"])
    assert set(r["feature_costs_s"]) == set(r["features"])
    assert set(r["fit_s"]) == {"plain", "lightning", "train.py", *(f"+{f}" for f in r["features"])}
    ratios = r["ratio_to_plain"]
    assert set(ratios) == set(r["fit_s"]) and ratios["plain"]["median"] == 1
    assert r["ratio"] == ratios["lightning"]["median"] > 0
    assert r["train_py_ratio"] == ratios["train.py"]["median"] > 0


def test_loop_overhead_refuses_recipes_with_validation(folder_root: Path):
    with pytest.raises(SystemExit, match="data.val_size=0"):
        loop_overhead.main([f"data.root={folder_root}", *TINY, "data.val_size=100"])


def test_augment_throughput(folder_root: Path, tmp_path: Path, capsys):
    r = augment_throughput.main(["--data-root", str(folder_root), "--presets", "standard",
                                 "--images", "100", "--batch-size", "50", "--workers", "0",
                                 "--repeats", "2", "--min-seconds", "0",
                                 f"--out={tmp_path / 'aug.json'}"])  # fmt: skip
    [row] = r["rows"]
    assert row["preset"] == "standard" and r["images"] == 100
    assert len(row["round_ratios"]) == 2 and row["ratio"] > 0
    assert all(rnd["passes"] == 1 for rnd in row["device_rounds"])  # --min-seconds 0: one pass
    # Each round prints as it ends, before the table: a long run shows its progress.
    out = capsys.readouterr().out
    rounds = [out.index(f"standard round {i}/2: ") for i in (1, 2)]
    assert rounds[0] < rounds[1] < out.index("torchvision img/s")


def test_wall_time_of_train_py(folder_root: Path, tmp_path: Path, capfd, monkeypatch):
    out, clock = tmp_path / "wall.json", tmp_path / "clock.json"
    runs = [{"experiment": "fast_cpu", "seed": s} for s in (0, 1)]  # time_to_accuracy's
    clock.write_text(json.dumps({"runs": runs, "mean_on_clock_s": 1.25}))
    monkeypatch.setattr(wall_time, "import_s", lambda env: 0.5)  # two interpreters spared
    r = wall_time.main([f"--out={out}", f"--budget-from={clock}", "--", "experiment=fast_cpu",
                        f"data.root={folder_root}", *TINY, "trainer.max_epochs=1"])  # fmt: skip
    assert r["returncode"] == 0 and r["wall_s"] > 0 and r["epochs"] == 1
    assert 0.0 <= r["test_acc"] <= 1.0
    assert json.loads(out.read_text())["test_acc"] == r["test_acc"]
    assert r["budget"]["rest_s"] == pytest.approx(r["wall_s"] - 1.25 - 0.5)
    assert f"the rest {r['budget']['rest_s']:.2f} s (target <= 3 s" in capfd.readouterr().out
    with pytest.raises(SystemExit):
        wall_time.main(["experiment=fast_cpu"])  # train.py's arguments go after --
    assert "put train.py's arguments after --" in capfd.readouterr().err
    # A budget file that is not time_to_accuracy's: one error, before train.py runs.
    for text in ("{", "[1]", '{"on_clock_s": "fast"}', '{"on_clock_s": 1.0}'):
        clock.write_text(text)
        with pytest.raises(SystemExit, match="--budget-from .*clock.json"):
            wall_time.main([f"--budget-from={clock}", "--", "experiment=fast_cpu"])
    # Another recipe's clock is no budget for this one (one run, or several seeds').
    for timed in (
        {"experiment": "fast94", "on_clock_s": 8.0},
        {"runs": [*runs, {"experiment": "fast94"}], "mean_on_clock_s": 1.25},
    ):
        clock.write_text(json.dumps(timed))
        with pytest.raises(SystemExit, match="times experiment .*fast94.* experiment=fast_cpu"):
            wall_time.main([f"--budget-from={clock}", "--", "experiment=fast_cpu"])
    assert wall_time.recipe(["seed=1"]) == "none"
    assert wall_time.recipe(["experiment=fast94", "+experiment=fast_cpu"]) == "fast_cpu"


def test_cpu_limit_counts_the_step_and_its_ceiling(folder_root: Path, tmp_path: Path):
    out = tmp_path / "limit.json"
    r = cpu_limit.main([f"data.root={folder_root}", *TINY, "--steps=2", "--warmup=1",
                        "--repeats=1", f"--out={out}"])  # fmt: skip
    assert json.loads(out.read_text())["train_flops"] == pytest.approx(r["train_flops"])
    assert sorted(r["per_size"]) == [24, 32]  # fast_cpu's train_resolution: 24, then 32
    for size, row in r["per_size"].items():
        assert row["real_step_s"]["median"] > 0 and row["ceiling_s"] > 0
        pieces = {(p["layer"], p["piece"]) for p in row["pieces"]}
        # The whitening conv: forward only (frozen weights, and the data needs no gradient).
        first = [p for p in row["pieces"] if p["layer"].startswith("Conv2d(3,")]
        assert [p["piece"] for p in first] == ["forward"]
        assert ("Linear(8,)", "weight_grad") in pieces
        # A 3x3 conv's forward FLOPs, by hand: 2 x batch x C_out x H x W x C_in x 9.
        [conv] = [p for p in row["pieces"] if p["layer"] == f"Conv2d(24, {size - 1}, {size - 1})"
                  and p["piece"] == "forward"]  # fmt: skip
        assert conv["flops"] == 2 * 50 * 8 * (size - 1) ** 2 * 24 * 9
    steps = r["steps_per_epoch"] * (r["sizes_by_epoch"].count(24) + r["sizes_by_epoch"].count(32))
    assert steps == 8 * 9  # 400 images / batch 50, 9 epochs


def test_profile_step_puts_the_whole_step_in_named_parts(folder_root: Path, tmp_path: Path):
    out, plain = tmp_path / "profile.json", optim.orthogonalize
    r = profile_step.main([f"data.root={folder_root}", *TINY, "--sizes", "24", "--steps=2",
                           "--warmup=1", f"--out={out}"])  # fmt: skip
    row = json.loads(out.read_text())["per_size"]["24"]
    assert row["steps"] == 2 and sum(row["share"].values()) == pytest.approx(1.0)
    for part in ("convolution", "batch norm", "activation", "pooling", "Muon Newton-Schulz",
                 "optimizer", "data and loop"):  # fmt: skip
        assert row["seconds"][part] > 0, part
    assert r["per_size"][24]["plain_step_s"] > 0
    assert row["kernel_seconds"] is None and row["gpu_busy"] is None  # no GPU, no kernels
    assert optim.orthogonalize is plain  # the label is taken off again


def test_profile_step_gives_kernels_the_part_of_the_operator_that_launched_them():
    """The CUDA mode's attribution, on hand-made profiler events (no GPU here; times in us): a
    kernel counts with its launching operator's part; the backward that autograd runs on its
    own thread counts as the backward; kernels outside the optimizer steps and those no
    operator claims are the data and the loop; synchronisation waits are no kernel time."""

    def event(name, start, end, parent=None, device=DeviceType.CPU, kernels=(), thread=0):
        e = FunctionEvent(id=start, name=name, thread=thread, start_us=start, end_us=end,
                          use_device="cuda", device_type=device)  # fmt: skip
        if parent is not None:
            e.set_cpu_parent(parent)
            parent.append_cpu_child(e)
        for kernel, us in kernels:
            e.append_kernel(kernel, 0, us)
        return e

    step = event(profile_step.OPTIMIZER + "SGD.step", 0, 100)
    forward = event(profile_step.FORWARD, 1, 40, step)
    conv = event("aten::convolution", 2, 10, forward, kernels=[("conv", 30)])
    inner = event("aten::_convolution", 3, 9, conv, kernels=[("conv_inner", 4)])
    backward = event(profile_step.BACKWARD, 40, 48, step)  # waits for autograd's thread (1)
    grad = event("autograd::engine::evaluate_function: ConvolutionBackward0", 41, 47, thread=1)
    grad_op = event("aten::convolution_backward", 42, 46, grad, kernels=[("conv_bw", 20)],
                    thread=1)  # fmt: skip
    update = event("aten::_foreach_add_", 50, 60, step, kernels=[("foreach", 8)])
    item = event("aten::_local_scalar_dense", 55, 56, update, kernels=[("Stream Sync", 90)])
    gather = event("aten::index", 200, 210, kernels=[("gather", 5)])  # outside the steps
    fill = event("aten::fill_", 300, 301, thread=1)  # autograd's thread, outside the steps
    on_gpu = [event(n, 400, 400 + us, device=DeviceType.CUDA) for n, us in
              (("conv", 30), ("conv_inner", 4), ("conv_bw", 20), ("foreach", 8), ("gather", 5),
               ("unclaimed", 2), ("Context Sync", 500), ("Stream Sync", 90))]  # fmt: skip

    class Profile:
        def events(self):
            return EventList([step, forward, conv, inner, backward, grad, grad_op, update, item,
                              gather, fill, *on_gpu])  # fmt: skip

    kernels = profile_step.kernel_shares(Profile())
    assert set(kernels) == set(profile_step.CATEGORIES)
    assert {k: v for k, v in kernels.items() if v} == pytest.approx(
        {"convolution": 54e-6, "optimizer": 8e-6, "data and loop": 7e-6})  # fmt: skip
    # CPU self times: the step's own 43, the update's 9 and the read's 1 are the optimizer; the
    # forward's 31 and the backward's 8 less the 6 it waited for autograd's thread are Python;
    # the convolutions' 2 + 6 and the backward thread's 2 + 4; the window's other 50 the loop.
    cpu = profile_step.shares(Profile(), window=150e-6)
    assert {k: v for k, v in cpu.items() if v} == pytest.approx(
        {"optimizer": 53e-6, "Python in the step": 33e-6, "convolution": 14e-6,
         "data and loop": 50e-6})  # fmt: skip


def test_step_ab_alternates_a_and_b_and_reports_the_ratio(folder_root: Path, tmp_path: Path):
    r = step_ab.main([f"data.root={folder_root}", *TINY, "--b=optimizer.ns_steps=5",
                      "--size=24", "--rounds=2", "--steps=1", "--warmup=1",
                      f"--out={tmp_path / 'ab.json'}"])  # fmt: skip
    assert r["b"] == ["optimizer.ns_steps=5"] and "optimizer.ns_steps=5" not in r["overrides"]
    assert [x["ratio"] for x in r["rounds"]] == [x["B"] / x["A"] for x in r["rounds"]]
    assert r["ratio"]["min"] <= r["ratio"]["median"] <= r["ratio"]["max"]


def test_fit_ab_pairs_whole_fits_by_round(folder_root: Path, tmp_path: Path, capsys):
    argv = [f"data.root={folder_root}", *TINY, "trainer.max_steps=2", "--rounds=2",
            "--b=callbacks.progress_bar.interval_s=0",
            f"--out={tmp_path / 'fit.json'}"]  # fmt: skip
    r = fit_ab.main(argv)
    assert r["b"] == ["callbacks.progress_bar.interval_s=0"] and len(r["rounds"]) == 2
    diffs = [x["B"] - x["A"] for x in r["rounds"]]
    assert r["diff_s"] == pytest.approx(sum(diffs) / 2) and r["test"] == "paired"
    assert "round 2: A" in capsys.readouterr().out  # the untimed round 0 is not printed
    with pytest.raises(SystemExit):
        fit_ab.main([*argv, "--rounds=1"])


def gpu_steps() -> list[list[str]]:
    """benchmarks/gpu.sh's steps as argument lists (continued lines joined, $root and $out
    filled in), each without `step LEAST LIMIT`."""
    text = (REPO / "benchmarks" / "gpu.sh").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    steps = [shlex.split(line)[3:] for line in lines if line.startswith("step ")]
    return [[w.replace("$root", "DATA").replace("$out", "OUT") for w in s] for s in steps]


class Parsed(Exception):
    pass


class EmulatedSyncMode(op_count.Count):
    """CUDA's set_sync_debug_mode("error") on a CPU: a device read (op_count's count of them)
    raises while the mode is on, with the message CUDA's gives."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = "default"

    def read(self, name: str) -> None:
        super().read(name)
        if self.mode == "error" and not self.reads[-1]["host_resident"]:
            raise RuntimeError(f"called a synchronizing CUDA operation ({name})")


@pytest.mark.parametrize("inject", [None, "training_step", "test_step"])
def test_sync_check_on_a_cpu_with_the_read_count_standing_in_for_cuda(
    folder_root: Path, tmp_path: Path, monkeypatch, inject
):
    from cifar_lightning.module import Classifier

    mode = EmulatedSyncMode()
    monkeypatch.setattr(sync_check, "cuda_ready", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda m: setattr(mode, "mode", m))
    if inject:  # a step that reads a value back: the check must stop at it
        step = getattr(Classifier, inject)

        def reading(self, batch, batch_idx):  # noqa: ANN001
            out = step(self, batch, batch_idx)
            float(batch[1].float().mean())
            return out

        monkeypatch.setattr(Classifier, inject, reading)
    out = tmp_path / "sync.json"
    argv = ["--experiment", "fast94", "--steps", "12", f"--out={out}", f"data.root={folder_root}",
            "trainer.accelerator=cpu", "trainer.precision=32-true", "model.widths=[8,8,8]",
            "data.batch_size=32", "data.eval_batch_size=25",
            "trainer.log_every_n_steps=5"]  # fmt: skip
    with mode:
        if inject:
            with pytest.raises(SystemExit):
                sync_check.main(argv)
        else:
            sync_check.main(argv)
    result = json.loads(out.read_text())
    # 12 steps, one epoch of 400 images: the first, the logging points at steps 5 and 10 and
    # the epoch's last batch unchecked; the test's 4 batches of 25 images: the first unchecked.
    if inject is None:
        assert result["ok"] and result["steps_checked"] == 8
        assert result["test_batches_checked"] == 3
    else:
        assert not result["ok"] and "synchronizing" in result["error"]
        assert result["steps_run"] == (12 if inject == "test_step" else 1)
    assert mode.mode == "default"


@pytest.mark.parametrize("argv", gpu_steps(), ids=lambda argv: argv[1])
def test_gpu_sh_steps_take_their_own_options(argv, monkeypatch, tmp_path: Path):
    """What a GPU can run, a CPU can check: each step of gpu.sh names a benchmark whose own
    parser accepts its options (the run stops right after parsing), and train.py's config
    takes its overrides."""
    assert argv[0] == "$py" and (REPO / argv[1]).is_file()
    module = importlib.import_module(argv[1].removesuffix(".py").replace("/", "."))

    def parse_only(p, args):
        raise Parsed(common.parse(p, args))

    monkeypatch.setattr(module, "parse", parse_only)
    with pytest.raises(Parsed) as parsed:
        module.main(argv[2:])
    [args] = parsed.value.args
    assert args.out.startswith("OUT/") and args.out.endswith(".json")
    if "experiment" in vars(args):
        with common.run_config(args.experiment, args.overrides, tmp_path) as cfg:
            assert cfg.data.root == "DATA"


def _reference_log(path: Path, runs: list[tuple[float, float]]) -> None:
    """A reference's log as airbench94.py prints it: a header, epoch rows, then an "eval" row
    per run (train_loss, train_acc, val_acc, tta_val_acc, seconds), the first a warm-up."""

    def columns(*cells: str) -> str:
        return "".join(f"|  {c:>10}  " for c in cells) + "|"

    lines = [columns("run", "epoch", "train_loss", "train_acc", "val_acc", "tta_val_acc", "s")]
    for i, (acc, seconds) in enumerate(runs):
        lines.append(columns(str(i), "9", "0.8000", "0.9000", "0.9300", "", "1.0000"))
        lines.append(columns(str(i), "eval", "0.8000", "0.9000", "0.9300", f"{acc:.4f}",
                             f"{seconds:.4f}"))  # fmt: skip
    path.write_text("\n".join(lines) + "\nMean: 0.9400    Std: 0.0010\n")


def test_reference_table_compares_each_recipe_with_its_reference(tmp_path: Path, capsys):
    from scipy import stats as scipy_stats

    sbs, gpu = tmp_path / "sbs", tmp_path / "gpu"
    sbs.mkdir(), gpu.mkdir()
    ref = [(round(0.9401 + 0.0004 * (i % 3), 4), round(2.10 + 0.01 * i, 4)) for i in range(8)]
    _reference_log(sbs / "airbench94.log", [(0.5, 9.0), *ref])  # the warm-up is left out
    ours = [(0.9398 + 0.0003 * (i % 4), 2.50 + 0.02 * i) for i in range(8)]
    runs = [{"final_test_acc": a, "on_clock_s": s} for a, s in ours]
    (sbs / "fast94.json").write_text(json.dumps({"runs": runs, "gpu": "a GPU"}))
    _reference_log(sbs / "airbench94_muon.log", [(0.5, 9.0), (0.9402, 1.9), (0.9405, 1.91)])
    muon = [
        {"final_test_acc": 0.9399, "on_clock_s": 2.2},
        {"final_test_acc": 0.9403, "on_clock_s": 2.3},
    ]
    (gpu / "time_to_accuracy_fast94_muon.json").write_text(json.dumps({"runs": muon}))
    budget = {"on_clock_s": 2.6, "import_s": 9.1, "rest_s": 2.4, "rest_target_s": 3.0}
    (gpu / "wall_time_fast94.json").write_text(json.dumps({"wall_s": 14.1, "budget": budget}))

    result = reference_table.main(
        [str(sbs), "--gpu-results", str(gpu), "--out", str(tmp_path / "t.json")]
    )
    shown = capsys.readouterr().out
    systems = result["systems"]
    assert [tuple(r) for r in systems["airbench94"]["runs"]] == ref
    assert systems["hiverge"]["runs"] is None
    c = systems["fast94"]["comparison"]
    a, b = [x for x, _ in ours], [x for x, _ in ref]
    expected = scipy_stats.ttest_ind(
        [x + 0.002 for x in a], b, equal_var=False, alternative="greater"
    )
    assert c["noninferiority_p"] == pytest.approx(expected.pvalue)
    assert c["noninferior"] == (expected.pvalue < 0.05) and c["enough_runs"]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert c["time_ratio"] == pytest.approx(mean([s for _, s in ours]) / mean([s for _, s in ref]))
    assert c["time_target_met"] == (c["time_ratio"] <= 1.25)
    assert not systems["fast94_muon"]["comparison"]["enough_runs"]
    assert "| hiverge | not run |" in shown and "n < 8" in shown and "(target 3 s: met)" in shown
    assert json.loads((tmp_path / "t.json").read_text())["gpu"] == "a GPU"
    with pytest.raises(SystemExit):  # not a folder: one usage error
        reference_table.main([str(tmp_path / "missing")])
