"""What a process holds and has spent, read from Linux's /proc: one home for the readers the
benchmarks' measured children, the process-tree meter and the tests' memory checks share.

Every reader takes a PID (or "self") and raises OSError for a process that is gone.
"""
import os
import resource
import threading
from typing import Dict, List

CLK_TCK = os.sysconf("SC_CLK_TCK")


def status(pid="self") -> Dict[str, int]:
    """The Vm*/Rss* fields (kB) and context-switch counts of /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in f)
                if k.startswith(("Vm", "Rss")) or k.endswith("ctxt_switches")}


def status_kb(pid, field: str) -> int:
    """One field of /proc/<pid>/status (kB); KeyError when the process has none (a zombie has
    no VmHWM)."""
    return status(pid)[field]


def private_peak_kb(status_kb: dict) -> int:
    """Peak RSS less the file-backed pages resident at exit (library code, mapped files). Those
    are shared and reclaimable, and how many of them a process touches depends on whether the
    kernel maps the libraries with huge pages (after a fresh boot here: 147 MB instead of 89 MB
    for the same shard load, private memory equal), not on what the process holds. File pages
    are rarely dropped while a process runs, so those at exit stand for those at the peak; code
    first run after the peak (the exit path) makes this a slight underestimate."""
    return status_kb["VmHWM"] - status_kb.get("RssFile", 0)


def stat_fields(pid) -> List[str]:
    """/proc/<pid>/stat after the command name: [state, ppid, ...]."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def gone(pid) -> bool:
    """The process has exited (reaped, or a zombie waiting for its parent)."""
    try:
        return stat_fields(pid)[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def cpu_seconds(pid) -> float:
    """utime + stime of a process (all its threads)."""
    st = stat_fields(pid)
    return (int(st[11]) + int(st[12])) / CLK_TCK


def proc_io(pid="self") -> Dict[str, int]:
    with open(f"/proc/{pid}/io") as f:
        return {k: int(v) for k, v in (line.split(": ") for line in f if line.strip())}


def smaps_kb(pid, field: str) -> int:
    """One field of /proc/<pid>/smaps_rollup (kB): Pss, AnonHugePages, ...; 0 when unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    except OSError:
        return 0


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            return f.write("5") == 1
    except OSError:
        return False


def descendants(root: int) -> List[int]:
    """PIDs whose parent chain reaches ``root`` (one /proc scan: a child's own children file
    is only reliable while its children are stopped)."""
    kids: Dict[int, List[int]] = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            kids.setdefault(int(stat_fields(d)[1]), []).append(int(d))
        except (OSError, IndexError, ValueError):
            continue
    out, frontier = [], [root]
    while frontier:
        frontier = [c for p in frontier for c in kids.get(p, [])]
        out += frontier
    return out


class TreePeak:
    """The peak of this process's and its descendants' summed PSS (shared pages split among
    their sharers, so forked workers' shared pages count once), sampled every ``period`` s from
    a thread."""

    def __init__(self, period: float = 0.1):
        self.period, self.peak_kb, self.pids = period, 0, set()
        self.start_kb = self.sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def sample(self) -> int:
        kids = descendants(os.getpid())
        self.pids.update(kids)
        total = smaps_kb("self", "Pss") + sum(smaps_kb(k, "Pss") for k in kids)
        self.peak_kb = max(self.peak_kb, total)
        return total

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def figures(self) -> dict:
        self._stop.set()
        self._thread.join()
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {"pss_start_kb": self.start_kb, "pss_peak_kb": self.peak_kb,
                "pss_peak_above_start_kb": self.peak_kb - self.start_kb,
                "children_seen": len(self.pids), "children_cpu_s": ru.ru_utime + ru.ru_stime,
                "children_maxrss_kb": ru.ru_maxrss}
