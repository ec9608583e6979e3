"""Calls handed to the transport's loop from another thread (``intake.LoopCalls``): all run, in
the order made, and calls made while the loop is busy share one wake-up."""
import asyncio
import logging
import threading

import pytest

from federatedscope.core.communication.intake import LoopCalls


class CountingLoop:
    """The real loop, counting its thread-safe wake-ups."""

    def __init__(self, loop) -> None:
        self.loop, self.wakeups = loop, 0

    def call_soon_threadsafe(self, fn, *args):
        self.wakeups += 1
        return self.loop.call_soon_threadsafe(fn, *args)


def _loop_thread():
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    return loop, t


def _stop(loop, t) -> None:
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)
    loop.close()


def test_calls_from_two_threads_run_in_each_threads_order_and_share_wakeups():
    loop, t = _loop_thread()
    counting = CountingLoop(loop)
    calls, seen = LoopCalls(counting), []
    busy, release = threading.Event(), threading.Event()
    # the loop is busy (as in a storm) while 2 x 500 calls are made
    loop.call_soon_threadsafe(lambda: (busy.set(), release.wait(10)))
    assert busy.wait(5)

    def make(tag):
        for i in range(500):
            calls(seen.append, (tag, i))
    threads = [threading.Thread(target=make, args=(tag,)) for tag in "ab"]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    release.set()
    done = threading.Event()
    calls(done.set)
    assert done.wait(5)
    _stop(loop, t)
    assert len(seen) == 1000
    for tag in "ab":
        assert [i for g, i in seen if g == tag] == list(range(500))
    # one wake-up for everything made while the loop was busy, one for ``done``'s batch at most
    assert counting.wakeups <= 2


def test_a_failing_call_is_logged_and_the_next_ones_still_run(caplog):
    loop, t = _loop_thread()
    calls, seen = LoopCalls(loop), []
    done = threading.Event()

    def boom():
        raise ValueError("broken handler")
    loop.call_soon_threadsafe(lambda: (calls(seen.append, 1), calls(boom), calls(seen.append, 2),
                                       calls(done.set)))
    with caplog.at_level(logging.ERROR, logger="federatedscope"):
        assert done.wait(5)
    _stop(loop, t)
    assert seen == [1, 2]
    assert "transport call boom failed" in caplog.text and "broken handler" in caplog.text


def test_a_call_made_while_the_batch_drains_is_not_stranded():
    loop, t = _loop_thread()
    calls, seen, done = LoopCalls(loop), [], threading.Event()

    def first():     # runs inside the drain; what it hands on must still run, after it
        seen.append("first")
        calls(seen.append, "later")
        calls(done.set)
    calls(first)
    assert done.wait(5)
    _stop(loop, t)
    assert seen == ["first", "later"]


def test_after_the_loop_is_closed_every_call_raises_and_none_is_kept():
    loop = asyncio.new_event_loop()
    loop.close()
    calls, seen = LoopCalls(loop), []
    for k in range(3):      # each call is told, not only the first
        with pytest.raises(RuntimeError):
            calls(seen.append, k)
        assert len(calls.calls) == 0 and calls.woken is False
    assert seen == []

