"""Measure a whole process tree: total CPU (children included) and every process's peak RSS.

Flower's SuperLink and SuperNodes start detached helpers that start a process per run or message
and outlive their parents, so neither ``getrusage(RUSAGE_CHILDREN)`` alone (orphans go to init)
nor sampling alone (a process living 200 ms is missed) is enough. While a tree is measured this
process is the child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``): orphans are re-parented to
it, reaped by it, and their CPU lands in its RUSAGE_CHILDREN. A sampler thread walks the tree
every 100 ms for each process's VmHWM and CPU; whatever is left at the end (ours) is stopped.
"""
import contextlib
import ctypes
import os
import resource
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import List, Optional

from harness.proc_stats import cpu_seconds, descendants, stat_fields, status

PR_SET_CHILD_SUBREAPER = 36


@dataclass
class ProcSeen:
    pid: int
    label: str
    hwm_kb: int = 0
    cpu_s: float = 0.0
    first: float = 0.0
    last: float = 0.0


@dataclass
class TreeResult:
    wall_s: float
    cpu_s: float            # RUSAGE_CHILDREN delta: every reaped descendant, orphans included
    sampled_cpu_s: float    # sum of the last CPU reading of every sampled process (lower bound)
    procs: List[ProcSeen] = field(default_factory=list)


def _set_subreaper(on: bool) -> None:
    # no prctl: orphans' CPU is then missed, and sampled_cpu_s shows the gap
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _label(pid: int) -> str:
    """"python .../flower-supernode ..." -> flower-supernode; an FS process -> fs-<role>."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return "?"
    names = [os.path.basename(a) for a in argv[:3]]
    if not names:
        return "?"
    prog = names[1] if len(names) > 1 and names[0].startswith("python") else names[0]
    if prog in ("child.py", "main.py") and "--cfg" in argv:
        cfg = os.path.basename(argv[argv.index("--cfg") + 1])
        return "fs-" + ("standalone" if "standalone" in argv else
                        "server" if "server" in cfg else "client")
    return prog


def _read(pid: int):
    """(VmHWM kB, utime+stime s) or None for a gone or zombie process."""
    try:
        if stat_fields(pid)[0] == "Z":
            return None
        return status(pid).get("VmHWM", 0), cpu_seconds(pid)
    except (OSError, IndexError, ValueError):
        return None


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] != 0:
            pass


class Tree:
    """``with Tree() as t: ...start and wait for processes...``; then ``t.result``."""

    def __init__(self, period: float = 0.1):
        self.period, self.seen = period, {}
        self.result: Optional[TreeResult] = None
        self.wall: Optional[float] = None
        self._stop = threading.Event()

    def __enter__(self) -> "Tree":
        _set_subreaper(True)
        _reap()  # nothing of an earlier tree may count here
        self.cpu0, self.t0 = _children_cpu_s(), time.perf_counter()
        self._thread = threading.Thread(target=self._sample_loop, daemon=True)
        self._thread.start()
        return self

    def _sample_loop(self) -> None:
        while not self._stop.is_set():
            now = time.perf_counter()
            for pid in descendants(os.getpid()):
                got = _read(pid)
                if got is None:
                    continue
                p = self.seen.setdefault(pid, ProcSeen(pid, "?", first=now))
                # relabelled every time: a child seen between fork and exec still carries its
                # parent's command line; "?": it exited just now, keep the last name it had
                label = _label(pid)
                p.label = p.label if label == "?" else label
                p.hwm_kb, p.cpu_s, p.last = max(p.hwm_kb, got[0]), got[1], now
            self._stop.wait(self.period)

    def mark_end(self) -> None:
        """The job is done (its result is in): wall time stops here, before the clean-up."""
        self.wall = time.perf_counter() - self.t0

    def __exit__(self, *_) -> None:
        if self.wall is None:
            self.mark_end()
        alive = descendants(os.getpid())   # all started by us: SIGTERM, then SIGKILL
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            alive = [p for p in alive if _read(p) is not None]
            for p in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, sig)
            deadline = time.monotonic() + wait
            while alive and time.monotonic() < deadline:
                _reap()
                alive = [p for p in alive if _read(p) is not None]
                time.sleep(0.1)
        self._stop.set()
        self._thread.join()
        _reap()
        _set_subreaper(False)
        procs = sorted(self.seen.values(), key=lambda p: p.first)
        self.result = TreeResult(self.wall, _children_cpu_s() - self.cpu0,
                                 sum(p.cpu_s for p in procs), procs)
