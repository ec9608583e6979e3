"""One measured process: does one job, then writes its own /proc figures as JSON.

    python bench/child.py REPORT.json MODE [ARGS...]

Modes
  baseline            import torch + grpc + federatedscope (the runtime), nothing else
  load SPEC_JSON      the runtime, then ``get_data(cfg)``; SPEC = {"cfg": yaml|null, "opts": [...]}
  stream SPEC_JSON P S  ``load``, then P timed passes over the train split's batches and, if S > 0,
                      S timed training steps
  phases SPEC_JSON [lean]  ``load``, then one round of training and evaluation, RSS after each
                      phase; ``lean``: with a plain SGD update and evaluation batches of 64
  main ARGV...        ``federatedscope.main.main(argv)`` (a real server/client/standalone run;
                      with BENCH_WARM_TORCH=1, torch's lazy first-step imports happen first)
  script PATH ARGV... import a script as a module (untimed), then time its ``main(argv)``
  profile PATH ARGV... ``script`` under cProfile: the report adds where the time went (the
                      functions with >= 2 % of it, by cumulative time)
  jsonfloor FILE...   a bare ``json.load`` pass over FILEs, one file in memory at a time
  jsonhook FILE...    the same pass with the tool's parse (interning ``parse_float`` hook)

Peak RSS: every report has the process's ``VmHWM`` at exit. Modes that do work after imports
also reset the peak (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0) once the imports are done,
so ``peak_above_start_kb`` is the peak growth caused by the work alone, in the same process.
"""
import json
import os
import resource
import sys
import time

T_START = time.perf_counter()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[0] = ROOT  # not bench/: its module names must not shadow anything


def status_kb() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "VmPeak", "VmSize", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0])
    return out


def ctxt_switches() -> dict:
    with open("/proc/self/status") as f:
        return {k: int(v) for k, _, v in (line.partition(":") for line in f)
                if k in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")}


def proc_io() -> dict:
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(": ") for line in f if line.strip())}


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Probe:
    """Marks the start of the measured work (after imports) and reports deltas."""

    def __init__(self):
        self.st0 = status_kb()
        self.io0 = proc_io()
        self.reset = reset_peak()
        self.st_reset = status_kb()
        self.t0 = time.perf_counter()

    def figures(self) -> dict:
        st, io = status_kb(), proc_io()
        d = {"work_s": time.perf_counter() - self.t0, "rss_before_work_kb": self.st_reset["VmRSS"],
             "hwm_before_work_kb": self.st0["VmHWM"], "peak_reset": self.reset,
             "io_during_work": {k: io[k] - self.io0[k] for k in io}}
        if self.reset:
            d["peak_above_start_kb"] = st["VmHWM"] - self.st_reset["VmRSS"]
        for k in ("RssAnon", "RssFile"):  # private heap vs file-backed (code, mmap) pages
            d[f"{k}_growth_kb"] = st[k] - self.st_reset[k]
        return d


def runtime_imports() -> None:
    """What any federatedscope process imports before it touches data."""
    import grpc  # noqa: F401
    import torch
    import federatedscope.main  # noqa: F401  (installs the open audit when its env is set)
    from federatedscope.core import fed_runner  # noqa: F401
    from federatedscope.core.auxiliaries import data_builder  # noqa: F401
    from federatedscope.core.communication import grpc_client, grpc_server  # noqa: F401
    from federatedscope.core.data import distributed_loader  # noqa: F401
    from federatedscope.cv.dataset import leaf_femnist  # noqa: F401
    torch.set_num_threads(1)  # what main.py does


def _cfg(spec_json: str):
    """``{"cfg": YAML or null, "opts": [key, value, ...]}`` -> a finalized config."""
    from federatedscope.core.configs.config import finalize, load_cfg
    spec = json.loads(spec_json)
    return finalize(load_cfg(spec.get("cfg"), spec.get("opts", [])))


def _clients(data, cfg) -> dict:
    """client id -> splits, from what ``get_data`` returned (see core/auxiliaries/data_builder)."""
    from federatedscope.core.data.base_data import StandaloneDataDict
    if isinstance(data, StandaloneDataDict):
        return {cid: c.splits()[0] for cid, c in data.items()}
    splits, loader = data.splits()
    return {loader.meta.client_id if loader is not None else cfg.distribute.data_idx: splits}


