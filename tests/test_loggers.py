"""logger=mlflow, wandb, many: a tiny run logs to every tracker at once, and each tracker's own
store is read back (MLflow's client, the W&B offline transaction log, TensorBoard's event files).
No network: W&B runs offline, MLflow writes a SQLite store under tmp_path."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pytorch_lightning.loggers import WandbLogger

from cifar_lightning import pipeline, results, trackers
from cifar_lightning.cli import check_cli
from cifar_lightning.errors import UserError
from tests.conftest import REPO

mlflow = pytest.importorskip("mlflow")
wandb = pytest.importorskip("wandb")

RUN_FILES = {"results.json", "confusion_matrix.png"}
TINY = ["data.batch_size=32", "data.num_workers=0", "data.val_size=50", "augment=none"]
FEW_BATCHES = ["trainer=cpu", "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
               "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
               "trainer.limit_test_batches=1"]  # fmt: skip


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory: pytest.TempPathFactory):
    """W&B offline and quiet, its side folders (cache, config, staging) in tmp."""
    base = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
            (base / var.lower()).mkdir()  # W&B falls back to ./wandb for a folder that is absent
            mp.setenv(var, str(base / var.lower()))
        yield base


def in_store(store: Path) -> list[str]:
    """Overrides that put MLflow's store (database and artifacts) into `store`."""
    return [f"logger.mlflow.tracking_uri=sqlite:///{store}/mlflow.db",
            f"logger.mlflow.artifact_location={store}/mlartifacts"]  # fmt: skip


