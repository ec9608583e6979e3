"""Shared by every benchmark: rows, machine info, measured children and jobs, fixtures, logs.

Fixtures (generated data, shard sets) are reused while their stamp holds the same parameters;
measurements never are.
"""
import contextlib
import importlib.util
import io
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import time
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Dict, List, Optional, Sequence

from bench.child import read_json, write_json
from harness import procs
from harness.jobs import CLIENT_YAML, SERVER_YAML, Job
from harness.procs import MAIN, PY, ROOT, ProcessFailed

CHILD = os.path.join(ROOT, "bench", "child.py")
GEN = os.path.join(ROOT, "scripts", "tools", "generate_femnist_sample.py")
PREPARE = os.path.join(ROOT, "scripts", "tools", "prepare_femnist_shards.py")
MB = 1024 * 1024
# The FEMNIST-sized sample every data benchmark uses (>= 180 writers, >= 35,000 samples); the
# `large` profile is for full runs' memory, round and peer figures, so shards are large enough
# that fixed costs stop dominating.
BIG = dict(name="femnist180", writers=180, seed=0, mean=200, per_file=20)
LARGE = dict(name="femnist200", writers=200, seed=0, mean=225, per_file=20)


def median(xs) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


def timed(fn, repeats: int) -> List[float]:
    """Seconds of each of ``repeats`` calls of ``fn``."""
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def interleaved(fns: dict, repeats: int) -> dict:
    """{name: seconds of each call}: every function called once per repeat, in turn, so the
    machine's noise hits all alike."""
    rounds = [{k: timed(fn, 1)[0] for k, fn in fns.items()} for _ in range(repeats)]
    return {k: [r[k] for r in rounds] for k in fns}


def row(figure: str, value, display: str, goal: str, met: Optional[bool],
        headline: bool = False) -> dict:
    """One line of a benchmark's table: every figure carries its goal and whether it was met."""
    r = {"figure": figure, "value": value, "display": display, "goal": goal,
         "met": None if met is None else bool(met)}
    return dict(r, headline=True) if headline else r


def meminfo_mb() -> Dict[str, float]:
    with open("/proc/meminfo") as f:
        return {k: int(v.split()[0]) / 1024 for k, _, v in (line.partition(":") for line in f)
                if k in ("MemTotal", "MemAvailable")}


def drop_page_cache(paths) -> None:
    """Evict our own files from the page cache (fsync + POSIX_FADV_DONTNEED), so that
    ``read_bytes`` in /proc/<pid>/io counts what a cold process reads from disk."""
    for top in paths:
        files = [top] if os.path.isfile(top) else \
            [os.path.join(d, f) for d, _, fs in os.walk(top) for f in fs]
        for p in files:
            with contextlib.suppress(OSError):
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def dir_bytes(path: str, suffix: str = "") -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
               if f.endswith(suffix))


# What a run writes as it goes (JSONs, plots, the report, README's cost table): not a change to
# what the later benchmarks of the same run measure, so it does not make the tree dirty
OWN_OUTPUTS = (":(exclude)bench/results", ":(exclude)bench/REPORT.md", ":(exclude)README.md")


def git_state() -> tuple:
    """(HEAD's commit, whether the tree has local changes besides the suite's own outputs);
    ("?", None) without git."""
    try:
        commit, dirty = (subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True,
                                        timeout=10).stdout.strip()
                         for a in (("rev-parse", "HEAD"),
                                   ("status", "--porcelain", "--", ".", *OWN_OUTPUTS)))
        return commit, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return "?", None


def _version(module: str) -> str:
    try:
        return version(module)
    except PackageNotFoundError:
        return "?"


def machine_info() -> dict:
    import torch
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f
                      if line.startswith("model name")), "?")
    commit, dirty = git_state()
    mem = meminfo_mb()
    return {"cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "cpu_model": model, "mem_total_mb": round(mem.get("MemTotal", 0)),
            "mem_available_mb": round(mem.get("MemAvailable", 0)),
            "loadavg": list(os.getloadavg()), "kernel": platform.release(),
            "python": platform.python_version(), "torch": torch.__version__,
            **{m: _version(m) for m in ("grpcio", "protobuf", "numpy")},
            "git_commit": commit, "git_dirty": dirty}


