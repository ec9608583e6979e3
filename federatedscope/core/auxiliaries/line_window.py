"""A budget of log lines per time window, for messages that can come in floods.

A line per event is what a user of a few clients wants to read; at thousands of events a second
it is disk and CPU spent on lines nobody reads. ``LineWindow.admit`` lets the first
``per_window`` lines of each ``window`` seconds through; the subclass counts the rest and says
what it held back in ``flush``, which ``admit`` calls when a new window begins.
"""


class LineWindow:
    def __init__(self, start: float) -> None:
        self.start = start      # the current window's start
        self.lines = 0          # lines written in it

    def admit(self, now: float, window: float, per_window: int) -> bool:
        """Whether a line may be written at ``now``, at most ``per_window`` each ``window``
        seconds (counted if so)."""
        if now - self.start >= window:
            self.flush()
            self.start, self.lines = now, 0
        if self.lines < per_window:
            self.lines += 1
            return True
        return False

    def flush(self) -> None:
        raise NotImplementedError
