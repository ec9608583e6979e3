"""One measured process: does one job, then writes its own /proc figures as JSON.

    python bench/child.py REPORT.json MODE [ARGS...]     (MODE: a key of ``MODES`` below)

Job modes (all but ``TOOL_MODES``) start as ``main.py`` does, re-executed with its huge-page
tunable, so a baseline compares with its job. Modes working after their imports reset the peak
(``/proc/self/clear_refs``) first, so ``peak_above_start_kb`` is the work's own growth, counted in
private pages (file-backed ones left out: ``private_peak_kb``). A tool (script mode) also reports
``tree``: the peak of its and its children's summed PSS (the shard tool's workers) and their CPU.
"""
import json
import os
import resource
import sys
import time

T_START = time.perf_counter()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == "__main__":
    sys.path[0] = ROOT  # not bench/: its module names must not shadow anything

from harness.proc_stats import (TreePeak, private_peak_kb, proc_io, reset_peak,  # noqa: E402
                                status)


def write_text(path: str, text: str) -> None:
    """Temp file + rename: a reader never sees half a file."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write_json(path: str, obj, **kw) -> None:
    write_text(path, json.dumps(obj, **kw))


def read_json(path: str):
    with open(path, "rb") as f:
        return json.load(f)


class Probe:
    """Marks the start of the measured work (after imports) and reports deltas."""

    def __init__(self):
        self.hwm0, self.io0 = status()["VmHWM"], proc_io()
        self.reset = reset_peak()
        self.st0, self.t0 = status(), time.perf_counter()

    def figures(self) -> dict:
        st, io = status(), proc_io()
        d = {"work_s": time.perf_counter() - self.t0, "rss_before_work_kb": self.st0["VmRSS"],
             "hwm_before_work_kb": self.hwm0, "peak_reset": self.reset,
             "io_during_work": {k: io[k] - self.io0[k] for k in io}}
        if self.reset:
            d["peak_above_start_kb"] = private_peak_kb(st) - (self.st0["VmRSS"]
                                                              - self.st0.get("RssFile", 0))
        # private heap vs file-backed (code, mmap) pages
        return dict(d, **{f"{k}_growth_kb": st[k] - self.st0[k] for k in ("RssAnon", "RssFile")})


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


def _load(spec_json: str):
    """Runtime imports, the config of ``{"cfg": YAML or null, "opts": [...]}``, a Probe, then
    ``get_data``: (cfg, probe, {client id: splits})."""
    runtime_imports()
    from federatedscope.core.auxiliaries.data_builder import get_data
    from federatedscope.core.configs.config import finalize, load_cfg
    from federatedscope.core.data.base_data import StandaloneDataDict
    spec = json.loads(spec_json)
    cfg = finalize(load_cfg(spec.get("cfg"), spec.get("opts", [])))
    probe = Probe()
    data, _ = get_data(cfg)
    if isinstance(data, StandaloneDataDict):
        return cfg, probe, {cid: c.splits()[0] for cid, c in data.items()}
    splits, loader = data.splits()
    return cfg, probe, {loader.meta.client_id if loader else cfg.distribute.data_idx: splits}


def mode_load(spec_json: str) -> dict:
    _, probe, clients = _load(spec_json)
    rep = probe.figures()
    rep["splits"] = {f"{cid}/{name}": {"samples": len(src), "tensor_bytes": _held(src),
                                       "kind": type(src).__name__}
                     for cid, splits in clients.items() for name, src in splits.items()}
    return rep


def _held(src) -> int:
    """Bytes of a split's in-memory x and y tensors (0 for a split that streams them)."""
    xy = [getattr(src, "x", None), getattr(src, "y", None)]
    return 0 if any(t is None for t in xy) else sum(t.numel() * t.element_size() for t in xy)


def _trainer(cfg, splits):
    from federatedscope.core.auxiliaries.model_builder import get_model
    from federatedscope.core.trainers.trainer import get_trainer
    return get_trainer(get_model(cfg), splits, "cpu", cfg)


def mode_stream(spec_json: str, passes: str, steps: str) -> dict:
    cfg, probe, clients = _load(spec_json)
    load_s = time.perf_counter() - probe.t0
    (splits,) = clients.values()
    train, bs, pass_s = splits["train"], cfg.dataloader.batch_size, []
    for p in range(int(passes)):
        t, seen = time.perf_counter(), 0
        for _, yb in train.iter_batches(bs, True, p):
            seen += len(yb)
        pass_s.append(time.perf_counter() - t)
        assert seen == len(train), (seen, len(train))
    rep = probe.figures()  # memory of loading + passes only; training adds torch's own costs
    rep.update({"load_s": load_s, "train_samples": len(train), "batch_size": bs,
                "pass_s": pass_s, "split_kind": type(train).__name__})
    if int(steps) > 0:
        import torch
        torch.manual_seed(0)
        trainer = _trainer(cfg, splits)
        trainer.train(seed=0)  # warm-up round: first-call costs (lazy imports) stay out
        t = time.perf_counter()
        rep["train_seen"] = trainer.train(seed=1)[2]["train_total"]
        rep["train_s"] = time.perf_counter() - t
    return rep


