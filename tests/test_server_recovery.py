"""Recovery that loses nothing, in-process: a server "killed" at each step of a round and restored
from its checkpoint writes exactly one eval_results.log line per evaluated round, in order."""
import os

import pytest
import torch

from federatedscope.core.message import EVALUATE, METRICS, MODEL_PARA
from federatedscope.core.auxiliaries import checkpoint as ckpt_io
from federatedscope.core.workers.server_state import Phase
from server_harness import Harness, good_metrics


def _harness(tmp, rounds=3):
    ckpt = str(tmp / "ckpt.pt")
    return Harness(tmp, "federate.total_round_num", rounds, "federate.save_to", ckpt,
                   "federate.restore_from", ckpt, expected=2)


def _train(h, r):
    g = h.global_state()
    for c in (1, 2):
        h.update(c, r, h.shifted(0.01 * (r + 1), g))


def _evaluate(h, r, acc=0.5):
    for c in (1, 2):
        h.metrics(c, r, good_metrics(acc=acc))


def _rounds_logged(h):
    return [line.get("Round") if not line.get("Final") else "Final" for line in h.eval_lines()]


def test_kill_between_aggregation_and_evaluation_redoes_the_owed_evaluation(tmp_path):
    h = _harness(tmp_path)
    h.join(1), h.join(2)
    _train(h, 0)
    assert h.asked(EVALUATE, 1) == [1, 2]
    model_after_round_1 = h.global_state()
    del h                                        # killed before any metrics came back
    h2 = _harness(tmp_path)
    assert h2.server.round == 1 and h2.server.round_state.eval_owed == 1
    assert all(torch.equal(v, model_after_round_1[k]) for k, v in h2.global_state().items())
    h2.join(1), h2.join(2)
    assert h2.asked(EVALUATE, 1) == [1, 2] and h2.asked(MODEL_PARA, 1) == []
    _evaluate(h2, 1)
    for r in (1, 2):
        _train(h2, r)
        _evaluate(h2, r + 1)
    assert _rounds_logged(h2) == [1, 2, 3, "Final"]
    assert h2.server.finished


def test_kill_after_the_line_but_before_the_checkpoint_never_writes_it_twice(tmp_path, monkeypatch):
    h = _harness(tmp_path)
    h.join(1), h.join(2)
    real = ckpt_io.save_checkpoint

    def save_only_after_aggregation(path, ckpt):   # the post-evaluation save never happens
        if ckpt.eval_owed >= 0:
            real(path, ckpt)
    monkeypatch.setattr(ckpt_io, "save_checkpoint", save_only_after_aggregation)
    _train(h, 0)
    _evaluate(h, 1, acc=0.75)
    monkeypatch.setattr(ckpt_io, "save_checkpoint", real)
    del h
    h2 = _harness(tmp_path)
    h2.join(1), h2.join(2)
    assert h2.asked(EVALUATE, 1) == [] and h2.asked(MODEL_PARA, 1) == [1, 2]
    assert h2.monitor.best_round == 1            # Monitor state replayed from the log
    for r in (1, 2):
        _train(h2, r)
        _evaluate(h2, r + 1)
    assert _rounds_logged(h2) == [1, 2, 3, "Final"]


def test_partial_last_line_and_orphan_temp_files_are_cleaned_on_restore(tmp_path):
    h = _harness(tmp_path)
    h.join(1), h.join(2)
    _train(h, 0)
    _evaluate(h, 1)
    _train(h, 1)
    with open(h.monitor.log_path, "a") as f:
        f.write('{"Role": "Server #", "Round": 2, "Resu')     # killed mid-append
    orphan = tmp_path / ".ckpt.pt.x1y2.tmp"
    orphan.write_bytes(b"half a checkpoint")
    del h
    h2 = _harness(tmp_path)
    assert not orphan.exists()
    h2.join(1), h2.join(2)
    _evaluate(h2, 2)
    _train(h2, 2)
    _evaluate(h2, 3)
    assert _rounds_logged(h2) == [1, 2, 3, "Final"]


def test_checkpoint_is_written_before_the_next_round_is_announced(tmp_path, monkeypatch):
    h = _harness(tmp_path, rounds=2)
    h.join(1), h.join(2)
    seen = []

    def spy(msg, receivers):
        if msg.msg_type in (EVALUATE, MODEL_PARA) and msg.state == 1:
            seen.append(os.path.exists(tmp_path / "ckpt.pt"))
    monkeypatch.setattr(h.comm, "broadcast", spy)
    _train(h, 0)
    assert seen and all(seen)