# ----------------------------------------------------------------------------- a run's logs
_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_lines(path: str) -> list:
    """(epoch seconds, line) for every timestamped line of an FS-format log."""
    with open(path, errors="replace") as f:
        return [(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp(), line)
                for line in f for m in [_TS.match(line)] if m]


def log_times(path: str, text: str) -> List[float]:
    return [t for t, line in log_lines(path) if text in line]


def log_floats(path: str, pattern: str) -> List[float]:
    with open(path, errors="replace") as f:
        return [float(x) for x in re.findall(pattern, f.read())]


def round_times(server_log: str) -> List[float]:
    """Seconds per round from the server's 'round i/N aggregated ... in X s' lines."""
    return log_floats(server_log, r"round \d+/\d+ aggregated .* in ([0-9.]+)s")


def final_acc(log: str) -> Optional[float]:
    accs = log_floats(log, r"final weighted-avg test_acc=([0-9.]+)")
    return accs[-1] if accs else None


# ----------------------------------------------------------------------------- measured children
def spawn(argv: Sequence, log_path: str, env: Optional[dict] = None, cpus=None, cwd=ROOT):
    # OMP_NUM_THREADS unset: main.py picks 1 intra-op thread, as users get
    return procs.start(argv, log_path, dict({"OMP_NUM_THREADS": None}, **(env or {})), cpus=cpus,
                       cwd=cwd)


def spawn_child(report: str, mode: str, args: Sequence, log_path: str, **kw):
    """Start ``bench/child.py``; its JSON report lands in ``report`` when it exits."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(report)
    return spawn([PY, CHILD, report, mode] + [str(a) for a in args], log_path, **kw)


def load_report(report: str, log_path: str) -> dict:
    try:
        return read_json(report)
    except (OSError, ValueError):
        raise ProcessFailed(f"no report from child ({report}); log tail:\n"
                            f"{procs.tail(log_path)}") from None


def checked(ctx, what: str, code: Optional[int], report: str, log: str) -> dict:
    """The child's report. A child that wrote its report (rc 0) and then died at interpreter
    exit (e.g. SIGABRT from a C++ thread during teardown) keeps its figures; the exit becomes a
    note of the benchmark, never hidden. Anything else fails the run."""
    if code == 0:
        return load_report(report, log)
    rep = load_report(report, log) if code is not None and os.path.exists(report) else None
    if rep is None or rep.get("rc", 0) != 0:
        raise ProcessFailed(f"{what}: exit code {code}; log tail:\n{procs.tail(log)}")
    last = [line for line in procs.tail(log, 400).splitlines() if line.strip()][-1:]
    ctx.warn(f"{what} wrote its figures, then exited with code {code} at interpreter shutdown "
             f"(last log line: {last[0][:160] if last else '-'!r}): a framework crash at exit, "
             f"not a benchmark artefact; log: {os.path.relpath(log, ctx.work)}.")
    return rep


def run_child(ctx, tag: str, mode: str, args: Sequence, timeout: float = 600, **kw) -> dict:
    report, log = ctx.tmp(f"{tag}.json"), ctx.tmp(f"{tag}.log")
    p = spawn_child(report, mode, args, log, **kw)
    return checked(ctx, tag, procs.wait_all([p], timeout, check=False)[0], report, log)


class BenchJob(Job):
    """``harness.jobs.Job`` whose processes run under ``bench/child.py main`` (``measured``: each
    reports its own VmHWM / io / CPU at exit into ``reports[name]``), pinned to ``cpus``."""

    def __init__(self, ctx, tag: str, manifest: Optional[str], clients: int, rounds: int,
                 extra: Sequence[str] = (), data_root: str = "", measured: bool = True, cpus=None):
        os.makedirs(ctx.tmp(tag), exist_ok=True)
        super().__init__(ctx.tmp(tag), data_root, rounds, manifest, extra, clients,
                         outdir=ctx.tmp(f"{tag}_exp"))
        self.ctx, self.tag, self.measured, self.cpus = ctx, tag, measured, cpus
        self.reports: Dict[str, str] = {}
        self.procs: list = []

    def launch(self, args: List[str], name: str, env=None):
        if not self.measured:
            p = spawn([PY, MAIN] + list(args), self.log(name), env, self.cpus)
        else:
            self.reports[name] = os.path.join(self.tmp, f"{name}.json")
            p = spawn_child(self.reports[name], "main", args, self.log(name), env=env,
                            cpus=self.cpus)
        self.procs.append(p)
        return p

    def start(self, env: Optional[dict] = None, server_env: Optional[dict] = None) -> "BenchJob":
        """Server (binds port 0) + every client once the server logged its port."""
        self.t0 = time.perf_counter()
        try:
            self.server(env=dict(env or {}, **(server_env or {})))
            for k in range(1, self.clients + 1):
                self.client(k, env=env)
        except Exception:
            procs.stop_all(self.procs)
            raise
        return self

    def finish(self, timeout: float = 600) -> dict:
        """{"server": report, "clients": {k: report}, "wall_s", "logs"}. A process that exits
        non-zero without its report means the job cannot finish: the wait ends at once and the
        error carries that process's log tail (the cause first, then clients, then the server)."""
        names = [p.name for p in self.procs]

        def settled() -> bool:
            codes = [p.poll() for p in self.procs]
            return None not in codes or any(c not in (None, 0) and not os.path.exists(
                self.reports[n]) for c, n in zip(codes, names))
        with contextlib.suppress(ProcessFailed):   # the hang guard: checked() names who hung
            procs.wait_for(settled, timeout, f"job {self.tag}", poll=0.2)
        codes = procs.wait_all(self.procs, 0, check=False)
        wall = time.perf_counter() - self.t0
        order = sorted(range(len(names)), key=lambda i: (codes[i] in (0, None), i == 0))
        reps = {names[i]: checked(self.ctx, f"job {self.tag}, {names[i]}", codes[i],
                                  self.reports[names[i]], self.log(names[i])) for i in order}
        return {"server": reps.pop("server"),
                "clients": {int(n.split("_")[1]): reps[n] for n in names[1:]},
                "wall_s": wall, "logs": {n: self.log(n) for n in names}}