def mode_phases(spec_json: str) -> dict:
    """Where a training client's memory goes: RSS after each phase of one round, the peak reset
    before each phase (so each phase's own peak is visible)."""
    runtime_imports()
    phases = [("runtime", status(), len(sys.modules))]
    cfg, _, clients = _load(spec_json)   # its Probe resets the peak
    (splits,) = clients.values()
    trainer = _trainer(cfg, splits)
    steps = [("shard loaded, model built", lambda: None),
             ("one round of local training", lambda: trainer.train(seed=1)),
             ("evaluation (" + ", ".join(cfg.eval.split) + ")",
              lambda: [trainer.evaluate(s) for s in cfg.eval.split])]
    for name, work in steps:
        work()
        phases.append((name, status(), len(sys.modules)))
        reset_peak()
    return {"phases": [{"phase": n, "status_kb": st, "modules": m} for n, st, m in phases]}


def mode_main(*argv: str) -> dict:
    from federatedscope.main import main
    if os.environ.get("BENCH_WARM_TORCH"):
        # torch's first optimizer step lazily imports torch._dynamo (hundreds of modules):
        # benchmarks that time rounds do it before the clock
        import torch
        p = torch.nn.Parameter(torch.zeros(1))
        p.grad = torch.zeros(1)
        torch.optim.SGD([p], lr=0.1).step()
    return {"rc": main(list(argv)), "work_s": time.perf_counter() - T_START}


def mode_script(path: str, *argv: str, profile: bool = False) -> dict:
    import cProfile
    import importlib.util
    import pstats
    spec = importlib.util.spec_from_file_location("bench_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # imports happen here, before the clock starts
    prof, probe, tree = cProfile.Profile() if profile else None, Probe(), TreePeak()
    rc = prof.runcall(mod.main, list(argv)) if prof else mod.main(list(argv))
    rep = dict(probe.figures(), rc=rc or 0, tree=tree.figures())
    if prof:  # [name, calls, own s, cumulative s] of every function with >= 2 % of the time
        rep["profile"] = sorted(
            ([f"{os.path.basename(p)}:{line}:{name}" if p != "~" else name, calls,
              round(own, 3), round(cum, 3)]
             for (p, line, name), (_, calls, own, cum, _) in pstats.Stats(prof).stats.items()
             if cum >= 0.02 * rep["work_s"]), key=lambda r: -r[3])
    return rep


def _parse_pass(load, files) -> dict:
    probe, samples = Probe(), 0
    for path in files:  # one file in memory at a time
        d = load(path)
        samples += sum(len(u["y"]) for u in d["user_data"].values())
        del d
    return dict(probe.figures(), samples=samples)


def mode_jsonhook(*files: str) -> dict:
    """The sharding tool's own parse (json.loads with the interning ``parse_float`` hook)."""
    from federatedscope.cv.dataset.leaf_femnist import _load_json
    return _parse_pass(_load_json, files)


MODES = {"baseline": lambda: runtime_imports() or {},   # the runtime imports only
         "load": mode_load,            # SPEC: get_data
         "phases": mode_phases,        # SPEC: one round of training and evaluation
         "stream": mode_stream,        # SPEC P S: P timed passes over the batches, S steps
         "main": mode_main,            # ARGV: main.main
         "script": mode_script,        # PATH ARGV: a tool's main(argv), timed after imports
         "profile": lambda *a: mode_script(*a, profile=True),   # the same under cProfile
         "jsonfloor": lambda *files: _parse_pass(read_json, files),   # a bare json.load
         "jsonhook": mode_jsonhook}
# Modes timing a tool, which starts as a plain ``python`` process (no huge-page re-execution).
TOOL_MODES = ("script", "profile", "jsonfloor", "jsonhook")


def main() -> int:
    report_path, mode, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if mode not in TOOL_MODES:   # a job process (or its baseline) starts as main.py does
        from federatedscope.core.auxiliaries.malloc_tuning import reexec_with_hugepages
        reexec_with_hugepages()
    rep = MODES[mode](*args)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    st = status()
    rep.update({"mode": mode, "pid": os.getpid(), "io": proc_io(), "modules": len(sys.modules),
                "torch_dynamo_imported": "torch._dynamo" in sys.modules,
                "ctxt_switches": {k: st.pop(k) for k in list(st) if k.endswith("ctxt_switches")},
                "status_kb": st, "cpu_s": ru.ru_utime + ru.ru_stime,
                "wall_s": time.perf_counter() - T_START})
    write_json(report_path, rep, indent=1)
    return int(rep.get("rc", 0) or 0)


if __name__ == "__main__":
    sys.exit(main())
