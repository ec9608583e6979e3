"""How a job starts and runs, unit by unit, in process.

* the in-memory transport (``local.py``): one FIFO, each message to the receiver it names, a
  broadcast to every listed receiver with this round's tensors;
* the runners (``fed_runner.py``): the standalone loop (join order, delivery per client id, no
  message to a finished client, the server's exit code, a run that ends before the server did),
  the distributed server's loop (deadline waits, tick rate, the transport stopped whatever
  happens), the client's session (join, re-join after a lost server) and the one dispatch on the
  data record; fake workers and transports where a real one would need the network, and one real
  4-client, 3-round standalone run on a tiny model;
* ``main.main``: the config it builds from YAML, client YAML, pairs and ``--override``, and its
  exit codes with the messages that name the key or the fix;
* the launcher's helpers (``launch_utils.py``): the pre-flight of a 4-client shard set (each
  problem named with its client), tokens, the health wait against an in-process gRPC health
  server on 127.0.0.1, the data root, the summary and the sub-command dispatch.
"""
import gc
import io
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch
from torch import nn

from federatedscope import main as fs_main
from federatedscope.core import fed_runner as fr
from federatedscope.core.auxiliaries import launch_utils as lu
from federatedscope.core.communication.local import LocalBus, LocalClientComm, LocalServerComm
from federatedscope.core.communication.transport import Disconnected, Incoming
from federatedscope.core.configs.config import CN, ConfigError, finalize, load_cfg
from federatedscope.core.data import shard_format as sf
from federatedscope.core.data.base_data import (ClientData, ClientShard, DataIdxClient,
                                                ServerManifest, StandaloneDataDict)
from federatedscope.core.data.datasets import TensorSplit
from federatedscope.core.message import SERVER_ID, Message


# ============================================================== the in-memory transport
def test_local_bus_is_one_fifo_and_false_once_drained():
    bus = LocalBus()
    assert not bus
    msgs = [Message("m", k, SERVER_ID, state=k) for k in range(1, 6)]
    for k, m in enumerate(msgs, 1):
        bus.post(10 * k, 100 + k, m)
    assert bus
    got = [bus.next() for _ in msgs]
    assert [(d, c) for d, c, _ in got] == [(10, 101), (20, 102), (30, 103), (40, 104), (50, 105)]
    assert all(m is want for (_, _, m), want in zip(got, msgs))
    assert not bus
    with pytest.raises(IndexError):
        bus.next()


def test_server_send_goes_to_the_receiver_the_message_names():
    bus = LocalBus()
    server = LocalServerComm(bus)
    msgs = {cid: Message("evaluate", SERVER_ID, cid, state=3) for cid in (5, 2, 9, 4)}
    for m in msgs.values():
        server.send(m)
    got = [bus.next() for _ in msgs]
    assert [(d, c) for d, c, _ in got] == [(5, SERVER_ID), (2, SERVER_ID), (9, SERVER_ID),
                                           (4, SERVER_ID)]
    assert all(m is msgs[d] for d, _, m in got) and not bus


@pytest.mark.parametrize("kind", [list, tuple, iter])
def test_broadcast_reaches_every_listed_receiver_once_in_order(kind):
    bus = LocalBus()
    msg = Message("model_para", SERVER_ID, -1, 2, {"round": 2})
    LocalServerComm(bus).broadcast(msg, kind([4, 2, 7, 3]))
    got = [bus.next() for _ in range(4)]
    assert [(d, c) for d, c, _ in got] == [(4, SERVER_ID), (2, SERVER_ID), (7, SERVER_ID),
                                           (3, SERVER_ID)]
    assert all(m is msg for _, _, m in got) and msg.tensors is None and not bus
    LocalServerComm(bus).broadcast(msg, [])
    assert not bus


def test_broadcast_keeps_this_rounds_tensors_while_the_live_model_moves_on():
    live = nn.Linear(3, 2)
    with torch.no_grad():
        live.weight.fill_(1.5)
        live.bias.fill_(-2.0)
    tensors = dict(live.named_parameters())
    msg = Message("model_para", SERVER_ID, -1, 1, {}, tensors)
    bus = LocalBus()
    LocalServerComm(bus).broadcast(msg, [1, 2, 3, 4])
    with torch.no_grad():                                 # the server's next round
        live.weight.add_(10.0)
        live.bias.mul_(3.0)
    got = [bus.next()[2] for _ in range(4)]
    for m in got:
        assert m is msg
        assert torch.equal(m.tensors["weight"], torch.full((2, 3), 1.5))
        assert torch.equal(m.tensors["bias"], torch.full((2,), -2.0))
        assert not m.tensors["weight"].requires_grad         # a copy, not the parameter
    assert torch.equal(live.bias, torch.full((2,), -6.0))


def test_send_to_conn_addresses_the_unbound_connection():
    bus = LocalBus()
    server = LocalServerComm(bus)
    refusal = Message("refuse", SERVER_ID, -1, 0, {"reason": "full"})
    server.send_to_conn(37, refusal)
    server.bind(37, 3)
    server.close(37)
    assert bus.next() == (37, SERVER_ID, refusal) and not bus
    assert [server.last_heard(c) for c in (1, 37)] == [0.0, 0.0]


def test_client_send_goes_to_the_server_from_its_own_id():
    bus = LocalBus()
    comms = [LocalClientComm(bus, cid) for cid in (1, 2, 3, 4)]
    for c in reversed(comms):
        c.send(Message("join_in", c.client_id, SERVER_ID))
    got = [bus.next() for _ in comms]
    assert [(d, c, m.sender) for d, c, m in got] == [(SERVER_ID, k, k) for k in (4, 3, 2, 1)]
    assert comms[2].bus is bus and comms[2].client_id == 3


# ============================================================== runner helpers
def test_device_is_the_configured_gpu_else_the_cpu():
    assert fr._device(NS(use_gpu=False, device=3)) == "cpu"
    assert fr._device(NS(use_gpu=True, device=-1)) == "cuda:0"
    assert fr._device(NS(use_gpu=True, device=0)) == "cuda:0"
    assert fr._device(NS(use_gpu=True, device=2)) == "cuda:2"


def test_expected_clients_is_the_manifests_count_else_client_num():
    man = NS(clients={1: "a", 2: "b", 5: "c", 8: "d"})
    assert fr._expected_clients(NS(federate=NS(client_num=9)), ServerManifest(man, "m")) == 4
    assert fr._expected_clients(NS(federate=NS(client_num=1)), ServerManifest(None, "")) == 1
    assert fr._expected_clients(NS(federate=NS(client_num=6)), ServerManifest(None, "")) == 6
    with pytest.raises(ConfigError) as e:
        fr._expected_clients(NS(federate=NS(client_num=0)), ServerManifest(None, ""))
    assert str(e.value) == "set federate.client_num (how many clients the server waits for)"


def _model_cfg(count_flops, shape=()):
    return NS(model=NS(type="tiny", input_shape=shape), eval=NS(count_flops=count_flops),
              data=NS(type="femnist"))


def test_log_model_counts_state_entries_and_forward_flops(logs):
    fr._log_model(_model_cfg(False), nn.Linear(3, 2))
    assert logs == [("INFO", "Model tiny: 8 state entries")]
    del logs[:]
    # one Linear(500 -> 1500) on a [1, 20, 25] sample: 2 x 500 x 1500 = 1.5e6 FLOPs
    wide = nn.Sequential(nn.Flatten(), nn.Linear(500, 1500))
    fr._log_model(_model_cfg(True, [20, 25]), wide)
    assert logs == [("INFO", "Model tiny: 751500 state entries"),
                    ("INFO", "Model tiny: 1.50 MFLOPs per sample (forward)")]
    del logs[:]
    # 2 x 100 x 125 = 25,000 FLOPs: 0.025 MFLOPs, which rounds up to 0.03
    fr._log_model(_model_cfg(True, [4, 25]), nn.Sequential(nn.Flatten(), nn.Linear(100, 125)))
    assert logs == [("INFO", "Model tiny: 12625 state entries"),
                    ("INFO", "Model tiny: 0.03 MFLOPs per sample (forward)")]