def test_the_checkpoint_holds_round_owed_eval_seed_rng_and_monitor_and_restore_says_so(
        tmp_path, caplog):
    from server_harness import quiet
    quiet(caplog)
    ckpt = str(tmp_path / "ckpt.pt")
    opts = ("federate.total_round_num", 3, "federate.save_to", ckpt, "federate.restore_from", ckpt,
            "seed", 7)
    h = Harness(tmp_path, *opts, expected=4)
    assert f"no checkpoint at {ckpt} yet; starting from round 0" in caplog.text
    for c in range(1, 5):
        h.join(c)
    torch.rand(3)                                   # the rng state to save is not the seed's
    g = h.global_state()
    for c in range(1, 5):
        h.update(c, 0, h.shifted(0.25 * c, g))
    saved = ckpt_io.load_checkpoint(ckpt)            # after aggregation, before the metrics
    assert (saved.round, saved.eval_owed, saved.seed) == (1, 1, 7)
    assert torch.equal(saved.torch_rng, torch.get_rng_state())
    assert all(torch.equal(saved.model[k], v) for k, v in h.global_state().items())
    for c in range(1, 5):
        h.metrics(c, 1, good_metrics(loss=0.75))
    after_eval = ckpt_io.load_checkpoint(ckpt)
    assert (after_eval.round, after_eval.eval_owed) == (1, -1)
    assert after_eval.monitor == {"best": 3.75, "best_round": 1, "no_improve": 0,
                                  "run_dir": os.path.abspath(h.server.monitor.outdir)}
    _train4(h, 1)
    del h                                           # killed before round 2's metrics
    caplog.clear()
    torch.manual_seed(123)
    h2 = Harness(tmp_path, *opts, expected=4)
    assert f"restored round 2 from {ckpt}; evaluation of round 2 is owed" in caplog.text
    assert torch.equal(torch.get_rng_state(), ckpt_io.load_checkpoint(ckpt).torch_rng)
    assert h2.server.round == 2 and h2.server.round_state.eval_owed == 2
    assert h2.server.reported_rounds == {1} and h2.monitor.best_round == 1


def _train4(h, r):
    g = h.global_state()
    for c in range(1, 5):
        h.update(c, r, h.shifted(0.1, g))


def test_without_save_to_no_checkpoint_is_written_or_tried(tmp_path, caplog):
    from server_harness import quiet
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 2, expected=4)
    for c in range(1, 5):
        h.join(c)
    for r in range(2):
        _train4(h, r)
        for c in range(1, 5):
            h.metrics(c, r + 1, good_metrics())
    assert h.server.finished and h.server.exit_code == 0
    assert "checkpoint" not in caplog.text and "restored" not in caplog.text
    assert not any(p.suffix == ".pt" for p in tmp_path.rglob("*"))


def _saved(tmp_path, model_state, round_idx=0, eval_owed=-1):
    """A checkpoint written by hand (as a server of this format would) at tmp_path/ckpt.pt."""
    path = str(tmp_path / "ckpt.pt")
    ckpt_io.save_checkpoint(path, ckpt_io.Checkpoint(round_idx, model_state, torch.get_rng_state(),
                                                     0, eval_owed=eval_owed))
    return path


def test_a_checkpoint_owing_round_0_evaluates_it_before_training(tmp_path, caplog):
    """-1 is the format's "nothing owed": round 0 (the untrained model) is a round like any."""
    from server_harness import quiet
    quiet(caplog)
    fresh = Harness(tmp_path / "fresh", expected=4).global_state()
    path = _saved(tmp_path, fresh, round_idx=0, eval_owed=0)
    h = Harness(tmp_path, "federate.total_round_num", 2, "federate.save_to", path,
                "federate.restore_from", path, expected=4)
    assert f"restored round 0 from {path}; evaluation of round 0 is owed" in caplog.text
    assert (h.server.round, h.server.round_state.eval_owed) == (0, 0)
    for c in range(1, 5):
        h.join(c)
    assert h.asked(EVALUATE, 0) == [1, 2, 3, 4] and h.asked(MODEL_PARA, 0) == []
    for c in range(1, 5):
        h.metrics(c, 0, good_metrics(acc=0.125 * c))
    assert [(line["Round"], line["Results_weighted_avg"]["test_acc"]) for line in h.eval_lines()] \
        == [(0, 0.3125)]
    assert h.asked(MODEL_PARA, 0) == [1, 2, 3, 4]


