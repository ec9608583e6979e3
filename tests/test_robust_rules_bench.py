"""bench/robust_rules.py's attackers really attack (so its table cannot be measuring a no-op),
its refused cells carry the server's precondition message, and the table is rendered from the
JSON."""
import pytest
import torch

from bench import robust_rules as rr


@pytest.fixture(autouse=True)
def one_thread():
    """As the bench measures: a second torch thread only spin-waits on the shared 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def recording_server(base, log):
    """``base`` that records every update it receives as (sender, round, tensors, the global
    model it was trained from)."""
    class RecordingServer(base):
        def callback_funcs_model_para(self, message):
            log.append((message.sender, message.state,
                        {k: v.detach().clone() for k, v in message.tensors.items()},
                        {k: v.detach().clone() for k, v in self.model.state_dict().items()}))
            super().callback_funcs_model_para(message)
    return RecordingServer


def _uploads(femnist_root, tmp_path, rule, kind, attackers, rounds=1):
    log = []
    res = rr.run_cell(femnist_root, str(tmp_path / f"{kind}_{attackers}"), rule, kind, attackers,
                      rounds, 16, 7, server_wrap=lambda base: recording_server(base, log))
    return res, log


def _first_round(log):
    return {sender: (tensors, glob) for sender, state, tensors, glob in log if state == 0}


def test_sign_flip_and_bias_uploads_are_the_honest_ones_bent(femnist_root, tmp_path):
    honest_res, honest = _uploads(femnist_root, tmp_path, "fedavg", None, 0)
    flip_res, flipped = _uploads(femnist_root, tmp_path, "fedavg", "sign_flip", 2)
    bias_res, biased = _uploads(femnist_root, tmp_path, "fedavg", "bias", 1)
    assert honest_res["exit_code"] == flip_res["exit_code"] == bias_res["exit_code"] == 0
    h, f, b = _first_round(honest), _first_round(flipped), _first_round(biased)
    assert sorted(h) == sorted(f) == sorted(b) == [1, 2, 3, 4, 5]
    for cid in (1, 2, 3, 4, 5):
        (hs, glob), (fs, fglob), (bs, _) = h[cid], f[cid], b[cid]
        for k, v in hs.items():
            if not v.is_floating_point():
                continue
            assert torch.equal(glob[k], fglob[k])        # round 1 starts from the same model
            honest_delta = v - glob[k]
            if cid in (1, 2):                             # the attackers: -10 x honest delta
                assert torch.allclose(fs[k] - glob[k], -10.0 * honest_delta, rtol=1e-4, atol=1e-6)
            else:                                         # everyone else uploads unchanged
                assert torch.equal(fs[k], v)
            if cid == 1:                                  # the one bias attacker: +0.0015 each
                assert torch.allclose(bs[k] - v, torch.full_like(v, 0.0015), atol=1e-6)
            else:
                assert torch.equal(bs[k], v)
        # non-trivial: training moved the model, so -10 x delta differs from the honest upload
        if cid == 1:
            assert any(not torch.allclose(fs[k], hs[k]) for k in hs if hs[k].is_floating_point())
    # the fedavg global after round 1 under attack is not the honest one
    assert flip_res["acc"] is not None


def test_refused_cells_carry_the_precondition(femnist_root, tmp_path):
    krum = rr.run_cell(femnist_root, str(tmp_path / "k"), "krum", "sign_flip", 2, 1, 16, 7)
    assert "krum tolerates aggregator.byzantine_node_num=2 only with more than 6" in krum["refused"]
    bulyan = rr.run_cell(femnist_root, str(tmp_path / "b"), "bulyan", "bias", 1, 1, 16, 7)
    assert "at least 7 clients per round (have 5)" in bulyan["refused"]


def test_table_is_rendered_from_the_json():
    cells = [{"rule": "median", "scenario": "1 bias", "runs": [{"acc": 0.4321, "wall_s": 3.5}]},
             {"rule": "krum", "scenario": "2 sign-flip", "refused": "krum needs more clients",
              "runs": []},
             {"rule": "fedavg", "scenario": "2 sign-flip",
              "runs": [{"acc": None, "exit_code": 0, "wall_s": 7.0}]}]
    res = {"command": "python bench/robust_rules.py", "git_commit": "abcdef0123456",
           "loadavg_at_start": [1.25, 1, 1], "wall_s": 9.0, "cpu_s": 8.0, "cells": cells,
           "params": {"writers": 5, "clients": 5, "rounds": 10, "model.hidden": 64,
                      "data_seed": 1, "seeds": [1], "sign_flip_factor": -10.0, "bias": 0.0015}}
    text = rr.render(res)
    median_row = next(line for line in text.splitlines() if line.startswith("| median |"))
    assert median_row.split(" | ")[4] == "0.432"                  # honest, 1 sf, 2 sf, 1 bias
    krum_row = next(line for line in text.splitlines() if line.startswith("| krum |"))
    assert krum_row.split(" | ")[3] == "refused"
    assert "- krum, 2 sign-flip: krum needs more clients" in text
    fedavg_row = next(line for line in text.splitlines() if line.startswith("| fedavg |"))
    assert fedavg_row.split(" | ")[3] == "diverged" and "not measured" in fedavg_row
    assert "load 1.25 at start" in text and "`abcdef0123`" in text


def test_seeds_give_mean_and_range_and_a_refusal_is_run_once(monkeypatch):
    """``--seeds 3``: each runnable cell is run with seeds s, s+1, s+2 on one generated sample
    and rendered as mean (min-max); a refused cell is tried once; a diverged seed is counted."""
    calls = []

    def fake_cell(root, outdir, rule, kind, attackers, rounds, hidden, seed, server_wrap=None):
        calls.append((rule, kind, attackers, seed))
        if rule == "krum" and attackers == 2:
            return {"refused": "krum needs more clients"}
        if rule == "fedavg" and kind == "sign_flip" and attackers == 2 and seed != 12:
            return {"acc": None, "exit_code": 0}
        shift = 0.1 if (kind, attackers) == ("bias", 1) else -0.1 * attackers
        return {"acc": {10: 0.40, 11: 0.46, 12: 0.43}[seed] + shift, "exit_code": 0}
    monkeypatch.setattr(rr, "run_cell", fake_cell)
    monkeypatch.setattr(rr, "make_data", lambda root, writers, samples, seed: None)
    args = rr.argparse.Namespace(rules=["fedavg", "krum"], writers=5, samples=10, seed=10,
                                 seeds=3, rounds=2, hidden=8)
    res = rr.measure(args)
    assert res["params"]["seeds"] == [10, 11, 12]
    krum_calls = [c for c in calls if c[0] == "krum"]
    assert [c[3] for c in krum_calls if c[2] == 2] == [10, 10]       # refused: once per scenario
    assert len([c for c in krum_calls if c[2] < 2]) == 3 * 3
    by = {(c["rule"], c["scenario"]): c for c in res["cells"]}
    honest = by[("fedavg", "honest")]
    assert [r["seed"] for r in honest["runs"]] == [10, 11, 12]
    assert honest["acc_mean"] == pytest.approx(0.43) and honest["acc_min"] == 0.40
    assert honest["acc_max"] == 0.46 and honest["acc_runs"] == 3
    text = rr.render(res)
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| robust_rule")
            and not line.startswith("| ---")}
    assert rows["fedavg"][1] == "0.430 (0.400-0.460)"                      # honest
    assert rows["fedavg"][2] == "0.330 (0.300-0.360)"                      # 1 sign-flip
    assert rows["fedavg"][3] == "0.230, diverged 2/3"                      # 2 sign-flip
    assert rows["krum"][3] == "refused"
    assert "3 training seeds (10, 11, 12)" in text
    assert "varies by up to 0.060 between seeds" in text
    assert rows["fedavg"][4] == "0.530 (0.500-0.560)"                      # 1 bias
    # the only cells whose every seed beats their honest cell's best: 0.50 > 0.46
    assert ("honest cell's highest): fedavg 1 bias (0.500 > 0.460); krum 1 bias "
            "(0.500 > 0.460).") in text