class _FakeTrainer:
    def __init__(self, model, splits, device, cfg):
        self.model, self.splits, self.device, self.cfg = model, splits, device, cfg

    def evaluate(self, split):
        s = self.splits[split]
        return {f"{split}_n": len(s), f"{split}_sum": float(s.x.sum())}


def _ts(values, label, transform=None):
    x = torch.tensor(values, dtype=torch.float32).reshape(-1, 1)
    return TensorSplit(x, torch.full((len(values),), label, dtype=torch.int64),
                       transform or (lambda t: t))


def test_global_evaluator_merges_the_clients_evaluation_splits_in_client_order(monkeypatch):
    made = []
    monkeypatch.setattr(fr, "get_trainer", lambda *a: made.append(_FakeTrainer(*a)) or made[-1])
    first = lambda t: t + 1  # noqa: E731
    data = StandaloneDataDict({
        1: ClientData(None, test=_ts([1, 2], 1, first), val=_ts([10], 1)),
        2: ClientData(None, test=_ts([3], 2)),
        3: ClientData(None, test="a stream, not a TensorSplit", val=_ts([20, 30], 3)),
        4: ClientData(None, test=_ts([4, 5, 6], 4)),
    })
    model = nn.Linear(1, 1)
    cfg = NS(federate=NS(make_global_eval=False), eval=NS(split=["test", "val", "extra"]),
             use_gpu=False, device=-1)
    assert fr._global_evaluator(cfg, data, model) is None and made == []
    cfg.federate.make_global_eval = True
    evaluate = fr._global_evaluator(cfg, data, model)
    (t,) = made
    assert t.model is model and t.device == "cpu" and t.cfg is cfg
    assert sorted(t.splits) == ["test", "val"]
    assert t.splits["test"].x.flatten().tolist() == [1, 2, 3, 4, 5, 6]
    assert t.splits["test"].y.tolist() == [1, 1, 2, 4, 4, 4]
    assert t.splits["val"].x.flatten().tolist() == [10, 20, 30]
    assert t.splits["test"].transform is first
    assert evaluate() == {"test_n": 6, "test_sum": 21.0, "val_n": 3, "val_sum": 60.0}


def test_base_runner_needs_data_and_a_run():
    with pytest.raises(ValueError) as e:
        fr.BaseRunner(None, object, object, NS())
    assert str(e.value) == "the runner needs data: data, modified_cfg = get_data(config)"
    runner = fr.BaseRunner({1: "d"}, "S", "C", "cfg", "per-client")
    assert (runner.data, runner.server_class, runner.client_class, runner.cfg,
            runner.client_configs) == ({1: "d"}, "S", "C", "cfg", "per-client")
    with pytest.raises(NotImplementedError):
        runner.run()


def test_per_client_config_is_merged_for_that_client_only():
    cfg = finalize(load_cfg(None, ["train.local_update_steps", "2"]))
    own = CN({"client_2": {"train": {"optimizer": {"lr": 0.5}}},
              "client_4": {"train": {"local_update_steps": 7}}})
    runner = fr.BaseRunner({}, object, object, cfg, own)
    assert runner._client_cfg(1) is cfg and runner._client_cfg(3) is cfg
    two, four = runner._client_cfg(2), runner._client_cfg(4)
    assert (two.train.optimizer.lr, two.train.local_update_steps) == (0.5, 2)
    assert (four.train.optimizer.lr, four.train.local_update_steps) == (0.1, 7)
    assert two.is_frozen() and four.is_frozen()
    assert (cfg.train.optimizer.lr, cfg.train.local_update_steps) == (0.1, 2)
    assert fr.BaseRunner({}, object, object, cfg)._client_cfg(2) is cfg


# ============================================================== the standalone runner
class _Server:
    """A server of ``rounds`` rounds over the comm it is given: all joins, then per round a
    broadcast and one update from each client; then finish to every client, a late message to
    client 2 and a refusal to a connection no client has."""
    rounds, code, instances = 3, 0, []

    def __init__(self, **kw):                   # FS's arguments and the runner's, by keyword
        self.kw = kw
        self.comm, self.expected = kw["comm"], kw["client_num"]
        self.joined, self.updates, self.round = [], {}, 0
        self.finished, self.exit_code, self.global_eval = False, None, "unset"
        _Server.instances.append(self)

    def handle(self, event):
        assert isinstance(event, Incoming)
        msg = event.msg
        if msg.msg_type == "join_in":
            assert event.conn_id == msg.sender
            self.joined.append(event.conn_id)
            if len(self.joined) == self.expected:
                self._next_round()
        elif msg.msg_type == "model_para":
            self.updates.setdefault(msg.state, []).append(event.conn_id)
            if len(self.updates[msg.state]) == self.expected:
                self._next_round()

    def _next_round(self):
        if self.round == self.rounds:
            for cid in sorted(self.joined):
                self.comm.send(Message("finish", SERVER_ID, cid, self.round))
            self.comm.send(Message("evaluate", SERVER_ID, 2, self.round))
            self.comm.send_to_conn(99, Message("refuse", SERVER_ID, -1))
            self.finished, self.exit_code = True, self.code
            return
        self.round += 1
        self.comm.broadcast(Message("model_para", SERVER_ID, -1, self.round, {}), self.joined)


class _Client:
    def __init__(self, ID, server_id, state, config, data, model, device, *, comm, loader,
                 token=""):
        self.cfg, self.ID, self.comm, self.server_id, self.state = config, ID, comm, server_id, state
        self.data, self.model, self.device = data, model, device
        self.loader, self.token = loader, token
        self.got, self.finished = [], False
        _Client.instances[ID] = self

    def join_message(self):
        return Message("join_in", self.ID, SERVER_ID)

    def handle(self, msg):
        self.got.append((msg.msg_type, msg.state))
        if msg.msg_type == "model_para":
            self.comm.send(Message("model_para", self.ID, SERVER_ID, msg.state))
        elif msg.msg_type == "finish":
            self.finished = True


@pytest.fixture
def standalone(monkeypatch, tmp_path):
    """The runner's builders replaced by recorders; returns what they saw."""
    seen = NS(models=[], trainers=[], admission=[], monitors=[])
    _Server.instances, _Client.instances = [], {}

    def model(cfg):
        seen.models.append((cfg, nn.Linear(2, 1)))
        return seen.models[-1][1]

    def trainer(m, splits, device, cfg):
        seen.trainers.append(_FakeTrainer(m, splits, device, cfg))
        return seen.trainers[-1]

    def admission(cfg, manifest, path, expected):
        seen.admission.append((cfg, manifest, path, expected))
        return "ADMISSION"

    def monitor(cfg, outdir):
        seen.monitors.append((cfg, outdir))
        return "MONITOR"
    monkeypatch.setattr(fr, "get_model", model)
    monkeypatch.setattr(fr, "get_trainer", trainer)
    monkeypatch.setattr(fr, "Admission", NS(from_config=admission))
    monkeypatch.setattr(fr, "Monitor", monitor)
    return seen


def _standalone_cfg(tmp_path, *pairs):
    return finalize(load_cfg(None, ["federate.client_num", "4", "distribute.token", "tok",
                                    "outdir", str(tmp_path / "run")] + list(pairs)))


def _four_clients():
    """Inserted out of order: the runner must go by client id. Every client's splits differ."""
    return StandaloneDataDict({cid: ClientData(None, train=_ts([cid] * cid, cid),
                                               test=_ts([10 * cid], cid), loader=f"loader-{cid}")
                               for cid in (3, 1, 4, 2)}, manifest="MANIFEST",
                              manifest_path="/set/manifest.json")


