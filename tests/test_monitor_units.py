"""What a run writes, unit by unit, against hand computations: the evaluation averages and FS's
``eval_results.log`` lines (``Monitor``), best-round and early-stop tracking and their replay
after a restart, the write guard, the run directory (``outdir``) and the server checkpoint.

Evaluations come from 4 clients with unequal sample counts (6, 24, 18, 12: 60 test samples), so
a weighted average and a plain mean differ; every expected number is worked out in a comment.
"""
import errno
import json
import logging
import os
import sys
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch

from federatedscope.core.auxiliaries import checkpoint as ckpt_io
from federatedscope.core.auxiliaries import outdir as outdir_mod
from federatedscope.core.auxiliaries.checkpoint import (FORMAT, Checkpoint, load_checkpoint,
                                                       remove_orphan_temps, save_checkpoint)
from federatedscope.core.auxiliaries.outdir import LOG_NAME, resolve_outdir, update_logger
from federatedscope.core.monitors import write_guard
from federatedscope.core.monitors.monitor import Monitor, plain_avg, weighted_avg
from federatedscope.core.monitors.write_guard import (RESULTS_UNWRITABLE, WRITE_FAILURE_BOUND_S,
                                                      WriteGuard, guard_log_files)


def _cfg(key="test_avg_loss", reports=("weighted_avg", "avg", "raw"), digits=3, delta=0.0,
         patience=0):
    return NS(eval=NS(best_res_update_round_wise_key=key, report=list(reports)),
              print_decimal_digits=digits, early_stop=NS(delta=delta, patience=patience))


# test: totals 6, 24, 18, 12 (60); correct 3, 18, 9, 6 (36); val: totals 4, 0, 8, 4 (16)
CLIENTS = {
    3: {"test_total": 18, "test_correct": 9, "test_acc": 0.5, "test_avg_loss": 2.0,
        "test_f1": 0.0, "val_total": 8, "val_acc": 0.25},
    1: {"test_total": 6, "test_correct": 3, "test_acc": 0.5, "test_avg_loss": 1.0,
        "test_f1": 0.0, "val_total": 4, "val_acc": 0.5, "train_loss": 0.5},
    4: {"test_total": 12, "test_correct": 6, "test_acc": 0.5, "test_avg_loss": 1.5,
        "test_f1": 2 / 3, "val_total": 4, "val_acc": 1.0},
    2: {"test_total": 24, "test_correct": 18, "test_acc": 0.75, "test_avg_loss": 0.5,
        "test_f1": 0.5, "val_total": 0, "val_acc": 0.0},
}
WEIGHTED = {
    "test_acc": 0.6,            # (6 x .5 + 24 x .75 + 18 x .5 + 12 x .5) / 60 = 36 / 60
    "test_avg_loss": 1.2,       # (6 x 1 + 24 x .5 + 18 x 2 + 12 x 1.5) / 60 = 72 / 60
    "test_correct": 9.0,        # a count is its mean over clients, as FS writes it: 36 / 4
    "test_f1": 20 / 60,         # (24 x .5 + 12 x 2/3) / 60
    "test_total": 15.0,         # 60 / 4
    "train_loss": 0.5,          # only client 1 has it, and no train_total: weight 1
    "val_acc": 0.5,             # (4 x .5 + 0 x 0 + 8 x .25 + 4 x 1) / 16 = 8 / 16
    "val_total": 4.0,           # 16 / 4
}
PLAIN = {
    "test_acc": 0.5625,         # (.5 + .75 + .5 + .5) / 4
    "test_avg_loss": 1.25,      # (1 + .5 + 2 + 1.5) / 4
    "test_correct": 9.0,
    "test_f1": (0.5 + 2 / 3) / 4,
    "test_total": 15.0,
    "train_loss": 0.5,          # only client 1 sent it: a client without the key is left out
    "val_acc": 0.4375,          # (.5 + 0 + .25 + 1) / 4
    "val_total": 4.0,
}


# ----------------------------------------------------------------------------------- averages
def test_weighted_avg_weighs_each_metric_by_its_splits_total_and_averages_counts():
    got = weighted_avg(CLIENTS)
    assert list(got) == sorted(WEIGHTED)
    assert got == pytest.approx(WEIGHTED, abs=1e-12)


def test_weighted_avg_of_a_split_without_samples_is_zero():
    got = weighted_avg({1: {"val_total": 0, "val_acc": 0.5}, 2: {"val_total": 0, "val_acc": 1.0},
                        5: {"val_total": 0, "val_acc": 0.25}, 7: {"val_total": 0, "val_acc": 1.0}})
    assert got == {"val_acc": 0.0, "val_total": 0.0}


def test_weighted_avg_split_is_the_text_before_the_first_underscore():
    # test_avg_loss is weighed by test_total (not by a "test_avg_total" nobody sends)
    per = {1: {"test_total": 1, "test_avg_loss": 4.0}, 2: {"test_total": 3, "test_avg_loss": 0.0},
           3: {"test_total": 4, "test_avg_loss": 1.0}, 4: {"test_total": 8, "test_avg_loss": 0.5}}
    assert weighted_avg(per)["test_avg_loss"] == 0.75   # (4 + 0 + 4 + 4) / 16


def test_a_client_without_its_splits_total_weighs_as_one_sample():
    # clients 1 and 3 send train_total; 2 and 4 do not and count one sample each
    per = {1: {"train_total": 3, "train_loss": 1.0}, 2: {"train_loss": 4.0},
           3: {"train_total": 2, "train_loss": 0.5}, 4: {"train_loss": 6.0}}
    # loss (3 + 4 + 1 + 6) / 7; train_total is the mean of the two clients that sent it
    assert weighted_avg(per) == {"train_loss": 2.0, "train_total": 2.5}


