"""The managed launcher: pre-flight, tokens by default, health-checked start, checkpoint + resume,
--legacy at any client count, summary, and clean failure handling (real processes, loopback)."""
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import time

import pytest

from harness.jobs import LIGHT_TRAINING
from harness.procs import ROOT, free_port, run_script

from federatedscope.core.data import shard_format as mu
from harness.proc_stats import gone

SCRIPT = os.path.join(ROOT, "scripts", "distributed_scripts", "run_distributed_conv_femnist_managed.sh")
PY = os.path.join(ROOT, ".venv", "bin", "python")


def _env():
    return dict(os.environ, PYTHON=PY if os.path.exists(PY) else "python3")


def _argv(manifest, logdir, *extra, rounds=1, port=0):
    # port 0 (the default): the server binds a free port, the launcher reads it back
    return ["bash", SCRIPT, "--manifest", str(manifest), "--rounds", str(rounds),
            "--port", str(port), "--logdir", str(logdir)] + list(extra)


def _run(manifest, tmp_path, *extra, timeout=300, logdir=None, rounds=1, port=0):
    return subprocess.run(_argv(manifest, logdir or tmp_path / "logs", *extra, rounds=rounds,
                                port=port),
                          cwd=str(tmp_path), env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _pids(logdir):
    with open(os.path.join(str(logdir), "pids")) as f:
        return [int(line.split()[0]) for line in f if line.strip()]


@pytest.fixture
def shards(femnist_shards, tmp_path):
    """A private copy: the launcher adds token hashes to the manifest it is given."""
    dst = tmp_path / "shards"
    shutil.copytree(os.path.dirname(femnist_shards), dst)
    return dst


def test_preflight_failure_starts_nothing(shards, tmp_path):
    os.remove(shards / "client_2" / "val.pt")
    res = _run(shards / "manifest.json", tmp_path)
    assert res.returncode == 1
    assert "client 2: missing" in res.stderr and "nothing was started" in res.stderr
    assert "prepare_shards.py" in res.stderr
    assert _pids(tmp_path / "logs") == []


def test_zero_client_manifest_starts_nothing(shards, tmp_path):
    d = json.loads((shards / "manifest.json").read_text())
    d["clients"], d["total_clients"] = [], 0
    (shards / "manifest.json").write_text(json.dumps(d))
    res = _run(shards / "manifest.json", tmp_path)
    assert res.returncode == 1 and "lists no clients" in res.stderr
    assert "nothing was started" in res.stderr and _pids(tmp_path / "logs") == []


def test_failing_client_stops_exactly_our_processes(shards, tmp_path):
    path = shards / "client_2" / "train.pt"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF                        # same size: passes pre-flight, fails the sha256 check
    path.write_bytes(bytes(data))
    res = _run(shards / "manifest.json", tmp_path)
    assert res.returncode != 0
    assert "client_2" in res.stderr and "exited with 1" in res.stderr
    assert all(gone(pid) for pid in _pids(tmp_path / "logs"))  # every process it started


@pytest.mark.parametrize("fixed_port", [False, True], ids=["port0", "fixed"])
def test_server_dying_before_serving_prints_its_log(shards, tmp_path, fixed_port):
    t = time.monotonic()
    res = _run(shards / "manifest.json", tmp_path, "--health-timeout", "300",
               "federate.total_round_num", "-3",  # a config error: the server exits at once
               port=free_port() if fixed_port else 0)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert "the server exited" in res.stderr and "server.log" in res.stderr
    assert "total_round_num" in res.stderr        # the tail of its log says why
    assert time.monotonic() - t < 120             # did not sit out the 300 s health timeout
    assert all(gone(pid) for pid in _pids(tmp_path / "logs"))


def test_bad_health_timeout_and_resume_without_checkpoint(shards, tmp_path):
    res = _run(shards / "manifest.json", tmp_path, "--health-timeout", "soon")
    assert res.returncode == 2 and "--health-timeout 300" in res.stderr
    res = _run(shards / "manifest.json", tmp_path, "--resume")
    assert res.returncode == 1 and "no checkpoint" in res.stderr


def test_managed_run_with_tokens_by_default_survives_ctrl_c_and_resumes(shards, tmp_path):
    """One managed job: tokens made by default, Ctrl-C after the first checkpoint, a new run
    refused, then --resume finishes all 8 rounds from the checkpoint."""
    logdir = tmp_path / "logs"
    # 8 light rounds (~0.5 s each here): Ctrl-C lands within 0.2 s of the first checkpoint,
    # seconds ahead of the end; what is learnt does not matter, only the lifecycle.
    # A user's Ctrl-C reaches a launcher whose SIGINT is at its default. A test run started in the
    # background (CI, `make test &`) inherits SIGINT *ignored*, and bash cannot trap a signal that
    # was ignored when it started: restore the default in the child, as a terminal would have it.
    proc = subprocess.Popen(_argv(shards / "manifest.json", logdir, *LIGHT_TRAINING, rounds=8),
                            cwd=str(tmp_path),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ckpt = logdir / "checkpoint.pt"     # checkpoint path set by default
    deadline = time.monotonic() + 240
    while not ckpt.exists():  # state, not a log line: the first round's checkpoint is on disk
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert "--resume" in err and all(gone(pid) for pid in _pids(logdir))
    assert len(_pids(logdir)) == 4                   # the server and 3 clients
    # tokens: made with the shards, 0600, the manifest keeps only their hashes
    assert "made 3 client tokens" in err
    entries = mu.load_manifest(str(shards / "manifest.json"))
    for k, e in entries.items():
        tok = shards / "tokens" / f"client_{k}.token"
        assert stat.S_IMODE(os.stat(tok).st_mode) == 0o600
        secret = tok.read_text().strip()
        assert e.token_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert secret not in (shards / "manifest.json").read_text()
    assert mu.read_writer_ids(str(shards / "manifest.json"), 1)  # the rewrite kept writer ids
    res = _run(shards / "manifest.json", tmp_path)  # a new run would overwrite it: refused
    assert res.returncode == 1 and "--resume" in res.stderr
    res = _run(shards / "manifest.json", tmp_path, "--resume", *LIGHT_TRAINING, logdir=logdir,
               rounds=8, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    log = (logdir / "server.log").read_text()
    assert "restored round" in log
    out = res.stdout
    assert "3 client shard(s) OK" in out and "server is SERVING" in out
    assert "no dataset is opened on the server" in out
    for k in (1, 2, 3):
        assert f"Client {k} loaded" in out and f"client {k}:" in out
    assert "final (round 8): weighted-avg test_acc=" in out
    assert "aggregated 3 update(s)" in out            # progress streamed from the server
    # the server required each client's token (tokens stay on for the resume): the job
    # finishing shows every client sent it
    assert "made 3 client tokens" not in res.stderr


def test_legacy_runs_any_client_count(femnist_root, tmp_path):
    """--legacy with 4 clients: the shipped YAML's data.subsample 0.05 (1 of 12 writers) must
    not cap it; the data comes from where the shards were cut."""
    run_script([os.path.join(ROOT, "scripts", "tools", "prepare_femnist_shards.py"), "--root",
                femnist_root, "--clients", "4", "--out", str(tmp_path / "s4"), "--no-progress"],
               check=True)
    res = _run(tmp_path / "s4" / "manifest.json", tmp_path, "--legacy")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "4 client shard(s) OK" in res.stdout and "final (round 1)" in res.stdout
    assert "loaded the whole dataset" in res.stdout


# ----------------------------------------------------------------------------- pre-flight, in-process
def _preflight(manifest, capsys, *a):
    from federatedscope.core.auxiliaries import launch_utils
    rc = launch_utils.preflight(str(manifest), *a)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _edit_meta(shard, **change):
    """Rewrite meta.json with other (self-consistent) values: it still reads, but differs."""
    meta = mu.read_meta(str(shard))
    for k, v in change.items():
        setattr(meta, k, v)
    mu.write_meta(str(shard), meta)


def test_preflight_compares_meta_with_the_manifest_fully(shards, capsys):
    rc, out, err = _preflight(shards / "manifest.json", capsys, "", True)
    assert rc == 0 and len(out.splitlines()) == 3 and err == ""
    meta = mu.read_meta(str(shards / "client_1"))
    hist = list(meta.label_hist["train"])
    i = next(i for i, v in enumerate(hist) if v)
    hist[i], hist[i - 1] = hist[i] - 1, hist[i - 1] + 1        # same count, other histogram
    _edit_meta(shards / "client_1", label_hist=dict(meta.label_hist, train=hist))
    meta3 = mu.read_meta(str(shards / "client_3"))
    _edit_meta(shards / "client_3", sample_shape=[32, 32])      # another sample type
    rc, out, err = _preflight(shards / "manifest.json", capsys, "", True)
    assert rc == 1 and out == ""
    assert "client 1:" in err and "label_hist" in err and f"class {min(i, i - 1 if i else i)}" in err
    assert "client 3:" in err and "uint8[32,32]" in err and "client 2" not in err
    assert "prepare_shards.py" in err and "--resume" in err
    _edit_meta(shards / "client_3", sample_shape=meta3.sample_shape,
               num_samples=dict(meta3.num_samples, val=meta3.num_samples["val"] + 1),
               label_hist=dict(meta3.label_hist, val=meta3.label_hist["val"][:-1]
                               + [meta3.label_hist["val"][-1] + 1]))
    rc, _, err = _preflight(shards / "manifest.json", capsys, "", True)
    assert rc == 1 and "client 3:" in err and "val count" in err


def test_preflight_refuses_symlink_outside(shards, tmp_path, capsys):
    outside = tmp_path / "outside_client_2"
    shutil.move(str(shards / "client_2"), str(outside))
    os.symlink(outside, shards / "client_2")
    rc, out, err = _preflight(shards / "manifest.json", capsys, "", True)
    assert rc == 1 and "client 2" in err and "symlink" in err and str(outside) in err


def test_preflight_token_files_checked(shards, capsys):
    rc, out, err = _preflight(shards / "manifest.json", capsys)  # makes tokens
    assert rc == 0 and "made 3 client tokens" in err
    assert all(line.split()[2].endswith(f"client_{line.split()[0]}.token") for line in out.splitlines())
    (shards / "tokens" / "client_2.token").write_text("guess\n")
    os.remove(shards / "tokens" / "client_3.token")
    rc, out, err = _preflight(shards / "manifest.json", capsys)
    assert rc == 1 and "client 2:" in err and "does not hash" in err and "client 3:" in err
    assert "make_client_tokens.py" in err
    rc, _, err = _preflight(shards / "manifest.json", capsys, "", True)
    assert rc == 1 and "drop --no-tokens" in err


def test_health_timeout_scales_with_clients_and_load(monkeypatch):
    from federatedscope.core.auxiliaries import launch_utils
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.5, 0, 0))
    idle3, idle10k = launch_utils.health_timeout(3), launch_utils.health_timeout(10_000)
    assert idle3 >= 120 and idle10k > idle3
    monkeypatch.setattr(os, "getloadavg", lambda: (8.0, 0, 0))  # 4 runnable per core
    assert launch_utils.health_timeout(3) >= 4 * 120


def test_server_refuses_zero_client_manifest(shards, tmp_path):
    """The server process, not only the launcher: it would otherwise wait for 0 clients forever."""
    d = json.loads((shards / "manifest.json").read_text())
    d["clients"], d["total_clients"] = [], 0
    (shards / "manifest.json").write_text(json.dumps(d))
    cfg = os.path.join(ROOT, "scripts", "distributed_scripts", "distributed_configs",
                       "distributed_femnist_server.yaml")
    res = subprocess.run([PY if os.path.exists(PY) else "python3", os.path.join(ROOT, "federatedscope", "main.py"),
                          "--cfg", cfg, "distribute.server_port", str(free_port()),
                          "outdir", str(tmp_path / "exp"),
                          "distributed_data.manifest", str(shards / "manifest.json")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 1 and "lists no clients" in res.stdout + res.stderr
    assert "--clients N" in res.stdout + res.stderr and "Traceback" not in res.stdout + res.stderr


def test_health_wait_gives_up_after_health_timeout(shards, tmp_path):
    """--health-timeout 0.3 against a server that needs seconds to import torch: the launcher gives
    up after about that long, says so with the option to raise, and stops the server it started."""
    t = time.monotonic()
    res = _run(shards / "manifest.json", tmp_path, "--health-timeout", "0.3", port=free_port())
    assert res.returncode == 1
    assert "not SERVING within 0.3s" in res.stderr and "--health-timeout" in res.stderr
    t = time.monotonic()
    res = _run(shards / "manifest.json", tmp_path, "--health-timeout", "0.3",
               logdir=tmp_path / "logs0")             # port 0: the port never came in time
    assert res.returncode == 1
    assert "the server logged no port within 0.3s (raise --health-timeout" in res.stderr
    assert "server.log) ends:" in res.stderr and time.monotonic() - t < 60
    assert all(gone(pid) for pid in _pids(tmp_path / "logs0"))
    assert "server.log) ends:" in res.stderr
    assert time.monotonic() - t < 60
    assert all(gone(pid) for pid in _pids(tmp_path / "logs"))