def test_a_checkpoint_owing_nothing_trains_at_once(tmp_path, caplog):
    from server_harness import quiet
    quiet(caplog)
    fresh = Harness(tmp_path / "fresh", expected=4).global_state()
    path = _saved(tmp_path, fresh, round_idx=2, eval_owed=-1)
    h = Harness(tmp_path, "federate.total_round_num", 4, "federate.restore_from", path, expected=4)
    assert f"restored round 2 from {path}\n" in caplog.text + "\n"
    assert (h.server.round, h.server.round_state.eval_owed) == (2, None)
    for c in range(1, 5):
        h.join(c)
    assert h.asked(MODEL_PARA, 2) == [1, 2, 3, 4] and h.asked(EVALUATE, 2) == []


@pytest.mark.parametrize("change,named", [
    (lambda s: {**s, "fc3.weight": torch.zeros(2, 2)},
     'Unexpected key(s) in state_dict: "fc3.weight"'),
    (lambda s: {k: v for k, v in s.items() if k != "fc2.bias"},
     'Missing key(s) in state_dict: "fc2.bias"'),
    (lambda s: {**s, "fc2.bias": torch.zeros(s["fc2.bias"].numel() + 1)},
     "size mismatch for fc2.bias"),
])
def test_a_checkpoint_of_another_model_is_refused_naming_the_file_the_key_and_the_fix(
        tmp_path, change, named):
    """Loading it leniently would train on from a half-initialized model without a word."""
    fresh = Harness(tmp_path / "fresh", expected=4).global_state()
    path = _saved(tmp_path, change(fresh), round_idx=3)
    with pytest.raises(ValueError) as e:
        Harness(tmp_path, "federate.total_round_num", 5, "federate.restore_from", path, expected=4)
    text = str(e.value)
    assert text.startswith(f"checkpoint {path} does not fit this model (")
    assert named in text and "\n" not in text
    assert text.endswith("); restore it with the model configuration it was written with, or "
                         "point federate.restore_from elsewhere")


def test_restoring_a_finished_run_evaluates_it_where_its_results_are_missing(tmp_path, caplog):
    """A checkpoint at round 3 of 3 has no round to train. Restored into another outdir (a log
    without round 3) the server evaluates the restored model and finishes with its results,
    instead of "round 4/3" and test_acc=None; restored where its results are logged it finishes
    without repeating them; with 5 rounds it trains rounds 4 and 5 (a restore continues)."""
    from server_harness import quiet
    quiet(caplog)
    ckpt = str(tmp_path / "ckpt.pt")
    h = Harness(tmp_path / "first", "federate.total_round_num", 3, "federate.save_to", ckpt,
                expected=2)
    h.join(1), h.join(2)
    for r in range(3):
        _train(h, r)
        _evaluate(h, r + 1)
    assert h.server.finished and _rounds_logged(h) == [1, 2, 3, "Final"]
    final_model = h.global_state()

    again = Harness(tmp_path / "again", "federate.total_round_num", 3, "federate.restore_from",
                    ckpt, expected=2)
    assert (again.server.round, again.server.round_state.eval_owed) == (3, 3)
    assert "no round is left to train, so this run evaluates the restored model and finishes; " \
           "to train more rounds from it, raise federate.total_round_num above 3" in caplog.text
    again.join(1), again.join(2)
    assert "2/2 clients joined; no round left to train (3/3 done)" in caplog.text
    assert again.asked(EVALUATE, 3) == [1, 2] and again.sent_types(1).count(MODEL_PARA) == 0
    assert all(torch.equal(v, final_model[k]) for k, v in again.global_state().items())
    again.metrics(1, 3, good_metrics(acc=0.25))
    again.metrics(2, 3, good_metrics(acc=0.5))
    assert again.server.finished and _rounds_logged(again) == [3, "Final"]
    assert again.eval_lines()[-1]["Results_weighted_avg"]["test_acc"] == 0.375

    caplog.clear()
    same = Harness(tmp_path / "first", "federate.total_round_num", 3, "federate.restore_from",
                   ckpt, expected=2)
    assert same.server.round_state.eval_owed is None and "so this run finishes;" in caplog.text
    same.join(1), same.join(2)
    assert same.server.finished and same.asked(EVALUATE, 3) == []
    assert _rounds_logged(same) == [1, 2, 3, "Final"]

    more = Harness(tmp_path / "more", "federate.total_round_num", 5, "federate.restore_from",
                   ckpt, expected=2)
    more.join(1), more.join(2)
    assert more.asked(MODEL_PARA, 3) == [1, 2] and more.asked(EVALUATE, 3) == []