def test_plain_avg_is_each_keys_mean_over_the_clients_that_sent_it():
    got = plain_avg(CLIENTS)
    assert list(got) == sorted(PLAIN)
    assert got == pytest.approx(PLAIN, abs=1e-12)


# -------------------------------------------------------------------------------- log lines
def test_eval_results_line_is_fs_json_with_clients_missing_and_three_reports(tmp_path, logs):
    m = Monitor(_cfg(), str(tmp_path))
    assert m.log_path == os.path.join(str(tmp_path), "eval_results.log")
    assert m.outdir == str(tmp_path)          # where the server puts curves.png
    line = m.report(3, CLIENTS, missing=[9, 6])
    assert not os.path.exists(m.log_path)           # built, queued, not yet written
    m.flush()
    text = open(m.log_path, encoding="utf-8").read()
    assert text.endswith("\n") and text.count("\n") == 1
    assert json.loads(text) == line
    # rounded to print_decimal_digits=3; keys sorted; raw results unrounded, by client id
    w = ('{"test_acc": 0.6, "test_avg_loss": 1.2, "test_correct": 9.0, "test_f1": 0.333, '
         '"test_total": 15.0, "train_loss": 0.5, "val_acc": 0.5, "val_total": 4.0}')
    a = ('{"test_acc": 0.562, "test_avg_loss": 1.25, "test_correct": 9.0, "test_f1": 0.292, '
         '"test_total": 15.0, "train_loss": 0.5, "val_acc": 0.438, "val_total": 4.0}')
    raw = ", ".join(f'"client #{c}": {json.dumps(CLIENTS[c])}' for c in (1, 2, 3, 4))
    assert text == ('{"Role": "Server #", "Round": 3, "Clients": [1, 2, 3, 4], "Missing": [6, 9], '
                    f'"Results_weighted_avg": {w}, "Results_avg": {a}, '
                    f'"Results_raw": {{{raw}}}}}\n')
    infos = [t for lv, t in logs if lv == "INFO"]
    # the log shows the line less the raw results, then a one-line digest (4 decimals)
    assert infos[0] == ('{"Role": "Server #", "Round": 3, "Clients": [1, 2, 3, 4], '
                        f'"Missing": [6, 9], "Results_weighted_avg": {w}, "Results_avg": {a}}}')
    assert infos[1] == ("Server: evaluation after round 3 (4 clients, missing [6, 9], weighted "
                        "avg): test_acc=0.6000, test_avg_loss=1.2000, val_acc=0.5000")


def test_reports_named_in_the_config_are_the_only_ones_written(tmp_path, logs):
    m = Monitor(_cfg(reports=["avg"], digits=2), str(tmp_path))
    line = m.report(1, CLIENTS, role="Server #2")
    assert line == {"Role": "Server #2", "Round": 1, "Clients": [1, 2, 3, 4], "Missing": [],
                    "Results_avg": {"test_acc": 0.56, "test_avg_loss": 1.25, "test_correct": 9.0,
                                    "test_f1": 0.29, "test_total": 15.0, "train_loss": 0.5,
                                    "val_acc": 0.44, "val_total": 4.0}}
    assert logs[-1][1] == ("Server: evaluation after round 1 (4 clients, weighted avg): "
                              "test_acc=0.6000, test_avg_loss=1.2000, val_acc=0.5000")
    line = Monitor(_cfg(key="val_acc", reports=["raw"]), str(tmp_path)).report(
        2, {7: {"val_acc": 0.5}})
    assert line["Results_raw"] == {"client #7": {"val_acc": 0.5}}
    assert logs[-1][1] == ("Server: evaluation after round 2 (1 client, weighted avg): "
                              "val_acc=0.5000")
    Monitor(_cfg(key="val_acc"), str(tmp_path)).report(3, {0: {"val_acc": 0.25}},
                                                       source="the server's own data")
    assert logs[-1][1] == ("Server: evaluation after round 3 (the server's own data): "
                           "val_acc=0.2500")


def test_a_best_key_no_client_reports_is_warned_once_and_tracks_nothing(tmp_path, logs):
    m = Monitor(_cfg(key="test_accuracy", patience=2), str(tmp_path))
    for r in (1, 2, 3, 4):
        m.report(r, CLIENTS)
    warned = [text for level, text in logs if level == "WARNING"]
    assert warned == ["eval.best_res_update_round_wise_key='test_accuracy' is not among the "
                      "reported results ['test_acc', 'test_avg_loss', 'test_correct', 'test_f1', "
                      "'test_total', 'train_loss', 'val_acc', 'val_total']: no best round is "
                      "tracked and early stopping cannot fire; set it to one of them"]
    assert (m.best, m.best_round, m.no_improve) == (None, -1, 0) and not m.should_stop_early()


def test_an_evaluation_nobody_answered_is_still_one_line(tmp_path, logs):
    m = Monitor(_cfg(), str(tmp_path))
    line = m.report(4, {}, missing=[3, 1, 2, 4])
    assert line == {"Role": "Server #", "Round": 4, "Clients": [], "Missing": [1, 2, 3, 4]}
    assert logs == [("WARNING", "Round 4: no client reported evaluation results "
                                   "(missing: [1, 2, 3, 4])")]
    m.flush()
    assert open(m.log_path).read() == ('{"Role": "Server #", "Round": 4, "Clients": [], '
                                       '"Missing": [1, 2, 3, 4]}\n')
    assert m.history == [line] and m.best is None and m.no_improve == 0