def test_standalone_runs_every_round_delivering_each_message_to_its_client(standalone, tmp_path):
    cfg = _standalone_cfg(tmp_path)
    own = CN({"client_3": {"distribute": {"token": "tok3"}}})
    data = _four_clients()
    assert fr.StandaloneRunner(data, _Server, _Client, cfg, own).run() == 0
    (server,) = _Server.instances
    kw = server.kw
    assert kw.pop("config") is cfg and kw.pop("model") is standalone.models[0][1]
    assert standalone.models[0][0] is cfg
    comm = kw.pop("comm")
    assert isinstance(comm, LocalServerComm) and server.global_eval is None
    assert kw == dict(ID=0, state=0, data=None, client_num=4, total_round_num=cfg.federate.
                      total_round_num, device="cpu", monitor="MONITOR", admission="ADMISSION",
                      distributed=False)
    assert standalone.admission == [(cfg, "MANIFEST", "/set/manifest.json", 4)]
    assert standalone.monitors == [(cfg, cfg.outdir)]
    assert server.joined == [1, 2, 3, 4]                       # joins in client-id order
    assert server.updates == {1: [1, 2, 3, 4], 2: [1, 2, 3, 4], 3: [1, 2, 3, 4]}
    clients = _Client.instances
    assert sorted(clients) == [1, 2, 3, 4]
    for cid, c in clients.items():
        # every round, then finish; client 2's late message after its finish is not delivered
        assert c.got == [("model_para", 1), ("model_para", 2), ("model_para", 3), ("finish", 3)]
        assert c.ID == cid and c.loader == f"loader-{cid}" and c.finished
        assert c.data["train"].x.flatten().tolist() == [cid] * cid       # its trainer's data
        assert c.data["test"].x.flatten().tolist() == [10 * cid]
        assert (c.server_id, c.state, c.device) == (0, -1, "cpu")
        assert isinstance(c.comm, LocalClientComm) and c.comm.bus is comm.bus
    assert [c.token for _, c in sorted(clients.items())] == ["tok", "tok", "tok3", "tok"]
    assert clients[3].cfg.distribute.token == "tok3" and clients[1].cfg is cfg
    # one model for the server, one per client from that client's config
    assert [m_cfg.distribute.token for m_cfg, _ in standalone.models] == [
        "tok", "tok", "tok", "tok3", "tok"]
    assert len({id(m) for _, m in standalone.models}) == 5
    assert [c.model for _, c in sorted(clients.items())] == [m for _, m in standalone.models[1:]]
    assert standalone.trainers == []            # each client builds its own, from these


def test_standalone_returns_the_servers_exit_code_and_sets_its_global_evaluation(
        standalone, tmp_path, monkeypatch):
    monkeypatch.setattr(_Server, "code", 5)
    monkeypatch.setattr(_Server, "rounds", 1)
    cfg = _standalone_cfg(tmp_path, "federate.make_global_eval", "True")
    assert fr.StandaloneRunner(_four_clients(), _Server, _Client, cfg).run() == 5
    (server,) = _Server.instances
    assert callable(server.global_eval)
    evaluator = standalone.trainers[0]          # built before the clients', on the server's model
    assert evaluator.model is standalone.models[0][1]
    assert sorted(evaluator.splits["test"].x.flatten().tolist()) == [10, 20, 30, 40]
    assert server.global_eval() == {"test_n": 4, "test_sum": 100.0}
    assert all(c.got == [("model_para", 1), ("finish", 1)] for c in _Client.instances.values())


class _StuckServer(_Server):
    def handle(self, event):
        self.joined.append(event.conn_id)       # never starts a round


def test_standalone_run_that_ends_before_the_server_finished_exits_1(standalone, tmp_path, logs):
    cfg = _standalone_cfg(tmp_path)
    assert fr.StandaloneRunner(_four_clients(), _StuckServer, _Client, cfg).run() == 1
    assert _Server.instances[0].joined == [1, 2, 3, 4]
    assert ("ERROR", "Standalone run ended before the server finished (no client left?)") in logs


def test_real_standalone_run_four_clients_three_rounds(tmp_path):
    """The real workers over the in-memory bus on a tiny model: the last line of the results is
    the final evaluation of round 3 over all 4 clients' test samples."""
    from federatedscope.core.auxiliaries.worker_builder import get_client_cls, get_server_cls
    cfg = _standalone_cfg(tmp_path, "federate.total_round_num", "3", "model.input_shape",
                          "[1, 4, 4]", "model.hidden", "8", "model.out_channels", "3",
                          "model.dropout", "0.0", "dataloader.batch_size", "4",
                          "eval.split", "['test']", "distribute.token", "")
    cfg.defrost()
    cfg.outdir = str(tmp_path / "run")
    os.makedirs(cfg.outdir)
    cfg.freeze()

    def split(seed, n):
        g = torch.Generator().manual_seed(seed)
        return TensorSplit(torch.rand(n, 1, 4, 4, generator=g), torch.arange(n) % 3,
                           lambda x: x)
    data = StandaloneDataDict({k: ClientData(None, train=split(k, 4 + k), test=split(10 + k, k))
                               for k in (1, 2, 3, 4)})
    runner = fr.StandaloneRunner(data, get_server_cls(cfg), get_client_cls(cfg), cfg)
    assert runner.run() == 0
    with open(os.path.join(cfg.outdir, "eval_results.log")) as f:
        last = json.loads(f.read().splitlines()[-1])
    assert last["Final"] is True and last["Round"] == 3 and last["Clients"] == [1, 2, 3, 4]
    assert last["Results_weighted_avg"]["test_total"] == (1 + 2 + 3 + 4) / 4   # FS: the mean


# ============================================================== the distributed runner
EMPTY = object()


class _ScriptedInbox(queue.Queue):
    """The server's inbox: hands out ``script`` in order (``EMPTY``: nothing came before the
    deadline), recording each wait's timeout; never blocks."""
    script, timeouts = [], []

    def get(self, block=True, timeout=None):
        _ScriptedInbox.timeouts.append(timeout)
        item = _ScriptedInbox.script.pop(0)
        if item is EMPTY:
            raise queue.Empty
        return item


class _LoopServer:
    """Stops after the event named 'stop'; its deadlines count down 4.0, 3.0, ..."""
    instances = []

    def __init__(self, **kw):                   # FS's arguments and the runner's, by keyword
        self.kw = kw
        self.handled, self.ticks, self.frozen = [], [], []
        self.deadlines = [4.0, 3.0, 2.0, 1.0, 0.5]
        self.finished, self.exit_code = False, 3
        _LoopServer.instances.append(self)

    def next_deadline(self):
        return self.deadlines.pop(0)

    def handle(self, event):
        self.frozen.append(gc.get_freeze_count() > 0)
        self.handled.append(event)
        if event == "boom":
            raise RuntimeError("handler failed")
        if event == "stop":
            self.finished = True

    def tick(self):
        self.ticks.append(fr.time.monotonic.now)


class _Clock:
    def __init__(self, times):
        self.times, self.now = list(times), None

    def __call__(self):
        self.now = self.times.pop(0)
        return self.now


class _ServerTransport:
    def __init__(self, cfg, inbox, expected, model_bytes):
        self.args = (cfg, inbox, expected, model_bytes)
        self.port, self.calls = 50123, []

    def start(self):
        self.calls.append("start")

    def stop(self):
        self.calls.append("stop")


@pytest.fixture
def server_run(monkeypatch):
    from federatedscope.core.communication import grpc_server
    made = []
    monkeypatch.setattr(grpc_server, "ServerInbox", _ScriptedInbox)
    monkeypatch.setattr(fr, "_server_transport",
                        lambda *a: made.append(_ServerTransport(*a)) or made[-1])
    model = nn.Linear(3, 2).double()               # 8 float64 values: 64 bytes
    seen = NS(transports=made, model=model, admission=[], model_cfgs=[])
    monkeypatch.setattr(fr, "get_model", lambda cfg: seen.model_cfgs.append(cfg) or model)
    monkeypatch.setattr(fr, "Admission", NS(
        from_config=lambda *a: seen.admission.append(a) or "ADMISSION"))
    monkeypatch.setattr(fr, "Monitor", lambda cfg, outdir: ("MONITOR", cfg, outdir))
    _LoopServer.instances, _ScriptedInbox.timeouts = [], []
    return seen


def _server_cfg(global_eval=False):
    return NS(federate=NS(client_num=0, make_global_eval=global_eval, total_round_num=7),
              outdir="/runs/r1",
              model=NS(type="tiny"), eval=NS(count_flops=False), use_gpu=False, device=-1,
              distribute=NS(server_host="127.0.0.9"), distributed_data=NS(enabled=True))


