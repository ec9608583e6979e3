"""Each FS algorithm recipe in real processes: a distributed shard-mode job (server + 3 client
processes, each reading only its shard) ends with the same global model, bit for bit, as the
standalone simulation of the same shards with the same keys.

FedBN and FedOpt run the server side too: updates without the local keys, the server optimizer.
Per-client configs (``client_<id>.*`` pairs) reach each client process by its own id.
"""
import os

import pytest
import torch

from harness.jobs import LIGHT_TRAINING, Job
from harness.procs import ROOT, start_main, wait_all

ROUNDS = 2
SERVER_CFG = os.path.join(ROOT, "scripts", "distributed_scripts", "distributed_configs",
                          "distributed_femnist_server.yaml")

# (keys, what each client process must log about its trainer)
RECIPES = [
    pytest.param(["fedprox.use", "True", "fedprox.mu", "0.1"], "proximal term mu=0.1",
                 id="fedprox"),
    pytest.param(["federate.method", "Ditto", "personalization.regular_weight", "0.1",
                  "personalization.lr", "0.05", "personalization.local_update_steps", "2",
                  "train.batch_or_epoch", "batch", "train.local_update_steps", "3"],
                 "Ditto personal model (regular_weight=0.1, lr=0.05, local_update_steps=2)",
                 id="ditto"),
    pytest.param(["finetune.before_eval", "True", "finetune.local_update_steps", "2",
                  "finetune.batch_or_epoch", "batch", "finetune.optimizer.lr", "0.05"],
                 "fine-tuning 2 batch(s) before evaluation", id="finetune"),
    pytest.param(["personalization.local_param", "['bn', 'norms']"],
                 "10 local keys kept on the client", id="fedbn"),
    pytest.param(["federate.method", "FedOpt", "fedopt.optimizer.lr", "0.5",
                  "fedopt.optimizer.momentum", "0.9"], "Trainer:", id="fedopt"),
    # FS's per-client configs: each client process takes the section of its own id
    # (tests/test_client_cfg.py proves a section changes that client's training)
    pytest.param(["client_2.train.local_update_steps", "1", "client_3.train.optimizer.lr", "0.0",
                  "client_1.dataloader.batch_size", "4"], "Trainer:", id="client_cfg"),
]


@pytest.mark.parametrize("keys,trainer_line", RECIPES)
def test_shard_mode_equals_standalone(keys, trainer_line, femnist_root, femnist_shards,
                                      tmp_path):
    keys = list(LIGHT_TRAINING) + keys     # the recipe's own keys win where they overlap
    # a server refusing every update (no server side yet) gives up after 20 s, not 300 s
    job = Job(tmp_path, femnist_root, rounds=ROUNDS, manifest=femnist_shards,
              common=keys + ["federate.graceful_termination_timeout", "20"])
    ckpt = str(tmp_path / "distributed.pt")
    procs = [job.server(["federate.save_to", ckpt])] + [job.client(k) for k in (1, 2, 3)]
    codes = wait_all(procs, timeout=300)
    assert codes == [0, 0, 0, 0], job.server_log()[-3000:]
    job.assert_eval_complete()
    for k in (1, 2, 3):
        assert trainer_line in open(job.log(f"client_{k}")).read(), k

    ckpt2 = str(tmp_path / "standalone.pt")
    log = str(tmp_path / "standalone.log")
    proc = start_main(["--cfg", SERVER_CFG, "federate.mode", "standalone",
                       "distributed_data.manifest", femnist_shards,
                       "federate.total_round_num", str(ROUNDS), "federate.save_to", ckpt2,
                       "outdir", str(tmp_path / "exp")] + keys, log)
    assert wait_all([proc], timeout=300) == [0], open(log).read()[-2000:]
    a = torch.load(ckpt, weights_only=True)
    b = torch.load(ckpt2, weights_only=True)
    assert a["round"] == b["round"] == ROUNDS
    differ = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not differ, differ


def test_fedbn_keys_on_one_side_only_are_refused_at_the_join_naming_the_fix(femnist_root,
                                                                             femnist_shards,
                                                                             tmp_path):
    """FS users often put FedBN's personalization.local_param in the client YAML only. Every update
    would then lack the server's keys (a lost run, exit 5); each client is refused at its join
    instead and exits 2 with the fix; the server logs each refusal and waits for proper clients."""
    job = Job(tmp_path, femnist_root, rounds=ROUNDS, manifest=femnist_shards,
              common=list(LIGHT_TRAINING))
    fedbn = ["personalization.local_param", "['bn', 'norms']"]
    server = job.server()
    try:
        wait_all([job.client(k, fedbn) for k in (1, 2)], timeout=120, expect=[2, 2])
        fix = ("personalization.local_param differs: the client keeps ['bn', 'norms'] local, the "
               "server []; give the server and every client the same personalization.local_param")
        for k in (1, 2):
            assert f"refused by the server: {fix}" in open(job.log(f"client_{k}")).read(), k
        assert server.poll() is None and not job.eval_lines()
    finally:
        server.kill()
        server.wait()
    assert job.server_log().count(fix) == 2