def standalone_argv(manifest: str, outdir: str, rounds: int, extra: Sequence[str] = ()) -> list:
    """The same job in one process (``federate.mode standalone`` over the same shards)."""
    return ["--cfg", SERVER_YAML, "outdir", outdir, "federate.total_round_num", str(rounds),
            "federate.mode", "standalone", "distributed_data.enabled", "True",
            "distributed_data.manifest", manifest] + list(extra)


def model_bytes(*opts: str) -> int:
    """Raw tensor bytes (parameters + buffers) of the shipped config's model with ``opts``."""
    from federatedscope.core.auxiliaries.model_builder import get_model
    from federatedscope.core.communication.codec import raw_tensor_bytes
    from federatedscope.core.configs.config import load_cfg
    return raw_tensor_bytes(get_model(load_cfg(SERVER_YAML, list(opts))).state_dict())


def no_logs(res: dict) -> dict:
    return {k: v for k, v in res.items() if k != "logs"}  # logs are paths in the scratch dir


def sample_procs(named: dict, read, period: float) -> list:
    """[(time.time(), {name: read(pid), None where unreadable})] every ``period`` s, until every
    process of ``named`` ({name: Popen}) has exited."""
    series = []
    while any(p.poll() is None for p in named.values()):
        sample = {}
        for n, p in named.items():
            try:
                sample[n] = read(p.pid)
            except (OSError, IndexError, KeyError, ValueError):
                sample[n] = None
        series.append((time.time(), sample))
        time.sleep(period)
    return series


