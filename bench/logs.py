"""Reading a finished run's FS-format logs: timestamps of lines, numbers in them, round times."""
import re
from datetime import datetime
from typing import List, Optional

_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_lines(path: str) -> list:
    """(epoch seconds, line) for every timestamped line of an FS-format log."""
    with open(path, errors="replace") as f:
        return [(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp(), line)
                for line in f for m in [_TS.match(line)] if m]


def log_times(path: str, text: str) -> List[float]:
    return [t for t, line in log_lines(path) if text in line]


def log_floats(path: str, pattern: str) -> List[float]:
    with open(path, errors="replace") as f:
        return [float(x) for x in re.findall(pattern, f.read())]


def round_times(server_log: str) -> List[float]:
    """Seconds per round from the server's 'round i/N aggregated ... in X s' lines."""
    return log_floats(server_log, r"round \d+/\d+ aggregated .* in ([0-9.]+)s")


def final_acc(log: str) -> Optional[float]:
    accs = log_floats(log, r"final weighted-avg test_acc=([0-9.]+)")
    return accs[-1] if accs else None