def test_a_failed_append_keeps_every_line_queued_in_order(tmp_path):
    m = Monitor(_cfg(reports=["weighted_avg"]), str(tmp_path))
    os.mkdir(m.log_path)                   # the log's path is a directory: append fails
    for r in (1, 2, 3):
        m.report(r, {c: {"test_total": c, "test_acc": 0.5} for c in (1, 2, 3, 4)})
    with pytest.raises(OSError):
        m.flush()
    assert [json.loads(s)["Round"] for s in m.unwritten] == [1, 2, 3]
    os.rmdir(m.log_path)
    m.flush()
    assert m.unwritten == []
    assert [json.loads(s)["Round"] for s in open(m.log_path)] == [1, 2, 3]
    m.flush()                              # nothing queued: nothing appended
    assert len(open(m.log_path).readlines()) == 3


# ------------------------------------------------------------------ best round, early stop
def _loss(v):
    return {c: {"test_total": 4, "test_avg_loss": v} for c in (1, 2, 3, 4)}


def test_a_loss_key_improves_downwards_by_more_than_delta_and_patience_stops(tmp_path):
    m = Monitor(_cfg(delta=0.125, patience=2), str(tmp_path))
    steps = [
        (1, _loss(1.0), (1.0, 1, 0)),
        (2, _loss(0.875), (1.0, 1, 1)),      # exactly best - delta: not an improvement
        (3, _loss(0.5), (0.5, 3, 0)),
        (4, {1: {"test_acc": 1.0}}, (0.5, 3, 0)),   # the key is absent: nothing counted
        (5, _loss(0.5), (0.5, 3, 1)),
    ]
    for r, per, want in steps:
        m.report(r, per)
        assert (m.best, m.best_round, m.no_improve) == want
        assert not m.should_stop_early()
    m.report(6, _loss(0.75))
    assert (m.best, m.best_round, m.no_improve) == (0.5, 3, 2) and m.should_stop_early()
    assert m.state_dict() == {"best": 0.5, "best_round": 3, "no_improve": 2,
                              "run_dir": os.path.abspath(m.outdir)}


def test_an_accuracy_key_improves_upwards_and_patience_zero_never_stops(tmp_path):
    m = Monitor(_cfg(key="test_acc", delta=0.125, patience=0), str(tmp_path))
    assert (m.best, m.best_round, m.no_improve) == (None, -1, 0)
    # .625 = .5 + delta is not better; .75 is; then three worse rounds
    want = [(0.5, 1, 0), (0.5, 1, 1), (0.75, 3, 0), (0.75, 3, 1), (0.75, 3, 2), (0.75, 3, 3)]
    for r, acc in enumerate([0.5, 0.625, 0.75, 0.25, 0.25, 0.25], 1):
        m.report(r, {c: {"test_total": 2, "test_acc": acc} for c in (1, 2, 3, 4)})
        assert (m.best, m.best_round, m.no_improve) == want[r - 1]
    assert not m.should_stop_early()
    m.cfg.early_stop.patience = 3
    assert m.should_stop_early()
    m.cfg.early_stop.patience = 4
    assert not m.should_stop_early()
    m.report(7, {c: {"test_total": 2, "test_acc": 1.0} for c in (1, 2, 3, 4)})
    m.report(8, {c: {"test_total": 2, "test_acc": 0.5} for c in (1, 2, 3, 4)})
    m.cfg.early_stop.patience = 1              # one evaluation without improvement stops
    assert (m.best_round, m.no_improve) == (7, 1) and m.should_stop_early()


def test_final_summary_repeats_the_last_evaluated_round_and_the_best(tmp_path):
    m = Monitor(_cfg(reports=["weighted_avg"], delta=0.0), str(tmp_path))
    m.report(1, _loss(1.0))
    m.report(2, _loss(0.25))
    m.report(3, _loss(0.5))
    m.report(4, {}, missing=[1, 2, 3, 4])      # an evaluation with no results is skipped
    summary = m.final_summary()
    assert summary == {"Role": "Server #", "Final": True, "Round": 3, "Clients": [1, 2, 3, 4],
                       "Results_weighted_avg": {"test_avg_loss": 0.5, "test_total": 4.0},
                       "best_round": 2, "best_test_avg_loss": 0.25}
    m.flush()
    lines = open(m.log_path).read().splitlines()
    assert len(lines) == 5 and json.loads(lines[-1]) == summary
    assert lines[-1].startswith('{"Role": "Server #", "Final": true, "Round": 3, ')
    empty = Monitor(_cfg(key="val_acc"), str(tmp_path)).final_summary()
    assert empty == {"Role": "Server #", "Final": True, "Round": None, "Clients": [],
                     "Results_weighted_avg": {}, "best_round": -1, "best_val_acc": None}


