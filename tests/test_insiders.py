"""Hostile insiders against a real server over gRPC (real processes, loopback): an admitted client
that poisons its updates and lies in its metrics, strangers with hostile tokens, a client that
claims a billion samples. The server must keep serving and the job must end with the right result."""
import os
import re

from eval_checks import assert_final_matches_raw
from harness.jobs import Job
from harness.procs import PY, ROOT, start, wait_all

ATTACK = os.path.join(ROOT, "tests", "attack_client.py")


def _attacker(job: Job, k: int, attacks: str, extra=(), name=None):
    """Client ``k`` of ``job``, run through tests/attack_client.py with ``attacks``."""
    name = name or f"attacker_{k}"
    return start([PY, ATTACK, attacks] + job.client_args(k, extra), job.log(name), name=name)


def _standalone_acc(tmp, manifest, rounds) -> float:
    os.makedirs(tmp, exist_ok=True)
    job = Job(tmp, "", rounds=rounds, manifest=manifest)
    from harness.procs import start_main
    p = start_main(["--cfg", os.path.join(ROOT, "scripts", "example_configs", "femnist.yaml"),
                    "federate.mode", "standalone", "distributed_data.enabled", "True",
                    "distributed_data.manifest", manifest, "outdir", job.out,
                    "federate.total_round_num", str(rounds), "model.hidden", "128",
                    "train.optimizer.lr", "0.01", "dataloader.batch_size", "10",
                    "train.batch_or_epoch", "epoch", "seed", "12345", "grad.grad_clip", "5.0",
                    "federate.sample_client_rate", "-1.0", "eval.freq", "1",
                    "early_stop.patience", "0"],
                   job.log("standalone"))
    wait_all([p], timeout=300, expect=[0])
    return job.final()["Results_weighted_avg"]["test_acc"]


def test_poisoned_updates_and_fake_metrics_are_bounded_by_the_median_rule(
        femnist_root, femnist_shards, tmp_path):
    rounds = 3
    job = Job(tmp_path / "robust", femnist_root, rounds=rounds, manifest=femnist_shards,
              common=["aggregator.robust_rule", "median", "aggregator.byzantine_node_num", "1",
                      "distribute.token", "s3cret"])
    os.makedirs(job.tmp, exist_ok=True)
    server = job.server()
    honest = [job.client(k) for k in (1, 2)]
    insider = _attacker(job, 3, "scale_update,fake_metrics")
    strangers = [_attacker(job, 3, r"token=\ud800", name="stranger_surrogate"),
                 _attacker(job, 2, "token=été", name="stranger_nonascii")]
    # the insider and the honest clients exit 0; the strangers are refused (exit 2); the server
    # lives on and finishes
    wait_all([server] + honest + [insider] + strangers, timeout=400, expect=[0, 0, 0, 0, 2, 2])
    slog = job.server_log()
    assert slog.count("refused client") == 2 and slog.count("wrong token (distribute.token)") == 2
    for name in ("stranger_surrogate", "stranger_nonascii"):   # the peer learns the class only
        assert "refused by the server: bad token" in open(job.log(name)).read()
    assert slog.count("refused the metrics of client #3") == rounds
    lines = [x for x in job.eval_lines() if not x.get("Final")]
    assert [x["Round"] for x in lines] == list(range(1, rounds + 1))
    assert all(x["Clients"] == [1, 2] and x["Missing"] == [3] for x in lines)
    acc = job.final()["Results_weighted_avg"]["test_acc"]
    honest_acc = _standalone_acc(tmp_path / "honest", femnist_shards, rounds)
    assert acc > 3 / 62 and abs(acc - honest_acc) <= 0.1, (acc, honest_acc)


def test_a_claimed_billion_samples_is_capped_in_data_idx_mode(femnist_root, tmp_path):
    job = Job(tmp_path, femnist_root, rounds=2)
    server = job.server()
    clients = [job.client(k) for k in (1, 2)] + [_attacker(job, 3, "claim_samples")]
    wait_all([server] + clients, timeout=300, expect=[0, 0, 0, 0])
    slog = job.server_log()
    assert slog.count("client #3 claims 1000000000 train samples, unverified") == 2
    assert "a client id is only a claim" in slog      # no tokens: said once at start
    # The weight used is the cap, not the claim: each round's total of aggregated samples is
    # cap + the two honest counts, and the cap is 10 x the median count (the larger honest one),
    # so the total lies in (cap, 1.2 x cap]
    caps = [int(c) for c in re.findall(r"weight is capped at (\d+)", slog)]
    totals = [int(t) for t in re.findall(r"aggregated 3 update\(s\) \((\d+) samples", slog)]
    assert len(caps) == 2 and len(totals) == 2, (caps, totals)
    for cap, total in zip(caps, totals):
        assert cap + 2 <= total <= 1.2 * cap, (cap, total)
    assert_final_matches_raw(job.eval_lines(), [1, 2, 3])
