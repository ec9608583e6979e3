"""Start processes by PID, wait with deadlines, stop only ours.

Every wait fails fast: as soon as a process exits when it should not (non-zero, or while we wait
for something else), the other processes are killed and the error carries each process's exit
code and log tail, so a broken job fails in seconds, not after its whole timeout. Timeouts are
hang guards only (generous); nothing asserts on wall-clock time.
"""
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, List, Optional, Sequence

from harness import forkserver, proc_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
MAIN = os.path.join(ROOT, "federatedscope", "main.py")
TAIL_CHARS = 2500
# Every process start() started; the tests' autouse fixture kills what is left of them after
# each test, so a failing test never leaks a process into the next one.
STARTED: List[subprocess.Popen] = []
# Set by the tests (tests/conftest.py): Python scripts start as forks of a process that has
# imported torch already (harness/forkserver.py); the benchmarks keep fork+exec, whose costs
# they measure.
FORK_SERVER = None
_LISTENING = re.compile(r"listening on \S*:(\d+)")


class ProcessFailed(AssertionError):
    """A watched process exited when it should not have (or a wait timed out)."""


def _child_env(changes: Optional[dict]) -> dict:
    """This process's environment with ``changes`` applied (a value of None removes it)."""
    env = dict(os.environ, **(changes or {}))
    return {k: v for k, v in env.items() if v is not None}


def start(cmd: Sequence[str], log_path: str, env: Optional[dict] = None, name: str = "",
          cpus: Optional[Sequence[int]] = None, cwd: str = ROOT) -> subprocess.Popen:
    """Run ``cmd`` (in the repo root) with stdout+stderr in ``log_path``. ``env`` updates the
    environment; a value of None removes that variable. ``cpus`` pins the process."""
    full_env = _child_env(env)
    if FORK_SERVER is not None and forkserver.forkable(cmd, env or {}):
        open(log_path, "wb").close()   # exists on return, as with Popen below
        proc = FORK_SERVER.start(cmd[1:], full_env, cwd, log_path, cpus)
    else:
        pin = (lambda: os.sched_setaffinity(0, set(cpus))) if cpus else None
        with open(log_path, "wb") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT,
                                    cwd=cwd, env=full_env, preexec_fn=pin)
    proc.log_path = log_path                     # read by describe() for failure messages
    proc.name = name or os.path.splitext(os.path.basename(log_path))[0]
    STARTED.append(proc)
    return proc


def run_script(args: Sequence[str], timeout: float = 600, cwd: str = ROOT,
               env: Optional[dict] = None, check: bool = False) -> subprocess.CompletedProcess:
    """``python args[0] args[1:]`` to its end, as ``subprocess.run(..., capture_output=True,
    text=True)`` would (stdout and stderr apart), through the fork server when the tests have
    one. Not added to ``STARTED``: it is waited for here, and killed on timeout."""
    import tempfile
    cmd = [PY] + [str(a) for a in args]
    full_env = _child_env(env)
    if FORK_SERVER is None or not forkserver.forkable(cmd, env or {}):
        return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True,
                              timeout=timeout, check=check)
    with tempfile.TemporaryDirectory(prefix="fs-run-") as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        proc = FORK_SERVER.start(cmd[1:], full_env, cwd, out, None, err=err)
        try:
            code = proc.wait(timeout)
        finally:
            stop_all([proc])
        with open(out, errors="replace") as f_out, open(err, errors="replace") as f_err:
            done = subprocess.CompletedProcess(cmd, code, f_out.read(), f_err.read())
    if check:
        done.check_returncode()
    return done


def start_main(args: Sequence[str], log_path: str, env: Optional[dict] = None, name: str = "",
               cpus: Optional[Sequence[int]] = None) -> subprocess.Popen:
    """``python federatedscope/main.py args``."""
    return start([PY, MAIN] + list(args), log_path, env, name, cpus)


def tail(path: Optional[str], n: int = TAIL_CHARS) -> str:
    if not path:
        return "<no log>"
    try:
        with open(path, "r", errors="replace") as f:
            return f.read()[-n:]
    except FileNotFoundError:
        return f"<no {path}>"


def describe(procs: Sequence[subprocess.Popen], n: int = TAIL_CHARS) -> str:
    """Name, state and log tail of every process, for an error message."""
    parts = []
    for p in procs:
        code = p.poll()
        state = "running" if code is None else f"exit {code}"
        parts.append(f"--- {getattr(p, 'name', p.pid)} (pid {p.pid}, {state}):\n"
                     f"{tail(getattr(p, 'log_path', None), n)}")
    return "\n".join(parts)


def stop_all(procs: Sequence[subprocess.Popen], grace: float = 0.0) -> None:
    """SIGKILL those of ``procs`` still running (only ours, by PID) and reap them; with
    ``grace``, SIGTERM first and SIGKILL only what still runs ``grace`` seconds later."""
    if grace > 0:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGCONT)   # a SIGSTOPped process must be able to die
                p.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def _block_until_one_exits(procs: Sequence[subprocess.Popen], seconds: float) -> None:
    """Sleep in the kernel until one of ``procs`` exits or ``seconds`` pass (pidfd where
    available, else a short sleep); never spins."""
    running = [p for p in procs if p.poll() is None]
    if not running or seconds <= 0:
        return
    fds = []
    try:
        if hasattr(os, "pidfd_open"):
            for p in running:
                fds.append(os.pidfd_open(p.pid))
    except OSError:   # pidfd not supported by this kernel
        for fd in fds:
            os.close(fd)
        fds = []
    if not fds:
        time.sleep(min(seconds, 0.1))
        return
    try:
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        poller.poll(seconds * 1000.0)
    finally:
        for fd in fds:
            os.close(fd)