# -------------------------------------------------------------------------------- restart
def test_resume_replays_the_log_and_names_its_rounds(tmp_path, logs):
    first = Monitor(_cfg(reports=["weighted_avg"], delta=0.0, patience=3), str(tmp_path))
    for r, v in [(1, 1.0), (2, 0.5), (3, 0.75)]:
        first.report(r, _loss(v))
    first.report(4, {}, missing=[1, 2])
    first.final_summary()
    first.flush()
    with open(first.log_path, "a") as f:
        f.write('{"Round": "5", "Results_weighted_avg": {"test_avg_loss": 0.0}}\n')
        f.write("not json\n")
        f.write('{"Round": 6, "Results_weighted_avg": {"test_avg_lo')   # killed mid-append
    size = os.path.getsize(first.log_path)
    logs.clear()
    again = Monitor(_cfg(reports=["weighted_avg"], delta=0.0, patience=3), str(tmp_path))
    assert again.resume_from_log() == {1, 2, 3, 4, -1}
    assert again.state_dict() == first.state_dict() == {"best": 0.5, "best_round": 2,
                                                        "no_improve": 1,
                                                        "run_dir": str(tmp_path)}
    assert [h["Round"] for h in again.history] == [1, 2, 3, 4]
    # the partial line is cut off the file itself, so the next append starts a fresh line
    assert os.path.getsize(first.log_path) == size - len('{"Round": 6, "Results_weighted_avg": '
                                                         '{"test_avg_lo')
    assert open(first.log_path).read().endswith("not json\n")
    path = first.log_path
    assert logs == [
        ("WARNING", f"{path}: dropping a partial last line left by an interrupted write"),
        ("WARNING", f"{path}: skipping an unreadable line")]


def test_resume_reads_on_past_a_final_line(tmp_path):
    # a finished run continued with more rounds: its log has a Final line, then rounds 4 and 5
    body = "".join(json.dumps(x) + "\n" for x in [
        {"Round": 3, "Results_weighted_avg": {"test_avg_loss": 2.0}},
        {"Role": "Server #", "Final": True, "Round": 3, "best_round": 3},
        {"Round": 4, "Results_weighted_avg": {"test_avg_loss": 1.0}},
        {"Round": 5, "Results_weighted_avg": {"test_avg_loss": 1.5}}])
    (tmp_path / "eval_results.log").write_text(body)
    m = Monitor(_cfg(), str(tmp_path))
    assert m.resume_from_log() == {3, -1, 4, 5}
    assert m.state_dict() == {"best": 1.0, "best_round": 4, "no_improve": 1,
                              "run_dir": str(tmp_path)}
    assert [h["Round"] for h in m.history] == [3, 4, 5]


def test_resume_without_a_log_or_from_a_non_file_reads_nothing(tmp_path, logs):
    assert Monitor(_cfg(), str(tmp_path)).resume_from_log() == set()
    assert logs == []
    os.mkdir(tmp_path / "eval_results.log")
    m = Monitor(_cfg(), str(tmp_path))
    assert m.resume_from_log() == set() and m.history == []
    assert logs == [("WARNING", f"{m.log_path} is not a regular file; no earlier results "
                                   f"read from it")]


def test_resume_of_a_complete_log_leaves_the_file_as_it_is(tmp_path, logs):
    body = ('{"Round": 1, "Results_weighted_avg": {"test_avg_loss": 2.0}}\n'
            '{"Round": 2, "Results_weighted_avg": {"test_avg_loss": 3.0}}\n')
    (tmp_path / "eval_results.log").write_text(body)
    m = Monitor(_cfg(), str(tmp_path))
    assert m.resume_from_log() == {1, 2}
    assert (m.best, m.best_round, m.no_improve) == (2.0, 1, 1)
    assert (tmp_path / "eval_results.log").read_text() == body and logs == []


def test_a_final_line_is_queued_once_per_round_across_calls_and_restarts(tmp_path):
    m = Monitor(_cfg(reports=["weighted_avg"]), str(tmp_path))
    m.report(1, _loss(1.0))
    m.final_summary()
    m.final_summary()                       # the server asks again (a second stop): no new line
    assert [json.loads(x).get("Final") for x in m.unwritten] == [None, True]
    m.flush()
    # restarted after the Final line of round 1 was written: the log names that round
    again = Monitor(_cfg(reports=["weighted_avg"]), str(tmp_path))
    assert again.resume_from_log() == {1, -1}
    assert again.final_rounds == {1}
    summary = again.final_summary()
    assert summary["Round"] == 1 and summary["best_round"] == 1 and again.unwritten == []
    # extended by a round: that round gets its own Final line, once
    again.report(2, _loss(0.5))
    again.final_summary()
    again.final_summary()
    finals = [json.loads(x) for x in again.unwritten if json.loads(x).get("Final")]
    assert [f["Round"] for f in finals] == [2] and again.final_rounds == {1, 2}


# ------------------------------------------------------------------------------ write guard
class _Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def _enospc():
    raise OSError(errno.ENOSPC, "No space left on device")


