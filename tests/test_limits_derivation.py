"""Every limit the server derives, and every gRPC option it sets, against hand-computed values
at realistic sizes (4, 1,000 and 3,550 expected clients; FEMNIST's ConvNet2 at hidden 128 and
2048) with non-default keys. In process: no server is started (the real-server tests in
test_transport_ceilings show that gRPC enforces these options)."""
import errno
import socket

import grpc
import pytest

from hypothesis import given
from hypothesis import strategies as st

from federatedscope.core.communication.limits import (Limits, compression, derive_limits,
                                                      grpc_options, probe_bind, server_options,
                                                      stream_window_for)
from federatedscope.core.configs.config import ConfigError, get_default_cfg

MIB = 1024 * 1024
HIDDEN_128, HIDDEN_2048 = 1_848_072, 26_419_976      # ConvNet2's raw tensor bytes


def _cfg(**distribute):
    cfg = get_default_cfg()
    for k, v in distribute.items():
        setattr(cfg.distribute, k, v)
    return cfg


# (expected clients, model bytes, distribute keys) -> every field, worked out by hand:
#   max_receive = min(grpc_max_receive_message_length, max_message_mb MiB, 2 x model + 1 MiB)
#   unjoined = max(32, expected); sessions = 2 x expected + unjoined
#   connections = 2 x expected + 2 x unjoined + 16 health watches
#   idle = max(10, 2 x join_deadline, expected / 50); slow link = max(30, heartbeat_timeout)
#   heartbeats: 20/s, burst 20 x max(30, heartbeat_timeout)
#   upload chunk = min(1 MiB, max(128 KiB, 64 MiB // expected)) - 9
#   stream window (key 0) = min(4 MiB, max(64 KiB, 64 MiB // sessions in whole KiB)):
#     40 sessions: 1,677,721 -> 1,638 KiB; 120: 559,240 -> 546 KiB; 10,650: the 64 KiB floor
#   heartbeat interval = max(own, min(expected / 100, heartbeat_timeout / 3))
CASES = [
    (1000, HIDDEN_128, dict(heartbeat_timeout=45.0, join_deadline=12.0, grpc_stream_window_kb=128),
     Limits(max_receive=2 * HIDDEN_128 + MIB, prejoin_max=65536, max_unjoined=1000,
            max_sessions=3000, join_deadline=12.0, assembly_timeout=45.0, write_timeout=45.0,
            stream_window=131072, max_connections=4016, expected_clients=1000,
            connections_per_address=0, idle_connection=24.0, heartbeat_rate=20.0,
            heartbeat_burst=900.0, upload_chunk=131_063, heartbeat_interval=10.0)),
    (4, HIDDEN_2048, dict(max_message_mb=40.0, grpc_max_connections_per_address=5,
                          heartbeat_interval=2.0),
     Limits(max_receive=40 * MIB, prejoin_max=65536, max_unjoined=32, max_sessions=40,
            join_deadline=5.0, assembly_timeout=30.0, write_timeout=30.0, stream_window=1_677_312,
            max_connections=88, expected_clients=4, connections_per_address=5,
            idle_connection=10.0, heartbeat_rate=20.0, heartbeat_burst=600.0,
            upload_chunk=1_048_567, heartbeat_interval=2.0)),
    (3550, HIDDEN_128, dict(heartbeat_timeout=120.0, join_deadline=5.0,
                            grpc_max_receive_message_length=3 * MIB),
     Limits(max_receive=3 * MIB, prejoin_max=65536, max_unjoined=3550, max_sessions=10650,
            join_deadline=5.0, assembly_timeout=120.0, write_timeout=120.0, stream_window=65536,
            max_connections=14216, expected_clients=3550, connections_per_address=0,
            idle_connection=71.0, heartbeat_rate=20.0, heartbeat_burst=2400.0,
            upload_chunk=131_063, heartbeat_interval=35.5)),
    # no model known yet (0 bytes): the config's own receive limit; a tiny one caps the prejoin
    (40, 0, dict(grpc_max_receive_message_length=40000, join_deadline=2.0),
     Limits(max_receive=40000, prejoin_max=40000, max_unjoined=40, max_sessions=120,
            join_deadline=2.0, assembly_timeout=30.0, write_timeout=30.0, stream_window=559_104,
            max_connections=176, expected_clients=40, connections_per_address=0,
            idle_connection=10.0, heartbeat_rate=20.0, heartbeat_burst=600.0,
            upload_chunk=1_048_567, heartbeat_interval=5.0)),
]


@pytest.mark.parametrize("expected,model,keys,want", CASES)
def test_every_derived_limit_matches_the_hand_computed_value(expected, model, keys, want):
    assert derive_limits(_cfg(**keys), 2 * expected, model) == want