def test_the_job_id_sent_with_each_client_id_survives_a_restore_and_only_a_restore(tmp_path):
    """Clients keep personal state per job (client.py): the id must be the same for a server
    restored from its checkpoint, and new for a fresh server in the same outdir."""
    from federatedscope.core.message import ASSIGN_ID

    def job_ids(h):
        return {m.content["job_id"] for _, m in h.comm.sent if m.msg_type == ASSIGN_ID}
    h = _harness(tmp_path)
    h.join(1), h.join(2)
    first, = job_ids(h)
    assert len(first) == 16 and int(first, 16) >= 0
    _train(h, 0)
    assert ckpt_io.load_checkpoint(str(tmp_path / "ckpt.pt")).job_id == first
    restored = _harness(tmp_path)
    restored.join(1), restored.join(2)
    assert job_ids(restored) == {first}
    fresh = Harness(tmp_path / "again", "federate.total_round_num", 3, expected=2)
    fresh.join(1), fresh.join(2)
    assert len(job_ids(fresh)) == 1 and job_ids(fresh) != {first}


def _join4(h):
    for c in range(1, 5):
        h.join(c, num_samples={"train": 10 * c, "val": 5, "test": 5})


def _round4(h, r, acc=0.5, loss=1.0):
    """Round r trained by clients 1..4 (sizes 10c), then its evaluation answered by all four."""
    g = h.global_state()
    for c in range(1, 5):
        h.update(c, r, h.shifted(0.1, g), size=10 * c)
    for c in range(1, 5):
        h.metrics(c, r + 1, good_metrics(acc=acc(c) if callable(acc) else acc, loss=loss))


def test_extending_a_finished_run_writes_a_final_line_for_its_own_last_round(tmp_path, caplog):
    """A finished 2-round run restored with total_round_num 4 trains rounds 3 and 4 and ends with
    a Final line for round 4 after the old one for round 2; restored once more (4 of 4 done, the
    Final for round 4 written) it finishes without a second one."""
    from server_harness import quiet
    quiet(caplog)
    ckpt = str(tmp_path / "ckpt.pt")
    keys = ("federate.save_to", ckpt, "federate.restore_from", ckpt)
    h = Harness(tmp_path, "federate.total_round_num", 2, *keys, expected=4)
    _join4(h)
    for r in range(2):
        _round4(h, r)
    assert h.server.finished and _rounds_logged(h) == [1, 2, "Final"]
    caplog.clear()
    more = Harness(tmp_path, "federate.total_round_num", 4, *keys, expected=4)
    _join4(more)
    assert more.asked(MODEL_PARA, 2) == [1, 2, 3, 4]
    _round4(more, 2, acc=0.75)
    _round4(more, 3, acc=lambda c: 0.125 * c)      # equal test totals: (1+2+3+4)/8/4 = 0.3125
    assert more.server.finished and more.server.exit_code == 0
    assert _rounds_logged(more) == [1, 2, "Final", 3, 4, "Final"]
    finals = [line for line in more.eval_lines() if line.get("Final")]
    assert [f["Round"] for f in finals] == [2, 4]
    assert (finals[0]["Results_weighted_avg"]["test_acc"], finals[1]["Results_weighted_avg"]
            ["test_acc"], finals[1]["Clients"]) == (0.5, 0.3125, [1, 2, 3, 4])
    assert "finished after 4 rounds; final weighted-avg test_acc=0.3125" in caplog.text
    again = Harness(tmp_path, "federate.total_round_num", 4, *keys, expected=4)
    _join4(again)
    assert again.server.finished and again.asked(EVALUATE, 4) == []
    assert _rounds_logged(again) == [1, 2, "Final", 3, 4, "Final"]


def _lose_all(h, cids=(1, 2, 3, 4)):
    for c in cids:
        h.disconnect(c)
    h.tick(after=31.0)                              # past the 30 s grace: gone


