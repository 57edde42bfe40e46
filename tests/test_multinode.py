"""Two nodes without a cluster: two torchrun launchers on this machine (--nnodes=2, one process
each, rendezvous on 127.0.0.1), as they would run on two hosts sharing the run folder."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_e2e import single_process_eval_matches
from tests.test_sweep import ENV

TRAIN = 128  # data.train_size: 64 images per rank and epoch, 2 steps of 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_torchrun_nodes_train_disjoint_shards_and_test_as_one_process(
    folder_root: Path, tmp_path: Path
):
    run, port = tmp_path / "run", free_port()

    def node(rank: int) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
               f"--node-rank={rank}", "--master-addr=127.0.0.1", f"--master-port={port}",
               "train.py", f"data.root={folder_root}", "data.num_workers=0", "data.batch_size=32",
               "data.val_size=50", f"data.train_size={TRAIN}", "model.widths=[[8,8],[8,8],[8,8]]",
               "trainer.max_epochs=2", "trainer.deterministic=true", "trainer=ddp",
               "trainer.accelerator=cpu", "trainer.num_nodes=2", "trainer.devices=1",
               "+callbacks.order._target_=tests.probes.RecordOrder",
               f"hydra.run.dir={run}"]  # fmt: skip
        log = (tmp_path / f"node{rank}.log").open("w")
        return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT)

    nodes = [node(0), node(1)]
    for rank, proc in enumerate(nodes):
        assert proc.wait(timeout=600) == 0, (tmp_path / f"node{rank}.log").read_text()[-3000:]
    logs = [(tmp_path / f"node{r}.log").read_text() for r in (0, 1)]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in logs[0] and "GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1]
    assert len(list(run.rglob("results.json"))) == 1
    # Each epoch the two ranks train on disjoint halves that together are the training split.
    for epoch in (0, 1):
        files = [run / "order" / f"rank{r}_epoch{epoch}.json" for r in (0, 1)]
        shards = [json.loads(f.read_text()) for f in files]
        assert len(shards[0]) == len(shards[1]) == TRAIN // 2
        assert set(shards[0]).isdisjoint(shards[1])
        assert set(shards[0]) | set(shards[1]) == set(range(TRAIN))
    single_process_eval_matches(run, tmp_path / "single", probes=("order",))
