"""A script written the FS way (tests/fs_user_script.py) runs standalone and a real distributed
shard job; a run never appends to a previous run's results."""
import json
import os

from harness.procs import PY, ROOT, start, wait_all, wait_port

SCRIPT = os.path.join(ROOT, "tests", "fs_user_script.py")
CFG = os.path.join(ROOT, "scripts", "distributed_scripts", "distributed_configs")


def _start(args, log_path):
    return start([PY, SCRIPT] + list(args), log_path)


def _wait(procs, logs, timeout=240):
    """Exit codes; fails fast (with every log tail) as soon as any process exits non-zero."""
    return wait_all(procs, timeout, expect=[0] * len(procs))


def _eval_logs(out):
    return sorted(os.path.join(dp, "eval_results.log") for dp, _, fs in os.walk(out)
                  if "eval_results.log" in fs)


def _finals(path):
    return [json.loads(line) for line in open(path) if line.strip() and json.loads(line).get("Final")]


def _standalone_args(femnist_root, out):
    return ["--cfg", os.path.join(CFG, "distributed_femnist_server.yaml"), "federate.mode",
            "standalone", "distributed_data.enabled", "False", "data.root", femnist_root,
            "data.subsample", "1.0", "federate.client_num", "3", "federate.total_round_num", "1",
            "outdir", out]


def test_fs_script_standalone_twice_never_appends(femnist_root, tmp_path):
    out = str(tmp_path / "exp")
    for run in (1, 2):
        log = str(tmp_path / f"run{run}.log")
        assert _wait([_start(_standalone_args(femnist_root, out), log)], [log]) == [0]
        text = open(log).read()
        assert "user script: data is a StandaloneDataDict" in text
        assert "user server: 3 clients, 1 round(s)" in text
        assert text.count("user hook: client") == 3  # every client evaluated through the hook
        assert sorted(line.split("user server hook: ")[1] for line in text.splitlines()
                      if "user server hook: " in line) == \
            [f"model_para of client {k} for round 1" for k in (1, 2, 3)]
    logs = _eval_logs(out)
    # the second run got its own directory: two logs, each with exactly one Final line
    assert len(logs) == 2, logs
    assert [len(_finals(p)) for p in logs] == [1, 1]
    assert any(os.path.basename(os.path.dirname(p)).startswith("sub_exp_") for p in logs)


def test_fs_script_distributed_shard_mode(femnist_root, femnist_shards, tmp_path):
    out = str(tmp_path / "exp")
    common = ["outdir", out, "federate.total_round_num", "1",
              "data.root", str(tmp_path / "no_dataset_here")]  # shard mode never reads data.root
    logs = [str(tmp_path / "server.log")]
    procs = [_start(["--cfg", os.path.join(CFG, "distributed_femnist_server.yaml")] + common
                    + ["distributed_data.manifest", femnist_shards,
                       "distribute.server_port", "0"], logs[0])]
    common += ["distribute.server_port", str(wait_port(procs[0]))]
    shards = os.path.dirname(femnist_shards)
    for k in (1, 2, 3):
        logs.append(str(tmp_path / f"client_{k}.log"))
        procs.append(_start(["--cfg", os.path.join(CFG, "distributed_femnist_client_1.yaml")]
                            + common + ["distribute.client_id", str(k), "expname", f"client_{k}",
                                        "distributed_data.shard_path",
                                        os.path.join(shards, f"client_{k}")], logs[-1]))
    assert _wait(procs, logs) == [0, 0, 0, 0]
    server_text = open(logs[0]).read()
    assert "user script: data is a ServerManifest" in server_text
    assert "user server: 3 clients, 1 round(s)" in server_text     # FS's arguments, by name
    # the server subclass's override of callback_funcs_model_para ran for every update
    assert sorted(line.split("user server hook: ")[1] for line in server_text.splitlines()
                  if "user server hook: " in line) == \
        [f"model_para of client {k} for round 1" for k in (1, 2, 3)]
    for k in (1, 2, 3):
        text = open(logs[k]).read()
        assert "user script: data is a ClientShard" in text
        assert f"user hook: client {k} evaluates round 1" in text
    server_logs = [p for p in _eval_logs(out) if "client_" not in p]
    assert len(server_logs) == 1 and _finals(server_logs[0])[0]["Round"] == 1
