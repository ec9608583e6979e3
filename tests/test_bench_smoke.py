"""The benchmark suite must not rot: run its cheapest benchmark the way `make bench` does."""
import json
import os
import subprocess
import sys
from harness.procs import run_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_quick_wire_writes_results(tmp_path):
    results = tmp_path / "results"  # never the committed bench/results
    env = dict(os.environ, BENCH_RESULTS_DIR=str(results))
    r = run_script([os.path.join(ROOT, "bench", "run.py"), "--quick",
                        "--only", "wire"], cwd=ROOT, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((results / "wire.json").read_text())
    assert res["name"] == "wire" and res["quick"] is True and "error" not in res
    assert res["machine"]["cpu_count"] >= 1 and res["machine"]["torch"]
    assert res["summary"]["max_ratio"] <= 1.001
    assert all(r["goal"] and r["met"] in (True, False) for r in res["rows"])
    report = (results / "REPORT.md").read_text()
    assert "## wire" in report and "| figure | value | goal | status |" in report


def _final_acc(log: str) -> float:
    import re
    m = re.findall(r"final weighted-avg test_acc=([0-9.]+)", log)
    assert m, log[-2000:]
    return float(m[-1])


def test_floor_reaches_the_projects_accuracy(femnist_shards, tmp_path):
    """The plain-loop floor follows the project's rules (model init, batch order, clipping,
    FedAvg, evaluation): on the same shards it ends at the same test accuracy as standalone."""
    from harness.procs import PY, start, start_main, wait_all
    shards = os.path.dirname(femnist_shards)
    out = tmp_path / "floor.json"
    floor_proc = start([PY, os.path.join(ROOT, "bench", "peers", "floor.py"), "--shards", shards,
                        "--clients", "3", "--rounds", "2", "--hidden", "32", "--out", str(out)],
                       str(tmp_path / "floor.log"))
    standalone = start_main(["--cfg", os.path.join(ROOT, "scripts", "distributed_scripts",
                                                   "distributed_configs",
                                                   "distributed_femnist_server.yaml"),
                             "federate.mode", "standalone", "distributed_data.manifest",
                             femnist_shards, "federate.total_round_num", "2", "model.hidden", "32",
                             "outdir", str(tmp_path / "exp")], str(tmp_path / "standalone.log"))
    wait_all([floor_proc, standalone], timeout=300, expect=[0, 0])
    floor = json.loads(out.read_text())
    assert len(floor["rounds_s"]) == 2 and floor["cpu_s"] > 0 and floor["peak_rss_kb"] > 0
    assert round(floor["final_test_acc"], 4) == _final_acc((tmp_path / "standalone.log").read_text())


def test_tree_counts_cpu_of_orphaned_grandchildren():
    """Flower's helpers outlive their parents; their CPU must still be counted. A child starts a
    detached grandchild that burns ~0.6 s of CPU and exits at once: the tree's CPU includes it."""
    from harness.proc_tree import Tree
    burn = ("import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6:\n    pass\n")
    spawner = ("import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', sys.argv[1]], "
               "start_new_session=True)\n")
    with Tree() as t:
        p = subprocess.Popen([sys.executable, "-c", spawner, burn])
        assert p.wait(timeout=60) == 0
        deadline = __import__("time").monotonic() + 60
        # wait (on state) for the orphan to finish: no process of the tree left alive but the
        # tests' own fork server (tests/conftest.py), which lives as long as this test process
        from harness.proc_stats import descendants
        from harness.proc_tree import _read
        from harness import procs
        zygote = procs.FORK_SERVER.pid if procs.FORK_SERVER is not None else None
        while any(_read(q) is not None for q in descendants(os.getpid()) if q != zygote):
            assert __import__("time").monotonic() < deadline
            __import__("time").sleep(0.05)
        t.mark_end()
    assert t.result.cpu_s >= 0.5, t.result
    assert any(pr.cpu_s > 0 for pr in t.result.procs)


def test_the_floor_imports_in_the_peers_environment():
    """Flower's apps import the floor (and through it the cv package for ConvNet2) in
    .venv-peers, which has flwr, torch, numpy and psutil but none of the project's own runtime
    dependencies: importing it must not need yacs, PyYAML or Pillow."""
    code = ("import sys\n"
            "for m in ('yacs', 'yaml', 'PIL'):\n    sys.modules[m] = None\n"
            "from bench.peers import floor\n"
            "print(floor.ConvNet2.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ConvNet2"
