"""Defined outcomes, in-process: an FS-style subclass's override takes effect (server and client),
a round whose every update is refused ends the job with exit 5, a results log that cannot be
written never blames a client nor leaves an evaluation in flight (exit 4 at the end, or once the
bound passes), and a client's personal state survives its restart."""
import os

import pytest
import torch

from federatedscope.core.message import ASSIGN_ID, EVALUATE, FINISH, MODEL_PARA, SERVER_ID, Message
from federatedscope.core.workers.client import Client, personal_state_dir
from federatedscope.core.workers.server import Server
from server_harness import FakeComm, Harness, good_metrics, make_cfg, quiet


class CountingServer(Server):
    """FS's way: override the callback, call the default."""
    seen = []

    def callback_funcs_model_para(self, message):
        CountingServer.seen.append((message.sender, message.state))
        super().callback_funcs_model_para(message)

    def callback_funcs_for_metrics(self, message):
        CountingServer.seen.append(("metrics", message.sender))
        super().callback_funcs_for_metrics(message)


def test_a_server_subclass_overriding_an_fs_callback_takes_effect(tmp_path):
    h = Harness(tmp_path, "federate.total_round_num", 2, expected=4)
    CountingServer.seen = []
    h.server = h.build(CountingServer, 4, distributed=True)
    for c in range(1, 5):
        h.join(c)
    for r in (0, 1):
        g = h.global_state()
        for c in range(1, 5):
            h.update(c, r, h.shifted(0.1, g))
        for c in range(1, 5):
            h.metrics(c, r + 1, good_metrics())
    assert [s for s in CountingServer.seen if s[0] != "metrics"] == \
        [(c, r) for r in (0, 1) for c in range(1, 5)]
    assert sum(1 for s in CountingServer.seen if s[0] == "metrics") == 8
    assert h.server.finished and h.server.round == 2


def _diverging_round(h, n):
    g = h.global_state()
    for c in range(1, n + 1):
        h.update(c, 0, h.shifted(float("nan"), g))


def test_a_round_whose_every_update_diverged_exits_5(tmp_path, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 3, expected=4)
    for c in range(1, 5):
        h.join(c)
    _diverging_round(h, 4)
    assert h.server.finished and h.server.exit_code == 5
    assert "every update of round 1 was refused" in caplog.text and "diverged" in caplog.text
    assert "paused" not in caplog.text
    assert all(FINISH in h.sent_types(c) for c in range(1, 5))


def test_one_refused_update_among_good_ones_is_not_divergence(tmp_path):
    h = Harness(tmp_path, "federate.total_round_num", 1, "federate.min_clients_threshold", 1,
                expected=4)
    for c in range(1, 5):
        h.join(c)
    g = h.global_state()
    h.update(1, 0, h.shifted(float("nan"), g))
    for c in (2, 3, 4):
        h.update(c, 0, h.shifted(1.0, g))
    assert h.server.round == 1 and h.server.exit_code == 0


def _blocked_results(h):
    os.makedirs(h.monitor.log_path)          # a directory where the log goes: EISDIR each time


def test_an_unwritable_results_log_blames_nobody_and_the_job_ends_with_exit_4(tmp_path, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 3, expected=4)
    _blocked_results(h)
    for c in range(1, 5):
        h.join(c)
    for r in range(3):
        g = h.global_state()
        for c in range(1, 5):
            h.update(c, r, h.shifted(0.1, g))
        for c in range(1, 5):
            h.metrics(c, r + 1, good_metrics())
        assert h.server.round_state.evaluation is None        # never left in flight
    assert h.comm.closed == [] and all(rec.online for rec in h.server.clients.values())
    assert h.server.finished and h.server.exit_code == 4
    errors = [r.getMessage() for r in caplog.records if "cannot write the results log" in r.getMessage()]
    assert len(errors) == 4 and all(len(e) <= 400 for e in errors)    # 3 rounds + Final
    assert "exit code 4" in caplog.text and h.monitor.log_path in caplog.text


def test_results_unwritable_past_the_bound_stop_the_job_mid_run(tmp_path, monkeypatch, caplog):
    quiet(caplog)
    h = Harness(tmp_path, "federate.total_round_num", 5, "distribute.heartbeat_timeout", 0.0,
                "federate.results_write_timeout", 20.0, monkeypatch=monkeypatch, expected=4)
    _blocked_results(h)
    for c in range(1, 5):
        h.join(c)
    g = h.global_state()
    for c in range(1, 5):
        h.update(c, 0, h.shifted(0.1, g))
    for c in range(1, 5):
        h.metrics(c, 1, good_metrics())
    assert not h.server.finished and h.asked(MODEL_PARA, 1) == [1, 2, 3, 4]
    for c in range(1, 5):
        h.send(c, "heartbeat", 0)
    h.tick(after=19.0)          # within federate.results_write_timeout: still waiting
    assert not h.server.finished
    h.tick(after=2.0)
    assert h.server.finished and h.server.exit_code == 4
    assert all(FINISH in h.sent_types(c) for c in range(1, 5))


