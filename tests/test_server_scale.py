"""The server's cost per message does not grow with the number of clients (fake transport,
in-process): who is online and on which connection is indexed, the claim cap's median is
computed once per change of declarations, and the time checks that scan every client run a few
times a second, not after each message (core/fed_runner.py). A scan per message made a round of
3,550 clients quadratic (bench/results/fullsize.json)."""
import time

import torch

from federatedscope.core.message import EVALUATE, MODEL_PARA
from server_harness import Harness, good_metrics


def _round_cpu_per_update(tmp, n: int) -> float:
    """CPU seconds per message of one round at ``n`` clients: joins, updates, metrics and a
    heartbeat each, ticked as the runner ticks (TICK_EVERY_S)."""
    from federatedscope.core.fed_runner import TICK_EVERY_S
    h = Harness(tmp, "federate.total_round_num", 2, "eval.freq", 1, "federate.online_aggr",
                "True", "model.hidden", 2, expected=n)
    server, handle, last = h.server, h.server.handle, [0.0]

    def ticking(event):
        handle(event)
        now = time.monotonic()
        if now - last[0] >= TICK_EVERY_S:
            server.tick()
            last[0] = now
    server.handle = ticking
    t0 = time.process_time()
    for c in range(1, n + 1):
        h.join(c)
    state = h.shifted(0.01)
    for c in h.asked(MODEL_PARA, 0):
        h.update(c, 0, state)
    for c in h.asked(EVALUATE, 1):
        h.metrics(c, 1, good_metrics())
    for c in range(1, n + 1):
        h.send(c, "heartbeat", 1)
    assert server.round == 1
    return (time.process_time() - t0) / (4 * n)


def test_cost_per_message_does_not_grow_with_the_client_count(tmp_path):
    torch.set_num_threads(1)
    small = min(_round_cpu_per_update(tmp_path / f"s{i}", 100) for i in range(2))
    large = _round_cpu_per_update(tmp_path / "l", 2000)
    # work per message independent of N: equal cost (measured 0.99-1.15); a scan of all
    # clients per message: ~6x at 20x the clients (measured before the indexes)
    assert large < 2.5 * small, (small, large)


def test_the_online_indexes_follow_joins_losses_and_rejoins(tmp_path):
    h = Harness(tmp_path, "federate.total_round_num", 3, expected=5)
    for c in range(1, 6):
        h.join(c, conn=100 + c)
    table = h.server.clients
    assert table.online_ids() == {1, 2, 3, 4, 5} and table.online_count() == 5
    h.disconnect(103)
    h.disconnect(105)
    assert table.online_ids() == {1, 2, 4} and table.online_count() == 3
    assert table.on_conn(103) is None and table.on_conn(104).client_id == 4
    h.join(3, conn=203)                       # back on a new connection
    assert table.online_ids() == {1, 2, 3, 4} and table.on_conn(203).client_id == 3
    assert table.on_conn(103) is None
    h.disconnect(103)                         # the old connection's late close changes nothing
    assert 3 in table.online_ids()
    ids = table.online_ids()
    ids.add(99)                               # a copy: the caller cannot corrupt the index
    assert 99 not in table.online_ids()


def test_the_claim_cap_follows_a_new_declaration(tmp_path, caplog):
    """data_idx-like (no manifest): counts are unverified, so the cap is 10 x the median
    declared count; a join that changes the median changes the cap at once."""
    caplog.set_level("WARNING", logger="federatedscope")
    h = Harness(tmp_path, "federate.total_round_num", 2, expected=5)
    for c, train in zip(range(1, 5), (10, 20, 30, 40)):
        h.join(c, num_samples={"train": train, "val": 5, "test": 5})
    agg, table = h.server.aggregator, h.server.clients
    assert agg.weight(1, 10 ** 9, False, table.train_counts()) == 250   # 10 x median(10..40)
    h.join(5, num_samples={"train": 1000, "val": 5, "test": 5})
    assert agg.weight(1, 10 ** 9, False, table.train_counts()) == 300   # 10 x median(..., 1000)
    assert agg.weight(1, 123, True, table.train_counts()) == 123
