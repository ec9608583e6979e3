#!/usr/bin/env python
"""Run the benchmark suite, write ``<results>/<name>.json`` and regenerate the report.

    python bench/run.py                      # full suite
    python bench/run.py --quick              # fewer repeats, smaller sizes
    python bench/run.py --only wire,idle_cpu # some benchmarks; the report covers all JSONs
    python bench/run.py --peers [--quick]    # only peers (floor, this project, Flower)
    nice -n 10 python bench/run.py --only fullsize  # LEAF FEMNIST's size (not default)

How long each takes: bench/README.md. ``--results-dir`` (or ``BENCH_RESULTS_DIR``) sends the
JSONs, plots and report elsewhere (the smoke test uses it).
"""
import argparse
import importlib
import os
import shutil
import sys
import time
import traceback
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[0] = ROOT  # import as the ``bench`` package; bench/ itself must not shadow modules

from bench import common, render_readme, report  # noqa: E402

BENCHMARKS = report.ORDER + report.EXTRA  # the default run is report.ORDER
DEFAULT_RESULTS = os.path.join(ROOT, "bench", "results")


class Ctx:
    """What a benchmark gets: mode, scratch paths, memoised fixtures, a logger."""

    def __init__(self, quick: bool, results_dir: str):
        self.quick, self.results_dir = quick, results_dir
        self.work = os.path.join(results_dir, "tmp")
        self.bench, self.warnings, self._memo = "", [], {}
        self.t0 = time.perf_counter()

    def start(self, name: str) -> None:
        self.bench, self.warnings = name, []
        shutil.rmtree(self.tmp(""), ignore_errors=True)
        os.makedirs(self.tmp(""))

    def tmp(self, name: str) -> str:
        """A scratch path for this benchmark (wiped at its next run)."""
        return os.path.join(self.work, "run", self.bench, name)

    def memo(self, key: str, fn):
        return self._memo[key] if key in self._memo else self._memo.setdefault(key, fn())

    def warn(self, msg: str) -> None:
        """Something the report must show (it becomes a note of the running benchmark)."""
        self.warnings.append(msg)
        self.log(f"  WARNING: {msg}")

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", flush=True)


def run_one(ctx: Ctx, name: str, machine: dict) -> dict:
    mod = importlib.import_module("bench.peers.compare" if name == "peers" else f"bench.{name}")
    ctx.start(name)
    ctx.log(f"{name}: {mod.TITLE}")
    started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    load_at_start, t = list(os.getloadavg()), time.perf_counter()
    try:
        res = mod.run(ctx)
    except Exception:
        res = {"error": traceback.format_exc()[-4000:], "rows": []}
        ctx.log(f"{name}: FAILED\n{res['error']}")
    if ctx.warnings:
        res["notes"] = list(res.get("notes", [])) + ctx.warnings
    res.update({"name": name, "title": mod.TITLE, "quick": ctx.quick, "started": started,
                "duration_s": round(time.perf_counter() - t, 2),
                "machine": dict(machine, loadavg_at_bench_start=load_at_start,
                                loadavg_after=list(os.getloadavg()))})
    common.write_json(os.path.join(ctx.results_dir, f"{name}.json"), res, indent=1, default=float)
    for r in res.get("rows", []):
        mark = {True: "met", False: "MISSED", None: "-"}[r["met"]]
        ctx.log(f"  {r['figure']}: {r['display']}  (goal {r['goal']}: {mark})")
    ctx.log(f"{name}: done in {res['duration_s']:.1f}s")
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats, smaller sizes")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    p.add_argument("--peers", action="store_true", help="run only the peers benchmark: floor, "
                   "this project and Flower (needs .venv-peers: make bench-peers)")
    p.add_argument("--results-dir", default=os.environ.get("BENCH_RESULTS_DIR", DEFAULT_RESULTS),
                   help="where <name>.json, plots, scratch (tmp/) and (unless the default) "
                   "REPORT.md go")
    a = p.parse_args(argv)
    names = [n.strip() for n in a.only.split(",") if n.strip()] or (
        ["peers"] if a.peers else report.ORDER)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {BENCHMARKS}", file=sys.stderr)
        return 2
    results_dir = os.path.abspath(a.results_dir)
    default = results_dir == os.path.abspath(DEFAULT_RESULTS)
    report_path = os.path.join(ROOT, "bench" if default else results_dir, "REPORT.md")
    ctx, machine = Ctx(a.quick, results_dir), common.machine_info()
    os.makedirs(ctx.work, exist_ok=True)
    ctx.log(f"{'quick' if a.quick else 'full'} run of {names} on {machine['cpus_usable']} CPU(s), "
            f"load {machine['loadavg'][0]:.2f}")
    failed = [n for n in names if "error" in run_one(ctx, n, machine)]
    report.write(results_dir, report_path)
    if default:  # README's cost table follows the JSONs
        render_readme.write()
    ctx.log(f"report: {report_path}; total {time.perf_counter() - ctx.t0:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