def test_write_guard_logs_each_failure_once_and_times_the_streak(monkeypatch, logs):
    clock = _Clock(100.0)
    monkeypatch.setattr(write_guard, "time", NS(monotonic=clock))
    g = WriteGuard(bound=30.0)
    assert g.attempt("results log", "/r/eval_results.log", _enospc, "2 line(s) stay queued") \
        is False
    clock.t = 110.0
    assert g.attempt("results log", "/r/eval_results.log", _enospc, "2 line(s) stay queued") \
        is False
    assert g.failing_since == {"/r/eval_results.log": 100.0}   # the streak's first failure
    assert g.failures == {"/r/eval_results.log": 2}
    assert logs == [
        ("ERROR", "Server: cannot write the results log /r/eval_results.log (ENOSPC: No space "
                  "left on device; failure 1); 2 line(s) stay queued"),
        ("ERROR", "Server: cannot write the results log /r/eval_results.log (ENOSPC: No space "
                  "left on device; failure 2); 2 line(s) stay queued")]
    assert not g.overdue("/r/eval_results.log", 130.0)      # exactly the bound: not yet
    assert g.overdue("/r/eval_results.log", 130.5)
    clock.t = 129.75
    assert not g.overdue("/r/eval_results.log")
    clock.t = 131.0
    assert g.overdue("/r/eval_results.log")
    assert not g.overdue("/r/ckpt.pt", 10 ** 6)             # never failed
    logs.clear()
    done = []
    assert g.attempt("results log", "/r/eval_results.log", lambda: done.append(1), "x") is True
    assert done == [1] and g.failing_since == {} and not g.overdue("/r/eval_results.log", 10 ** 6)
    assert logs == [("INFO", "Server: the results log /r/eval_results.log is writable again")]
    assert g.attempt("results log", "/r/eval_results.log", lambda: None, "x") is True
    assert len(logs) == 1                                 # no streak: nothing to say
    clock.t = 500.0
    g.attempt("checkpoint", "/r/ckpt.pt", _enospc, "the last one stays")
    assert g.failing_since == {"/r/ckpt.pt": 500.0}
    assert g.failures == {"/r/eval_results.log": 2, "/r/ckpt.pt": 1}


def test_write_guard_names_errors_without_an_errno_and_clips_the_line(logs):
    g = WriteGuard()
    assert g.bound == WRITE_FAILURE_BOUND_S == 60.0 and RESULTS_UNWRITABLE == 4

    def torch_failure():
        raise RuntimeError("PytorchStreamWriter failed writing file data/0")

    def odd_errno():
        raise OSError(9999, "odd")

    def no_strerror():
        raise OSError("plain text")
    assert not g.attempt("checkpoint", "/c.pt", torch_failure, "kept")
    assert not g.attempt("checkpoint", "/c.pt", odd_errno, "kept")
    assert not g.attempt("checkpoint", "/d.pt", no_strerror, "kept")
    assert [t for _, t in logs] == [
        "Server: cannot write the checkpoint /c.pt (RuntimeError: PytorchStreamWriter failed "
        "writing file data/0; failure 1); kept",
        "Server: cannot write the checkpoint /c.pt (9999: odd; failure 2); kept",
        "Server: cannot write the checkpoint /d.pt (OSError: plain text; failure 1); kept"]
    long_path = "/" + "p" * 600
    g.attempt("results log", long_path, _enospc, "kept")
    text = logs[-1][1]
    assert text.startswith("Server: cannot write the results log /ppp")
    assert text.endswith("...[" + str(len("Server: cannot write the results log ") + 601 +
                                      len(" (ENOSPC: No space left on device; failure 1); kept"))
                         + " chars]")
    assert len(text) == 400 + len(text.split("...", 1)[1]) + 3
    with pytest.raises(ValueError):                         # not a write failure: not ours
        g.attempt("checkpoint", "/c.pt", lambda: int("x"), "kept")


class _FullStream:
    def write(self, s):
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self):
        pass


def test_a_log_file_that_cannot_be_written_costs_one_stderr_line(tmp_path, monkeypatch):
    log = logging.getLogger("fs_test_guarded_log")
    log.propagate = False
    path = str(tmp_path / "exp_print.log")
    fh, sh = logging.FileHandler(path), logging.StreamHandler(_FullStream())
    sh_handle_error = sh.handleError
    log.addHandler(fh)
    log.addHandler(sh)
    try:
        guard_log_files(log)
        assert fh.fs_write_failed is False and sh.handleError == sh_handle_error
        assert not hasattr(sh, "fs_write_failed")
        guard = fh.handleError
        guard_log_files(log)                # a second call keeps the first guard
        assert fh.handleError is guard
        log.removeHandler(sh)
        real_stream, fh.stream = fh.stream, _FullStream()
        err = []
        monkeypatch.setattr(sys, "stderr", NS(write=err.append))
        for i in range(4):
            log.error("line %d", i)
        assert fh.fs_write_failed is True
        assert err == [f"federatedscope: cannot write the log file {path} "
                       f"(OSError(28, 'No space left on device')); its further lines are "
                       f"dropped (they still go to stderr)\n"]
        real_stream.close()
    finally:
        log.removeHandler(fh)
        log.removeHandler(sh)


def test_the_log_guard_line_is_clipped_for_a_long_path(tmp_path, monkeypatch):
    deep = tmp_path / ("d" * 200) / ("e" * 200)
    deep.mkdir(parents=True)
    log = logging.getLogger("fs_test_guarded_log_3")
    log.propagate = False
    fh = logging.FileHandler(str(deep / "exp_print.log"))
    log.addHandler(fh)
    try:
        guard_log_files(log)
        fh.stream.close()
        fh.stream = _FullStream()
        err = []
        monkeypatch.setattr(sys, "stderr", NS(write=err.append))
        log.error("x")
        full = (f"federatedscope: cannot write the log file {deep / 'exp_print.log'} "
                f"(OSError(28, 'No space left on device')); its further lines are dropped (they "
                f"still go to stderr)")
        assert err == [full[:400] + f"...[{len(full)} chars]\n"]
    finally:
        log.removeHandler(fh)


@pytest.mark.parametrize("exc", [OSError(errno.EBADF, "Bad file descriptor"),
                                 ValueError("I/O operation on closed file")])
