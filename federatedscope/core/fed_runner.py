"""FS's runners: the same Server/Client workers over the in-process transport
(``core/communication/local.py``) or over gRPC.

``StandaloneRunner`` runs every worker in this process; ``DistributedRunner`` runs this process's
one role, dispatched once on the record ``get_data`` returned (``core/data/base_data.py``). Both take FS's arguments ``(data, server_class, client_class,
config, client_configs)`` and ``run()`` returns the process exit code (``federatedscope/main.py``).
``get_runner`` (``core/auxiliaries/runner_builder.py``) picks one.

Every loop here blocks on a queue (``Queue.get`` with the worker's next deadline as timeout), so a
waiting process costs nothing; a message is handled the moment it lands in the queue. Results go
to ``config.outdir`` as ``update_logger`` resolved it (the run directory).
"""
import gc
import logging
import queue
import time
from typing import Dict

import torch

from federatedscope.core.auxiliaries.model_builder import get_model
from federatedscope.core.communication.local import LocalBus, LocalClientComm, LocalServerComm
from federatedscope.core.configs.config import ConfigError
from federatedscope.core.data.base_data import ServerManifest
from federatedscope.core.message import SERVER_ID
from federatedscope.core.monitors.monitor import Monitor
from federatedscope.core.trainers.trainer import get_trainer
from federatedscope.core.workers.admission import Admission
from federatedscope.core.communication.transport import Disconnected, Incoming

TICK_EVERY_S = 0.25   # while messages keep coming, the server's time checks run this often

logger = logging.getLogger("federatedscope")


def _device(cfg) -> str:
    return f"cuda:{max(cfg.device, 0)}" if cfg.use_gpu else "cpu"


def _server_args(cfg, model, expected: int) -> dict:
    """FS's Server arguments (an FS subclass's ``__init__`` takes these names). ``data`` stays
    None: a server reads no data (``make_global_eval`` gets an evaluator instead)."""
    return dict(ID=SERVER_ID, state=0, config=cfg, data=None, model=model, client_num=expected,
                total_round_num=cfg.federate.total_round_num, device=_device(cfg))


def _client_args(cfg, cid: int, splits) -> dict:
    """FS's Client arguments; the client builds its trainer from them, as FS's does."""
    return dict(ID=cid, server_id=SERVER_ID, state=-1, config=cfg, data=splits,
                model=get_model(cfg), device=_device(cfg))


def _expected_clients(cfg, data: ServerManifest) -> int:
    """How many clients the server waits for: the manifest's, else ``federate.client_num``."""
    if data.manifest is not None:
        return len(data.manifest.clients)
    if cfg.federate.client_num > 0:
        return cfg.federate.client_num
    raise ConfigError("set federate.client_num (how many clients the server waits for)")


def _log_model(cfg, model) -> None:
    from federatedscope.core.auxiliaries.model_builder import count_flops, input_shape
    n = sum(t.numel() for t in model.state_dict().values())
    logger.info(f"Model {cfg.model.type}: {n} state entries")
    if cfg.eval.count_flops:
        flops = count_flops(model, input_shape(cfg))
        logger.info(f"Model {cfg.model.type}: {flops / 1e6:.2f} MFLOPs per sample (forward)")


def _global_evaluator(cfg, data, model):
    """``federate.make_global_eval``: the server evaluates the global model on the union of the
    partitions' evaluation splits (standalone, and FS's distributed data_idx server, which loads
    them all; a server in shard mode holds no data to do this)."""
    if not cfg.federate.make_global_eval:
        return None
    from federatedscope.core.data.datasets import TensorSplit
    merged = {}
    for split in cfg.eval.split:
        parts = [c[split] for c in data.values() if isinstance(c.get(split), TensorSplit)]
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
    """This run's directory: ``cfg.outdir`` once ``update_logger`` has resolved it."""
    return cfg.outdir


class BaseRunner:
    def __init__(self, data, server_class, client_class, config, client_configs=None):
        if data is None:
            raise ValueError("the runner needs data: data, modified_cfg = get_data(config)")
        self.data = data
        self.server_class, self.client_class = server_class, client_class
        self.cfg = config
        self.client_configs = client_configs

    def run(self) -> int:
        raise NotImplementedError

    def _client_cfg(self, cid: int):
        """FS's per-client configs: ``client_configs.client_<id>`` merged over the global one
        (standalone: every client's; distributed: this process's, ``_own_cfg``)."""
        own = getattr(self.client_configs, f"client_{cid}", None) if self.client_configs else None
        if own is None:
            return self.cfg
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.merge_from_other_cfg(own)
        cfg.freeze()
        return cfg


# ------------------------------------------------------------------ standalone
class StandaloneRunner(BaseRunner):
    """Server and every client of ``data`` (a ``StandaloneDataDict``) in this process."""

    def run(self) -> int:
        cfg, data = self.cfg, self.data
        bus = LocalBus()
        model = get_model(cfg)
        expected = len(data)
        _log_model(cfg, model)
        admission = Admission.from_config(cfg, data.manifest, data.manifest_path, expected)
        server = self.server_class(**_server_args(cfg, model, expected), comm=LocalServerComm(bus),
                                   monitor=Monitor(cfg, outdir_of(cfg)), admission=admission,
                                   distributed=False)
        server.global_eval = _global_evaluator(cfg, data, model)
        clients: Dict[int, object] = {}
        for cid, client_data in sorted(data.items()):
            own_cfg = self._client_cfg(cid)
            splits, loader = client_data.splits()
            comm = LocalClientComm(bus, cid)
            clients[cid] = self.client_class(**_client_args(own_cfg, cid, splits), comm=comm,
                                             loader=loader, token=own_cfg.distribute.token)
            comm.send(clients[cid].join_message())
        while bus:
            dest, conn_id, msg = bus.next()
            if dest == SERVER_ID:
                server.handle(Incoming(conn_id, msg))
            elif dest in clients and not clients[dest].finished:
                clients[dest].handle(msg)
        if not server.finished:
            logger.error("Standalone run ended before the server finished (no client left?)")
            return 1
        return server.exit_code


