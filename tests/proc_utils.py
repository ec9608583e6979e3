"""Helpers for tests that run real processes: start by PID, wait with deadlines, stop only ours."""
import os
import signal
import subprocess
import sys
import time
from typing import Callable, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "federatedscope", "main.py")


def start_main(args: List[str], log_path: str, env: Optional[dict] = None) -> subprocess.Popen:
    full_env = dict(os.environ)
    full_env.update(env or {})
    log = open(log_path, "wb")
    return subprocess.Popen([sys.executable, MAIN] + args, stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT, env=full_env)


def wait_all(procs: List[subprocess.Popen], timeout: float) -> List[int]:
    deadline = time.monotonic() + timeout
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
    finally:
        stop_all(procs)
    return codes


def stop_all(procs: List[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()


def wait_for(cond: Callable[[], bool], timeout: float, what: str, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def file_contains(path: str, text: str) -> bool:
    try:
        with open(path, "r", errors="replace") as f:
            return text in f.read()
    except FileNotFoundError:
        return False
