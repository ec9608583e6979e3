"""The Server's join lines in a storm (``workers/join_lines.py``): one by one up to the window's
budget, then one line that counts the rest; nothing held is lost."""
import logging

from federatedscope.core.workers import join_lines
from federatedscope.core.workers.join_lines import JoinLines


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "federatedscope"]


def test_a_storm_logs_the_window_budget_then_one_count_line(caplog, monkeypatch):
    monkeypatch.setattr(join_lines, "PER_WINDOW", 4)
    monkeypatch.setattr(join_lines, "WINDOW_S", 2.0)
    caplog.set_level(logging.INFO, logger="federatedscope")
    clock = Clock()
    lines = JoinLines(clock)
    # 13 joins of 50 expected, 0.1 s apart: 4 told one by one, 9 held (ids 17..25 out of order)
    ids = [3, 1, 4, 2, 25, 17, 20, 18, 19, 21, 23, 22, 24]
    for n, cid in enumerate(ids, start=1):
        lines.joined(cid, f"joined #{cid}", n, 50)
        clock.t += 0.1
    assert _lines(caplog) == ["joined #3", "joined #1", "joined #4", "joined #2"]
    lines.tick()                      # 1.3 s into the window: still held
    assert len(_lines(caplog)) == 4
    clock.t = 102.0                   # the window is over
    lines.tick()
    assert _lines(caplog)[4:] == [
        "Server: 9 more client(s) joined in 2s, ids #17..#25 among them (over 4 lines per 2s, "
        "not logged one by one; 13/50 online)"]
    lines.tick()                      # told once
    # a new window: one by one again
    lines.joined(30, "joined #30", 14, 50)
    assert _lines(caplog)[-1] == "joined #30"
    assert len(_lines(caplog)) == 6


def test_the_last_expected_join_tells_the_held_ones_at_once(caplog, monkeypatch):
    monkeypatch.setattr(join_lines, "PER_WINDOW", 2)
    caplog.set_level(logging.INFO, logger="federatedscope")
    lines = JoinLines(Clock())
    for n in range(1, 7):             # 6 of 6, all in the same instant
        lines.joined(n, f"joined #{n}", n, 6)
    assert _lines(caplog) == ["joined #1", "joined #2",
                              "Server: 4 more client(s) joined in 1s, ids #3..#6 among them "
                              "(over 2 lines per 1s, not logged one by one; 6/6 online)"]


def test_a_new_window_first_tells_what_the_last_one_held(caplog, monkeypatch):
    monkeypatch.setattr(join_lines, "PER_WINDOW", 1)
    caplog.set_level(logging.INFO, logger="federatedscope")
    clock = Clock()
    lines = JoinLines(clock)
    for cid in (7, 8, 9):
        lines.joined(cid, f"joined #{cid}", cid - 6, 10)
    clock.t += 1.0
    lines.joined(10, "joined #10", 4, 10)
    assert _lines(caplog) == ["joined #7", "Server: 2 more client(s) joined in 1s, ids #8..#9 "
                              "among them (over 1 lines per 1s, not logged one by one; 3/10 "
                              "online)", "joined #10"]