# ------------------------------------------------------------------ distributed
def _server_transport(cfg, inbox, expected: int, model_bytes: int):
    from federatedscope.core.communication.grpc_server import GrpcServerTransport
    return GrpcServerTransport(cfg, inbox, max_clients=max(expected * 2, 8),
                               model_bytes=model_bytes)


def _client_transport(cfg, inbox):
    from federatedscope.core.communication.grpc_client import GrpcClientTransport
    return GrpcClientTransport(cfg, inbox)


def _client_session(cfg, client, transport, inbox) -> None:
    """Join, then handle events until finished; a lost server is waited for and re-joined."""
    transport.wait_for_server(cfg.distribute.connect_timeout)
    transport.open_session(client.join_message())
    while not client.finished:
        event = inbox.get()
        if isinstance(event, Disconnected):
            if client.finished:
                break
            transport.reconnect(client.join_message(), event.reason)   # backoff, bounded budget
            continue
        client.handle(event)
        event = None   # the received model must not stay alive through the wait for the next


class DistributedRunner(BaseRunner):
    """This process's role over gRPC, dispatched once on what ``get_data`` returned: the server
    (a ``ServerManifest``) or one client (a ``ClientShard`` or, in data_idx mode, a
    ``DataIdxClient``)."""

    def run(self) -> int:
        if isinstance(self.data, ServerManifest):
            return self._run_server()
        return self._run_client()

    def _run_server(self) -> int:
        cfg, data = self.cfg, self.data
        expected = _expected_clients(cfg, data)
        from federatedscope.core.communication.grpc_server import ServerInbox
        inbox: "queue.Queue" = ServerInbox()   # the transport decodes only a few models ahead
        model = get_model(cfg)
        model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        transport = _server_transport(cfg, inbox, expected, model_bytes)
        _log_model(cfg, model)
        if cfg.federate.make_global_eval and data.eval_data is None:
            logger.warning("federate.make_global_eval: a shard-mode server holds no data to "
                           "evaluate on; the clients' weighted-average evaluation is reported "
                           "instead")
        admission = Admission.from_config(cfg, data.manifest, data.path, expected)
        server = self.server_class(**_server_args(cfg, model, expected), comm=transport,
                                   monitor=Monitor(cfg, outdir_of(cfg)), admission=admission,
                                   distributed=True)
        if data.eval_data is not None:   # FS's data_idx server: the union of the eval splits
            server.global_eval = _global_evaluator(cfg, data.eval_data, model)
        # Everything built so far (torch's modules, the manifest, the admission records) lives
        # as long as the server: out of the cyclic collector's scans, so that the many short-
        # lived objects of a join storm or a round do not make each full collection walk it
        # (measured at 1,000 clients: the collector was 15 % of the server's CPU in the storm).
        gc.collect()
        gc.freeze()
        transport.start()
        logger.info(f"Server: listening on {cfg.distribute.server_host}:{transport.port}; "
                    f"waiting for {expected} clients")
        try:
            last_tick = 0.0
            while not server.finished:
                try:
                    event = inbox.get(timeout=server.next_deadline())
                except queue.Empty:
                    event = None
                handled = event is not None
                if handled:
                    server.handle(event)
                    # an upload is folded in by now: holding it through the next wait would keep
                    # one more model alive (measured: ~25 MB of the hidden-2048 server's peak)
                    event = None
                # tick() looks at every client (who went silent, who is gone): after every
                # message that made a round O(N^2) (3,550 clients: 710 heartbeats/s x 3,550
                # records). Its checks count in seconds, so a few ticks a second lose nothing.
                now = time.monotonic()
                if not handled or now - last_tick >= TICK_EVERY_S:
                    server.tick()
                    last_tick = now
        finally:
            transport.stop()
            gc.unfreeze()    # a caller in the same process (the Python API, tests) gets it back
        return server.exit_code

    def _own_cfg(self, cid: int):
        """This process's config: its own ``client_<id>`` section merged over the global one.
        The id is the one it joins with, which the server keeps (or refuses the join); a client
        that claims none (data_idx mode without ``distribute.client_id``) gets its id from the
        join order, too late to choose a section, so per-client configs then need the id set."""
        if cid <= 0 and self.client_configs:
            raise ConfigError(
                f"per-client configs (--client_cfg / client_<id>.* pairs) are given, but this "
                f"client has no id before the server assigns one in join order (data_idx mode, "
                f"distribute.data_idx={self.cfg.distribute.data_idx}); set distribute.client_id "
                f"to the id whose client_<id> section it should use")
        return self._client_cfg(cid) if cid > 0 else self.cfg

    def _run_client(self) -> int:
        from federatedscope.core.communication.security import client_token
        cid = self.data.claimed_id(self.cfg)
        cfg = self._own_cfg(cid)
        splits, loader = self.data.splits()
        inbox: "queue.Queue" = queue.Queue()
        transport = _client_transport(cfg, inbox)
        client = self.client_class(**_client_args(cfg, cid, splits), comm=transport,
                                   loader=loader, token=client_token(cfg))
        logger.info(f"Client #{client.ID}: connecting to server {transport.address}")
        try:
            _client_session(cfg, client, transport, inbox)
        finally:
            transport.close()
        return 2 if client.refused else 0