def test_an_odd_client_ceiling_and_an_unknown_model_are_counted_in_whole_clients():
    """max_clients 2,001 is 1,000 expected clients (integer halves), and with no model known the
    receive limit is the config's own (300 MiB), not 1 MiB of margin."""
    got = derive_limits(_cfg(heartbeat_timeout=45.0, join_deadline=12.0), 2001, 0)
    assert (got.expected_clients, got.max_unjoined, got.max_sessions) == (1000, 1000, 3001)
    assert type(got.expected_clients) is int and type(got.max_unjoined) is int
    assert (got.idle_connection, got.upload_chunk, got.heartbeat_interval) == \
        (24.0, 131_063, 10.0)
    assert got.max_receive == 300 * MIB and got.max_connections == 2001 + 2000 + 16
    assert derive_limits(_cfg(), 7101, 0).idle_connection == 71.0     # 3,550 / 50, not 3,550.5


def test_the_default_join_deadline_is_what_case_two_assumed():
    assert get_default_cfg().distribute.join_deadline == 5.0


def test_the_servers_receive_limit_is_the_models_not_only_the_configs():
    cfg = _cfg()
    opts = dict(server_options(cfg, derive_limits(cfg, 2000, HIDDEN_128)))
    assert opts["grpc.max_receive_message_length"] == 2 * HIDDEN_128 + MIB


