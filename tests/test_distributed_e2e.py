"""Real server + client processes over gRPC on loopback (FS's data_idx mode)."""
import json
import os

from eval_checks import assert_final_matches_raw
from harness.procs import file_contains, free_port, start_main, wait_all, wait_for, wait_port

CFG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   "scripts", "distributed_scripts", "distributed_configs")


def _common(root, port, out, rounds=2):
    return ["data.root", root, "data.subsample", "1.0", "distribute.server_port", str(port),
            "outdir", out, "federate.total_round_num", str(rounds),
            "distributed_data.enabled", "False"]


def _client_args(k, root, port, out, extra=()):
    return (["--cfg", os.path.join(CFG, f"distributed_femnist_client_{k}.yaml")]
            + _common(root, port, out) + ["distribute.data_idx", str(k)] + list(extra))


def _server_args(root, port, out):
    return ["--cfg", os.path.join(CFG, "distributed_femnist_server.yaml")] + _common(root, port, out)


def _final_line(out):
    logs = [os.path.join(dp, f) for dp, _, fs in os.walk(out) for f in fs if f == "eval_results.log"]
    assert len(logs) == 1, logs
    lines = [json.loads(line) for line in open(logs[0])]
    return lines


def test_server_and_three_clients_exit_zero(femnist_root, tmp_path):
    out = str(tmp_path / "exp")
    server = start_main(_server_args(femnist_root, 0, out), str(tmp_path / "s.log"))
    port = wait_port(server)
    clients = [start_main(_client_args(k, femnist_root, port, out), str(tmp_path / f"c{k}.log"))
               for k in (1, 2, 3)]
    codes = wait_all([server] + clients, timeout=180)
    assert codes == [0, 0, 0, 0], open(tmp_path / "s.log").read()[-3000:]
    lines = _final_line(out)
    assert lines[-1]["Final"] is True and lines[-1]["Round"] == 2
    assert_final_matches_raw(lines, [1, 2, 3])
    slog = open(tmp_path / "s.log").read()
    assert slog.count("finished after 2 rounds") == 1       # finish exactly once
    for k in (1, 2, 3):
        assert file_contains(str(tmp_path / f"c{k}.log"), "training finished (2 rounds trained)")


def test_start_order_does_not_matter(femnist_root, tmp_path):
    port, out = free_port(), str(tmp_path / "exp")
    clients = [start_main(_client_args(k, femnist_root, port, out), str(tmp_path / f"c{k}.log"))
               for k in (1, 2, 3)]
    for k in (1, 2, 3):  # every client is already trying to connect before the server exists
        wait_for(lambda k=k: file_contains(str(tmp_path / f"c{k}.log"), "connecting to server"),
                 60, f"client {k} to start connecting")
    server = start_main(_server_args(femnist_root, port, out), str(tmp_path / "s.log"))
    assert wait_all([server] + clients, timeout=180) == [0, 0, 0, 0]


def test_client_gives_up_on_dead_server_with_clear_message(femnist_root, tmp_path):
    port = free_port()
    client = start_main(_client_args(1, femnist_root, port, str(tmp_path / "exp"),
                                     ["distribute.connect_timeout", "3.0"]), str(tmp_path / "c.log"))
    assert wait_all([client], timeout=60) == [1]
    log = open(tmp_path / "c.log").read()
    assert f"could not reach the server at 127.0.0.1:{port} within 3s" in log
    assert "Is it running?" in log


def test_invalid_data_idx_is_an_error_not_a_fallback(femnist_root, tmp_path):
    client = start_main(_client_args(1, femnist_root, free_port(), str(tmp_path / "exp"),
                                     ["distribute.data_idx", "99"]), str(tmp_path / "c.log"))
    assert wait_all([client], timeout=60) == [1]
    assert file_contains(str(tmp_path / "c.log"), "distribute.data_idx=99 is not a partition")
