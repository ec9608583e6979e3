"""What the gRPC transport allows: channel options, per-peer limits, and the port check.

Shared by the server and the client transports. The limits are derived once from the config,
the expected client count and the model size (see ``derive_limits``)."""
import errno
import socket
from dataclasses import dataclass

import grpc

from federatedscope.core.communication.flow import (UPLOAD_CHUNK_HEADER, UPLOAD_GO_HEADER,
                                                    upload_chunk_bytes)
from federatedscope.core.configs.config import MIN_HEARTBEAT_INTERVAL, ConfigError

# A join (id, token, declaration with a 62-bin histogram) is a few KB; anything this large
# before the stream is bound is not a join and is refused without being decoded.
PREJOIN_MAX_BYTES = 64 * 1024
# gRPC copies every message it sends into its own buffers, so N concurrent writes of a model
# hold N copies. At most this many large messages are being written at once; the rest wait in
# their queues as references to the one encoded broadcast. Two keep a broadcast at 3 models
# (the encoding + 2 gRPC copies) for any client count (8 measured 382 MB vs 311 MB at hidden
# 2048, 3 clients: the server's memory budget is 6 models), and the one event-loop thread
# cannot feed more than a couple of loopback streams at once anyway.
BIG_MESSAGE = 64 * 1024
CONCURRENT_BIG_WRITES = 2
# Streams holding a received model-sized message that waits for an inbox slot. Each holds the
# raw bytes, so while this many wait, no new large write starts: clients that answer a model
# with a model (e.g. a swarm replying at once) are paced to the Server's own processing rate.
MAX_BACKLOG = 8
# The server's HTTP/2 receive window per stream (``distribute.grpc_stream_window_kb`` 0: derived).
# gRPC buffers up to one window on each stream we are not reading, so every session holding a
# full window costs sessions x window: that product is kept within this budget, and the window
# between a floor and a ceiling. An upload runs at about window / round trip (hidden 2048, one
# client on loopback, busy machine, medians of 3 runs: a 25 MB upload took 30-47 ms with 64 KiB,
# 16-31 ms with the derived 1.9 MiB); from ~340 expected clients on, the floor holds and the
# window is what it always was.
STREAM_WINDOW_BUDGET = 64 * 1024 * 1024
MIN_STREAM_WINDOW = 64 * 1024
MAX_STREAM_WINDOW = 4 * 1024 * 1024
# Headroom over 2 x the model's raw bytes: frame header, content JSON, tensor names.
MESSAGE_MARGIN = 1024 * 1024
# A slow link is not an attack: a peer may take max(this, distribute.heartbeat_timeout) seconds
# to send one large message (assembly) or to accept one (write), as long as a silent client is
# tolerated.
MIN_SLOW_LINK = 30.0
# HTTP/2 keepalive PINGs find a dead connection (a dropped NAT mapping, a host gone) that no
# message would reveal: gRPC closes a connection whose PING gets neither an ACK nor any other
# frame within the ACK timeout. A peer that stops for a while (a stopped or swapping process, one
# starved of CPU) looks dead to it, although our own write timeout lets a peer take
# ``slow_link_seconds`` to accept a large message. So keepalive waits as long on both ends (with
# 10 s, the 3,550-client benchmark lost 34 sessions to "connection reset" in one broadcast; none
# after). A dead peer is still found within KEEPALIVE_TIME + that.
KEEPALIVE_TIME = 20.0
# A chunked upload holding an inbox slot must make progress at least this often (its sender
# writes the chunks back to back once it has the slot; only a frozen or hostile peer pauses).
STALL_SECONDS = 10.0
# HTTP/2 streams one connection may have open. A client uses one Session stream (two for a
# moment while a reconnect replaces it); a health checker one more. Each open stream costs the
# server buffers and a coroutine, so a connection must not multiply them.
STREAMS_PER_CONNECTION = 4
# Request headers (all metadata of one call). Our clients send ~200 bytes; gRPC's own default
# soft limit is 8 KiB. Over the hard limit a call is refused before the server allocates it.
METADATA_SOFT_BYTES = 8 * 1024
METADATA_HARD_BYTES = 16 * 1024
# Health Watch streams open at once, over all connections (a monitor needs one or two; each
# costs a coroutine and a queue for as long as it is open).
MAX_HEALTH_WATCHES = 16
# Unary calls (health Check) in flight beyond the counted streams.
UNARY_HEADROOM = 16
# Invalid messages one session may send before it is closed. An honest client sends none.
BAD_MESSAGES_PER_SESSION = 16
# Connections one peer address may hold with streams but no joined client, beyond the clients
# not yet joined (each needs one): a client reconnecting while the server still holds its old
# session (keepalive notices a dead NAT mapping within 20 s + max(30 s, heartbeat_timeout)), a few
# at once behind one NAT.
CONNECTION_HEADROOM = 8
# Seconds a stream must have been idle (no join sent) before a newcomer from its address, at the
# address's ceiling, may close it: longer than an honest join's round trip, short enough that a
# client behind a flooding address gets in on its first retries.
GIVE_WAY_AFTER = 1.0
# Seconds a stream refused at its address's ceiling is held before the refusal is sent: a flooder
# that reconnects at once then makes one attempt per connection per this, while an honest client
# (which backs off for a second or more anyway) loses nothing.
REFUSAL_HOLD = 1.0
# Heartbeats: a client sends one when its stream has been quiet for ITS OWN
# distribute.heartbeat_interval, which the server cannot know (each client config sets its own;
# the config refuses less than MIN_HEARTBEAT_INTERVAL). So a session may sustain twice the fastest
# honest rate, and the bucket holds what arrives at that rate within the server's
# heartbeat_timeout: heartbeats queued behind a stall of the server reach it at once and are not
# a flood. Beyond that they count as invalid messages, which close a flooding session.
HEARTBEAT_RATE = 2 / MIN_HEARTBEAT_INTERVAL
MIN_HEARTBEAT_WINDOW = 30.0
# Each heartbeat costs the server a gRPC read and a decode: ~0.2 ms (an idle server with 1,000
# sessions spent 6.05 % of a core at 5 s, 1.8 % without heartbeats). The server therefore asks
# for an interval (HEARTBEAT_HEADER, with the nonce) that shares HEARTBEATS_PER_S between its
# expected clients, at least its own distribute.heartbeat_interval, and never longer than a third
# of its heartbeat_timeout (a quiet client still shows up three times before it counts as silent:
# the timeout wins over every interval, or a round longer than the timeout would mark every
# training client lost, again and again). Clients follow the announced interval (down to
# MIN_HEARTBEAT_INTERVAL, the rate the allowance above is built for), so up to 500 expected
# clients nothing changes at 5 s.
HEARTBEAT_HEADER = "fs-heartbeat-interval"
HEARTBEATS_PER_S = 100.0
MAX_ANNOUNCED_HEARTBEAT = 3600.0
# Seconds a stopping server waits at most for its sessions to end, as long as some keep ending
# (each one gets the stop's grace to take its last messages).
STOP_DRAIN_MAX = 60.0
# Rejection log lines written per LOG_INTERVAL; the rest become one summary line per interval.
LOG_LINES_PER_INTERVAL = 20
LOG_INTERVAL = 10.0
# A connection with no open stream is closed after max(this, 2 x distribute.join_deadline): a
# connection without a stream is treated like a stream without a join.
MIN_IDLE_CONNECTION = 10.0
# gRPC checks max_connection_idle on a timer per connection, also while its stream is busy:
# an idle server with 3,550 sessions spent 4.3 % of a core with a 10 s limit, 1.7 % without
# one. So the limit grows with the expected clients until their timers fire at most this often
# (3,550 clients: 71 s). A peer that wants to hold the whole connection ceiling (~2 x expected)
# must still refill it within that period: the same rate whatever the client count.
IDLE_CHECKS_PER_S = 50.0


