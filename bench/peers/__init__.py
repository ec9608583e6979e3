"""peers: the plain-loop floor, this project (standalone and distributed) and Flower, side by side.

Kept light on purpose: Flower's ClientApp/ServerApp processes import ``bench.peers.floor`` from
their own virtual environment, so nothing here may import the project's runtime at import time.
The benchmark itself lives in ``bench/peers/compare.py``.
"""
TITLE = "Peers measured: plain-loop floor, this project, Flower, on the same shard files"


def run(ctx) -> dict:
    from bench.peers.compare import run as _run
    return _run(ctx)
