"""Checks of a real job's eval_results.log that the server's own metric checks do not imply.

The server refuses a client's metrics outside [0, 1], so ``0 <= test_acc <= 1`` on the log can never
fail; what can go wrong is the arithmetic after that: the weighted average must be recomputable,
exactly, from the per-client lines it was made of."""
from typing import List

import pytest


def assert_final_matches_raw(lines: List[dict], clients: List[int]) -> float:
    """The last round's ``Results_raw`` (one entry per client in ``clients``) -> its weighted
    average and the Final line: test_acc = sum(correct) / sum(total), the counts are their mean
    over clients (as FS writes them), each client's accuracy is its own correct / total. Returns
    that accuracy."""
    rounds = [x for x in lines if not x.get("Final")]
    final = [x for x in lines if x.get("Final")]
    assert rounds and len(final) == 1, lines
    last = rounds[-1]
    raw = last["Results_raw"]
    assert sorted(raw) == [f"client #{c}" for c in sorted(clients)], raw
    correct = sum(r["test_correct"] for r in raw.values())
    total = sum(r["test_total"] for r in raw.values())
    assert total > 0 and all(r["test_total"] > 0 for r in raw.values())
    for name, r in raw.items():
        assert r["test_acc"] == pytest.approx(r["test_correct"] / r["test_total"], abs=1e-9), name
    want = correct / total
    wavg = last["Results_weighted_avg"]
    n = len(raw)
    assert wavg["test_total"] == pytest.approx(total / n, abs=1e-6)
    assert wavg["test_correct"] == pytest.approx(correct / n, abs=1e-6)
    assert wavg["test_acc"] == pytest.approx(want, abs=1e-6)
    assert final[0]["Round"] == last["Round"]
    assert final[0]["Results_weighted_avg"]["test_acc"] == pytest.approx(want, abs=1e-6)
    return want