@pytest.mark.parametrize("expected,model,keys,want", CASES[1:2])
def test_the_server_sets_exactly_these_grpc_options(expected, model, keys, want):
    cfg = _cfg(**keys)
    got = server_options(cfg, derive_limits(cfg, 2 * expected, model))
    assert got == [
        ("grpc.max_send_message_length", 300 * MIB), ("grpc.max_receive_message_length", 40 * MIB),
        ("grpc.keepalive_time_ms", 20000), ("grpc.keepalive_timeout_ms", 30000),
        ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.max_concurrent_streams", 4), ("grpc.max_metadata_size", 8192),
        ("grpc.absolute_max_metadata_size", 16384),
        ("grpc.max_allowed_incoming_connections", 88), ("grpc.max_connection_idle_ms", 10000),
        ("grpc.http2.max_ping_strikes", 2), ("grpc.so_reuseport", 0),
        ("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1_677_312),
        ("grpc.http2.max_frame_size", MIB)]


@pytest.mark.parametrize("keys,max_receive,send,recv", [
    ({}, 0, 300 * MIB, 300 * MIB),                                   # the config's own limits
    (dict(max_message_mb=2.5), 0, 300 * MIB, int(2.5 * MIB)),        # the key caps receiving only
    (dict(max_message_mb=2.5), 1000, 300 * MIB, 1000),               # the tighter of the two
    (dict(grpc_max_receive_message_length=5000,
          grpc_max_send_message_length=7000), 9000, 7000, 5000),
    (dict(max_message_mb=0.0), 123456, 300 * MIB, 123456),          # 0: no cap from the key
    (dict(max_message_mb=0.5), 0, 300 * MIB, MIB // 2),              # under 1 MB counts too
    ({}, 1, 300 * MIB, 1)])
def test_a_client_channel_sends_and_receives_within_its_limits(keys, max_receive, send, recv):
    opts = dict(grpc_options(_cfg(heartbeat_timeout=50.0, **keys), max_receive))
    assert opts == {"grpc.max_send_message_length": send, "grpc.max_receive_message_length": recv,
                    "grpc.keepalive_time_ms": 20000, "grpc.keepalive_timeout_ms": 50000,
                    "grpc.keepalive_permit_without_calls": 1,
                    "grpc.http2.max_pings_without_data": 0,
                    "grpc.http2.min_ping_interval_without_data_ms": 5000}


def test_a_client_channel_without_a_model_limit_receives_up_to_the_config():
    assert dict(grpc_options(_cfg()))["grpc.max_receive_message_length"] == 300 * MIB


@pytest.mark.parametrize("window,ok", [(15, False), (16, True), (17, True), (8, False)])
def test_a_stream_window_below_16_kib_is_refused_by_name(window, ok):
    cfg = _cfg(grpc_stream_window_kb=window)
    if ok:
        assert derive_limits(cfg, 8, HIDDEN_128).stream_window == window * 1024
        return
    with pytest.raises(ConfigError) as e:
        derive_limits(cfg, 8, HIDDEN_128)
    assert str(e.value) == (f"distribute.grpc_stream_window_kb={window} is below HTTP/2's useful "
                            f"minimum; set it to 16 or more, or 0 (the default: derived from the "
                            f"expected clients)")


@pytest.mark.parametrize("sessions,window", [
    (1, 4 * MIB), (16, 4 * MIB), (17, 3_855 * 1024), (38, 1_724 * 1024), (1024, 64 * 1024),
    (1025, 64 * 1024), (10_650, 64 * 1024)])
def test_the_derived_stream_window_shares_64_mib_between_the_sessions(sessions, window):
    # 64 MiB / 17 = 3,947,580.2 B = 3,855.06 KiB; / 38 = 1,766,022.7 B = 1,724.6 KiB
    assert stream_window_for(sessions) == window
    # an int: grpc reads a channel option of any other type (a float) as a pointer argument,
    # not as grpc.http2.lookahead_bytes' integer, and the window would stay gRPC's default
    assert type(stream_window_for(sessions)) is int


@given(st.integers(1, 200_000))
def test_every_session_holding_a_full_derived_window_stays_within_the_budget(sessions):
    w = stream_window_for(sessions)
    assert w % 1024 == 0 and 64 * 1024 <= w <= 4 * MIB
    assert sessions * w <= 64 * MIB or w == 64 * 1024      # the floor is the old fixed window
    assert stream_window_for(sessions + 1) <= w


def test_the_window_key_set_by_hand_wins_over_the_derived_one():
    # 4 expected clients derive 1,638 KiB; a hand-set 64 KiB (the old default) is kept
    assert derive_limits(_cfg(grpc_stream_window_kb=64), 8, HIDDEN_2048).stream_window == 65536
    assert derive_limits(_cfg(grpc_stream_window_kb=8192), 8, HIDDEN_2048).stream_window == 8 * MIB


def test_a_negative_per_address_ceiling_is_refused_by_name():
    with pytest.raises(ConfigError) as e:
        derive_limits(_cfg(grpc_max_connections_per_address=-2), 8, HIDDEN_128)
    assert str(e.value) == ("distribute.grpc_max_connections_per_address=-2 is negative; set 0 "
                            "(derived from the expected clients) or a ceiling >= 1")


def test_each_stream_announces_its_chunk_size_go_and_heartbeat_interval():
    cfg = _cfg(heartbeat_timeout=120.0)
    assert derive_limits(cfg, 7100, HIDDEN_128).announcement() == (
        ("fs-upload-chunk", "131063"), ("fs-upload-go", "1"), ("fs-heartbeat-interval", "35.5"))
    assert derive_limits(_cfg(), 8, HIDDEN_128).announcement() == (
        ("fs-upload-chunk", "1048567"), ("fs-upload-go", "1"), ("fs-heartbeat-interval", "5"))


@pytest.mark.parametrize("name,want", [
    ("deflate", grpc.Compression.Deflate), ("Deflate", grpc.Compression.Deflate),
    ("GZIP", grpc.Compression.Gzip), ("gzip", grpc.Compression.Gzip),
    ("none", grpc.Compression.NoCompression), ("", grpc.Compression.NoCompression)])
def test_compression_names_are_read_case_blind(name, want):
    assert compression(_cfg(grpc_compression=name)) == want


FIX = "choose a free port with distribute.server_port (or fix distribute.server_host)"


def test_port_zero_is_never_probed():
    # an unresolvable host would fail the probe: port 0 returns before looking it up
    assert probe_bind("no-such-host.invalid", 0) is None


def test_a_free_port_passes_and_a_listening_one_names_the_fix():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert probe_bind("127.0.0.1", port) is None           # closed again: free
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        with pytest.raises(OSError) as e:
            probe_bind("127.0.0.1", port)
    assert str(e.value) == (f"cannot listen on 127.0.0.1:{port}: Address already in use "
                            f"(another server?); {FIX}")


def test_an_ipv6_listener_is_found_through_its_brackets():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here ({e})")
    with s:
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(OSError, match=rf"^cannot listen on \[::1\]:{port}: Address already "
                                          rf"in use \(another server\?\)"):
            probe_bind("[::1]", port)


def test_an_address_not_on_this_host_or_not_resolvable_names_the_host():
    with pytest.raises(OSError) as e:
        probe_bind("192.0.2.1", 5000)                      # TEST-NET-1: never a local address
    assert str(e.value) == (f"cannot listen on 192.0.2.1:5000: "
                            f"{__import__('os').strerror(errno.EADDRNOTAVAIL)}; {FIX}")
    try:
        socket.getaddrinfo("no-such-host.invalid", 5000)
        pytest.skip("this resolver answers for .invalid")
    except socket.gaierror as g:
        reason = g.strerror
    with pytest.raises(OSError) as e:
        probe_bind("no-such-host.invalid", 5000)
    assert str(e.value) == (f"cannot listen on no-such-host.invalid:5000: host not resolvable "
                            f"({reason}); {FIX}")


@pytest.mark.parametrize("expected,chunk", [(150, 447_383), (200, 335_535), (511, 131_319)])
def test_the_upload_piece_is_64_mib_shared_by_the_expected_clients_inside_its_bounds(expected,
                                                                                      chunk):
    # 64 MiB // 150 = 447,392; // 200 = 335,544; // 511 = 131,328; each less our 4-byte magic and
    # gRPC's 5-byte prefix. The client ceiling is twice the expected count.
    assert derive_limits(_cfg(), 2 * expected, HIDDEN_128).upload_chunk == chunk