def test_a_broken_stderr_does_not_break_the_log_guard(tmp_path, monkeypatch, exc):
    log = logging.getLogger("fs_test_guarded_log_2")
    log.propagate = False
    fh = logging.FileHandler(str(tmp_path / "x.log"))
    log.addHandler(fh)
    try:
        guard_log_files(log)
        fh.stream.close()
        fh.stream = _FullStream()

        def broken(s):
            raise exc
        monkeypatch.setattr(sys, "stderr", NS(write=broken))
        log.error("one")                    # no exception leaves the logging call
        log.error("two")
        assert fh.fs_write_failed is True
    finally:
        log.removeHandler(fh)


# ------------------------------------------------------------------------------ run directory
def test_run_directory_is_claimed_by_its_log_file(tmp_path):
    out = str(tmp_path / "exp")
    base = resolve_outdir(out, "fedavg_femnist")
    assert base == os.path.join(out, "fedavg_femnist")
    assert os.listdir(base) == [LOG_NAME] and LOG_NAME == "exp_print.log"
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(os.path.join(base, LOG_NAME)).st_mode & 0o777 == 0o644 & ~umask
    # an existing, empty directory is a fresh one too
    os.makedirs(os.path.join(out, "empty"))
    assert resolve_outdir(out, "empty") == os.path.join(out, "empty")


def test_a_used_directory_gets_numbered_sub_exp_directories(tmp_path, monkeypatch):
    monkeypatch.setattr(outdir_mod, "time", NS(strftime=lambda fmt: "20261204213000"
                                               if fmt == "%Y%m%d%H%M%S" else "?"))
    out = str(tmp_path)
    base = resolve_outdir(out, "job")
    subs = [resolve_outdir(out, "job") for _ in range(3)]
    assert subs == [os.path.join(base, "sub_exp_20261204213000" + s) for s in ("", "_1", "_2")]
    assert all(os.listdir(s) == [LOG_NAME] for s in subs)
    # a sub directory someone else made between mkdir and the claim is skipped
    os.makedirs(os.path.join(base, "sub_exp_20261204213000_3"))
    real_listdir = os.listdir
    monkeypatch.setattr(outdir_mod.os, "listdir",
                        lambda d: ["x"] if d.endswith("_4") else real_listdir(d))
    assert resolve_outdir(out, "job") == os.path.join(base, "sub_exp_20261204213000_5")


def test_no_free_sub_exp_directory_after_ten_thousand_tries_is_an_error(tmp_path, monkeypatch):
    base = resolve_outdir(str(tmp_path), "job")
    tried = []

    def taken(path, *a, **k):
        if os.path.basename(path).startswith("sub_exp_"):
            tried.append(os.path.basename(path))
        raise FileExistsError(path)
    monkeypatch.setattr(outdir_mod.os, "mkdir", taken)
    with pytest.raises(OSError) as e:
        resolve_outdir(str(tmp_path), "job")
    assert str(e.value) == f"{base}: could not create a fresh sub_exp_* directory; set outdir " \
                           f"elsewhere"
    assert len(tried) == 10_000 and tried[1].endswith("_1") and tried[-1].endswith("_9999")


def test_a_log_file_created_by_another_process_first_loses_the_claim(tmp_path, monkeypatch):
    # between listdir and the exclusive create another process made exp_print.log
    base = tmp_path / "job"
    base.mkdir()
    (base / LOG_NAME).write_text("theirs")
    real_listdir = os.listdir
    monkeypatch.setattr(outdir_mod.os, "listdir",
                        lambda d: [] if d == str(base) else real_listdir(d))
    got = resolve_outdir(str(tmp_path), "job")
    assert os.path.dirname(got) == str(base) and os.path.basename(got).startswith("sub_exp_")
    assert (base / LOG_NAME).read_text() == "theirs"


def test_a_restore_continues_the_run_directory_only_for_an_existing_checkpoint(tmp_path):
    out = str(tmp_path / "exp")
    first = resolve_outdir(out, "job")
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"x")
    assert resolve_outdir(out, "job", str(ckpt)) == first
    assert resolve_outdir(str(tmp_path / "new"), "job", str(ckpt)) == str(tmp_path / "new" / "job")
    assert os.path.isdir(tmp_path / "new" / "job")
    assert os.listdir(tmp_path / "new" / "job") == []       # a restore claims nothing
    # a directory or a missing file is no checkpoint: a fresh sub_exp_ directory
    for not_ckpt in (str(tmp_path), str(tmp_path / "none.pt"), ""):
        assert os.path.dirname(resolve_outdir(out, "job", not_ckpt)) == first


def test_a_restore_continues_the_sub_exp_directory_its_checkpoint_was_written_from(tmp_path):
    """The job landed in sub_exp_* (an earlier, unrelated run holds <outdir>/<expname>): its
    restarted server must append to its own log, not to the other run's."""
    out = str(tmp_path / "exp")
    other = resolve_outdir(out, "job")                  # an earlier run
    mine = resolve_outdir(out, "job")                   # this job: a sub_exp_ directory
    assert os.path.basename(mine).startswith("sub_exp_")
    ckpt = str(tmp_path / "job.pt")

    def saved_from(run_dir):
        save_checkpoint(ckpt, _ckpt(monitor={"best": None, "best_round": -1, "no_improve": 0,
                                             "run_dir": run_dir}))
    saved_from(os.path.abspath(mine))
    assert resolve_outdir(out, "job", ckpt) == os.path.abspath(mine)
    saved_from(os.path.abspath(other))
    assert resolve_outdir(out, "job", ckpt) == os.path.abspath(other)
    # elsewhere than <outdir>/<expname> (the outdir changed), gone, or not recorded: the base
    for recorded in (str(tmp_path), os.path.join(other, "sub_exp_gone"), ""):
        saved_from(recorded)
        assert resolve_outdir(out, "job", ckpt) == other
    # the real thing: a Monitor's state, as the server checkpoints it
    m = Monitor(_cfg(), mine)
    save_checkpoint(ckpt, _ckpt(monitor=m.state_dict()))
    assert resolve_outdir(out, "job", ckpt) == os.path.abspath(mine)


