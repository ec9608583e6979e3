"""An in-process ``Server`` with a fake transport: the FL core driven message by message, in ms.

``Harness`` records what the server sends, lets a test join clients, answer rounds and evaluations
with chosen tensors/metrics, and move the clock (``tick(after=...)``) without sleeping.
"""
import logging
from typing import Dict, List, Optional

import torch

from federatedscope.core.configs.config import finalize, get_default_cfg
from federatedscope.core.message import (EVALUATE, JOIN_IN, METRICS, MODEL_PARA, REDECLARE, REFUSE,
                                         SERVER_ID, Message)
from federatedscope.core.monitors.monitor import Monitor
from federatedscope.core.workers import server as server_mod
from federatedscope.core.workers.admission import Admission
from federatedscope.core.communication.transport import Disconnected, Incoming
from federatedscope.core.workers.server import Server


class FakeComm:
    def __init__(self) -> None:
        self.sent: List[tuple] = []       # (receiver id or ("conn", id), Message)
        self.closed: List[int] = []
        self.bound: Dict[int, int] = {}
        self.heard: Dict[int, float] = {}   # conn_id -> when the "transport" last heard it

    def bind(self, conn_id: int, client_id: int) -> None:
        self.bound[conn_id] = client_id

    def send(self, msg: Message) -> None:
        self.sent.append((msg.receiver, msg))

    def broadcast(self, msg: Message, receivers) -> None:
        self.sent.extend((r, msg) for r in receivers)

    def send_to_conn(self, conn_id: int, msg: Message) -> None:
        self.sent.append((("conn", conn_id), msg))

    def close(self, conn_id: int) -> None:
        self.closed.append(conn_id)

    def last_heard(self, conn_id: int) -> float:
        return self.heard.get(conn_id, 0.0)


class FakeClock:
    """Stands in for ``time.monotonic`` in the server modules, so timeouts need no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def make_cfg(tmp, *opts) -> object:
    cfg = get_default_cfg()
    cfg.merge_from_list(["federate.mode", "distributed", "distribute.role", "server",
                         "model.hidden", 8, "outdir", str(tmp), "expname", "job",
                         "federate.total_round_num", 2, "eval.best_res_update_round_wise_key",
                         "test_loss", "early_stop.patience", 0] + list(opts))
    return finalize(cfg)


class Harness:
    def __init__(self, tmp, *opts, manifest=None, strict=True, token="", sample_type=None,
                 manifest_path="", monkeypatch=None, expected: Optional[int] = None):
        self.cfg = make_cfg(tmp, *opts)
        self.clock = FakeClock()
        if monkeypatch is not None:
            # one ``time`` module: patching it reaches every server module (and WriteGuard)
            monkeypatch.setattr(server_mod.time, "monotonic", self.clock.monotonic, raising=True)
        from federatedscope.core.auxiliaries.model_builder import get_model
        torch.manual_seed(0)
        self.model = get_model(self.cfg)
        self.comm = FakeComm()
        self.monitor = Monitor(self.cfg, str(tmp / "job"))
        expected = expected if expected is not None else (len(manifest) if manifest else 3)
        self.admission = Admission(manifest, strict, token, max_clients=expected,
                                   manifest_path=manifest_path, sample_type=sample_type)
        self.server = self.build(Server, expected, distributed=True)

    def build(self, cls, expected: int, distributed: bool, cfg=None):
        """A server of class ``cls`` on this harness's transport, monitor and admission, built
        with FS's keywords, as the runner builds one."""
        return cls(config=cfg or self.cfg, model=self.model, client_num=expected, comm=self.comm,
                   monitor=self.monitor, admission=self.admission, distributed=distributed)

    # ------------------------------------------------------------ driving
    def join(self, cid: int, conn: Optional[int] = None, **content) -> None:
        body = {"client_id": cid, "token": "", "num_samples": {"train": 10, "val": 5, "test": 5}}
        body.update(content)
        self.server.handle(Incoming(conn if conn is not None else cid,
                                    Message(JOIN_IN, cid, SERVER_ID, 0, body), "ipv4:127.0.0.1:1"))

    def send(self, cid: int, msg_type: str, r: int, content=None, tensors=None,
             conn: Optional[int] = None) -> None:
        self.server.handle(Incoming(conn if conn is not None else cid,
                                    Message(msg_type, cid, SERVER_ID, r, content or {}, tensors)))

    def update(self, cid: int, r: int, tensors, size: int = 10) -> None:
        self.send(cid, MODEL_PARA, r, {"sample_size": size}, tensors)

    def metrics(self, cid: int, r: int, results: dict) -> None:
        self.send(cid, METRICS, r, {"results": results})

    def redeclare(self, cid: int, declaration: dict, **extra) -> None:
        self.send(cid, REDECLARE, 0, dict(declaration=declaration, **extra))

    def disconnect(self, conn: int) -> None:
        self.server.handle(Disconnected(conn, "test"))

    def tick(self, after: float = 0.0) -> None:
        self.clock.now += after
        self.server.tick()

    # ------------------------------------------------------------ looking
    def global_state(self) -> Dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.model.state_dict().items()}

    def shifted(self, delta: float, base=None) -> Dict[str, torch.Tensor]:
        """The global state with ``delta`` added to every float tensor."""
        base = base or self.global_state()
        return {k: (v + delta if v.is_floating_point() else v.clone()) for k, v in base.items()}

    def sent_types(self, cid) -> List[str]:
        return [m.msg_type for r, m in self.comm.sent if r == cid]

    def refusals(self) -> List[str]:
        return [m.content["reason"] for _, m in self.comm.sent if m.msg_type == REFUSE]

    def asked(self, msg_type: str, r: int) -> List[int]:
        return sorted({rc for rc, m in self.comm.sent if m.msg_type == msg_type and m.state == r
                       and isinstance(rc, int)})

    def eval_lines(self) -> List[dict]:
        import json
        import os
        if not os.path.exists(self.monitor.log_path):
            return []
        with open(self.monitor.log_path) as f:
            return [json.loads(line) for line in f if line.strip()]


def pause_after_losing_client_4(h) -> None:
    """Clients 1-3 send round 0's update (weights 10, 20, 30), client 4 leaves, and the 30 s
    grace passes: with a threshold of 4 the server is paused."""
    g = h.global_state()
    for c in (1, 2, 3):
        h.update(c, 0, h.shifted(1.0, g), size=10 * c)
    h.disconnect(4)
    h.tick(after=31.0)


def good_metrics(test=5, val=5, acc=0.5, loss=1.0) -> dict:
    return {"test_acc": acc, "test_total": test, "test_loss": loss * test, "test_avg_loss": loss,
            "val_acc": acc, "val_total": val, "val_loss": loss * val, "val_avg_loss": loss}


def quiet(caplog) -> None:
    """Capture the server's INFO lines in ``caplog``, each once. pytest attaches its capture
    handler itself to a logger that does not propagate (setup_logger's, after an in-process
    main flow); making that logger propagate as well would capture every line twice."""
    caplog.set_level(logging.INFO, logger="federatedscope")
    log = logging.getLogger("federatedscope")
    if caplog.handler not in log.handlers:
        log.propagate = True


__all__ = ["Harness", "good_metrics", "quiet", "EVALUATE", "MODEL_PARA"]
