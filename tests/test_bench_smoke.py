"""The benchmark suite must not rot: run its cheapest benchmark the way `make bench` does."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_quick_wire_writes_results(tmp_path):
    results = tmp_path / "results"  # never the committed bench/results
    env = dict(os.environ, BENCH_RESULTS_DIR=str(results))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "run.py"), "--quick",
                        "--only", "wire"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads((results / "wire.json").read_text())
    assert res["name"] == "wire" and res["quick"] is True and "error" not in res
    assert res["machine"]["cpu_count"] >= 1 and res["machine"]["torch"]
    assert res["summary"]["max_ratio"] <= 1.001
    assert all(r["goal"] and r["met"] in (True, False) for r in res["rows"])
    report = (results / "REPORT.md").read_text()
    assert "## wire" in report and "| figure | value | goal | status |" in report
