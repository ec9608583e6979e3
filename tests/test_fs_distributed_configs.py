"""FederatedScope's own distributed FEMNIST configs, run as FS runs them: a server and 3 clients
(real processes, gRPC on loopback) from scripts/distributed_scripts/fs_distributed_configs/, with
their keys and values; only the rounds, data.root and the port change on the command line.

FS's clients there have no client id: they train on partitions data_idx 2, 3, 4 while client_num
is 3, join claiming -1, and the server assigns ids 1..3 in join order."""
import json
import os
import re

import pytest

from harness.procs import ROOT, file_contains, run_script, start_main, wait_all, wait_for

CFG = os.path.join(ROOT, "scripts", "distributed_scripts", "fs_distributed_configs")
ROUNDS = 2


@pytest.fixture(scope="module")
def fs_sized_root(tmp_path_factory):
    """Enough writers that FS's data.subsample 0.05 keeps 4 partitions (ceil(70 x 0.05))."""
    root = tmp_path_factory.mktemp("fs_data")
    run_script([os.path.join(ROOT, "scripts", "tools",
                                                 "generate_femnist_sample.py"),
                    "--out", str(root / "femnist" / "raw"), "--writers", "70", "--seed", "11",
                    "--samples-per-writer-mean", "20", "--writers-per-file", "35"],
                   check=True)
    return str(root)


def _listening_port(log_path: str) -> int:
    m = re.search(r"listening on [^\s:]+:(\d+)", open(log_path, errors="replace").read())
    return int(m.group(1)) if m else 0


def test_fs_distributed_femnist_configs_run_to_the_end(fs_sized_root, tmp_path):
    out = str(tmp_path / "exp")
    common = ["data.root", fs_sized_root, "federate.total_round_num", str(ROUNDS), "outdir", out]
    slog = str(tmp_path / "server.log")
    server = start_main(["--cfg", os.path.join(CFG, "distributed_femnist_server.yaml")] + common
                        + ["distribute.server_port", "0"], slog)
    wait_for(lambda: _listening_port(slog) > 0 or server.poll() is not None, 120,
             "the server's 'listening on' line")
    port = str(_listening_port(slog))
    clients = [start_main(["--cfg", os.path.join(CFG, f"distributed_femnist_client_{k}.yaml")]
                          + common + ["distribute.server_port", port],
                          str(tmp_path / f"client_{k}.log")) for k in (1, 2, 3)]
    assert wait_all([server] + clients, timeout=400) == [0, 0, 0, 0]
    server_text = open(slog).read()
    assert "data.batch_size is deprecated" in server_text        # FS's alias, warned and used
    assert f"finished after {ROUNDS} rounds" in server_text
    assigned = set()
    for k, idx in zip((1, 2, 3), (2, 3, 4)):
        text = open(tmp_path / f"client_{k}.log").read()
        assert f"kept data_idx={idx}" in text
        assigned.update(int(i) for i in re.findall(r"Client #(\d+): joined the federation", text))
        assert file_contains(str(tmp_path / f"client_{k}.log"),
                             f"training finished ({ROUNDS} rounds trained)")
    assert assigned == {1, 2, 3}
    logs = [os.path.join(dp, f) for dp, _, fs in os.walk(out) for f in fs
            if f == "eval_results.log" and "_server" in dp]
    assert len(logs) == 1, logs
    final = [json.loads(line) for line in open(logs[0]) if line.strip()][-1]
    assert final["Final"] is True and final["Round"] == ROUNDS