def save_plot(ctx, name: str, draw, figsize=(6, 3.5)) -> list:
    """``draw(ax)`` on one Agg figure saved as ``name`` in the results dir: [name], or [] without
    matplotlib (the figures are in the JSON either way)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    fig, ax = plt.subplots(figsize=figsize)
    draw(ax)
    fig.tight_layout()
    fig.savefig(os.path.join(ctx.results_dir, name), dpi=100)
    plt.close(fig)
    return [name]


# ----------------------------------------------------------------------------- fixtures
def fixture(ctx, out: str, params: dict, what: str, build) -> dict:
    """``build()`` into a fresh ``out`` unless ``out/stamp.json`` holds ``params``; what build
    returns (how the fixture was made) is kept beside the stamp and returned, with ``reused``."""
    stamp, made = os.path.join(out, "stamp.json"), os.path.join(out, "generation.json")
    with contextlib.suppress(OSError, ValueError):
        if read_json(stamp) == params:
            with contextlib.suppress(OSError, ValueError):
                return dict(read_json(made), reused=True)
            return {"reused": True}
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    ctx.log(f"  {what}")
    rep = build() or {}
    write_json(made, rep)
    write_json(stamp, params)
    return dict(rep, reused=False)


def run_tool(tool: str, argv: List) -> None:
    """``tool``'s ``main(argv)`` in this process (saves a Python start-up); its output is kept
    for the error message."""
    spec = importlib.util.spec_from_file_location(f"bench_tool_{os.path.basename(tool)[:-3]}", tool)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        rc = mod.main([str(a) for a in argv])
    if rc:
        raise ProcessFailed(f"{os.path.basename(tool)} {' '.join(map(str, argv))} failed ({rc}):\n"
                            f"{buf.getvalue()[-2000:]}")


def gen_argv(out: str, writers: int, seed: int, mean: float, per_file: int) -> list:
    return ["--out", os.path.join(out, "femnist", "raw"), "--writers", writers, "--seed", seed,
            "--samples-per-writer-mean", mean, "--writers-per-file", per_file]


def dataset(ctx, name: str, writers: int, seed: int, mean: float, per_file: int) -> str:
    """A generated LEAF FEMNIST sample; returns the data root (holding femnist/raw)."""
    root = os.path.join(ctx.work, "data", name)
    fixture(ctx, root, {"writers": writers, "seed": seed, "mean": mean, "per_file": per_file,
                        "v": 1}, f"generating data set {name} ({writers} writers)",
            lambda: run_tool(GEN, gen_argv(root, writers, seed, mean, per_file)))
    return root


def big_dataset(ctx) -> str:
    return ctx.memo("big_dataset", lambda: dataset(ctx, **BIG))


def figures_dataset(ctx) -> str:
    """The data set of the memory and round figures: `large` in full runs, BIG with --quick."""
    return big_dataset(ctx) if ctx.quick else ctx.memo("large", lambda: dataset(ctx, **LARGE))


def shards(ctx, data_root: str, n: int) -> str:
    """Shards of ``data_root`` for ``n`` clients (sequential, seed 0); returns manifest.json."""
    out = os.path.join(ctx.work, "shards", f"{os.path.basename(data_root)}_n{n}")
    raw = os.path.join(data_root, "femnist", "raw")
    fixture(ctx, out, {"root": data_root, "n": n, "raw_mtime": os.stat(raw).st_mtime_ns, "v": 1},
            f"preparing {n} shards of {os.path.basename(data_root)}", lambda: run_tool(PREPARE, [
                "--root", data_root, "--clients", n, "--out", out, "--strategy", "sequential",
                "--seed", 0, "--overwrite", "--no-progress"]))
    return os.path.join(out, "manifest.json")


def shard_dir(manifest: str, k: int) -> str:
    return os.path.join(os.path.dirname(manifest), f"client_{k}")


def shard_meta(manifest: str, k: int):
    from federatedscope.core.data.shard_format import read_meta
    return read_meta(shard_dir(manifest, k))


def shard_tensor_bytes(manifest: str, k: int) -> int:
    """uint8 [28,28] samples + int64 labels of client k's shard, from its meta.json counts."""
    return sum(shard_meta(manifest, k).num_samples.values()) * (28 * 28 + 8)


def shard_load_spec(manifest: str, k: int, streaming: bool = False, extra: Sequence = ()) -> str:
    return json.dumps({"cfg": CLIENT_YAML, "opts": [
        "distributed_data.enabled", "True", "distributed_data.shard_path", shard_dir(manifest, k),
        "distribute.client_id", str(k), "distributed_data.streaming", str(streaming),
        *extra]})
