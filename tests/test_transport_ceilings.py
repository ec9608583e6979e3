"""Every transport resource has a ceiling: one real-process test per flood class.

Each test starts a real shard-mode server (``federatedscope/main.py``), measures its idle RSS,
runs one flood against it on loopback, asserts the figure the flood used to grow stays under its
bound (RSS <= 2 x idle, connections closed, slots free, lines bounded, impostor refused), then runs
3 real clients and asserts the job finishes. Bounds and their derivation: doc/reliability.md,
"Transport ceilings"; the constants are in core/communication/limits.py.
"""
import re
import statistics
import threading
import time

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.raw_peer import RawPeer, health_status
from harness.jobs import LIGHT_TRAINING, Job
from harness.procs import checkpoint_round, file_contains, wait_all, wait_for
from test_fuzz import _declaration
from federatedscope.core.communication import codec
from federatedscope.core.communication.flow import CHUNK_FIRST
from federatedscope.core.communication.limits import (BAD_MESSAGES_PER_SESSION,
                                                      LOG_LINES_PER_INTERVAL, MAX_HEALTH_WATCHES,
                                                      PREJOIN_MAX_BYTES, STALL_SECONDS,
                                                      derive_limits, grpc_options,
                                                      server_options)
from federatedscope.core.configs.config import get_default_cfg
from federatedscope.core.communication.grpc_client import signed_join
from federatedscope.core.message import ASSIGN_ID, HEARTBEAT, JOIN_IN, MODEL_PARA, REFUSE, Message
from harness.proc_stats import status_kb

KB = 1024
FAST = ["distribute.join_deadline", "2.0"]      # idle connections then close after 10 s


def _serving(job: Job, extra=()):
    server = job.server(["federate.save_to", job.ckpt] + list(extra))

    def up():
        assert server.poll() is None, job.server_log()[-3000:]
        return file_contains(job.log("server"), "listening on")
    wait_for(up, 120, "server to listen")
    time.sleep(1.0)
    return server, f"127.0.0.1:{job.port}", status_kb(server.pid, "VmRSS")


def _assert_rss_bounded(server, idle_kb: int, what: str) -> None:
    peak, now = status_kb(server.pid, "VmHWM"), status_kb(server.pid, "VmRSS")
    assert peak <= 2 * idle_kb, f"{what}: peak RSS {peak // KB} MB > 2 x idle {idle_kb // KB} MB"
    assert now <= 2 * idle_kb, f"{what}: RSS after {now // KB} MB > 2 x idle {idle_kb // KB} MB"


def _stamp(line: str) -> float:
    return time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000


def _join_delays(job: Job) -> dict:
    """Seconds from each client's "connecting to server" line to the server's "joined" line."""
    joined = {int(m.group(1)): _stamp(line) for line in job.server_log().splitlines()
              for m in [re.search(r"Server: client #(\d+) joined", line)] if m}
    out = {}
    for k, at in joined.items():
        lines = [x for x in open(job.log(f"client_{k}")).read().splitlines()
                 if "connecting to server" in x]
        out[k] = at - _stamp(lines[0])
    return out


def _run_clients(job: Job, server, rounds: int) -> None:
    clients = [job.client(k) for k in (1, 2, 3)]
    wait_all([server] + clients, timeout=300, expect=[0, 0, 0, 0])
    assert job.final()["Round"] == rounds


def test_header_flood_is_refused_before_it_costs_memory(femnist_root, femnist_shards, tmp_path):
    """Calls with 20 headers of 16 KB-1 MB each: over grpc.absolute_max_metadata_size, refused."""
    job = Job(tmp_path, femnist_root, rounds=1, manifest=femnist_shards, common=FAST)
    server, addr, idle = _serving(job)
    refused = 0
    channels = [grpc.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(4)]
    try:
        for i in range(40):
            value = "h" * (16 * KB << (i % 7))                  # 16 KB .. 1 MB
            stub = health_pb2_grpc.HealthStub(channels[i % 4])
            try:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=10,
                           metadata=[(f"x-flood-{j}", value) for j in range(20)])
            except grpc.RpcError:
                refused += 1
    finally:
        for ch in channels:
            ch.close()
    assert refused == 40, f"only {refused}/40 oversized-header calls refused"
    _assert_rss_bounded(server, idle, "header flood")
    assert health_status(addr) == "SERVING"
    _run_clients(job, server, 1)