def test_server_loop_waits_until_each_deadline_and_ticks_at_most_every_quarter_second(
        server_run, monkeypatch, logs):
    _ScriptedInbox.script = ["e1", "e2", "e3", EMPTY, "stop"]
    # a message at 1.125 s ticks (first), 1.25 does not (0.125 s later), 1.375 does (0.25 s);
    # an empty wait always ticks; the 'stop' at 1.625 s comes 0.125 s after that tick
    clock = _Clock([1.125, 1.25, 1.375, 1.5, 1.625])
    monkeypatch.setattr(fr, "time", NS(monotonic=clock))
    manifest = NS(clients={2: "b", 4: "d", 6: "f", 8: "h", 9: "i"})
    cfg = _server_cfg()
    data = ServerManifest(manifest, "/set/manifest.json")
    assert fr.DistributedRunner(data, _LoopServer, object, cfg).run() == 3
    (server,) = _LoopServer.instances
    assert server.handled == ["e1", "e2", "e3", "stop"]
    assert server.ticks == [1.125, 1.375, 1.5]
    assert _ScriptedInbox.timeouts == [4.0, 3.0, 2.0, 1.0, 0.5]
    (transport,) = server_run.transports
    t_cfg, inbox, expected, model_bytes = transport.args
    assert t_cfg is cfg and isinstance(inbox, _ScriptedInbox) and expected == 5
    assert model_bytes == 64 and transport.calls == ["start", "stop"]
    assert server.kw == dict(ID=0, state=0, config=cfg, data=None, model=server_run.model,
                             client_num=5, total_round_num=7, device="cpu", comm=transport,
                             monitor=("MONITOR", cfg, "/runs/r1"), admission="ADMISSION",
                             distributed=True)
    assert server_run.model_cfgs == [cfg]
    assert server_run.admission == [(cfg, manifest, "/set/manifest.json", 5)]
    assert all(server.frozen) and gc.get_freeze_count() == 0
    assert ("INFO", "Server: listening on 127.0.0.9:50123; waiting for 5 clients") in logs
    assert not any("make_global_eval" in line for _, line in logs)


def test_server_loop_stops_the_transport_when_a_handler_fails(server_run, monkeypatch, logs):
    _ScriptedInbox.script = ["boom"]
    monkeypatch.setattr(fr, "time", NS(monotonic=_Clock([5.0])))
    cfg = _server_cfg(global_eval=True)
    cfg.federate.client_num = 6
    with pytest.raises(RuntimeError, match="handler failed"):
        fr.DistributedRunner(ServerManifest(None, ""), _LoopServer, object, cfg).run()
    assert server_run.transports[0].calls == ["start", "stop"]
    assert server_run.transports[0].args[2] == 6 and gc.get_freeze_count() == 0
    assert ("WARNING", "federate.make_global_eval: a shard-mode server holds no data to "
                       "evaluate on; the clients' weighted-average evaluation is reported "
                       "instead") in logs
    # FS's data_idx mode: the server loaded every partition and evaluates on their eval splits
    _ScriptedInbox.script = ["boom"]
    logs.clear()
    made = []
    monkeypatch.setattr(fr, "_global_evaluator", lambda c, d, m: made.append((c, d, m)) or "EVAL")
    partitions = {1: "partition 1", 2: "partition 2"}
    with pytest.raises(RuntimeError, match="handler failed"):
        fr.DistributedRunner(ServerManifest(None, "", partitions), _LoopServer, object, cfg).run()
    assert made == [(cfg, partitions, server_run.model)] and not any(
        "make_global_eval" in line for _, line in logs)
    assert _LoopServer.instances[-1].global_eval == "EVAL"


@pytest.mark.parametrize("expected,max_clients", [(1, 8), (4, 8), (5, 10), (300, 600)])
def test_server_transport_admits_twice_the_expected_clients_and_at_least_8(
        monkeypatch, expected, max_clients):
    from federatedscope.core.communication import grpc_server
    monkeypatch.setattr(grpc_server, "GrpcServerTransport", lambda *a, **k: (a, k))
    assert fr._server_transport("CFG", "INBOX", expected, 4096) == (
        ("CFG", "INBOX"), {"max_clients": max_clients, "model_bytes": 4096})


def test_client_transport_is_grpcs(monkeypatch):
    from federatedscope.core.communication import grpc_client
    monkeypatch.setattr(grpc_client, "GrpcClientTransport", lambda *a, **k: (a, k))
    assert fr._client_transport("CFG", "INBOX") == (("CFG", "INBOX"), {})


class _SessionClient:
    def __init__(self, ID=7, **kwargs):
        self.kwargs = dict(kwargs, ID=ID)
        self.ID, self.handled, self.joins = ID, [], 0
        self.finished = self.refused = False

    def join_message(self):
        self.joins += 1
        return f"join#{self.joins}"

    def handle(self, msg):
        if not isinstance(msg, str):        # only what the transport put into the inbox
            raise TypeError(f"handed {msg!r}")
        self.handled.append(msg)
        if msg in ("finish", "refuse"):
            self.finished = True
            self.refused = msg == "refuse"


class _ClientTransport:
    """Puts ``script`` into the inbox when the session opens; records every call."""

    def __init__(self, inbox, script, on_get=None):
        self.inbox, self.script, self.calls = inbox, script, []
        self.address = "10.0.0.5:50051"

    def wait_for_server(self, timeout):
        self.calls.append(("wait", timeout))

    def open_session(self, join):
        self.calls.append(("open", join))
        for item in self.script:
            self.inbox.put(item)

    def reconnect(self, join, reason):
        self.calls.append(("reconnect", join, reason))

    def close(self):
        self.calls.append(("close",))


def test_client_session_rejoins_after_each_lost_server_until_finished():
    inbox = queue.Queue()
    lost = Disconnected(3, "stream reset")
    t = _ClientTransport(inbox, ["m1", lost, "m2", Disconnected(3, "goaway"), "finish", "late"])
    client = _SessionClient()
    fr._client_session(NS(distribute=NS(connect_timeout=17.5)), client, t, inbox)
    assert t.calls == [("wait", 17.5), ("open", "join#1"), ("reconnect", "join#2", "stream reset"),
                       ("reconnect", "join#3", "goaway")]
    assert client.handled == ["m1", "m2", "finish"] and inbox.get_nowait() == "late"


class _FinishingInbox(queue.Queue):
    """Models a client finished by another thread while its inbox held a Disconnected."""

    def __init__(self, client):
        super().__init__()
        self.client = client

    def get(self, *a, **k):
        item = super().get(*a, **k)
        if isinstance(item, Disconnected):
            self.client.finished = True
        return item


def test_client_session_does_not_rejoin_once_finished():
    client = _SessionClient()
    inbox = _FinishingInbox(client)
    t = _ClientTransport(inbox, ["m1", Disconnected(3, "server closed"), "m2"])
    fr._client_session(NS(distribute=NS(connect_timeout=2.0)), client, t, inbox)
    assert t.calls == [("wait", 2.0), ("open", "join#1")] and client.handled == ["m1"]


@pytest.mark.parametrize("last,code", [("finish", 0), ("refuse", 2)])
def test_distributed_client_runs_its_session_and_exits_2_only_when_refused(
        monkeypatch, logs, last, code):
    from federatedscope.core.communication import security
    made, clients = [], []

    def transport(t_cfg, inbox):
        assert t_cfg is cfg
        made.append(_ClientTransport(inbox, ["m1", last]))
        return made[-1]
    monkeypatch.setattr(fr, "_client_transport", transport)
    monkeypatch.setattr(fr, "get_model", lambda cfg: ("model-for", cfg))
    monkeypatch.setattr(security, "client_token", lambda cfg: f"token-of-{cfg.name}")

    def client_cls(*a, **k):
        clients.append(_SessionClient(*a, **k))
        return clients[-1]
    cfg = NS(name="c7", use_gpu=False, device=-1, distribute=NS(connect_timeout=9.0))
    data = NS(splits=lambda: ({"train": "T"}, "LOADER"),
              claimed_id=lambda c: 7 if c is cfg else -99)
    assert fr.DistributedRunner(data, object, client_cls, cfg).run() == code
    (client,) = clients
    (t,) = made
    # FS's Client arguments (the client builds its trainer from them), then the transport's
    assert client.kwargs == dict(ID=7, server_id=0, state=-1, config=cfg, data={"train": "T"},
                                 model=("model-for", cfg), device="cpu", comm=t, loader="LOADER",
                                 token="token-of-c7")
    assert client.handled == ["m1", last]
    assert t.calls == [("wait", 9.0), ("open", "join#1"), ("close",)]
    assert ("INFO", "Client #7: connecting to server 10.0.0.5:50051") in logs