def test_queued_results_are_written_in_order_once_the_disk_recovers(tmp_path):
    h = Harness(tmp_path, "federate.total_round_num", 2, expected=4)
    _blocked_results(h)
    for c in range(1, 5):
        h.join(c)
    for r in range(2):
        if r == 1:
            os.rmdir(h.monitor.log_path)                # space freed before round 2 ends
        g = h.global_state()
        for c in range(1, 5):
            h.update(c, r, h.shifted(0.1, g))
        for c in range(1, 5):
            h.metrics(c, r + 1, good_metrics())
    assert [x.get("Round") for x in h.eval_lines()] == [1, 2, 2]   # round 1, round 2, Final
    assert h.eval_lines()[-1]["Final"] and h.server.exit_code == 0


# ----------------------------------------------------------------- client side
class FakeTrainer:
    def __init__(self, value: float):
        self.personal = {"bn1.weight": torch.full((3,), value)}
        self.loaded = None

    def num_samples(self, split):
        return 4

    def set_state(self, state):
        pass

    def train(self, seed):
        self.personal["bn1.weight"] += 1.0
        return 4, {"fc.weight": torch.zeros(2)}, {}

    def personal_state(self):
        return dict(self.personal)

    def load_personal_state(self, state):
        self.loaded = state


class OverridingClient(Client):
    evaluated = []

    def callback_funcs_for_evaluate(self, message):
        OverridingClient.evaluated.append(message.state)


def test_client_personal_state_survives_a_restart_and_overrides_take_effect(tmp_path):
    OverridingClient.evaluated = []     # a class attribute: a rerun in one process starts clean
    cfg = make_cfg(tmp_path)
    comm = FakeComm()
    c = OverridingClient(ID=3, config=cfg, trainer=FakeTrainer(0.5), comm=comm)
    c.handle(Message(ASSIGN_ID, SERVER_ID, 3, 0, {"client_id": 3, "job_id": "9f3e"}))
    for r in range(3):
        c.handle(Message(MODEL_PARA, SERVER_ID, 3, r, {}, None))
    c.handle(Message(EVALUATE, SERVER_ID, 3, 3, {}, None))
    assert OverridingClient.evaluated == [3]               # the subclass's method was dispatched
    path = os.path.join(str(tmp_path), "job", "client_state", "client_3.pt")
    assert c.personal_state_path() == path and os.path.exists(path)
    restarted = FakeTrainer(0.0)
    c2 = Client(config=cfg, trainer=restarted, comm=FakeComm())
    c2.handle(Message(ASSIGN_ID, SERVER_ID, -1, 0, {"client_id": 3, "job_id": "9f3e"}))
    assert torch.equal(restarted.loaded["bn1.weight"], torch.full((3,), 3.5))
    other = FakeTrainer(0.0)
    Client(config=cfg, trainer=other, comm=FakeComm()).handle(Message(ASSIGN_ID, SERVER_ID, -1, 0,
                                                      {"client_id": 2, "job_id": "9f3e"}))
    assert other.loaded is None                            # another id: nothing to restore


def test_the_default_state_dir_ignores_a_fresh_sub_exp_directory(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg.defrost()
    cfg.outdir = os.path.join(str(tmp_path), "job", "sub_exp_20260101000000")
    assert personal_state_dir(cfg) == os.path.join(str(tmp_path), "job", "client_state")


def test_a_log_file_on_a_full_disk_costs_one_bounded_line(tmp_path, capsys):
    import logging
    from federatedscope.core.monitors.write_guard import guard_log_files
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    log = logging.getLogger("fs_test_full_log")
    handler = logging.FileHandler("/dev/full")
    log.addHandler(handler)
    try:
        guard_log_files(log)
        for i in range(5):
            log.error("x" * 2000)
    finally:
        log.removeHandler(handler)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write the log file /dev/full" in err[0] and len(err[0]) <= 400


def test_a_checkpoint_torch_cannot_write_blames_no_client(tmp_path, monkeypatch, caplog):
    """torch.save reports a failed write as RuntimeError, not OSError: still the server's own."""
    quiet(caplog)
    from federatedscope.core.auxiliaries import utils

    def failing_save(path, obj):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    monkeypatch.setattr(utils, "atomic_torch_save", failing_save)
    from federatedscope.core.auxiliaries import checkpoint
    monkeypatch.setattr(checkpoint, "atomic_torch_save", failing_save)
    h = Harness(tmp_path, "federate.total_round_num", 2, "federate.save_to",
                str(tmp_path / "ckpt.pt"), expected=4)
    for c in range(1, 5):
        h.join(c)
    for r in range(2):
        g = h.global_state()
        for c in range(1, 5):
            h.update(c, r, h.shifted(0.1, g))
        for c in range(1, 5):
            h.metrics(c, r + 1, good_metrics())
    assert h.comm.closed == [] and h.server.finished and h.server.exit_code == 0
    assert caplog.text.count("cannot write the checkpoint") == 4        # 2 per round
    assert "RuntimeError" in caplog.text and "closing that connection" not in caplog.text
