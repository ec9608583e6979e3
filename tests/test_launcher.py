"""The managed launcher: pre-flight, health-checked start, summary, and clean failure handling."""
import os
import shutil
import subprocess

from conftest import free_port
from proc_utils import ROOT

SCRIPT = os.path.join(ROOT, "scripts", "distributed_scripts", "run_distributed_conv_femnist_managed.sh")


def _run(manifest, tmp_path, *extra, timeout=300):
    env = dict(os.environ, PYTHON=os.path.join(ROOT, ".venv", "bin", "python")
               if os.path.exists(os.path.join(ROOT, ".venv", "bin", "python")) else "python3")
    return subprocess.run(["bash", SCRIPT, "--manifest", manifest, "--rounds", "1",
                           "--port", str(free_port()), "--logdir", str(tmp_path / "logs")] + list(extra),
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=timeout)


def _pids(tmp_path):
    with open(tmp_path / "logs" / "pids") as f:
        return [int(line.split()[0]) for line in f if line.strip()]


def test_managed_run_from_another_directory(femnist_shards, tmp_path):
    res = _run(femnist_shards, tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "3 client shard(s) OK" in out and "server is SERVING" in out
    assert "no dataset is opened on the server" in out
    for k in (1, 2, 3):
        assert f"Client {k} loaded" in out and f"client {k}:" in out
    assert "final (round 1): weighted-avg test_acc=" in out
    assert "aggregated 3 update(s)" in out            # progress streamed from the server
    assert len(_pids(tmp_path)) == 4


def test_preflight_failure_starts_nothing(femnist_shards, tmp_path):
    bad = tmp_path / "shards"
    shutil.copytree(os.path.dirname(femnist_shards), bad)
    os.remove(bad / "client_2" / "val.pt")
    res = _run(str(bad / "manifest.json"), tmp_path)
    assert res.returncode == 1
    assert "client 2: missing" in res.stderr and "nothing was started" in res.stderr
    assert "prepare_femnist_shards.py" in res.stderr
    assert _pids(tmp_path) == []


def test_failing_client_stops_exactly_our_processes(femnist_shards, tmp_path):
    bad = tmp_path / "shards"
    shutil.copytree(os.path.dirname(femnist_shards), bad)
    path = bad / "client_2" / "train.pt"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF                        # same size: passes pre-flight, fails the sha256 check
    path.write_bytes(bytes(data))
    res = _run(str(bad / "manifest.json"), tmp_path)
    assert res.returncode != 0
    assert "client_2" in res.stderr and "exited with 1" in res.stderr
    for pid in _pids(tmp_path):                # every process it started is gone
        assert not os.path.exists(f"/proc/{pid}") or \
            open(f"/proc/{pid}/stat").read().split()[2] == "Z"
