#!/usr/bin/env python
"""The plain-loop floor: single-process FedAvg in plain PyTorch on the same shard files.

What any FL system is compared with: no framework, no messages, no processes; one interpreter
that, per round, trains each client in turn on its own shard and averages the states. It follows
the same rules as this project so that accuracies must agree:

* model: FederatedScope's ConvNet2 (imported from the project: torch-only module), built right
  after ``torch.manual_seed(seed)``, as ``main.py`` does;
* data: ``client_<k>/{train,val,test}.pt`` read with ``torch.load(weights_only=True)``, uint8
  samples scaled to [0, 1] and normalised with FEMNIST's mean/std;
* training: ``torch.optim.SGD`` (lr, no momentum), batch 10, one epoch, gradient norm clipped at
  5, batch order ``randperm(n, seed(round, client))`` as ``core/trainers/trainer.py`` draws it;
* FedAvg: float64 weighted mean by train-sample count, clients in ascending id order;
* evaluation after every round on test and val, batches of 64 in file order; the reported
  accuracy is the sample-weighted mean over clients.

    floor.py --shards DIR --clients 3 --rounds 5 --hidden 2048 --out report.json

Writes a JSON report (per-round seconds, accuracies, CPU seconds, peak RSS) via temp + rename.
"""
import argparse
import json
import os
import resource
import sys
import time

T0 = time.perf_counter()
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if __name__ == "__main__":
    sys.path[0] = ROOT  # federatedscope's torch-only model module; bench/peers must not shadow
elif ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from federatedscope.cv.model.cnn import ConvNet2  # noqa: E402

MEAN, STD = 0.9637, 0.1592  # FEMNIST normalisation of the shipped configs
EVAL_BATCH = 64  # the trainer's evaluation batch: max(batch_size, 64)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="directory holding client_<k>/ shard dirs")
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--grad-clip", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--out", required=True, help="JSON report path")
    return p.parse_args(argv)


def load_split(shard: str, split: str):
    """(x float32 [n,1,28,28] normalised, y int64 [n]) of one split file, or None if absent."""
    path = os.path.join(shard, f"{split}.pt")
    if not os.path.isfile(path):
        return None
    d = torch.load(path, weights_only=True, map_location="cpu")
    return d["x"], d["y"]


def to_input(x_u8: torch.Tensor) -> torch.Tensor:
    return ((x_u8.to(torch.float32) / 255.0).unsqueeze(-3) - MEAN) / STD


def train_seed(seed: int, cid: int, rnd: int) -> int:
    # the project's Client: (cfg.seed * 1_000_003 + id) * 10_007 + round (0-based)
    return (seed * 1_000_003 + cid) * 10_007 + rnd


def train_one(model, x, y, seed: int, a) -> None:
    """One local epoch, in the trainer's batch order."""
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=a.lr)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    gen = torch.Generator()
    gen.manual_seed((seed * 1000003 + 0) % (2 ** 63))  # epoch 0's shuffle seed
    order = torch.randperm(len(y), generator=gen)
    for s in range(0, len(order), a.batch_size):
        idx = order[s:s + a.batch_size]
        xb, yb = to_input(x[idx]), y[idx]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        (loss / len(yb)).backward()
        if a.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()


@torch.no_grad()
def evaluate(model, x, y) -> int:
    model.eval()
    correct = 0
    for s in range(0, len(y), EVAL_BATCH):
        correct += int((model(to_input(x[s:s + EVAL_BATCH])).argmax(1) == y[s:s + EVAL_BATCH]).sum())
    return correct


def fedavg(updates):
    """[(cid, size, state)] -> float64 weighted mean, ascending cid, cast back per dtype."""
    updates = sorted(updates, key=lambda u: u[0])
    total = sum(n for _, n, _ in updates)
    out = {}
    for key, ref in updates[0][2].items():
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for _, n, st in updates:
            acc.add_(st[key].to(torch.float64), alpha=n / total)
        out[key] = acc.to(ref.dtype) if ref.is_floating_point() else acc.floor().to(ref.dtype)
    return out


def main(argv=None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(1)  # what main.py does for every FL process
    torch.manual_seed(a.seed)
    model = ConvNet2(in_channels=1, hidden=a.hidden, class_num=62, dropout=0.0)
    data = {}
    for k in range(1, a.clients + 1):
        shard = os.path.join(a.shards, f"client_{k}")
        data[k] = {s: load_split(shard, s) for s in ("train", "val", "test")}
    t_ready = time.perf_counter()
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    rounds_s, accs = [], []
    for r in range(a.rounds):
        t = time.perf_counter()
        updates = []
        for k, d in data.items():
            model.load_state_dict(global_state)
            train_one(model, *d["train"], train_seed(a.seed, k, r), a)
            updates.append((k, len(d["train"][1]), {n: v.detach().clone()
                                                     for n, v in model.state_dict().items()}))
        global_state = fedavg(updates)
        rounds_s.append(time.perf_counter() - t)
        model.load_state_dict(global_state)
        acc = {}
        for split in ("test", "val"):
            got = [(evaluate(model, *d[split]), len(d[split][1])) for d in data.values() if d[split]]
            acc[split] = sum(c for c, _ in got) / max(1, sum(n for _, n in got))
        accs.append(acc)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    rep = {"rounds_s": rounds_s, "acc": accs, "final_test_acc": accs[-1]["test"] if accs else None,
           "load_s": t_ready - T0, "wall_s": time.perf_counter() - T0,
           "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_kb": ru.ru_maxrss}
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(rep, f, indent=1)
    os.replace(tmp, a.out)
    print(f"floor: {a.rounds} rounds, final test acc {rep['final_test_acc']:.4f}, "
          f"{rep['wall_s']:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
