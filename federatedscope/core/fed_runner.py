"""Process wiring: the same Server/Client workers over an in-process queue or over gRPC.

Every loop here blocks on a queue (``Queue.get`` with the worker's next deadline as timeout), so a
waiting process costs nothing; a message is handled the moment it lands in the queue.
"""
import collections
import logging
import os
import queue
from typing import Deque, Dict

import torch

from federatedscope.core.auxiliaries.data_builder import ProcessData, client_count
from federatedscope.core.auxiliaries.model_builder import get_model
from federatedscope.core.configs.config import client_identity
from federatedscope.core.message import Message
from federatedscope.core.monitors.monitor import Monitor
from federatedscope.core.trainers.trainer import get_trainer
from federatedscope.core.workers.admission import Admission
from federatedscope.core.workers.base_worker import Disconnected, Incoming
from federatedscope.core.workers.client import Client
from federatedscope.core.workers.server import Server

logger = logging.getLogger("federatedscope")


def _device(cfg) -> str:
    return f"cuda:{max(cfg.device, 0)}" if cfg.use_gpu else "cpu"


def _admission(cfg, data: ProcessData, expected: int) -> Admission:
    return Admission(data.manifest, cfg.distributed_data.strict_check, cfg.distribute.token,
                     max_clients=expected)


def _log_model(cfg, model) -> None:
    from federatedscope.core.auxiliaries.model_builder import count_flops, input_shape
    n = sum(t.numel() for t in model.state_dict().values())
    logger.info(f"Model {cfg.model.type}: {n} state entries")
    if cfg.eval.count_flops:
        flops = count_flops(model, input_shape(cfg))
        logger.info(f"Model {cfg.model.type}: {flops / 1e6:.2f} MFLOPs per sample (forward)")


def _global_evaluator(cfg, data: ProcessData, model):
    """``federate.make_global_eval`` in standalone: the server evaluates the global model on the
    union of the clients' evaluation splits (a server in shard mode holds no data to do this)."""
    if not cfg.federate.make_global_eval:
        return None
    from federatedscope.core.data.datasets import TensorSplit
    merged = {}
    for split in cfg.eval.split:
        parts = [c[split] for c in data.clients.values() if isinstance(c.get(split), TensorSplit)]
        if parts:
            merged[split] = TensorSplit(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]),
                                        parts[0].transform)
    trainer = get_trainer(model, merged, _device(cfg), cfg)

    def evaluate() -> dict:
        out = {}
        for split in merged:
            out.update(trainer.evaluate(split))
        return out
    return evaluate


def outdir_of(cfg) -> str:
    return os.path.join(cfg.outdir, cfg.expname)


# ------------------------------------------------------------------ standalone
class _LocalBus:
    """The standalone 'network': a FIFO of (destination, payload)."""

    def __init__(self) -> None:
        self.queue: Deque = collections.deque()


class _LocalServerComm:
    def __init__(self, bus: _LocalBus):
        self.bus = bus

    def bind(self, conn_id: int, client_id: int) -> None:
        pass  # conn_id == client_id in standalone

    def send(self, msg: Message) -> None:
        self.bus.queue.append((msg.receiver, msg))

    def broadcast(self, msg: Message, receivers) -> None:
        for cid in receivers:
            self.bus.queue.append((cid, msg))

    def send_to_conn(self, conn_id: int, msg: Message) -> None:
        self.bus.queue.append((conn_id, msg))

    def close(self, conn_id: int) -> None:
        pass


class _LocalClientComm:
    def __init__(self, bus: _LocalBus, client_id: int):
        self.bus, self.client_id = bus, client_id

    def send(self, msg: Message) -> None:
        self.bus.queue.append((0, Incoming(self.client_id, msg)))


def run_standalone(cfg, data: ProcessData) -> int:
    bus = _LocalBus()
    model = get_model(cfg)
    expected = len(data.clients)
    _log_model(cfg, model)
    server = Server(cfg, model, _LocalServerComm(bus), Monitor(cfg, outdir_of(cfg)), expected,
                    _admission(cfg, data, expected), distributed=False)
    server.global_eval = _global_evaluator(cfg, data, model)
    clients: Dict[int, Client] = {}
    for cid, splits in sorted(data.clients.items()):
        trainer = get_trainer(get_model(cfg), splits, _device(cfg), cfg)
        clients[cid] = Client(cfg, cid, trainer, _LocalClientComm(bus, cid), data.loaders.get(cid),
                              token=cfg.distribute.token)
        bus.queue.append((0, Incoming(cid, clients[cid].join_message())))
    while bus.queue:
        dest, payload = bus.queue.popleft()
        if dest == 0:
            server.handle(payload)
        elif dest in clients and not clients[dest].finished:
            clients[dest].handle(payload)
    if not server.finished:
        logger.error("Standalone run ended before the server finished (no client left?)")
        return 1
    return server.exit_code


# ------------------------------------------------------------------ distributed
def run_server(cfg, data: ProcessData) -> int:
    from federatedscope.core.communication.grpc_server import GrpcServerTransport, ServerInbox
    expected = client_count(cfg, data)
    inbox: "queue.Queue" = ServerInbox()   # lets the transport decode only a few models ahead
    model = get_model(cfg)
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    transport = GrpcServerTransport(cfg, inbox, max_clients=max(expected * 2, 8),
                                    model_bytes=model_bytes)
    _log_model(cfg, model)
    if cfg.federate.make_global_eval:
        logger.warning("federate.make_global_eval: a distributed server holds no data to evaluate "
                       "on; the clients' weighted-average evaluation is reported instead")
    server = Server(cfg, model, transport, Monitor(cfg, outdir_of(cfg)), expected,
                    _admission(cfg, data, expected), distributed=True)
    transport.start()
    logger.info(f"Server: listening on {cfg.distribute.server_host}:{transport.port}; "
                f"waiting for {expected} clients")
    try:
        while not server.finished:
            try:
                event = inbox.get(timeout=server.next_deadline())
            except queue.Empty:
                event = None
            if event is not None:
                server.handle(event)
            server.tick()
    finally:
        transport.stop()
    return server.exit_code


def run_client(cfg, data: ProcessData) -> int:
    from federatedscope.core.communication.grpc_client import GrpcClientTransport
    from federatedscope.core.communication.security import client_token
    (cid, splits), = data.clients.items()
    inbox: "queue.Queue" = queue.Queue()
    transport = GrpcClientTransport(cfg, inbox)
    trainer = get_trainer(get_model(cfg), splits, _device(cfg), cfg)
    claimed = client_identity(cfg) if client_identity(cfg) > 0 else cid
    client = Client(cfg, claimed, trainer, transport, data.loaders.get(cid), token=client_token(cfg))
    logger.info(f"Client #{claimed}: connecting to server {transport.address}")
    try:
        transport.wait_for_server(cfg.distribute.connect_timeout)
        transport.open_session(client.join_message())
        while not client.finished:
            event = inbox.get()
            if isinstance(event, Disconnected):
                if client.finished:
                    break
                transport.reconnect(client.join_message(), event.reason)
                continue
            client.handle(event)
    finally:
        transport.close()
    return 2 if client.refused else 0
