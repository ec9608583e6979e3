#!/usr/bin/env python
"""Partition a registered dataset into per-client shard directories plus a manifest (offline).

    python scripts/tools/prepare_shards.py --dataset femnist --root data --clients 3
    -> data/femnist/shards/client_{1,2,3}/{train,val,test}.pt, meta.json; manifest.json

``--dataset`` is FS's ``data.type``; the input is read through that dataset's registered
DatasetSpec. Each client process later opens only its own ``client_<k>/``
(``distributed_data.shard_path``); the server opens only ``manifest.json``. Format:
federatedscope/core/data/shard_format/README.md; options: doc/distributed_data.md. The logic
lives in ``federatedscope.core.data.sharding`` so tests and benchmarks call it in-process.
"""
import argparse
import logging
import os
import shlex
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:  # runnable from any directory without installing
    sys.path.insert(0, _ROOT)

from federatedscope.core.auxiliaries.malloc_tuning import fixed_mmap_threshold  # noqa: E402
from federatedscope.core.auxiliaries.utils import setup_logger  # noqa: E402
from federatedscope.core.data.shard_format import ShardError  # noqa: E402
from federatedscope.core.data.sharding import ShardArgs, ShardingError, prepare_shards  # noqa: E402


def _splits(text: str):
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--splits {text!r}: expected three numbers like "
                                         f"0.6,0.2,0.2")
    if len(vals) != 3 or min(vals) < 0 or abs(sum(vals) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(f"--splits {text!r}: need three non-negative fractions "
                                         f"(train,val,test) summing to 1")
    return vals


def _workers(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 1:
        raise argparse.ArgumentTypeError(f"--workers {text!r}: expected a whole number >= 1 "
                                         f"(1 reads the input in this process)")
    return n


def parse_args(argv=None, dataset: str = "") -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    if not dataset:
        p.add_argument("--dataset", required=True, help="FS's data.type of the input (a "
                       "registered dataset spec, e.g. femnist)")
    p.add_argument("--root", default="data", help="data root, as FS's data.root (FEMNIST: "
                   "femnist/raw LEAF JSON, flat or train/ + test/, or femnist/processed/task_<k>/)")
    p.add_argument("--clients", type=int, default=3, help="number of clients N (ids 1..N)")
    p.add_argument("--strategy", choices=("sequential", "random", "manual", "lda", "iid"),
                   default="sequential",
                   help="writers -> clients: contiguous blocks of sorted writers, a seeded "
                        "shuffle, or --assignment; or samples -> clients by FS's splitter: "
                        "'lda' (label skew, --alpha) or 'iid' (needed for cifar10)")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="lda: Dirichlet concentration (FS's data.splitter_args alpha)")
    p.add_argument("--consistent-label-distribution", action="store_true",
                   help="lda/iid: split val/test by each client's train label shares (FS's "
                        "data.consistent_label_distribution)")
    p.add_argument("--assignment", default="",
                   help="manual strategy: JSON {\"1\": [writer ids], ...}")
    p.add_argument("--seed", type=int, default=12345, help="seeds the per-writer split, random "
                   "strategy and subsample")
    p.add_argument("--splits", type=_splits, default=(0.6, 0.2, 0.2),
                   help="per-writer train,val,test fractions (LEAF train/test input: val is "
                        "carved from train)")
    p.add_argument("--subsample", type=float, default=1.0, help="fraction of writers to use")
    p.add_argument("--out", default="", help="output dir (default <root>/<dataset>/shards)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--overwrite", action="store_true", help="replace an existing output (the new "
                   "set is built and verified beside it; a failed run leaves the old one as is)")
    g.add_argument("--resume", action="store_true", help="finish an interrupted run, keeping every "
                   "shard that verifies (refused if an option differs from that run's)")
    p.add_argument("--link", action="store_true", help="one packed copy + small per-client index "
                   "shards (clients then need read access to the packed file)")
    p.add_argument("--plot", action="store_true",
                   help="write label_distribution.png (clients x classes)")
    p.add_argument("--tokens", default="", metavar="DIR",
                   help="give every client a new secret token: DIR/client_<k>.token (mode 0600); "
                        "the manifest keeps only sha256 hashes")
    p.add_argument("--allow-empty-train", action="store_true",
                   help="accept clients whose train split is empty (refused otherwise)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--workers", type=_workers, default=0, help="processes parsing the input at "
                   "once, each holding one input file in memory (default: 2 for an input of "
                   "64 MiB or more on a machine with 2+ cores, else 1); the shards are the same")
    a = p.parse_args(argv)
    a.dataset = dataset or a.dataset
    return a


def main(argv=None, dataset: str = "", script: str = "prepare_shards.py") -> int:
    """``dataset`` fixed by a per-dataset wrapper (which then takes no --dataset)."""
    a = parse_args(argv, dataset)
    setup_logger()
    # each input file's text is freed before the next is read: with glibc's sliding threshold
    # the heap kept some of it, and the peak varied by 14 MB from run to run on the same input
    fixed_mmap_threshold()
    args = ShardArgs(dataset=a.dataset, root=a.root, clients=a.clients, strategy=a.strategy, assignment=a.assignment,
                     alpha=a.alpha, consistent=a.consistent_label_distribution,
                     seed=a.seed, splits=a.splits, subsample=a.subsample, out=a.out,
                     overwrite=a.overwrite, resume=a.resume, link=a.link, plot=a.plot,
                     progress=not a.no_progress, tokens=a.tokens,
                     allow_empty_train=a.allow_empty_train, workers=a.workers)
    raw = [x for x in (argv if argv is not None else sys.argv[1:])
           if x not in ("--overwrite", "--resume")]
    cmd = f"python scripts/tools/{script} " + " ".join(shlex.quote(x) for x in raw)
    try:
        s = prepare_shards(args, cmd=cmd.strip())
    except (ShardingError, ShardError, ValueError, FileNotFoundError) as e:
        logging.getLogger("federatedscope").error("%s", e)
        return 1  # user/data error (the message says the fix), like main.py
    print(f"prepared {args.dataset} shards: {s.line()}")
    if a.tokens:
        print(f"client tokens (mode 0600): {a.tokens}/client_<k>.token; hand each client its "
              f"own (distribute.token_file)")
    if s.plot:
        print(f"label distribution picture: {s.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