def test_watch_flood_is_capped(femnist_root, femnist_shards, tmp_path):
    """1,000 health Watch streams over 25 connections: at most MAX_HEALTH_WATCHES are held."""
    job = Job(tmp_path, femnist_root, rounds=1, manifest=femnist_shards, common=FAST)
    server, addr, idle = _serving(job)
    channels = [grpc.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(25)]
    watches = [health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=60)
               for ch in channels for _ in range(40)]
    # At most MAX_HEALTH_WATCHES are held; the rest are refused (RESOURCE_EXHAUSTED by our cap,
    # or REFUSED_STREAM by max_concurrent_streams when opened before the SETTINGS arrived). A
    # connection whose 4 stream slots are all held keeps its other 36 queued in the client, and
    # at most 16 / 4 connections can be so: at least 1000 - 16 - 4 x 36 are refused.
    bound = len(watches) - MAX_HEALTH_WATCHES - (MAX_HEALTH_WATCHES // 4) * 36
    try:
        def refused():
            return sum(1 for w in watches if w.done() and w.code() != grpc.StatusCode.OK)
        wait_for(lambda: refused() >= bound, 90, f"{bound} Watch streams to be refused")
        _assert_rss_bounded(server, idle, "Watch flood")
        assert health_status(addr) == "SERVING"    # Check is not capped
        _run_clients(job, server, 1)               # with the flood still held open
    finally:
        for w in watches:
            w.cancel()
        for ch in channels:
            ch.close()
    delays = _join_delays(job)
    assert sorted(delays) == [1, 2, 3] and max(delays.values()) <= 10.0, delays


def _established(pid: int, port: int) -> int:
    return sum(1 for c in psutil.Process(pid).net_connections(kind="tcp")
               if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)


@pytest.mark.parametrize("expected,join_deadline,idle_s", [
    (4, 5.0, 10.0), (500, 5.0, 10.0), (501, 5.0, 10.02), (1000, 5.0, 20.0), (3550, 5.0, 71.0),
    (3550, 60.0, 120.0), (100, 30.0, 60.0)])
def test_the_idle_connection_limit_grows_with_the_expected_clients(expected, join_deadline,
                                                                    idle_s):
    """max(10 s, 2 x join_deadline, expected / 50): gRPC's idle timers cost CPU per connection."""
    cfg = get_default_cfg()
    cfg.distribute.join_deadline = join_deadline
    limits = derive_limits(cfg, max_clients=2 * expected, model_bytes=1 << 20)
    assert limits.idle_connection == pytest.approx(idle_s)
    assert ("grpc.max_connection_idle_ms", int(idle_s * 1000)) in server_options(cfg, limits)


@pytest.mark.parametrize("heartbeat_timeout,slow_s", [(0.0, 30.0), (10.0, 30.0), (30.0, 30.0),
                                                     (45.5, 45.5), (120.0, 120.0)])
def test_a_keepalive_ack_may_take_as_long_as_a_large_message(heartbeat_timeout, slow_s):
    """A PING queues behind the bytes on its socket: both ends wait for its ACK as long as the
    server lets one large message take to cross (max(30 s, heartbeat_timeout)), pinging every
    20 s."""
    cfg = get_default_cfg()
    cfg.distribute.heartbeat_timeout = heartbeat_timeout
    limits = derive_limits(cfg, max_clients=8, model_bytes=1 << 20)
    assert limits.write_timeout == limits.assembly_timeout == slow_s
    want = {("grpc.keepalive_time_ms", 20000), ("grpc.keepalive_timeout_ms", int(slow_s * 1000))}
    assert want <= set(server_options(cfg, limits)) and want <= set(grpc_options(cfg))


def test_connections_without_streams_are_closed(femnist_root, femnist_shards, tmp_path):
    """60 HTTP/2 connections that answer SETTINGS/PING but never open a stream: closed after
    max(10 s, 2 x join_deadline, expected clients / 50) (grpc.max_connection_idle_ms)."""
    job = Job(tmp_path, femnist_root, rounds=1, manifest=femnist_shards, common=FAST)
    server, addr, idle = _serving(job)
    channels = [grpc.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(60)]
    try:
        for ch in channels:
            grpc.channel_ready_future(ch).result(timeout=30)
        assert _established(server.pid, job.port) >= 60
        t0 = time.monotonic()
        wait_for(lambda: _established(server.pid, job.port) == 0, 40,
                 "the server to close connections that open no stream")
        assert time.monotonic() - t0 <= 30
        _assert_rss_bounded(server, idle, "idle connections")
    finally:
        for ch in channels:
            ch.close()
    _run_clients(job, server, 1)


def _round_times(log: str) -> dict:
    return {int(r): float(s) for r, s in
            re.findall(r"round (\d+)/\d+ aggregated .* in ([\d.]+)s", log)}


def test_unjoined_streams_cannot_squat_the_upload_slots(femnist_root, femnist_shards, tmp_path):
    """Before any client starts, 16 strangers each open a session and send a first chunk
    declaring exactly the pre-join cap, then stall; a squatter closed mid-job opens a new session
    at once. Were each to take one of the 4 upload slots, every upload would wait for a squatter
    to be closed (before the fix, rounds took 7 x the honest ones). They never take one: all 6
    rounds run while 16 squat, each in under a quarter of the join deadline (20 s here), and a
    squatter is closed no sooner than the stall rule's STALL_SECONDS without progress (on a busy
    machine the clients' start-up alone can outlast it, so closures themselves are allowed).

    The address's connection ceiling is set above the squatter count
    (distribute.grpc_max_connections_per_address 32) so that all 16 hold their streams: at the
    default ceiling, with the 3 clients on the same address, they would be refused or give way
    within a second, which hides slot squatting (the give-way has its own test in
    test_transport_hostile.py)."""
    rounds, deadline = 6, 20.0
    job = Job(tmp_path, femnist_root, rounds=rounds, manifest=femnist_shards,
              common=["distribute.join_deadline", str(deadline),
                      "distribute.grpc_max_connections_per_address", "32", *LIGHT_TRAINING])
    server, addr, idle = _serving(job)
    stop, ending = threading.Event(), threading.Event()
    head = CHUNK_FIRST + PREJOIN_MAX_BYTES.to_bytes(8, "little") + b"\0" * 1024
    squatting, closed_early = [], []   # sessions the server opened; those it closed mid-job

    def squat():
        while not stop.is_set():
            with RawPeer(addr) as peer:
                if peer.nonce():                  # the server registered the session
                    peer.send(head)
                    squatting.append(1)
                began = time.monotonic()
                peer.wait_closed(2 * deadline)
                if not ending.is_set():
                    closed_early.append(time.monotonic() - began)
    squatters = [threading.Thread(target=squat, daemon=True) for _ in range(16)]
    try:
        for t in squatters:
            t.start()
        wait_for(lambda: len(squatting) >= 16, 30, "16 squatting sessions")
        clients = [job.client(k) for k in (1, 2, 3)]
        # light rounds take well under a second each; a squatted slot stalls them for good
        job.wait_round(rounds - 1, watch=[server] + clients, timeout=90)
        ending.set()
        opened = len(squatting)        # later, the finishing server closes them and they retry
        wait_all([server] + clients, timeout=300, expect=[0, 0, 0, 0])
    finally:
        stop.set()
    assert opened >= 16 and all(t >= STALL_SECONDS - 0.5 for t in closed_early), \
        (opened, sorted(closed_early)[:4])
    times = _round_times(job.server_log())
    assert sorted(times) == list(range(1, rounds + 1)), times
    assert statistics.median(times.values()) <= deadline / 4, times
    assert job.final()["Round"] == rounds


def _rejoin_until(addr: str, token: str, decl: dict, stop_at: float, answers: list) -> None:
    """Re-join as client 3 in a loop, each time on a new connection, until ``stop_at``."""
    while time.monotonic() < stop_at:
        with RawPeer(addr) as again:
            again.join(3, token=token, declaration=decl)
            answers.append(again.recv(10))
            again.wait_closed(10)


def test_admitted_client_flooding_is_closed_then_cooled_off(femnist_root, femnist_shards,
                                                            tmp_path):
    """Client 3's token in an abuser's hands: it joins with its true declaration, then sends
    2,000 heartbeats and 2,000 messages of an unknown type. Its session is closed at
    BAD_MESSAGES_PER_SESSION; the server writes <= LOG_LINES_PER_INTERVAL rejection lines per
    interval. Then 4 threads re-join as 3 in a loop, each on a new connection, until 1 s before
    the cool-off (5 s for a first abuse close) ends: every one is refused naming the cool-off,
    one log line for them all, while an honest join as 1 in the middle of the flood is answered
    within 10 s (then drops: no cool-off for that). Real clients 1 and 2 start during the
    flood, the real client 3 when the cool-off has ended; the job finishes."""
    token = "stolen-but-valid"
    job = Job(tmp_path, femnist_root, rounds=1, manifest=femnist_shards,
              common=FAST + ["distribute.heartbeat_interval", "5.0", "distribute.token", token])
    server, addr, idle = _serving(job)
    decl = _declaration(femnist_shards, 3).to_dict()
    with RawPeer(addr) as peer:
        peer.join(3, token=token, declaration=decl)
        got = peer.recv(30)
        assert got is not None and got.msg_type == ASSIGN_ID, got
        cpu0 = psutil.Process(server.pid).cpu_times()
        beat = codec.encode(Message(HEARTBEAT, 3, 0, 0))
        junk = codec.encode(Message("no_such_type", 3, 0, 0))
        for i in range(2000):
            peer.send(beat)
            peer.send(junk)
        assert peer.wait_closed(30), "the server kept a flooding session open"
    cool_until = time.monotonic() + 5.0        # the server's close came a little before this
    cpu = psutil.Process(server.pid).cpu_times()
    spent = (cpu.user + cpu.system) - (cpu0.user + cpu0.system)
    assert spent < 5.0, f"server spent {spent:.1f}s CPU on one flooding session"
    answers: list = []
    flood = [threading.Thread(target=_rejoin_until, args=(addr, token, decl, cool_until - 1.0,
                                                          answers)) for _ in range(4)]
    flood_from = time.monotonic()
    for t in flood:
        t.start()
    time.sleep(1.0)
    began = time.monotonic()        # an honest join in the middle of the flood
    with RawPeer(addr) as honest:
        honest.join(1, token=token, declaration=_declaration(femnist_shards, 1).to_dict())
        got = honest.recv(30)
        took = time.monotonic() - began
    assert got is not None and got.msg_type == ASSIGN_ID and took <= 10.0, (got, took)
    # the real clients 1 and 2 join while the re-join flood goes on (not before the honest
    # join as 1 above: that one would then be a duplicate)
    clients = [job.client(k, ["distribute.token", token]) for k in (1, 2)]
    for t in flood:
        t.join(30)
    assert len(answers) >= 8, f"only {len(answers)} re-joins in 4 s"
    print(f"re-joins refused: {len(answers)} in {cool_until - 1.0 - flood_from:.1f}s; an honest "
          f"join took {took:.2f}s")
    assert all(a is not None and a.msg_type == REFUSE for a in answers), answers
    assert all(a.content["reason"].startswith("cooling off: ") for a in answers), answers[0]
    assert "too many invalid messages" in answers[0].content["reason"]
    assert all(0 < a.content["retry_after"] <= 5.0 for a in answers)
    log = job.server_log()
    assert f"Closed the session of client #3: {BAD_MESSAGES_PER_SESSION} invalid" in log, \
        log[-2000:]
    assert log.count("closed for abuse (1 time(s)): its re-joins are refused for 5s") == 1, \
        log[-2000:]
    assert log.count("is cooling off until") == 1, log[-2000:]   # every re-join, one line
    assert log.count("Rejected message from") <= LOG_LINES_PER_INTERVAL
    _assert_rss_bounded(server, idle, "admitted flood and re-join flood")
    time.sleep(max(0.0, cool_until - time.monotonic()) + 0.2)
    clients.append(job.client(3, ["distribute.token", token]))
    wait_all([server] + clients, timeout=300, expect=[0, 0, 0, 0])
    assert job.final()["Round"] == 1
    assert "client #3 re-joined" in job.server_log()     # the real client 3, after the cool-off
    assert "client #1 re-joined" in job.server_log()     # after the honest drop: not cooled off
    delays = {k: v for k, v in _join_delays(job).items() if k == 2}   # 1, 3: first joined raw
    assert list(delays) == [2] and delays[2] <= 10.0, delays


def test_a_recorded_join_replayed_on_a_new_stream_is_refused(femnist_root, femnist_shards,
                                                            tmp_path):
    """Tokens without TLS: an eavesdropper records client 2's join (its proof for that stream's
    nonce) and replays the exact bytes while client 2 is offline: refused, no model sent."""
    token = "replay-me-not"
    job = Job(tmp_path, femnist_root, rounds=1, manifest=femnist_shards,
              common=FAST + ["distribute.token", token])
    server, addr, idle = _serving(job)
    decl = _declaration(femnist_shards, 2).to_dict()
    with RawPeer(addr) as real:       # the real client's join, as recorded on the wire
        join = Message(JOIN_IN, 2, 0, 0, {"client_id": 2, "token": token, "declaration": decl,
                                          "num_samples": decl["num_samples"]})
        recorded = codec.encode(signed_join(join, real.nonce().hex()))
        real.send(recorded)
        got = real.recv(30)
        assert got is not None and got.msg_type == ASSIGN_ID, got
    assert token.encode() not in recorded           # the token itself never travels
    wait_for(lambda: "client #2 lost" in job.server_log(), 30, "client 2 to be offline")
    with RawPeer(addr) as impostor:
        impostor.send(recorded)       # the same bytes: a proof for the OLD stream's nonce
        answers = [impostor.recv(15) for _ in range(2)]
        assert answers[0] is not None and answers[0].msg_type == REFUSE, answers
        assert answers[0].content["reason"] == "bad token"
        assert not any(a is not None and a.msg_type in (ASSIGN_ID, MODEL_PARA) for a in answers)
    assert "token does not match" in job.server_log() or "wrong token" in job.server_log()
    _run_clients_with_token(job, server, token)


def _run_clients_with_token(job: Job, server, token: str) -> None:
    clients = [job.client(k, ["distribute.token", token]) for k in (1, 2, 3)]
    wait_all([server] + clients, timeout=300, expect=[0, 0, 0, 0])
    assert job.final()["Round"] == 1


def test_connections_from_one_address_are_capped_while_clients_behind_it_join(femnist_root,
                                                                              tmp_path):
    """One address (127.0.0.1) opens 40 connections, each with a stream that never joins, then
    one more every 0.1 s for the whole job, while the 4 real clients join from the same address
    (a NAT, or loopback: the hard case, no address tells them apart). 4 expected clients:
    max_clients 8, so the derived ceiling is 4 not yet joined + 8 = 12. The join deadline (30 s)
    outlasts the test, so only the ceiling closes flood streams: of the first 40, 12 stay open
    (the rest are refused, or close older ones that waited GIVE_WAY_AFTER); each later newcomer
    (flood or client) closes the address's oldest stream that has waited that long, so the
    clients get in at once. Without the ceiling the flood would hold 32 (the unjoined cap)."""
    job = Job(tmp_path, femnist_root, rounds=1, clients=4, common=["distribute.join_deadline",
                                                                    "30.0"])
    server, addr, idle = _serving(job)
    first = [RawPeer(addr) for _ in range(40)]
    refused = [p for p in first if not p.nonce()]
    assert all(p.wait_closed(10) and p.code == "RESOURCE_EXHAUSTED" for p in refused)
    assert all("distribute.grpc_max_connections_per_address" in p.details for p in refused)
    time.sleep(0.5)                   # closes of given-way streams reach their peers
    still = [p for p in first if not p.closed]
    assert len(still) == 12, f"{len(still)} of 40 flood streams open, ceiling 12"
    stop, later, peak = threading.Event(), [], [0]

    def keep_flooding():
        while not stop.wait(0.1):
            try:     # the server's peak RSS while it runs (it exits when the job is done)
                peak[0] = max(peak[0], status_kb(server.pid, "VmHWM"))
            except (OSError, KeyError):    # gone, or a zombie without VmHWM
                return
            peer = RawPeer(addr)
            if not peer.nonce():
                peer.close()
                return      # the job is over and the server no longer listens
            later.append(peer)
    flooder = threading.Thread(target=keep_flooding, daemon=True)
    flooder.start()
    try:
        clients = [job.client(k) for k in (1, 2, 3, 4)]
        wait_all([server] + clients, timeout=120, expect=[0] * 5)
    finally:
        stop.set()
        flooder.join(15)
        for p in first + later:
            p.close()
    assert job.final()["Round"] == 1 and len(later) >= 3, len(later)   # it went on
    log = job.server_log()
    # the refusals of the first 40 come first; the lines of the streams that gave way may fall
    # in the rate-limited summary
    assert "Refused a session from ipv4:127.0.0.1" in log
    assert len(re.findall(r"client #\d joined, from ipv4:127\.0\.0\.1:", log)) == 4, log[-3000:]
    assert peak[0] <= 2 * idle, f"peak RSS {peak[0] // KB} MB > 2 x idle {idle // KB} MB"
    delays = _join_delays(job)
    print(f"flood: {40 + len(later)} connections; joins {delays}; "
          f"peak RSS {peak[0] // KB} MB, idle {idle // KB} MB")
    assert sorted(delays) == [1, 2, 3, 4] and max(delays.values()) <= 10.0, delays