def test_an_evaluation_every_client_left_stays_owed_and_is_redone_after_a_restore(
        tmp_path, monkeypatch, caplog):
    """Round 2 aggregated, then all four clients die before any metrics: no line for round 2 (a
    line without results would count as its report), the server pauses, gives up with round 2's
    evaluation owed in the checkpoint, and the restored server redoes it before training on."""
    from server_harness import quiet
    quiet(caplog)
    ckpt = str(tmp_path / "ckpt.pt")
    opts = ("federate.total_round_num", 3, "federate.save_to", ckpt, "federate.restore_from", ckpt,
            "federate.graceful_termination_timeout", 20.0, "distribute.heartbeat_timeout", 0.0)
    h = Harness(tmp_path, *opts, monkeypatch=monkeypatch, expected=4)
    _join4(h)
    _round4(h, 0)
    g = h.global_state()
    for c in range(1, 5):
        h.update(c, 1, h.shifted(0.1, g), size=10 * c)
    assert h.server.round == 2 and h.asked(EVALUATE, 2) == [1, 2, 3, 4]
    _lose_all(h)
    assert _rounds_logged(h) == [1]
    assert "the evaluation of round 2 got no results (missing [1, 2, 3, 4]); it stays owed, " \
           "none written; waiting up to 20s" in caplog.text
    assert h.server.round_state.phase is Phase.PAUSED and h.server.round_state.eval_owed == 2
    h.tick(after=20.5)
    assert h.server.finished and h.server.exit_code == 3
    assert f"2 round(s) done and checkpointed to {ckpt}; restart with federate.restore_from" \
        in caplog.text
    saved = ckpt_io.load_checkpoint(ckpt)
    assert (saved.round, saved.eval_owed) == (2, 2)

    h2 = Harness(tmp_path, *opts, monkeypatch=monkeypatch, expected=4)
    assert (h2.server.round, h2.server.round_state.eval_owed) == (2, 2)
    _join4(h2)
    assert h2.asked(EVALUATE, 2) == [1, 2, 3, 4] and h2.asked(MODEL_PARA, 2) == []
    for c in range(1, 5):
        h2.metrics(c, 2, good_metrics(acc=0.125 * c))
    line = h2.eval_lines()[-1]
    assert (line["Round"], line["Clients"], line["Results_weighted_avg"]["test_acc"]) == \
        (2, [1, 2, 3, 4], 0.3125)
    assert h2.asked(MODEL_PARA, 2) == [1, 2, 3, 4]
    _round4(h2, 2)
    assert h2.server.finished and _rounds_logged(h2) == [1, 2, 3, "Final"]


def test_clients_back_after_an_evaluation_nobody_answered_redo_it_in_the_same_run(
        tmp_path, monkeypatch):
    h = Harness(tmp_path, "federate.total_round_num", 2, "distribute.heartbeat_timeout", 0.0,
                "federate.min_clients_threshold", 4, monkeypatch=monkeypatch, expected=4)
    _join4(h)
    g = h.global_state()
    for c in range(1, 5):
        h.update(c, 0, h.shifted(0.1, g), size=10 * c)
    _lose_all(h)
    assert h.eval_lines() == [] and h.server.round_state.eval_owed == 1
    for c in range(1, 4):
        h.join(c, conn=10 + c, num_samples={"train": 10 * c, "val": 5, "test": 5})
    assert h.server.round_state.phase is Phase.PAUSED      # 3 online < the threshold of 4
    h.join(4, conn=14, num_samples={"train": 40, "val": 5, "test": 5})
    assert [m.state for r, m in h.comm.sent if r == 3 and m.msg_type == EVALUATE] == [1, 1]
    for c in range(1, 5):
        h.send(c, METRICS, 1, {"results": good_metrics(acc=0.25 * c)}, conn=10 + c)
    assert [(x["Round"], x["Clients"], x["Results_weighted_avg"]["test_acc"])
            for x in h.eval_lines()] == [(1, [1, 2, 3, 4], 0.625)]
    assert h.asked(MODEL_PARA, 1) == [1, 2, 3, 4]


def test_an_evaluation_whose_clients_are_online_but_all_refused_is_logged_and_the_job_goes_on(
        tmp_path):
    """Clients that are there but send no acceptable metrics are not waited for again (that
    could loop): the line names them all as missing and the next round starts."""
    h = Harness(tmp_path, "federate.total_round_num", 2, expected=4)
    _join4(h)
    g = h.global_state()
    for c in range(1, 5):
        h.update(c, 0, h.shifted(0.1, g), size=10 * c)
    for c in range(1, 5):
        h.metrics(c, 1, good_metrics(acc=7.5))     # accuracies above 1 are refused
    assert [(x["Round"], x["Clients"], x["Missing"]) for x in h.eval_lines()] == \
        [(1, [], [1, 2, 3, 4])]
    assert h.asked(MODEL_PARA, 1) == [1, 2, 3, 4] and h.server.round_state.eval_owed is None