def _held_bytes(data, cfg) -> dict:
    out = {}
    for cid, splits in _clients(data, cfg).items():
        for name, src in splits.items():
            x, y = getattr(src, "x", None), getattr(src, "y", None)
            held = (x.numel() * x.element_size() + y.numel() * y.element_size()) \
                if x is not None and y is not None else 0
            out[f"{cid}/{name}"] = {"samples": len(src), "tensor_bytes": held,
                                    "kind": type(src).__name__}
    return out


def mode_load(spec_json: str) -> dict:
    runtime_imports()
    from federatedscope.core.auxiliaries.data_builder import get_data
    cfg = _cfg(spec_json)
    probe = Probe()
    data, _ = get_data(cfg)
    rep = probe.figures()
    rep["splits"] = _held_bytes(data, cfg)
    return rep


def mode_stream(spec_json: str, passes: str, steps: str) -> dict:
    runtime_imports()
    import torch
    from federatedscope.core.auxiliaries.data_builder import get_data
    cfg = _cfg(spec_json)
    probe = Probe()
    data, _ = get_data(cfg)
    load_s = time.perf_counter() - probe.t0
    (cid, splits), = _clients(data, cfg).items()
    train = splits["train"]
    bs = cfg.dataloader.batch_size
    pass_s = []
    for p in range(int(passes)):
        t = time.perf_counter()
        seen = 0
        for xb, yb in train.iter_batches(bs, True, p):
            seen += len(yb)
        pass_s.append(time.perf_counter() - t)
        assert seen == len(train), (seen, len(train))
    rep = probe.figures()  # memory of loading + passes only; training adds torch's own costs
    rep.update({"load_s": load_s, "train_samples": len(train), "batch_size": bs,
                "pass_s": pass_s, "split_kind": type(train).__name__})
    if int(steps) > 0:
        from federatedscope.core.auxiliaries.model_builder import get_model
        from federatedscope.core.trainers.trainer import get_trainer
        torch.manual_seed(0)
        trainer = get_trainer(get_model(cfg), splits, "cpu", cfg)
        trainer.train(seed=0)  # warm-up round: first-call costs (lazy imports) stay out
        t = time.perf_counter()
        _, _, metrics = trainer.train(seed=1)
        rep["train_s"] = time.perf_counter() - t
        rep["train_seen"] = metrics["train_total"]
    return rep


class _PlainSGD:
    """What-if for ``phases lean``: the SGD update without ``torch.optim`` (no momentum/decay)."""

    def __init__(self, params, lr: float):
        self.params, self.lr = list(params), lr

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        import torch
        with torch.no_grad():
            for p in self.params:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-self.lr)


class _CapBatches:
    """What-if for ``phases lean``: a split whose batches are at most ``cap`` samples."""

    def __init__(self, src, cap: int):
        self.src, self.cap = src, cap

    def __len__(self) -> int:
        return len(self.src)

    def iter_batches(self, batch_size: int, shuffle: bool, seed: int):
        return self.src.iter_batches(min(batch_size, self.cap), shuffle, seed)


def mode_phases(spec_json: str, lean: str = "") -> dict:
    """Where a training client's memory goes: RSS after each phase of one round, with the
    peak reset before each phase (so each phase's own peak is visible). ``lean`` patches the
    trainer in this process only (plain SGD update, evaluation batches of 64) to measure what
    those two changes would save."""
    runtime_imports()
    from federatedscope.core.auxiliaries.data_builder import get_data
    from federatedscope.core.auxiliaries.model_builder import get_model
    from federatedscope.core.trainers.trainer import get_trainer
    cfg = _cfg(spec_json)
    phases = [("runtime", status_kb(), len(sys.modules))]
    reset_peak()
    data, _ = get_data(cfg)
    (cid, splits), = _clients(data, cfg).items()
    trainer = get_trainer(get_model(cfg), splits, "cpu", cfg)
    if lean:
        o = cfg.train.optimizer
        assert o.momentum == 0 and o.weight_decay == 0, "the plain SGD what-if has no momentum/decay"
        trainer._optimizer = lambda: _PlainSGD(trainer.model.parameters(), o.lr)
        trainer.data = {k: _CapBatches(v, 64) if k != "train" else v for k, v in trainer.data.items()}
    phases.append(("shard loaded, model built", status_kb(), len(sys.modules)))
    reset_peak()
    trainer.train(seed=1)
    phases.append(("one round of local training", status_kb(), len(sys.modules)))
    reset_peak()
    for split in cfg.eval.split:
        trainer.evaluate(split)
    phases.append(("evaluation (" + ", ".join(cfg.eval.split) + ")", status_kb(), len(sys.modules)))
    return {"phases": [{"phase": n, "status_kb": st, "modules": m} for n, st, m in phases]}


