"""The Server's join lines, bounded in a storm.

A line per join is what a user of a few clients wants to read; at thousands of clients joining
at once it is thousands of lines nobody reads, each a formatted record and a flushed write to
both log handlers on the Server's thread, which the joins behind it wait for. So the first
``PER_WINDOW`` joins of each ``WINDOW_S`` are logged one by one and the rest of that window are
counted, then told in one line when the window is over (at the next join, at the Server's next
tick, or when every expected client is in).
"""
import logging
import time
from typing import Callable, Optional

from federatedscope.core.auxiliaries.line_window import LineWindow

logger = logging.getLogger("federatedscope")
WINDOW_S = 1.0
PER_WINDOW = 10


class JoinLines(LineWindow):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(float("-inf"))
        self.clock = clock
        self.held = 0                  # joins of the window not logged one by one
        self.first: Optional[int] = None
        self.last: Optional[int] = None
        self.online = ""               # "<online>/<expected>" after the last held join

    def joined(self, cid: int, line: str, online: int, expected: int) -> None:
        if self.admit(self.clock(), WINDOW_S, PER_WINDOW):
            logger.info(line)
        else:
            self.held += 1
            self.first = cid if self.first is None else min(self.first, cid)
            self.last = cid if self.last is None else max(self.last, cid)
            self.online = f"{online}/{expected}"
        if online >= expected:
            self.flush()

    def tick(self) -> None:
        """Tell the held joins once their window is over."""
        if self.held and self.clock() - self.start >= WINDOW_S:
            self.flush()

    def flush(self) -> None:
        if self.held:
            logger.info(f"Server: {self.held} more client(s) joined in {WINDOW_S:g}s, ids "
                        f"#{self.first}..#{self.last} among them (over {PER_WINDOW} lines per "
                        f"{WINDOW_S:g}s, not logged one by one; {self.online} online)")
        self.held, self.first, self.last = 0, None, None