def test_distributed_client_closes_its_transport_when_the_session_fails(monkeypatch):
    from federatedscope.core.communication import security
    made = []

    class Failing(_ClientTransport):
        def wait_for_server(self, timeout):
            raise ConnectionError("no server at 10.0.0.5:50051")
    monkeypatch.setattr(fr, "_client_transport",
                        lambda cfg, inbox: made.append(Failing(inbox, [])) or made[-1])
    monkeypatch.setattr(fr, "get_model", lambda cfg: None)
    monkeypatch.setattr(fr, "get_trainer", lambda *a: None)
    monkeypatch.setattr(security, "client_token", lambda cfg: "")
    data = NS(splits=lambda: ({}, None), claimed_id=lambda c: 1)
    with pytest.raises(ConnectionError):
        fr.DistributedRunner(data, object, _SessionClient,
                             NS(use_gpu=False, device=-1,
                                distribute=NS(connect_timeout=1.0))).run()
    assert made[0].calls == [("close",)]


@pytest.mark.parametrize("data,role", [
    (ServerManifest(None, ""), "server"), (ServerManifest("M", "/m.json"), "server"),
    (ClientShard("loader"), "client"), (DataIdxClient(ClientData(), 2), "client")])
def test_distributed_runner_dispatches_on_the_data_record(monkeypatch, data, role):
    monkeypatch.setattr(fr.DistributedRunner, "_run_server", lambda self: "server")
    monkeypatch.setattr(fr.DistributedRunner, "_run_client", lambda self: "client")
    assert fr.DistributedRunner(data, object, object, NS()).run() == role


# ============================================================== main.main
@pytest.fixture
def no_malloc_tuning(monkeypatch):
    """main()'s process-wide settings left alone: glibc's malloc and the SIGUSR1 dump (which
    needs a real stderr, not pytest's capture)."""
    calls = []
    monkeypatch.setattr(fs_main, "tune_malloc", lambda cfg: calls.append(cfg))
    monkeypatch.setattr(fs_main, "_install_stack_dump", lambda: None)
    return calls


def test_peak_rss_is_vmhwm_in_megabytes(monkeypatch):
    status = "Name:\tpython\nVmPeak:\t 9999999 kB\nVmHWM:\t  308000 kB\nVmRSS:\t 1000 kB\n"
    monkeypatch.setattr(fs_main, "open", lambda path: io.StringIO(status), raising=False)
    assert fs_main._peak_rss_mb() == "301 MB"                 # 308000 / 1024 = 300.8
    monkeypatch.setattr(fs_main, "open", lambda path: io.StringIO("VmRSS:\t 1000 kB\n"),
                        raising=False)
    assert fs_main._peak_rss_mb() == "unknown"

    def unreadable(path):
        raise PermissionError(path)
    monkeypatch.setattr(fs_main, "open", unreadable, raising=False)
    assert fs_main._peak_rss_mb() == "unknown"
    monkeypatch.delattr(fs_main, "open")
    assert fs_main._peak_rss_mb().endswith(" MB")             # this process, from /proc


def test_stack_dump_is_registered_for_sigusr1_where_there_is_one(monkeypatch):
    import faulthandler
    calls = []
    monkeypatch.setattr(faulthandler, "register", lambda sig: calls.append(sig))
    fs_main._install_stack_dump()
    assert calls == [signal.SIGUSR1]
    monkeypatch.delattr(signal, "SIGUSR1")                    # Windows
    fs_main._install_stack_dump()
    monkeypatch.undo()
    monkeypatch.delattr(faulthandler, "register")            # no faulthandler.register
    fs_main._install_stack_dump()
    assert calls == [signal.SIGUSR1]