@pytest.mark.parametrize("verbose,level", [(0, logging.WARNING), (1, logging.INFO)])
def test_update_logger_sets_the_run_directory_and_logs_into_it(tmp_path, verbose, level):
    from federatedscope.core.auxiliaries.utils import setup_logger
    from federatedscope.core.configs.config import load_cfg
    cfg = load_cfg(None, ["verbose", str(verbose), "outdir", str(tmp_path), "expname", "e1"])
    log = logging.getLogger("federatedscope")
    try:
        run_dir = update_logger(cfg, clear_before_add=False)
        assert run_dir == cfg.outdir == os.path.join(str(tmp_path), "e1")
        assert log.level == level
        files = [h.baseFilename for h in log.handlers if isinstance(h, logging.FileHandler)]
        assert files == [os.path.join(run_dir, LOG_NAME)]
        log.warning("w")
        for h in log.handlers:
            h.flush()
        text = open(os.path.join(run_dir, LOG_NAME)).read()
        assert (f"Output directory of this run: {run_dir}" in text) is (verbose > 0)
        cfg.outdir = "changed"                          # left unfrozen
    finally:
        setup_logger()


def test_update_logger_continues_the_directory_of_the_checkpoint_it_restores(tmp_path):
    from federatedscope.core.auxiliaries.utils import setup_logger
    from federatedscope.core.configs.config import load_cfg
    (tmp_path / "e1").mkdir()
    (tmp_path / "e1" / "eval_results.log").write_text("{}\n")
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"x")
    cfg = load_cfg(None, ["outdir", str(tmp_path), "expname", "e1",
                          "federate.restore_from", str(ckpt)])
    try:
        assert update_logger(cfg) == os.path.join(str(tmp_path), "e1")
    finally:
        setup_logger()


# -------------------------------------------------------------------------------- checkpoint
def _ckpt(**kw):
    base = dict(round=7, model={"fc.weight": torch.arange(6.).reshape(2, 3),
                                "fc.bias": torch.tensor([0.5, -1.0])},
                torch_rng=torch.tensor([1, 2, 3], dtype=torch.uint8), seed=12345, eval_owed=6,
                monitor={"best": np.float64(0.25), "best_round": 3, "no_improve": 2},
                aggregator={"momentum": {"fc.bias": torch.tensor([0.125, 0.0])}},
                job_id="5be0c3a1d2e4f607")
    base.update(kw)
    return Checkpoint(**base)


def test_checkpoint_round_trip_keeps_every_field(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, _ckpt())
    got = load_checkpoint(path)
    assert (got.round, got.seed, got.eval_owed, got.job_id) == (7, 12345, 6, "5be0c3a1d2e4f607")
    assert list(got.model) == ["fc.weight", "fc.bias"]
    assert torch.equal(got.model["fc.weight"], torch.arange(6.).reshape(2, 3))
    assert torch.equal(got.model["fc.bias"], torch.tensor([0.5, -1.0]))
    assert torch.equal(got.torch_rng, torch.tensor([1, 2, 3], dtype=torch.uint8))
    # numpy's float is stored as a plain float, which weights_only loading accepts
    assert got.monitor == {"best": 0.25, "best_round": 3, "no_improve": 2}
    assert type(got.monitor["best"]) is float and type(got.monitor["best_round"]) is int
    assert torch.equal(got.aggregator["momentum"]["fc.bias"], torch.tensor([0.125, 0.0]))
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT == "fs-checkpoint-v2"
    assert sorted(raw) == ["aggregator", "eval_owed", "format", "job_id", "model", "monitor",
                           "round", "seed", "torch_rng"]
    assert raw["monitor"] == {"best": 0.25, "best_round": 3, "no_improve": 2}
    # a monitor that has not evaluated yet: None stays None
    save_checkpoint(path, _ckpt(monitor={"best": None, "best_round": -1, "no_improve": 0}))
    assert load_checkpoint(path).monitor == {"best": None, "best_round": -1, "no_improve": 0}


def test_checkpoint_defaults_and_a_file_without_the_optional_fields(tmp_path):
    c = Checkpoint(round=1, model={}, torch_rng=torch.zeros(1), seed=0)
    assert (c.eval_owed, c.monitor, c.aggregator, c.job_id) == (-1, {}, {}, "")
    path = str(tmp_path / "old.pt")
    torch.save({"format": "fs-checkpoint-v2", "round": 3.0, "model": {}, "seed": "42",
                "torch_rng": torch.zeros(2), "monitor": None}, path)
    got = load_checkpoint(path)
    assert (got.round, got.seed, got.eval_owed, got.monitor, got.aggregator, got.job_id) == \
        (3, 42, -1, {}, {}, "")     # written before job ids: the restored server names a new job
    assert type(got.round) is int and type(got.seed) is int