def warm_torch() -> None:
    """One SGD step on a dummy parameter: torch's first optimizer step lazily imports
    torch._dynamo (hundreds of modules); benchmarks that time rounds do it before the clock."""
    import torch
    p = torch.nn.Parameter(torch.zeros(1))
    p.grad = torch.zeros(1)
    torch.optim.SGD([p], lr=0.1).step()


def mode_main(*argv: str) -> dict:
    from federatedscope.main import main
    if os.environ.get("BENCH_WARM_TORCH"):
        warm_torch()
    rep = {"rc": main(list(argv))}
    rep["work_s"] = time.perf_counter() - T_START
    return rep


def mode_script(path: str, *argv: str, profile: bool = False) -> dict:
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # imports happen here, before the clock starts
    prof = None
    if profile:
        import cProfile
        prof = cProfile.Profile()
    probe = Probe()
    if prof is not None:
        prof.enable()
    rc = mod.main(list(argv))
    if prof is not None:
        prof.disable()
    rep = probe.figures()
    rep["rc"] = rc or 0
    if prof is not None:
        rep["profile"] = _top(prof, rep["work_s"])
    return rep


def _top(prof, total: float, share: float = 0.02) -> list:
    """[name, calls, own seconds, cumulative seconds] of every function with >= share of the time."""
    import pstats
    out = []
    for (path, line, name), (_, calls, own, cum, _) in pstats.Stats(prof).stats.items():
        if cum >= share * total:
            where = f"{os.path.basename(path)}:{line}:{name}" if path != "~" else name
            out.append([where, calls, round(own, 3), round(cum, 3)])
    return sorted(out, key=lambda r: -r[3])


def mode_profile(path: str, *argv: str) -> dict:
    return mode_script(path, *argv, profile=True)


def _parse_pass(load, files) -> dict:
    probe = Probe()
    samples = 0
    for path in files:  # one file in memory at a time
        d = load(path)
        samples += sum(len(u["y"]) for u in d["user_data"].values())
        del d
    rep = probe.figures()
    rep["samples"] = samples
    return rep


def mode_jsonfloor(*files: str) -> dict:
    def load(path):
        with open(path, "rb") as f:
            return json.load(f)
    return _parse_pass(load, files)


def mode_jsonhook(*files: str) -> dict:
    """The sharding tool's own parse (``leaf_femnist._load_json``: json.loads with the interning
    ``parse_float`` hook): the honest floor for the tool."""
    from federatedscope.cv.dataset.leaf_femnist import _load_json
    return _parse_pass(_load_json, files)


def mode_baseline() -> dict:
    runtime_imports()
    return {}


MODES = {"baseline": mode_baseline, "load": mode_load, "phases": mode_phases, "stream": mode_stream,
         "main": mode_main,
         "script": mode_script, "profile": mode_profile, "jsonfloor": mode_jsonfloor,
         "jsonhook": mode_jsonhook}


def main() -> int:
    report_path, mode, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    rep = MODES[mode](*args)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    rep.update({"mode": mode, "pid": os.getpid(), "status_kb": status_kb(), "io": proc_io(),
                "modules": len(sys.modules), "torch_dynamo_imported": "torch._dynamo" in sys.modules,
                "ctxt_switches": ctxt_switches(),
                "cpu_s": ru.ru_utime + ru.ru_stime,
                "wall_s": time.perf_counter() - T_START})
    tmp = report_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(rep, f, indent=1)
    os.replace(tmp, report_path)
    return int(rep.get("rc", 0) or 0)


if __name__ == "__main__":
    sys.exit(main())
