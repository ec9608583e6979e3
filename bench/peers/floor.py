#!/usr/bin/env python
"""The plain-loop floor: single-process FedAvg in plain PyTorch on the same shard files.

What any FL system is compared with: no framework, no messages, no processes; per round, each
client in turn trains on its own shard, then the states are averaged. It follows this project's
rules so that accuracies must agree: FederatedScope's ConvNet2 built right after
``torch.manual_seed(seed)``; ``client_<k>/{train,val,test}.pt`` read with
``torch.load(weights_only=True)``, uint8 samples scaled to [0, 1] and normalised with FEMNIST's
mean/std; ``torch.optim.SGD`` (lr, no momentum), batch 10, one epoch, gradient norm clipped at 5,
batch order ``randperm(n, seed(round, client))`` as ``core/trainers/trainer.py`` draws it; FedAvg
as a float64 weighted mean by train count, ascending ids; evaluation after every round on test
and val, batches of 64 in file order, sample-weighted over clients.

    floor.py --shards DIR --clients 3 --rounds 5 --hidden 2048 --out report.json [--only K]
"""
import argparse
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

from bench.child import write_json  # noqa: E402
from federatedscope.cv.model.cnn import ConvNet2  # noqa: E402

MEAN, STD = 0.9637, 0.1592  # FEMNIST normalisation of the shipped configs
EVAL_BATCH = 64  # the trainer's evaluation batch: max(batch_size, 64)


def build_model(hidden: int) -> nn.Module:
    """The shipped configs' ConvNet2 for FEMNIST (build right after ``torch.manual_seed``)."""
    return ConvNet2(in_channels=1, hidden=hidden, class_num=62, dropout=0.0)


def load_split(shard: str, split: str):
    """(x uint8 [n,28,28], y int64 [n]) of one split file, or None if absent."""
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
        opt.zero_grad(set_to_none=True)
        (loss_fn(model(to_input(x[idx])), y[idx]) / len(idx)).backward()
        if a.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()


@torch.no_grad()
def evaluate(model, x, y) -> int:
    model.eval()
    return sum(int((model(to_input(x[s:s + EVAL_BATCH])).argmax(1) == y[s:s + EVAL_BATCH]).sum())
               for s in range(0, len(y), EVAL_BATCH))


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
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, typ, default in (("shards", str, None), ("clients", int, None), ("rounds", int, None),
                               ("out", str, None), ("hidden", int, 2048), ("lr", float, 0.01),
                               ("batch-size", int, 10), ("grad-clip", float, 5.0),
                               ("seed", int, 12345), ("only", int, 0)):
        p.add_argument(f"--{name}", type=typ, default=default, required=default is None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # what main.py does for every FL process
    torch.manual_seed(a.seed)
    model = build_model(a.hidden)
    # --only K: client K alone (its own FedAvg of one), to time trainers running side by side
    ids = [a.only] if a.only else range(1, a.clients + 1)
    data = {k: {s: load_split(os.path.join(a.shards, f"client_{k}"), s)
                for s in ("train", "val", "test")} for k in ids}
    t_ready, cpu_ready = time.perf_counter(), time.process_time()
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    rounds_s, accs = [], []
    for r in range(a.rounds):
        t, updates = time.perf_counter(), []
        for k, d in data.items():
            model.load_state_dict(global_state)
            train_one(model, *d["train"], train_seed(a.seed, k, r), a)
            updates.append((k, len(d["train"][1]),
                            {n: v.detach().clone() for n, v in model.state_dict().items()}))
        global_state = fedavg(updates)
        rounds_s.append(time.perf_counter() - t)
        model.load_state_dict(global_state)
        accs.append({split: sum(evaluate(model, *d[split]) for d in data.values() if d[split])
                     / max(1, sum(len(d[split][1]) for d in data.values() if d[split]))
                     for split in ("test", "val")})
    ru = resource.getrusage(resource.RUSAGE_SELF)
    rep = {"rounds_s": rounds_s, "acc": accs, "final_test_acc": accs[-1]["test"] if accs else None,
           "load_s": t_ready - T0, "wall_s": time.perf_counter() - T0,
           "rounds_cpu_s": time.process_time() - cpu_ready,
           "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_kb": ru.ru_maxrss}
    write_json(a.out, rep, indent=1)
    print(f"floor: {a.rounds} rounds, final test acc {rep['final_test_acc']:.4f}, "
          f"{rep['wall_s']:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
