"""Recovery that loses nothing, in-process: a server "killed" at each step of a round and restored
from its checkpoint writes exactly one eval_results.log line per evaluated round, in order."""
import os

import torch

from federatedscope.core.message import EVALUATE, MODEL_PARA
from federatedscope.core.auxiliaries import checkpoint as ckpt_io
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
    assert h2.server.round == 1 and h2.server.state.eval_owed == 1
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