def wait_all(procs: List[subprocess.Popen], timeout: float,
             expect: Optional[Sequence[int]] = None, check: bool = True) -> List[Optional[int]]:
    """Wait for every process; return their exit codes. Whatever still runs at the end is killed.

    ``check`` (tests): with ``expect`` (one code per process), any process that exits with another
    code raises at once; without it, a process exiting non-zero while others still run raises at
    once (their result can no longer be trusted); the timeout raises too. Every log tail is in
    the message. ``check=False`` (benchmarks, which judge exit codes themselves): never raises;
    a process still running at the deadline gets the code None.
    """
    deadline = time.monotonic() + timeout
    try:
        while True:
            codes = [p.poll() for p in procs]
            for i, code in enumerate(codes):
                if code is None or not check:
                    continue
                bad = code != expect[i] if expect is not None else \
                    (code != 0 and any(c is None for c in codes))
                if bad:
                    want = f"expected {expect[i]}" if expect is not None else "others still running"
                    raise ProcessFailed(f"{getattr(procs[i], 'name', procs[i].pid)} exited {code} "
                                        f"({want})\n{describe(procs)}")
            if all(c is not None for c in codes):
                return codes
            left = deadline - time.monotonic()
            if left <= 0:
                if not check:
                    return codes
                raise ProcessFailed(f"processes still running after {timeout:.0f}s "
                                    f"(hang guard)\n{describe(procs)}")
            _block_until_one_exits(procs, min(left, 5.0))
    finally:
        stop_all(procs)


def wait_for(cond: Callable[[], bool], timeout: float, what: str, poll: float = 0.1,
             watch: Sequence[subprocess.Popen] = ()) -> float:
    """Wait until ``cond()``; returns the ``perf_counter`` time it became true. Fails at once if
    any process in ``watch`` exits meanwhile (and on timeout), with their log tails."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return time.perf_counter()
        dead = [p for p in watch if p.poll() is not None]
        if dead:
            raise ProcessFailed(f"while waiting for {what}: "
                                f"{', '.join(getattr(p, 'name', str(p.pid)) for p in dead)} "
                                f"exited\n{describe(watch)}")
        if time.monotonic() >= deadline:
            raise ProcessFailed(f"timed out after {timeout:.0f}s waiting for {what}\n"
                                f"{describe(watch)}")
        time.sleep(poll)


def file_contains(path: str, text: str) -> bool:
    try:
        with open(path, "r", errors="replace") as f:
            return text in f.read()
    except FileNotFoundError:
        return False


def listening_port(log_path: str) -> Optional[int]:
    """The port of the server's 'listening on HOST:PORT' line in its log, or None (yet)."""
    try:
        with open(log_path, "r", errors="replace") as f:
            m = _LISTENING.search(f.read())
    except FileNotFoundError:
        return None
    return int(m.group(1)) if m else None


def wait_port(server: subprocess.Popen, timeout: float = 120) -> int:
    """Wait for a server started with ``distribute.server_port 0`` to log the port it bound.
    Binding port 0 in the server itself is what keeps two jobs off one port: a port picked
    here and released for the server to bind could be taken by anyone in between."""
    wait_for(lambda: listening_port(server.log_path) is not None, timeout,
             f"{server.name} to listen", watch=[server])
    return listening_port(server.log_path)


def free_port() -> int:
    """An ephemeral loopback port, released at once. Only for programs that must be told their
    port in advance (another framework, a launcher's own port): it can race; FS servers bind
    port 0 instead (``wait_port``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkpoint_round(path: str) -> int:
    """Rounds completed according to the server checkpoint at ``path`` (-1: none yet). The
    server writes it by temp file + rename, so a read never sees a half-written file."""
    if not os.path.exists(path):
        return -1
    import torch
    return int(torch.load(path, map_location="cpu", weights_only=True)["round"])


def wait_stopped(pid: int, limit: float = 10.0) -> None:
    """SIGSTOP is delivered asynchronously: wait until the kernel reports the process stopped
    (state T in /proc/<pid>/stat), so nothing it does can race the caller's next read."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            state = proc_stats.stat_fields(pid)[0]
        except (FileNotFoundError, IndexError):
            return          # gone (or no procfs): nothing can race us
        if state in ("T", "t", "Z", "X"):
            return
        time.sleep(0.01)
    raise ProcessFailed(f"pid {pid} did not stop within {limit:.0f}s of SIGSTOP")


class frozen:
    """``with frozen(proc):`` ``proc`` is SIGSTOPped inside the block, SIGCONTed after. Lets a
    test read a state (e.g. the checkpoint round) that cannot move while it injects a fault."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def __enter__(self):
        os.kill(self.proc.pid, signal.SIGSTOP)
        wait_stopped(self.proc.pid)
        return self.proc

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
        return False
