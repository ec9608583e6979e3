"""Measure a whole process tree: total CPU (children included) and every process's peak RSS.

Flower's SuperLink and SuperNodes start detached helpers (``flower-superexec``) that start a
``flwr-serverapp`` / ``flwr-clientapp`` process per run or message and outlive their parents, so
neither ``getrusage(RUSAGE_CHILDREN)`` alone (orphans go to init) nor sampling alone (a process
that lives 200 ms is missed) is enough. While a tree is measured this process is the child
subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``): orphans are re-parented to it, reaped by it, and
their CPU lands in its RUSAGE_CHILDREN. A sampler thread walks the tree every 100 ms for each
process's VmHWM (peak RSS) and CPU, and keeps every PID it saw, so whatever is left at the end
(ours, by PID) is stopped.
"""
import ctypes
import os
import resource
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

PR_SET_CHILD_SUBREAPER = 36
CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def _set_subreaper(on: bool) -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _children_rusage_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _label(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return "?"
    if not argv:
        return "?"
    # "python .../flower-supernode ..." -> flower-supernode; "python floor.py" -> floor.py
    names = [os.path.basename(a) for a in argv[:3]]
    prog = names[1] if len(names) > 1 and names[0].startswith("python") else names[0]
    if prog in ("child.py", "main.py") and "--cfg" in argv:
        cfg = os.path.basename(argv[argv.index("--cfg") + 1])
        mode = "standalone" if "standalone" in argv else ("server" if "server" in cfg else "client")
        return f"fs-{mode}"
    return prog


def _descendants(root: int) -> List[int]:
    """PIDs whose parent chain reaches ``root`` (one /proc scan)."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, frontier = [], [root]
    kids: Dict[int, List[int]] = {}
    for p, pp in parent.items():
        kids.setdefault(pp, []).append(p)
    while frontier:
        nxt = []
        for p in frontier:
            for c in kids.get(p, []):
                out.append(c)
                nxt.append(c)
        frontier = nxt
    return out


def _read(pid: int):
    """(VmHWM kB, utime+stime s) or None for a gone or zombie process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read().rsplit(")", 1)[1].split()
        if st[0] == "Z":
            return None
        with open(f"/proc/{pid}/status") as f:
            hwm = next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
        return hwm, (int(st[11]) + int(st[12])) / CLK_TCK
    except (OSError, IndexError, ValueError, StopIteration):
        return None


class Tree:
    """``with Tree() as t: ...start and wait for processes...``; then ``t.result``."""

    def __init__(self, period: float = 0.1):
        self.period, self.seen = period, {}
        self.result: Optional[TreeResult] = None
        self._stop = threading.Event()

    def __enter__(self) -> "Tree":
        self.subreaper = _set_subreaper(True)
        self._reap()  # nothing of an earlier tree may count here
        self.cpu0, self.t0 = _children_rusage_s(), time.perf_counter()
        self._thread = threading.Thread(target=self._sample_loop, daemon=True)
        self._thread.start()
        return self

    def _sample_loop(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            now = time.perf_counter()
            for pid in _descendants(me):
                got = _read(pid)
                if got is None:
                    continue
                p = self.seen.get(pid)
                if p is None:
                    p = self.seen[pid] = ProcSeen(pid, "?", first=now)
                # relabelled every time: a child seen between fork and exec still carries its
                # parent's command line (flower-superexec before it becomes flwr-clientapp)
                label = _label(pid)
                if label != "?":  # "?": it exited just now; keep the last name it had
                    p.label = label
                p.hwm_kb, p.cpu_s, p.last = max(p.hwm_kb, got[0]), got[1], now
            self._stop.wait(self.period)

    def mark_end(self) -> None:
        """The job is done (its result is in): wall time stops here, before the clean-up."""
        self.wall = time.perf_counter() - self.t0

    def stop_leftovers(self, grace: float = 10.0) -> None:
        """SIGTERM every process of the tree still alive (all started by us), then SIGKILL."""
        alive = _descendants(os.getpid())
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            alive = [p for p in alive if _read(p) is not None]
            for p in alive:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while alive and time.monotonic() < deadline:
                self._reap()
                alive = [p for p in alive if _read(p) is not None]
                time.sleep(0.1)

    @staticmethod
    def _reap() -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def __exit__(self, *exc) -> None:
        if not hasattr(self, "wall"):
            self.mark_end()
        self.stop_leftovers()
        self._stop.set()
        self._thread.join()
        self._reap()
        _set_subreaper(False)
        cpu = _children_rusage_s() - self.cpu0
        procs = sorted(self.seen.values(), key=lambda p: p.first)
        self.result = TreeResult(self.wall, cpu, sum(p.cpu_s for p in procs), procs)
