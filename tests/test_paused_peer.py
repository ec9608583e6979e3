"""A peer that pauses (stopped, swapping, starved of CPU) keeps its session as long as the
server's write timeout promises, including gRPC's own keepalive.

While a peer's process is stopped, nothing on its connection answers, and a message larger than
the kernel's socket buffers leaves gRPC's write to it blocked. gRPC closes such a connection once
its keepalive ACK timeout passes (measured with gRPC 1.85: a 16 MiB message to a stopped peer
closes it after a 2 s ACK timeout even with no keepalive PING due; a 64 KiB one, which the
buffers take whole, does not). The server lets a peer take ``limits.slow_link_seconds``
(max(30 s, heartbeat_timeout)) to accept a large message, so the ACK timeout is as long (with the
10 s it had before, the first case below fails with "connection reset by peer").

Real processes, real gRPC on loopback, a real ``SIGSTOP``/``SIGCONT``: two servers in this process
(keepalive PING every 1 s), each with one peer process that joins and waits for a 16 MiB model.
Both peers are stopped for 12 s while the model is sent:
- with the derived ACK timeout, the model arrives whole once the peer runs again;
- with a 2 s ACK timeout (the server's write timeout kept at 60 s), the session is closed during
  the pause: the ACK timeout alone decides.
The model is 16 MiB so that the write blocks whatever the socket buffers have grown to: the send
buffer's ceiling here is 4 MiB (net.ipv4.tcp_wmem), and with a 4 MiB model, that close to what
the buffers can take, the 2 s case once kept its session in a full suite run.
"""
import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import time

import torch

from harness.procs import ROOT, stop_all
from harness.raw_peer import next_incoming
from federatedscope.core.communication import limits
from federatedscope.core.communication.grpc_server import GrpcServerTransport
from federatedscope.core.configs.config import get_default_cfg
from federatedscope.core.message import Message

PAUSE = 12.0                 # longer than a 1 s keepalive interval + gRPC's usual 10 s ACK wait
ELEMENTS = 1 << 22           # float32: a 16 MiB model
MODEL = {"w": torch.arange(ELEMENTS, dtype=torch.float32)}
# The peer: joins as client 1, prints "joined", then reports whether the model (arange of argv[2]
# float32 elements) arrived whole.
PEER = r"""
import json, sys, torch
from harness.raw_peer import RawPeer
peer = RawPeer(sys.argv[1])
peer.join(1)
print("joined", flush=True)
got = peer.recv(90)
whole = got is not None and torch.equal(got.tensors["w"], torch.arange(int(sys.argv[2]),
                                                                       dtype=torch.float32))
print(json.dumps({"whole": whole, "code": peer.code, "details": peer.details}), flush=True)
peer.close()
"""


def _server(monkeypatch, ack: float):
    """A started server transport whose keepalive PINGs every 1 s; ``ack`` > 0 forces its ACK
    timeout, the write timeout staying at 60 s either way."""
    monkeypatch.setattr(limits, "KEEPALIVE_TIME", 1.0)
    if ack:
        monkeypatch.setattr(limits, "slow_link_seconds", lambda cfg: ack)
    cfg = get_default_cfg()
    cfg.distribute.server_host, cfg.distribute.server_port = "127.0.0.1", 0
    inbox: "queue.Queue" = queue.Queue()
    t = GrpcServerTransport(cfg, inbox, max_clients=8, model_bytes=4 * ELEMENTS)
    t.limits = dataclasses.replace(t.limits, write_timeout=60.0, assembly_timeout=60.0)
    t.start()            # gRPC's options are read here, from the (patched) limits module
    monkeypatch.undo()
    return t, inbox


def _peer(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", PEER, f"127.0.0.1:{port}", str(ELEMENTS)],
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "joined", proc.stderr.read()[-2000:]
    return proc


def test_a_peer_stopped_for_longer_than_a_keepalive_ack_keeps_its_session(monkeypatch):
    servers = {name: _server(monkeypatch, ack) for name, ack in (("derived", 0.0),
                                                                 ("2 s", 2.0))}
    assert servers["derived"][0].limits.write_timeout == 60.0
    procs = {}
    try:
        for name, (t, inbox) in servers.items():
            procs[name] = _peer(t.port)
            t.bind(next_incoming(inbox).conn_id, 1)
        for name, (t, _) in servers.items():
            os.kill(procs[name].pid, signal.SIGSTOP)
            t.send(Message("model_para", 0, 1, 1, {}, MODEL))
        time.sleep(PAUSE)
        for p in procs.values():
            os.kill(p.pid, signal.SIGCONT)
        out = {name: p.communicate(timeout=60) for name, p in procs.items()}
        got = {name: json.loads(o.strip().splitlines()[-1]) for name, (o, _) in out.items()}
        assert got["derived"]["whole"], f"the paused peer lost its session: {got['derived']}"
        assert not got["2 s"]["whole"] and got["2 s"]["code"] == "UNAVAILABLE", \
            f"a 2 s keepalive ACK timeout should have closed the paused peer: {got['2 s']}"
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
        stop_all(list(procs.values()))
        for t, _ in servers.values():
            t.stop(grace=1.0)
