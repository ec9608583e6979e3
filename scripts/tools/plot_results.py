#!/usr/bin/env python
"""Redraw ``curves.png`` (accuracy and loss per round, per split) for a finished or running run.

    python scripts/tools/plot_results.py exp/FedAvg_convnet2_on_femnist    # a run's directory
    python scripts/tools/plot_results.py exp/                               # every run under it
    python scripts/tools/plot_results.py path/to/eval_results.log --out my.png

Each server ``eval_results.log`` found (client_* directories are skipped) gets ``curves.png``
next to it. Exit code 0 when every picture was drawn, 1 otherwise (the reason is printed).
"""
import argparse
import logging
import os
import sys
from typing import List

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:  # run from anywhere without installing
    sys.path.insert(0, _ROOT)

from federatedscope.core.monitors.curves import write_curves  # noqa: E402


def find_logs(path: str) -> List[str]:
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(d, "eval_results.log") for d, dirs, files in os.walk(path)
                  if "eval_results.log" in files and not os.path.basename(d).startswith("client"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", help="a run directory, a directory of runs, or an eval_results.log")
    ap.add_argument("--out", default="", help="PNG path (only with a single log)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logs = find_logs(a.path)
    if not logs:
        print(f"no eval_results.log under {a.path}: give the run's output directory "
              f"(<outdir>/<expname>) of a run that has evaluated at least once", file=sys.stderr)
        return 1
    if a.out and len(logs) > 1:
        print(f"--out needs a single run; {a.path} holds {len(logs)}", file=sys.stderr)
        return 1
    ok = True
    for log in logs:
        png = write_curves(log, a.out or os.path.join(os.path.dirname(log), "curves.png"))
        print(f"{log}: {png or 'not drawn (see above)'}")
        ok = ok and png is not None
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