def test_torch_runs_one_thread_unless_omp_num_threads_is_set(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    fs_main._limit_torch_threads()
    assert calls == []
    monkeypatch.delenv("OMP_NUM_THREADS")
    fs_main._limit_torch_threads()
    assert calls == [1]


class _Runner:
    def __init__(self, code=0, error=None):
        self.code, self.error = code, error

    def run(self):
        if self.error is not None:
            raise self.error
        return self.code


def test_main_builds_the_config_and_returns_the_runners_exit_code(
        tmp_path, monkeypatch, capsys, fs_logger, no_malloc_tuning):
    yaml = tmp_path / "job.yaml"
    yaml.write_text("seed: 11\nfederate:\n  total_round_num: 7\n  client_num: 4\n")
    client_yaml = tmp_path / "client.yaml"
    client_yaml.write_text("client_2:\n  train:\n    local_update_steps: 3\n")   # FS's format
    seen = NS(seeds=[], data_cfg=None, runner=None, client_cfgs=None)
    monkeypatch.setattr(fs_main, "setup_seed", lambda s: seen.seeds.append(s))

    def get_data(config, client_cfgs=None):
        seen.data_cfg, seen.client_cfgs = config, client_cfgs
        modified = config.clone()
        modified.federate.client_num = 6                    # what the data says
        return "DATA", modified

    def get_runner(**kw):
        seen.runner = kw
        return _Runner(3)
    monkeypatch.setattr(fs_main, "get_data", get_data)
    monkeypatch.setattr(fs_main, "get_runner", get_runner)
    monkeypatch.setattr(fs_main, "get_server_cls", lambda c: ("server", c.federate.client_num))
    monkeypatch.setattr(fs_main, "get_client_cls", lambda c: ("client", c.federate.client_num))
    argv = ["--cfg", str(yaml), "--client_cfg", str(client_yaml), "seed", "5", "outdir",
            str(tmp_path / "runs"), "expname", "job", "--override", "eval.freq=2",
            "client_4.train.optimizer.lr", "0.5"]
    assert fs_main.main(argv) == 3
    run_dir = str(tmp_path / "runs" / "job")
    assert seen.seeds == [5]
    (tuned,) = no_malloc_tuning
    d = seen.data_cfg
    assert (d.seed, d.federate.total_round_num, d.federate.client_num, d.train.local_update_steps,
            d.eval.freq, d.outdir) == (5, 7, 4, 1, 2, run_dir)     # sections are not global
    assert d.train.optimizer.lr == 0.1
    own = seen.client_cfgs     # the file's section and the client_<id> pair, for get_data ...
    assert sorted(own) == ["client_2", "client_4"] and own.client_2.train.local_update_steps == 3
    assert own.client_4.train.optimizer.lr == 0.5
    assert tuned.seed == 5 and tuned.outdir == run_dir
    r = seen.runner
    assert r["data"] == "DATA" and r["config"].federate.client_num == 6
    assert r["client_configs"] is own                        # ... and for the runner
    assert r["config"].is_frozen() and r["config"].federate.total_round_num == 7
    assert r["config"] is not d and r["config"].outdir == run_dir
    assert r["server_class"] == ("server", 6) and r["client_class"] == ("client", 6)
    err = capsys.readouterr().err
    assert "Peak RSS of this process: " in err and " MB" in err.split("Peak RSS")[1]
    with open(os.path.join(run_dir, "exp_print.log")) as f:
        assert "Peak RSS of this process: " in f.read()


@pytest.mark.parametrize("argv,text", [
    (["federate.nope", "1"], "Configuration error: command line: Non-existent key: federate.nope"),
    (["--override", "seed:2"], "Configuration error: --override expects key=value, got 'seed:2'"),
    (["federate.total_round_num", "0"],
     "Configuration error: federate.total_round_num must be >= 1"),
    (["--cfg", "MISSING"], "Configuration error: config file not found: MISSING"),
    (["--client_cfg", "MISSING"],
     "Configuration error: --client_cfg config file not found: MISSING"),
], ids=["unknown-key", "bad-override", "bad-value", "missing-cfg", "missing-client-cfg"])
def test_a_config_error_exits_1_naming_the_key_before_any_data_is_read(
        tmp_path, monkeypatch, capsys, fs_logger, no_malloc_tuning, argv, text):
    monkeypatch.setattr(fs_main, "get_data", lambda config: pytest.fail("data read"))
    argv = [str(tmp_path / "none.yaml") if a == "MISSING" else a for a in argv]
    text = text.replace("MISSING", str(tmp_path / "none.yaml"))
    assert fs_main.main(argv + ["outdir", str(tmp_path / "runs")]) == 1
    assert f"ERROR: {text}\n" in capsys.readouterr().err
    assert no_malloc_tuning == []


@pytest.mark.parametrize("pairs,source", [
    ([], "{file}"), (["client_3.train.local_update_steps", "2"],
                     "{file} (and command-line client_<id>.* pairs)")])
def test_a_bad_client_section_exits_1_naming_where_it_came_from(
        tmp_path, monkeypatch, capsys, fs_logger, no_malloc_tuning, pairs, source):
    monkeypatch.setattr(fs_main, "get_data", lambda **kw: pytest.fail("data read"))
    client_yaml = tmp_path / "client.yaml"
    client_yaml.write_text("client_2:\n  federate:\n    nope: 1\n")
    argv = ["--client_cfg", str(client_yaml), "outdir", str(tmp_path / "runs")] + pairs
    assert fs_main.main(argv) == 1
    assert (f"ERROR: Configuration error: {source.format(file=client_yaml)}: section client_2: "
            f"Non-existent config key: client_2.federate.nope (a section takes the keys of the "
            f"global config; see doc/config.md)\n") in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()                  # refused before the run directory


def test_a_section_for_a_client_the_data_does_not_have_exits_1(
        tmp_path, monkeypatch, capsys, fs_logger, no_malloc_tuning):
    client_yaml = tmp_path / "client.yaml"
    client_yaml.write_text("client_2:\n  train:\n    local_update_steps: 3\n")

    def get_data(config, client_cfgs=None):
        modified = config.clone()
        modified.federate.client_num = 3                    # the data has 3 clients
        return "DATA", modified
    monkeypatch.setattr(fs_main, "get_data", get_data)
    monkeypatch.setattr(fs_main, "get_runner", lambda **kw: pytest.fail("runner built"))
    argv = ["--client_cfg", str(client_yaml), "outdir", str(tmp_path / "runs"),
            "client_4.train.optimizer.lr", "0.5"]
    assert fs_main.main(argv) == 1
    assert (f"{client_yaml} (and command-line client_<id>.* pairs): section client_4 is for "
            f"client 4, but this run has federate.client_num=3 clients (ids 1..3); remove the "
            f"section or raise federate.client_num") in capsys.readouterr().err


def test_an_unwritable_outdir_exits_1_asking_for_a_writable_one(
        tmp_path, monkeypatch, capsys, fs_logger, no_malloc_tuning):
    monkeypatch.setattr(fs_main, "get_data", lambda config: pytest.fail("data read"))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert fs_main.main(["outdir", str(blocker), "expname", "e"]) == 1
    err = capsys.readouterr().err
    assert (f"ERROR: NotADirectoryError: [Errno 20] Not a directory: '{blocker / 'e'}'; set "
            f"outdir to a writable directory\n") in err


@pytest.mark.parametrize("error", [
    ConfigError("data.root /x has no femnist; set data.root"), ValueError("bad shard"),
    FileNotFoundError("no such file: /x/meta.json"), ConnectionError("server gone"),
    OSError("disk full")], ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("where", ["data", "run"])
def test_data_and_run_errors_exit_1_naming_the_error(
        tmp_path, monkeypatch, capsys, fs_logger, no_malloc_tuning, error, where):
    def get_data(config, client_cfgs=None):
        if where == "data":
            raise error
        return "DATA", config.clone()
    monkeypatch.setattr(fs_main, "get_data", get_data)
    monkeypatch.setattr(fs_main, "get_runner", lambda **kw: _Runner(error=error))
    assert fs_main.main(["outdir", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err
    assert f"ERROR: {type(error).__name__}: {error}\n" in err
    assert "Peak RSS" not in err


def test_an_interrupted_run_exits_130(tmp_path, monkeypatch, capsys, fs_logger, no_malloc_tuning):
    monkeypatch.setattr(fs_main, "get_data",
                        lambda config, client_cfgs=None: ("DATA", config.clone()))
    monkeypatch.setattr(fs_main, "get_runner", lambda **kw: _Runner(error=KeyboardInterrupt()))
    assert fs_main.main(["outdir", str(tmp_path / "runs")]) == 130
    assert "WARNING: Interrupted\n" in capsys.readouterr().err


# ============================================================== launch_utils: pre-flight
# 4 clients; every count differs so a problem reported for the wrong client shows
COUNTS = {1: {"train": 6, "val": 2, "test": 3}, 2: {"train": 9, "val": 3, "test": 2},
          3: {"train": 5, "val": 4, "test": 1}, 4: {"train": 8, "val": 1, "test": 4}}
NCLS = 4
ST = "uint8[5,5]"


# one split file of n uint8[5,5] samples, labels k % 4 (test_shard_verify's; NCLS is 4 there too)
from test_shard_verify import _split  # noqa: E402


def _hist(n):
    return np.bincount(np.arange(n) % NCLS, minlength=NCLS).tolist()


def _write_set(base, source=None):
    """Shards client_1..4 and their manifest under ``base``; returns the manifest path."""
    base.mkdir(exist_ok=True)
    entries = {}
    for cid, counts in COUNTS.items():
        d = base / f"client_{cid}"
        d.mkdir()
        files = {f"{s}.pt": _split(str(d / f"{s}.pt"), n, 10 * cid + i)
                 for i, (s, n) in enumerate(counts.items())}
        meta = sf.ShardMeta(cid, "femnist", [f"w{cid}"], dict(counts),
                            {s: _hist(n) for s, n in counts.items()}, files, NCLS, [5, 5])
        meta.fingerprint = sf.compute_fingerprint(files, None)
        sf.write_meta(str(d), meta)
        entries[cid] = sf.ManifestEntry(cid, f"client_{cid}", dict(counts), meta.fingerprint,
                                        _hist(counts["train"]), "", ST, "femnist")
    path = base / "manifest.json"
    sf.write_manifest(str(path), sf.Manifest("femnist", "writer", 0, [0.6, 0.2, 0.2],
                                             source or {}, entries, NCLS, ST))
    return path


@pytest.fixture
def shard_set(tmp_path):
    return _write_set(tmp_path / "set")


def _preflight(capsys, manifest, *a):
    rc = lu.preflight(str(manifest), *a)
    out = capsys.readouterr()
    return rc, out.out.splitlines(), out.err.splitlines()


def _fix_line(manifest, flag="--resume"):
    return (f"preflight: fix: python scripts/tools/prepare_shards.py --dataset femnist --root data "
            f"--clients 4 --out {os.path.dirname(str(manifest))} {flag}")


def test_preflight_of_a_sound_set_lists_each_client_with_its_real_shard_dir(shard_set, capsys):
    rc, out, err = _preflight(capsys, shard_set, "", True)
    real = os.path.realpath(os.path.dirname(str(shard_set)))
    assert (rc, err) == (0, [])
    assert out == [f"{c} {real}/client_{c} -" for c in (1, 2, 3, 4)]
    assert lu.check_shard(str(shard_set), 2, sf.read_manifest(str(shard_set)).clients[2]) == (
        f"{real}/client_2", [])


def test_preflight_makes_tokens_by_default_then_checks_them(shard_set, capsys, tmp_path):
    tokens = os.path.join(os.path.dirname(str(shard_set)), "tokens")
    rc, out, err = _preflight(capsys, shard_set)
    assert rc == 0
    assert err == [f"preflight: made 4 client tokens in {tokens} (mode 0600); the manifest keeps "
                   f"only their sha256 (run with --no-tokens to skip)"]
    assert [line.split()[2] for line in out] == [f"{tokens}/client_{c}.token" for c in (1, 2, 3, 4)]
    assert all(os.path.isfile(line.split()[2]) for line in out)
    assert all(e.token_hash for e in sf.read_manifest(str(shard_set)).clients.values())
    rc, again, err = _preflight(capsys, shard_set)            # hashes now: files are checked
    assert (rc, again, err) == (0, out, [])
    os.remove(os.path.join(tokens, "client_3.token"))
    rc, out, err = _preflight(capsys, shard_set)
    assert rc == 1 and out == []
    assert err == [f"preflight: client 3: token file {tokens}/client_3.token is missing",
                   f"preflight: fix: give every client a new token: python scripts/tools/"
                   f"make_client_tokens.py --manifest {shard_set} --out {tokens}"]
    rc, out, err = _preflight(capsys, shard_set, "", True)
    assert rc == 1 and out == []
    assert err == [f"preflight: {shard_set} gives its clients tokens (token_hash): drop "
                   f"--no-tokens and pass --tokens DIR with their client_<k>.token files"]


def test_preflight_puts_tokens_where_it_is_told(shard_set, capsys, tmp_path):
    elsewhere = tmp_path / "keys"
    rc, out, err = _preflight(capsys, shard_set, str(elsewhere))
    assert rc == 0 and err[0].startswith(f"preflight: made 4 client tokens in {elsewhere} ")
    assert [line.split()[2] for line in out] == [f"{elsewhere}/client_{c}.token"
                                                 for c in (1, 2, 3, 4)]


def test_preflight_names_the_client_whose_split_has_the_wrong_size(shard_set, capsys):
    val = os.path.join(os.path.dirname(str(shard_set)), "client_3", "val.pt")
    with open(val, "ab") as f:
        f.write(b"\0")
    rc, out, err = _preflight(capsys, shard_set, "", True)
    assert rc == 1 and out == [] and len(err) == 2
    assert err[0].startswith("preflight: client 3: ") and val in err[0]
    assert err[1] == _fix_line(shard_set)


def test_preflight_checks_sizes_and_leaves_hashing_to_each_clients_load(shard_set, capsys):
    """The pre-flight must stay quick at thousands of shards: it compares sizes and meta.json
    with the manifest; a same-size change of a file's bytes is the client's own load to find."""
    shard = os.path.join(os.path.dirname(str(shard_set)), "client_2")
    train = os.path.join(shard, "train.pt")
    with open(train, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    rc, out, err = _preflight(capsys, shard_set, "", True)
    assert (rc, len(out), err) == (0, 4, [])
    with pytest.raises(sf.ShardError, match="train.pt"):
        sf.verify_shard(shard, check_sha=True)


def test_preflight_names_each_client_that_differs_from_the_manifest(shard_set, capsys):
    base = os.path.dirname(str(shard_set))
    m = sf.read_manifest(str(shard_set))
    m.clients[2].fingerprint = "ab" * 32                 # another shard than the one cut
    sf.write_manifest(str(shard_set), m)
    os.remove(os.path.join(base, "client_4", "meta.json"))
    rc, out, err = _preflight(capsys, shard_set, "", True)
    assert rc == 1 and out == [] and len(err) == 3
    assert err[0].startswith("preflight: client 2: ") and "fingerprint" in err[0]
    assert err[1].startswith("preflight: client 4: ") and "meta.json" in err[1]
    assert err[2] == _fix_line(shard_set)


def test_preflight_of_an_unreadable_manifest_says_why(tmp_path, capsys):
    missing = tmp_path / "manifest.json"
    rc, out, err = _preflight(capsys, missing, "", True)
    assert rc == 1 and out == [] and len(err) == 1
    assert err[0].startswith("preflight: ") and str(missing) in err[0]
    missing.write_text("{not json")
    rc, out, err = _preflight(capsys, missing, "", True)
    assert rc == 1 and out == [] and err[0].startswith(f"preflight: {missing}")


# ============================================================== launch_utils: the rest
@pytest.mark.parametrize("clients,load,cpus,expected", [
    (4, 0.5, 2, 120),            # idle: the base plus 0.05 s a client (120.2)
    (10_000, 1.0, 4, 620),       # 120 + 500
    (200, 12.0, 4, 390),         # 3 runnable per core: (120 + 10) x 3
    (-5, 40.0, 2, 2400),         # no negative allowance: 120 x 20
    (20, 3.0, None, 363),        # cpu_count unknown: one core; (120 + 1) x 3
])
def test_health_timeout_scales_with_clients_and_load_per_core(
        monkeypatch, clients, load, cpus, expected):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 99.0, 99.0))
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert lu.health_timeout(clients) == expected


def test_health_timeout_without_a_load_average_assumes_one_per_core(monkeypatch):
    def no_load():
        raise OSError("no load average")
    monkeypatch.setattr(os, "getloadavg", no_load)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert lu.health_timeout(100) == 125


def _manifest_with_source(tmp_path, source):
    return str(_write_set(tmp_path / "set", source))


def _data_root(capsys, path):
    rc = lu.data_root(path)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_data_root_is_the_recorded_root_else_two_levels_above_the_input(tmp_path, capsys,
                                                                        monkeypatch):
    m = _manifest_with_source(tmp_path, {"root": "/data/fl", "path": "/other/femnist/raw"})
    assert _data_root(capsys, m) == (0, "/data/fl\n", "")
    d = json.loads(open(m).read())
    d["source"] = {"root": "", "path": "/data/fl/femnist/raw"}
    open(m, "w").write(json.dumps(d))
    assert _data_root(capsys, m) == (0, "/data/fl\n", "")
    monkeypatch.chdir(tmp_path)
    d["source"] = {"path": "rel/femnist/raw"}
    open(m, "w").write(json.dumps(d))
    assert _data_root(capsys, m) == (0, f"{tmp_path}/rel\n", "")
    d["source"] = {"root": 5, "path": ""}
    open(m, "w").write(json.dumps(d))
    assert _data_root(capsys, m) == (
        1, "", f"data-root: {m} does not record its input; pass data.root ROOT\n")


def test_data_root_of_an_unreadable_manifest_says_why(tmp_path, capsys):
    rc, out, err = _data_root(capsys, str(tmp_path / "manifest.json"))
    assert rc == 1 and out == "" and err.startswith("data-root: ") and "manifest.json" in err


@pytest.fixture
def health_server():
    """gRPC's health service on 127.0.0.1 (port 0): the launcher's FL service NOT_SERVING."""
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("federatedscope.FLService", health_pb2.HealthCheckResponse.NOT_SERVING)
    yield NS(address=f"127.0.0.1:{port}", servicer=servicer, pb=health_pb2)
    server.stop(0)


def test_wait_health_returns_once_the_fl_service_is_serving(health_server, capsys):
    h = health_server
    assert lu.wait_health(h.address, 0.4) == 1             # only the server's overall status
    assert capsys.readouterr().err == (
        f"wait-health: server at {h.address} not SERVING within 0s (DEADLINE_EXCEEDED); if it is "
        f"only slow, raise --health-timeout\n")
    h.servicer.set("federatedscope.FLService", h.pb.HealthCheckResponse.SERVING)
    assert lu.wait_health(h.address, 30.0) == 0
    assert capsys.readouterr().err == ""


def test_wait_health_retries_at_most_every_second_and_uses_the_ca(
        health_server, monkeypatch, tmp_path):
    import grpc
    opened, creds = [], []
    real = grpc.insecure_channel
    monkeypatch.setattr(grpc, "insecure_channel",
                        lambda addr, opts: opened.append(("plain", addr, opts)) or real(addr))
    monkeypatch.setattr(grpc, "ssl_channel_credentials",
                        lambda root: creds.append(root) or "CREDS")
    monkeypatch.setattr(grpc, "secure_channel", lambda addr, c, opts: opened.append(
        ("tls", addr, c, opts)) or real(addr))
    health_server.servicer.set("federatedscope.FLService",
                               health_server.pb.HealthCheckResponse.SERVING)
    opts = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000)]
    assert lu.wait_health(health_server.address, 30.0) == 0
    assert opened == [("plain", health_server.address, opts)]
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nfake\n")
    assert lu.wait_health(health_server.address, 30.0, str(ca)) == 0
    assert opened[1] == ("tls", health_server.address, "CREDS", opts)
    assert creds == [b"-----BEGIN CERTIFICATE-----\nfake\n"]


def test_wait_health_reads_the_status_stream_until_serving(monkeypatch):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    watched = []
    resp = health_pb2.HealthCheckResponse

    class Stub:
        statuses = []

        def __init__(self, channel):
            pass

        def Watch(self, request, timeout, wait_for_ready):
            watched.append((request.service, timeout, wait_for_ready))
            return iter([resp(status=s) for s in Stub.statuses])
    monkeypatch.setattr(health_pb2_grpc, "HealthStub", Stub)
    Stub.statuses = [resp.NOT_SERVING, resp.SERVICE_UNKNOWN, resp.SERVING]
    assert lu.wait_health("127.0.0.1:1", 12.5) == 0
    Stub.statuses = [resp.NOT_SERVING]                    # the stream ended before SERVING
    assert lu.wait_health("127.0.0.1:1", 3.0) == 1
    assert watched == [("federatedscope.FLService", 12.5, True),
                       ("federatedscope.FLService", 3.0, True)]


def _log(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n\n" for line in lines))


def test_summary_prints_each_clients_samples_and_the_last_final_evaluation(
        shard_set, tmp_path, capsys):
    out_dir = tmp_path / "out"
    _log(out_dir / "a" / "eval_results.log", [{"Round": 1}])          # no final: next log
    second = out_dir / "b" / "sub" / "eval_results.log"
    _log(second, [{"Round": 2, "Final": True, "Results_weighted_avg": {"test_acc": 0.25}},
                  {"Round": 3, "Results_weighted_avg": {"test_acc": 0.9}},
                  {"Round": 3, "Final": True,
                   "Results_weighted_avg": {"test_acc": 0.75, "test_avg_loss": 0.5}}])
    _log(out_dir / "c" / "eval_results.log", [{"Round": 9, "Final": True}])
    assert lu.summary(str(shard_set), str(out_dir)) == 0
    out = capsys.readouterr()
    assert out.err == ""
    assert out.out.splitlines() == [
        "  client 1: 6 train / 2 val / 3 test samples", "  client 2: 9 train / 3 val / 2 test samples",
        "  client 3: 5 train / 4 val / 1 test samples", "  client 4: 8 train / 1 val / 4 test samples",
        f"  final (round 3): weighted-avg test_acc=0.75, test_avg_loss=0.5  [{second}]"]


def test_summary_without_a_final_evaluation_exits_1(tmp_path, capsys):
    _log(tmp_path / "out" / "eval_results.log", [{"Round": 1}, {"Round": 2, "Final": False}])
    assert lu.summary("", str(tmp_path / "out")) == 1
    assert lu.summary(str(tmp_path / "no_manifest.json"), str(tmp_path / "empty")) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err == "  no final evaluation found\n" * 2


def test_summary_of_a_final_without_results_prints_none(tmp_path, capsys):
    _log(tmp_path / "out" / "eval_results.log", [{"Round": 4, "Final": True}])
    assert lu.summary("", str(tmp_path / "out")) == 0
    assert capsys.readouterr().out == (
        f"  final (round 4): weighted-avg test_acc=None, test_avg_loss=None  "
        f"[{tmp_path / 'out' / 'eval_results.log'}]\n")


def _listening(port: int) -> bytes:
    return f"2026-12-05 10:00:00,000 INFO: Server: listening on 127.0.0.1:{port}; 3 clients\n".encode()


def test_a_zombie_or_a_missing_pid_is_not_running_whatever_its_name(tmp_path):
    # /proc/<pid>/stat is "pid (comm) state ...": a comm may hold ") " itself, so the state is
    # the first field after the last ")"
    import shutil
    odd = tmp_path / "srv) Z x"
    shutil.copy(shutil.which("sleep"), odd)
    proc = subprocess.Popen([str(odd), "0.5"])
    try:
        assert lu._running(proc.pid)
        deadline = time.monotonic() + 30
        while lu._running(proc.pid):             # exited, not yet reaped: a zombie
            assert time.monotonic() < deadline, "a zombie was reported running"
            time.sleep(0.05)
        with open(f"/proc/{proc.pid}/stat", "rb") as f:
            assert f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    finally:
        proc.wait()
    assert not lu._running(proc.pid)             # reaped: no such process
    assert not lu._running(2 ** 22 + 1)          # above pid_max: never a process


def test_bound_port_reads_the_line_after_its_offset_and_prints_the_port(tmp_path, capsys):
    # the log of an earlier run in the same file names another port: only what follows --from
    log = tmp_path / "server.log"
    earlier = b"old run\n" + _listening(41001)
    log.write_bytes(earlier + b"a line\n" + _listening(52017))
    assert lu.bound_port(str(log), len(earlier), os.getpid(), 5.0) == 0
    assert capsys.readouterr().out == "52017\n"
    assert lu.bound_port(str(log), 0, os.getpid(), 5.0) == 0
    assert capsys.readouterr().out == "41001\n"


def test_bound_port_waits_for_a_line_written_later(tmp_path, capsys):
    log = tmp_path / "server.log"
    timer = threading.Timer(0.3, lambda: log.write_bytes(_listening(40404)))
    timer.start()
    try:
        assert lu.bound_port(str(log), 0, os.getpid(), 10.0) == 0    # no file yet at first
    finally:
        timer.join()
    assert capsys.readouterr().out == "40404\n"


def test_bound_port_says_whether_the_server_exited_or_only_stayed_silent(tmp_path, capsys):
    log = tmp_path / "server.log"
    log.write_bytes(b"Server: starting\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert lu.bound_port(str(log), 0, dead.pid, 30.0) == 2
    assert capsys.readouterr().err == (
        f"bound-port: the server (pid {dead.pid}) exited before it logged 'listening on' in "
        f"{log}; see that log\n")
    t0 = time.monotonic()
    assert lu.bound_port(str(log), 0, os.getpid(), 0.6) == 1
    assert 0.6 <= time.monotonic() - t0 < 5
    assert capsys.readouterr().err == (
        f"bound-port: the server (pid {os.getpid()}) wrote no port within 1s before it logged "
        f"'listening on' in {log}; see that log\n")


@pytest.fixture
def commands(monkeypatch):
    calls = []
    for name, code in [("preflight", 41), ("data_root", 42), ("wait_health", 43),
                       ("summary", 44), ("bound_port", 45), ("health_timeout", 777)]:
        monkeypatch.setattr(lu, name, lambda *a, _n=name, _c=code: calls.append((_n, a)) or _c)
    return calls


@pytest.mark.parametrize("argv,call,code", [
    (["preflight", "--manifest", "m.json"], ("preflight", ("m.json", "", False)), 41),
    (["preflight", "--manifest", "m.json", "--tokens", "T", "--no-tokens"],
     ("preflight", ("m.json", "T", True)), 41),
    (["data-root", "--manifest", "m.json"], ("data_root", ("m.json",)), 42),
    (["wait-health", "--address", "h:1"], ("wait_health", ("h:1", 60.0, "")), 43),
    (["wait-health", "--address", "h:1", "--timeout", "2.5", "--ca", "ca.pem"],
     ("wait_health", ("h:1", 2.5, "ca.pem")), 43),
    (["summary", "--outdir", "D"], ("summary", ("", "D")), 44),
    (["summary", "--outdir", "D", "--manifest", "m.json"], ("summary", ("m.json", "D")), 44),
    (["health-timeout", "--clients", "12"], ("health_timeout", (12,)), 0),
    (["bound-port", "--log", "L", "--pid", "5"], ("bound_port", ("L", 0, 5, 60.0)), 45),
    (["bound-port", "--log", "L", "--from", "17", "--pid", "5", "--timeout", "2.5"],
     ("bound_port", ("L", 17, 5, 2.5)), 45),
])
def test_each_sub_command_calls_its_helper_with_its_options(commands, capsys, argv, call, code):
    assert lu.main(argv) == code
    assert commands == [call]
    assert [type(v) for v in commands[0][1]] == [type(v) for v in call[1]]
    assert capsys.readouterr().out == ("777\n" if call[0] == "health_timeout" else "")


@pytest.mark.parametrize("argv", [[], ["preflight"], ["data-root"], ["wait-health"],
                                  ["summary"], ["health-timeout"], ["health-timeout", "--clients",
                                                                    "x"],
                                  ["bound-port", "--log", "L"], ["bound-port", "--pid", "5"],
                                  ["bound-port", "--log", "L", "--pid", "5", "--from", "x"]])
def test_a_missing_sub_command_or_option_is_a_usage_error(commands, capsys, argv):
    with pytest.raises(SystemExit) as e:
        lu.main(argv)
    assert e.value.code == 2 and commands == []
    assert "usage: launch_utils" in capsys.readouterr().err