def test_checkpoint_absent_unreadable_or_foreign_is_named(tmp_path):
    assert load_checkpoint(str(tmp_path / "none.pt")) is None
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError) as e:
        load_checkpoint(str(bad))
    msg = str(e.value)
    assert msg.startswith(f"checkpoint {bad} is unreadable (") and len(msg) > 90
    assert msg.endswith("); remove it or point federate.restore_from elsewhere")
    for obj in ({"format": "fs-checkpoint-v1", "round": 1}, torch.zeros(2), {"round": 1}):
        torch.save(obj, str(bad))
        with pytest.raises(ValueError) as e:
            load_checkpoint(str(bad))
        assert str(e.value) == (f"checkpoint {bad}: not a fs-checkpoint-v2 file; remove it or "
                                f"point federate.restore_from elsewhere")


def test_a_checkpoint_carrying_code_is_refused_not_unpickled(tmp_path):
    import datetime
    path = str(tmp_path / "tampered.pt")
    # any object outside torch's weights-only allowlist stands for code run at unpickling
    torch.save({"format": FORMAT, "round": 1, "model": {}, "torch_rng": torch.zeros(1),
                "seed": 1, "monitor": {"when": datetime.date(2026, 1, 1)}}, path)
    with pytest.raises(ValueError) as e:
        load_checkpoint(path)
    assert str(e.value).startswith(f"checkpoint {path} is unreadable (")
    assert "datetime" in str(e.value)


def test_orphan_temp_files_of_the_checkpoint_alone_are_removed(tmp_path, logs):
    path = tmp_path / "ck[1].pt"          # glob metacharacters in the name are literal
    orphans = [tmp_path / ".ck[1].pt.a1b2.tmp", tmp_path / ".ck[1].pt.zz.tmp"]
    kept = [tmp_path / ".ck1.pt.a.tmp", tmp_path / "ck[1].pt.a.tmp", tmp_path / ".other.pt.a.tmp",
            tmp_path / ".ck[1].pt.a.tmpx"]
    for p in orphans + kept:
        p.write_bytes(b"")
    assert load_checkpoint(str(path)) is None
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in kept)
    assert sorted(t for _, t in logs) == sorted(
        f"removed {p}, left by an interrupted checkpoint write" for p in orphans)


def test_orphan_temp_removal_works_from_a_relative_path_and_survives_a_failed_unlink(
        tmp_path, monkeypatch, logs):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".c.pt.1.tmp").write_bytes(b"")
    remove_orphan_temps("c.pt")
    assert os.listdir(tmp_path) == []
    assert logs == [("INFO", f"removed {tmp_path / '.c.pt.1.tmp'}, left by an interrupted "
                                f"checkpoint write")]
    (tmp_path / ".c.pt.2.tmp").write_bytes(b"")

    def refuse(p):
        raise PermissionError(errno.EACCES, "Permission denied", p)
    monkeypatch.setattr(ckpt_io.os, "unlink", refuse)
    logs.clear()
    remove_orphan_temps("c.pt")
    assert os.listdir(tmp_path) == [".c.pt.2.tmp"] and logs == []


class _NotAString(str):
    """A str subclass: unpickling it runs a constructor weights_only loading never allows."""


def test_the_recorded_run_directory_is_read_only_from_plain_checkpoint_data(tmp_path):
    from federatedscope.core.auxiliaries.checkpoint import recorded_run_dir
    out = str(tmp_path / "exp")
    base = resolve_outdir(out, "job")
    ckpt = str(tmp_path / "job.pt")
    save_checkpoint(ckpt, _ckpt(monitor={"best": None}))            # written before it recorded one
    assert recorded_run_dir(ckpt) == "" and resolve_outdir(out, "job", ckpt) == base
    torch.save({"format": FORMAT, "monitor": {"run_dir": _NotAString(base)}}, ckpt)
    assert recorded_run_dir(ckpt) == ""                             # not unpickled, not trusted
    # a sub_exp_ directory of another <outdir>/<expname> is not this job's to continue
    elsewhere = tmp_path / "other" / "job" / "sub_exp_1"
    elsewhere.mkdir(parents=True)
    save_checkpoint(ckpt, _ckpt(monitor={"run_dir": str(elsewhere)}))
    assert recorded_run_dir(ckpt) == str(elsewhere) and resolve_outdir(out, "job", ckpt) == base


@pytest.mark.parametrize("content", [[1, 2], {"format": FORMAT, "monitor": {"run_dir": 7}},
                                     {"format": FORMAT, "monitor": {"run_dir": None}}])
def test_a_checkpoint_that_is_no_dict_or_names_no_string_records_no_run_directory(tmp_path,
                                                                                 content):
    from federatedscope.core.auxiliaries.checkpoint import recorded_run_dir
    ckpt = str(tmp_path / "job.pt")
    torch.save(content, ckpt)
    assert recorded_run_dir(ckpt) == ""


def test_the_recorded_run_directory_is_read_memory_mapped_to_the_cpu_as_plain_data(
        tmp_path, monkeypatch):
    """A restore reads one string out of a checkpoint that holds the whole model: mapped (the
    tensors are not read), onto the CPU (a checkpoint written beside a GPU loads without one),
    weights_only (nothing in the file is run)."""
    from federatedscope.core.auxiliaries.checkpoint import recorded_run_dir
    ckpt = str(tmp_path / "job.pt")
    save_checkpoint(ckpt, _ckpt(monitor={"run_dir": str(tmp_path / "sub_exp_1")}))
    calls, real = [], torch.load

    def spy(path, *args, **kwargs):
        calls.append((path, args, kwargs))
        return real(path, *args, **kwargs)
    monkeypatch.setattr(ckpt_io.torch, "load", spy)
    assert recorded_run_dir(ckpt) == str(tmp_path / "sub_exp_1")
    assert calls == [(ckpt, (), {"map_location": "cpu", "weights_only": True, "mmap": True})]