def slow_link_seconds(cfg) -> float:
    """Seconds one large message may take to cross (see ``MIN_SLOW_LINK``)."""
    return max(MIN_SLOW_LINK, float(cfg.distribute.heartbeat_timeout))


def grpc_options(cfg, max_receive: int = 0) -> list:
    limit_mb = cfg.distribute.max_message_mb
    send = cfg.distribute.grpc_max_send_message_length
    recv = cfg.distribute.grpc_max_receive_message_length
    if limit_mb > 0:
        recv = min(recv, int(limit_mb * 1024 * 1024))
    if max_receive > 0:
        recv = min(recv, max_receive)
    return [("grpc.max_send_message_length", send), ("grpc.max_receive_message_length", recv),
            ("grpc.keepalive_time_ms", int(KEEPALIVE_TIME * 1000)),
            ("grpc.keepalive_timeout_ms", int(slow_link_seconds(cfg) * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000)]


def compression(cfg) -> grpc.Compression:
    return {"deflate": grpc.Compression.Deflate, "gzip": grpc.Compression.Gzip}.get(
        cfg.distribute.grpc_compression.lower(), grpc.Compression.NoCompression)


@dataclass(frozen=True)
class Limits:
    """What one peer may cost the server; derived once from the config, client count and model."""
    max_receive: int        # bytes; gRPC refuses larger messages before handing them to us
    prejoin_max: int        # bytes; larger messages on an unbound stream are refused unread
    max_unjoined: int       # streams that have not been bound to an admitted client
    max_sessions: int       # all streams (admitted + unjoined); the health service is extra
    join_deadline: float    # seconds an unbound stream may stay silent (no valid join_in)
    assembly_timeout: float  # seconds a chunked message may take from first to last chunk
    write_timeout: float    # seconds a peer may take to accept one large message
    stream_window: int      # bytes; HTTP/2 receive window per stream (distribute.grpc_stream_window_kb)
    max_connections: int    # TCP connections at once (gRPC refuses more before any HTTP/2)
    expected_clients: int   # what the per-address connection ceiling is derived from
    connections_per_address: int   # fixed ceiling on one address's unjoined connections; 0: derived
    idle_connection: float  # seconds a connection without any open stream is kept
    heartbeat_rate: float   # heartbeats per second one session may sustain (after a burst)
    heartbeat_burst: float  # heartbeats one session may send at once
    upload_chunk: int       # bytes; largest continuation chunk (announced to every client)
    heartbeat_interval: float  # seconds; the interval clients are asked for (announced)

    def announcement(self) -> tuple:
        """What every stream's initial metadata tells the client beside its nonce."""
        return ((UPLOAD_CHUNK_HEADER, str(self.upload_chunk)), (UPLOAD_GO_HEADER, "1"),
                (HEARTBEAT_HEADER, f"{self.heartbeat_interval:g}"))


def derive_limits(cfg, max_clients: int, model_bytes: int) -> Limits:
    window_kb = cfg.distribute.grpc_stream_window_kb
    if window_kb != 0 and window_kb < 16:
        raise ConfigError(f"distribute.grpc_stream_window_kb={window_kb} is below HTTP/2's useful "
                          f"minimum; set it to 16 or more, or 0 (the default: derived from the "
                          f"expected clients)")
    per_address = int(cfg.distribute.grpc_max_connections_per_address)
    if per_address < 0:
        raise ConfigError(f"distribute.grpc_max_connections_per_address={per_address} is "
                          f"negative; set 0 (derived from the expected clients) or a ceiling >= 1")
    recv = grpc_options(cfg, 2 * model_bytes + MESSAGE_MARGIN if model_bytes > 0 else 0)[1][1]
    # A join storm of every expected client must fit (max_clients is ~2 x the expected count).
    unjoined = max(32, max_clients // 2)
    return Limits(max_receive=recv, prejoin_max=min(PREJOIN_MAX_BYTES, recv),
                  max_unjoined=unjoined, max_sessions=max_clients + unjoined,
                  join_deadline=float(cfg.distribute.join_deadline),
                  assembly_timeout=slow_link_seconds(cfg),
                  write_timeout=slow_link_seconds(cfg),
                  stream_window=int(window_kb * 1024) or stream_window_for(max_clients + unjoined),
                  # every session may have its own connection, plus as many idle ones (a client
                  # between sessions, a health checker) before new connections wait
                  max_connections=max_clients + 2 * unjoined + MAX_HEALTH_WATCHES,
                  expected_clients=max_clients // 2, connections_per_address=per_address,
                  idle_connection=max(MIN_IDLE_CONNECTION, 2 * float(cfg.distribute.join_deadline),
                                      (max_clients // 2) / IDLE_CHECKS_PER_S),
                  heartbeat_rate=HEARTBEAT_RATE,
                  heartbeat_burst=HEARTBEAT_RATE * max(MIN_HEARTBEAT_WINDOW,
                                                       float(cfg.distribute.heartbeat_timeout)),
                  upload_chunk=upload_chunk_bytes(max_clients // 2),
                  heartbeat_interval=heartbeat_interval_for(
                      max_clients // 2, float(cfg.distribute.heartbeat_interval),
                      float(cfg.distribute.heartbeat_timeout)))


def stream_window_for(sessions: int) -> int:
    """The derived receive window: ``STREAM_WINDOW_BUDGET`` shared by every session the server
    may hold, in whole KiB, between ``MIN_STREAM_WINDOW`` and ``MAX_STREAM_WINDOW``."""
    share = STREAM_WINDOW_BUDGET // max(1, sessions) // 1024 * 1024
    return min(MAX_STREAM_WINDOW, max(MIN_STREAM_WINDOW, share))


def heartbeat_interval_for(expected_clients: int, own: float, timeout: float) -> float:
    """The heartbeat interval a server asks for (see ``HEARTBEATS_PER_S``); ``own`` and
    ``timeout`` are its ``distribute.heartbeat_interval`` and ``heartbeat_timeout``."""
    asked = max(own, expected_clients / HEARTBEATS_PER_S)
    if timeout > 0:
        asked = min(asked, timeout / 3)
    return max(asked, MIN_HEARTBEAT_INTERVAL) if asked > 0 else 0.0


def announced_heartbeat(value, own: float) -> float:
    """A client's interval: the server's ``HEARTBEAT_HEADER`` when that is a sane number, else
    its own (a client with heartbeats off keeps them off). The server's wins both ways: longer,
    it saves a large server's CPU; shorter, it is what keeps the client inside the server's
    heartbeat_timeout, which the client cannot know."""
    try:
        asked = float(value)
    except (TypeError, ValueError):
        return own
    # False for NaN too: a client never beats faster than the floor, nor stops for an odd value
    sane = MIN_HEARTBEAT_INTERVAL <= asked <= MAX_ANNOUNCED_HEARTBEAT
    return asked if own > 0 and sane else own


def server_options(cfg, limits: Limits) -> list:
    """gRPC server options: the ceilings gRPC itself enforces, below our own code."""
    return grpc_options(cfg, limits.max_receive) + [
        ("grpc.max_concurrent_streams", STREAMS_PER_CONNECTION),
        ("grpc.max_metadata_size", METADATA_SOFT_BYTES),
        ("grpc.absolute_max_metadata_size", METADATA_HARD_BYTES),
        ("grpc.max_allowed_incoming_connections", limits.max_connections),
        ("grpc.max_connection_idle_ms", int(limits.idle_connection * 1000)),
        # PINGs more often than min_ping_interval_without_data_ms while we send nothing are
        # strikes; after this many the connection gets GOAWAY (ENHANCE_YOUR_CALM)
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.so_reuseport", 0),
        # Receive windows stay fixed (no BDP growth): gRPC buffers at most this much per
        # stream that we are not reading, so N clients uploading at once cost
        # N x window, not N x model (measured: 100 uploads of 1.8 MB held +176 MB with
        # BDP probing, +12 MB without). Uploads then run at window / RTT per stream.
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", limits.stream_window),
        # ... and clients may send a whole window as one DATA frame: fewer 9-byte frame
        # headers (upload bytes on the socket / raw: 1.00115 -> 1.00065 measured)
        ("grpc.http2.max_frame_size", 1 << 20)]


class TokenBucket:
    """``capacity`` events at once, refilled at ``rate`` per second (``take`` is False when empty)."""

    def __init__(self, capacity: float, rate: float, now: float):
        self.capacity, self.rate, self.level, self.stamp = capacity, rate, capacity, now

    def take(self, now: float) -> bool:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.level < 1.0:
            return False
        self.level -= 1.0
        return True


def probe_bind(host: str, port: int) -> None:
    """Raise a one-line ``OSError`` if ``host:port`` cannot be listened on, before gRPC tries
    (gRPC would also print its own multi-line C-core error). SO_REUSEADDR as gRPC sets it, so a
    port in TIME_WAIT passes while a port with a live listener of any kind does not."""
    if port == 0:
        return
    where = f"{host}:{port}"
    fix = "choose a free port with distribute.server_port (or fix distribute.server_host)"
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host.strip("[]"), port,
                                                          type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except OSError as e:
        raise OSError(f"cannot listen on {where}: host not resolvable ({e.strerror or e}); "
                      f"{fix}") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            hint = " (another server?)" if e.errno == errno.EADDRINUSE else ""
            raise OSError(f"cannot listen on {where}: {e.strerror or e}{hint}; {fix}") from None