def compose_run(out: Path, *overrides: str):
    """The train config as Hydra hands it to a run whose output folder is `out`. Sets
    HydraConfig (for the ${hydra:...} interpolations); the caller clears it."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra.runtime.output_dir='{out}'", *overrides],
                      return_hydra_config=True)  # fmt: skip
    HydraConfig.instance().set_config(cfg)
    return cfg


def train_and_log(cfg, out: Path):
    """What pipeline.train does, small: fit, test, results.save, then trackers.log_run_files."""
    datamodule, module = pipeline.build(cfg, seed=0)
    loggers = [instantiate(c) for c in cfg.logger.values()]  # as pipeline.make_trainer does
    trainer = instantiate(cfg.trainer, logger=loggers, default_root_dir=out)
    trainer.fit(module, datamodule=datamodule)
    [metrics] = trainer.test(module, datamodule=datamodule, verbose=False)
    report = module.test_report
    results.save(out, {"test_acc": metrics["test/acc"], "per_class_acc": report["per_class_acc"]},
                 report["confusion_matrix"])  # fmt: skip
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra")
    trackers.log_run_files(trainer, out, config)
    return trainer


@pytest.fixture(scope="module")
def tracked(folder_root: Path, tmp_path_factory: pytest.TempPathFactory, wandb_env: Path):
    """Two runs in one process, as two jobs of a multirun: the first with every tracker
    (logger=[many,wandb]), the second starting W&B only (it must not reuse the first's run)."""
    base = tmp_path_factory.mktemp("tracked")
    store, out, second = base / "store", base / "optimizer=sgd", base / "second"
    try:
        cfg = compose_run(out, "logger=[many,wandb]", *in_store(store), "optimizer=sgd",
                          f"data.root={folder_root}", *TINY, *FEW_BATCHES)  # fmt: skip
        trainer = train_and_log(cfg, out)
        first_id = next(lg for lg in trainer.loggers if isinstance(lg, WandbLogger)).version
        cfg2 = compose_run(second, "logger=wandb")
        next_job = instantiate(cfg2.logger.wandb)  # a multirun's next job, same process
        next_job.log_metrics({"val/acc": 0.5}, step=0)
        wandb.finish()  # the end of the process, for the second job: its log is complete
        yield {"out": out, "store": store, "second": second, "first_wandb_id": first_id,
               "second_wandb_id": next_job.version}  # fmt: skip
    finally:
        wandb.finish()
        HydraConfig.instance().cfg = None


def test_mlflow_run_holds_metrics_config_and_files(tracked):
    client = mlflow.MlflowClient(f"sqlite:///{tracked['store']}/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("cifar10").experiment_id])
    assert run.info.run_name == "optimizer=sgd"  # the run folder's name
    assert run.data.tags["run_dir"] == str(tracked["out"])
    assert run.info.status == "FINISHED"
    for key in ("train/loss", "val/acc", "test/acc"):
        assert client.get_metric_history(run.info.run_id, key), key
    params = run.data.params
    assert params["optimizer._target_"] == "torch.optim.SGD"
    assert params["trainer.max_epochs"] == "1" and params["seed"] == "0"
    assert params["logger.mlflow.experiment_name"] == "cifar10"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == RUN_FILES
    assert run.info.artifact_uri.startswith(str(tracked["store"] / "mlartifacts"))
    local = client.download_artifacts(run.info.run_id, "results.json", str(tracked["store"]))
    assert json.loads(Path(local).read_text()) == json.loads(
        (tracked["out"] / "results.json").read_text()
    )


def wandb_records(run_dir: Path) -> list:
    """The records of a W&B run's transaction log (run-<id>.wandb, what `wandb sync` uploads):
    LevelDB's log format, a 7-byte file header, 32 KiB blocks of (crc, length, type) chunks."""
    from wandb.proto import wandb_internal_pb2

    [log] = run_dir.glob("run-*.wandb")
    data, pos, chunk, records = log.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        if room < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a record is complete
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def test_wandb_offline_run_in_the_run_folder_holds_metrics_config_and_files(tracked):
    [run_dir] = (tracked["out"] / "wandb").glob("offline-run-*")
    records = wandb_records(run_dir)
    [run] = [r.run for r in records if r.HasField("run")]
    assert run.display_name == "optimizer=sgd" and run.run_id == tracked["first_wandb_id"]
    config = {i.key: json.loads(i.value_json) for r in records if r.HasField("config")
              for i in r.config.update}  # fmt: skip
    assert config["optimizer"]["_target_"] == "torch.optim.SGD"
    assert config["trainer"]["max_epochs"] == 1
    history = {i.nested_key[0] if i.nested_key else i.key for r in records
               if r.HasField("history") for i in r.history.item}  # fmt: skip
    assert {"train/loss", "val/acc", "test/acc"} <= history
    saved = {f.path for r in records if r.HasField("files") for f in r.files.files}
    assert RUN_FILES <= saved
    for name in RUN_FILES:  # copies, which survive the run folder being moved before the sync
        copy = run_dir / "files" / name
        assert copy.is_file() and not copy.is_symlink()
        assert copy.read_bytes() == (tracked["out"] / name).read_bytes()


def test_each_job_of_a_multirun_gets_its_own_wandb_run(tracked):
    assert tracked["second_wandb_id"] != tracked["first_wandb_id"]
    [second] = (tracked["second"] / "wandb").glob("offline-run-*")
    [run] = [r.run for r in wandb_records(second) if r.HasField("run")]
    assert run.display_name == "second" and run.run_id == tracked["second_wandb_id"]


def test_tensorboard_shows_the_confusion_matrix_and_results(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked["out"] / "tensorboard")).Reload()
    assert "test/confusion_matrix" in events.Tags()["images"]
    [text] = events.Tensors("results/text_summary")
    assert b'"test_acc"' in text.tensor_proto.string_val[0]
    assert "val/acc" in events.Tags()["scalars"]


def test_the_csv_log_the_report_reads_stays_beside_the_trackers(tracked):
    header = (tracked["out"] / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "val/acc", "test/acc"} <= set(header)


def test_every_logger_option_composes_csv_in(tmp_path: Path):
    for option, trackers_in in {"mlflow": {"mlflow"}, "wandb": {"wandb"},
                                "many": {"tensorboard", "mlflow"}}.items():  # fmt: skip
        try:
            cfg = compose_run(tmp_path, f"logger={option}")
            assert set(cfg.logger) == {"csv", *trackers_in}, option
        finally:
            HydraConfig.instance().cfg = None


def test_a_tracker_chosen_without_its_package_is_one_clear_error(monkeypatch, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what find_spec reports when not installed
    message = r"logger=mlflow needs mlflow: pip install -e '\.\[mlflow\]'"
    with pytest.raises(UserError, match=message):
        trackers.mlflow_logger(str(tmp_path), tracking_uri=f"sqlite:///{tmp_path}/m.db")


def test_the_command_line_check_names_the_extra_to_install(monkeypatch, tmp_path: Path):
    # Before Hydra starts: cifar_lightning/cli.py's PLUGINS table.
    monkeypatch.setitem(sys.modules, "mlflow", None)
    for arg in ("logger=mlflow", "logger=many"):
        with pytest.raises(UserError, match=r"pip install -e '\.\[mlflow\]'"):
            check_cli([arg], default_dir=str(tmp_path))
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UserError, match=r"pip install -e '\.\[wandb\]'"):
        check_cli(["logger=wandb"], default_dir=str(tmp_path))


def test_params_are_the_dotted_keys_of_the_nested_config():
    config = {"optimizer": {"_target_": "torch.optim.SGD", "lr": 0.1}, "seed": 0,
              "module": {"train_resolution": [24, 32], "empty": {}}}  # fmt: skip
    assert dict(trackers.flatten(config)) == {
        "optimizer._target_": "torch.optim.SGD", "optimizer.lr": 0.1, "seed": 0,
        "module.train_resolution": [24, 32], "module.empty": {},
    }  # fmt: skip


@pytest.fixture(scope="module")
def mlflow_sweep(folder_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`train.py -m logger=mlflow optimizer=adam,sgd` run from a fresh working directory, so that
    the default store (outputs/mlflow.db, outputs/mlartifacts) lands in tmp, never in the repo."""
    cwd = tmp_path_factory.mktemp("cwd")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", "logger=mlflow", "optimizer=adam,sgd",
         f"data.root={folder_root}", *TINY, *FEW_BATCHES],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return cwd


def sweep_runs(cwd: Path) -> tuple[mlflow.MlflowClient, dict]:
    """MLflow's client on the sweep's store, and its runs by name."""
    client = mlflow.MlflowClient(f"sqlite:///{cwd}/outputs/mlflow.db")
    experiment = client.get_experiment_by_name("cifar10")
    return client, {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


@pytest.mark.slow
def test_a_multirun_gives_one_mlflow_run_per_job_in_outputs(mlflow_sweep: Path):
    client, runs = sweep_runs(mlflow_sweep)
    [sweep] = (mlflow_sweep / "outputs" / "multirun").iterdir()
    jobs = [p for p in sweep.iterdir() if p.is_dir()]
    assert len(jobs) == 2 and set(runs) == {job.name for job in jobs}  # named by the job's folder
    for job in jobs:
        run = runs[job.name]
        assert run.info.status == "FINISHED" and run.data.tags["run_dir"] == str(job)
        assert client.get_metric_history(run.info.run_id, "val/acc")
        assert run.info.artifact_uri.startswith(str(mlflow_sweep / "outputs" / "mlartifacts"))


@pytest.mark.slow
def test_train_py_hands_its_config_and_results_to_mlflow(mlflow_sweep: Path):
    # Needs pipeline.train to call trackers.log_run_files after results.save.
    client, runs = sweep_runs(mlflow_sweep)
    for name, run in runs.items():
        target = "torch.optim.Adam" if "optimizer=adam" in name else "torch.optim.SGD"
        assert run.data.params["optimizer._target_"] == target
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == RUN_FILES
