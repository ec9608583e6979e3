#!/usr/bin/env bash
# GPU check, one call (< 5 min on a GPU machine; not part of `make test`):
#   bench/gpu_check.sh [OUT_DIR]          (default bench/results/gpu_check)
# Runs the same small FEMNIST job (3 shards, 5 rounds, same seeds) standalone and shard-mode
# distributed (server + 3 client processes over loopback gRPC), on the CPU and on the GPU
# (use_gpu True). Checks the GPU's final models against the CPU's: relative L2 distance of all
# parameters <= 1e-3 and final weighted test accuracy within 0.02 (TF32 is switched off with
# NVIDIA_TF32_OVERRIDE=0, so only float32 summation order differs). Reports median time per
# round (rounds 2..5) GPU vs CPU. Writes OUT_DIR/gpu_check.json; exit 0 = within tolerance or
# no CUDA (skipped, one line says so), 1 = outside tolerance or a run failed.
# GPU_CHECK_FORCE_CPU=1 runs the "GPU" side on the CPU too (a dry run of this script anywhere).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${1:-bench/results/gpu_check}
if [ -z "${GPU_CHECK_FORCE_CPU:-}" ] && \
   ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: skipped: no CUDA device visible to $PY (torch.cuda.is_available() is False)"
  exit 0
fi
mkdir -p "$OUT"
export NVIDIA_TF32_OVERRIDE=0 CUBLAS_WORKSPACE_CONFIG=:4096:8 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" - "$OUT" <<'PYEOF'
import json, os, statistics, sys, time
import torch
from bench.common import GEN, PREPARE, final_acc, gen_argv, round_times, run_tool
from harness.jobs import SERVER_YAML, Job
from harness.procs import start_main, wait_all

out = os.path.abspath(sys.argv[1])
ROUNDS, REL_TOL, ACC_TOL = 5, 1e-3, 0.02
gpu = [] if os.environ.get("GPU_CHECK_FORCE_CPU") else ["use_gpu", "True", "device", "0"]
data, shards = os.path.join(out, "data"), os.path.join(out, "shards")
run_tool(GEN, gen_argv(data, writers=30, seed=1, mean=120, per_file=10))
run_tool(PREPARE, ["--root", data, "--clients", 3, "--out", shards, "--seed", 0, "--overwrite",
                   "--no-progress"])
manifest = os.path.join(shards, "manifest.json")
common = ["federate.total_round_num", str(ROUNDS), "eval.freq", str(ROUNDS)]


def result(tag, log, ckpt, wall):
    rounds = round_times(log)
    model = torch.load(ckpt, map_location="cpu", weights_only=True)["model"]
    return {"tag": tag, "round_s": statistics.median(rounds[1:]) if len(rounds) > 1 else None,
            "rounds_s": rounds, "final_test_acc": final_acc(log), "wall_s": wall, "model": model}


def standalone(tag, dev):
    d = os.path.join(out, tag)
    ckpt, log = os.path.join(d, "model.pt"), os.path.join(out, f"{tag}.log")
    os.makedirs(d, exist_ok=True)
    t = time.time()
    p = start_main(["--cfg", SERVER_YAML, "federate.mode", "standalone", "outdir", d,
                    "distributed_data.manifest", manifest, "federate.save_to", ckpt]
                   + common + dev, log)
    wait_all([p], 240, expect=[0])
    return result(tag, log, ckpt, time.time() - t)


def distributed(tag, dev):
    job = Job(os.path.join(out, tag), "", ROUNDS, manifest, common + dev)
    os.makedirs(job.tmp, exist_ok=True)
    t = time.time()
    procs = [job.server(["federate.save_to", job.ckpt])]
    procs += [job.client(k) for k in (1, 2, 3)]
    wait_all(procs, 240, expect=[0, 0, 0, 0])
    return result(tag, job.log("server"), job.ckpt, time.time() - t)


def compare(cpu, dev):
    num = sum(float((dev["model"][k].float() - v.float()).norm() ** 2) for k, v in cpu["model"].items())
    den = sum(float(v.float().norm() ** 2) for v in cpu["model"].values())
    rel = (num / den) ** 0.5
    dacc = abs(dev["final_test_acc"] - cpu["final_test_acc"])
    return {"rel_l2": rel, "acc_diff": dacc, "ok": rel <= REL_TOL and dacc <= ACC_TOL,
            "gpu_vs_cpu_round_time": dev["round_s"] / cpu["round_s"]}


runs = {}
for mode, fn in (("standalone", standalone), ("distributed", distributed)):
    runs[mode] = {"cpu": fn(f"{mode}_cpu", []), "gpu": fn(f"{mode}_gpu", gpu)}
report = {"device": torch.cuda.get_device_name(0) if gpu else "cpu (GPU_CHECK_FORCE_CPU)",
          "torch": torch.__version__, "rounds": ROUNDS,
          "tolerance": {"rel_l2": REL_TOL, "acc_diff": ACC_TOL}, "checks": {}}
for mode, r in runs.items():
    report["checks"][mode] = dict(compare(r["cpu"], r["gpu"]), **{
        side: {k: v for k, v in r[side].items() if k != "model"} for side in ("cpu", "gpu")})
with open(os.path.join(out, "gpu_check.json"), "w") as f:
    json.dump(report, f, indent=1)
for mode, c in report["checks"].items():
    print(f"gpu_check {mode}: final model rel L2 {c['rel_l2']:.2e} (<= {REL_TOL:g}), test acc "
          f"{c['gpu']['final_test_acc']} vs {c['cpu']['final_test_acc']}; time per round GPU "
          f"{c['gpu']['round_s']:.3f} s vs CPU {c['cpu']['round_s']:.3f} s "
          f"({c['gpu_vs_cpu_round_time']:.2f}x): {'OK' if c['ok'] else 'OUTSIDE TOLERANCE'}")
sys.exit(0 if all(c["ok"] for c in report["checks"].values()) else 1)
PYEOF
