"""Start Python scripts as forks of a process that has already imported torch.

Every server and client the tests start is a fresh ``python federatedscope/main.py ...``, and
most of what such a process costs in a short test job is its imports (torch alone: ~1.5 s of CPU
here, several hundred starts per suite run). A fork server (the zygote of Android, the
``forkserver`` start method of ``multiprocessing``) imports them once; each start is then a
``fork()`` of it that sets up argv, environment, working directory and log file and runs the
script as ``__main__``. Every job still runs as separate OS processes with their own PIDs,
memory, sockets and files; ``kill -9``, SIGSTOP and exit codes behave as with ``exec``.

What a fork cannot reproduce, so such starts take the ``exec`` path (``forkable``): environment
variables read when the interpreter or a native library starts (``PYTHON*``, ``MALLOC_*``,
``GLIBC_*``, ``OMP_*``, ``MKL_*``, ``OPENBLAS_*``, ``LD_*``), and any program that is not a Python
script. The zygote itself starts with the huge-page tunable ``main.py`` would re-execute itself
for (``malloc_tuning.py``), and its children keep it: a forked job allocates as an exec'd one.

Protocol (JSON lines over the server's stdin/stdout, one request, one answer): ``{argv, env,
cwd, log, err, cpus}`` forks a child and answers ``{"pid": N}``; ``{"reap": N}`` (sent once the
child's pidfd says it exited) reaps it and answers ``{"code": C}`` (as ``Popen.returncode``:
negative for a signal). A child is reaped only when asked, so its PID cannot be reused while the
test holds it: signals sent through its pidfd always reach that child. Nothing the server
imports starts threads at import time except numpy's BLAS pool, which registers its own fork
handlers; gRPC is imported by each child (its core must not be initialised before a fork).
"""
import json
import os
import select
import signal
import subprocess
import sys
import threading
from typing import Dict, List, Optional, Sequence

from federatedscope.core.auxiliaries import malloc_tuning

UNFORKABLE_ENV = ("PYTHON", "MALLOC_", "GLIBC_", "OMP_", "MKL_", "OPENBLAS_", "LD_", "GRPC_")
PRELOAD = ("torch", "numpy", "yaml", "yacs.config",
           "federatedscope.core.auxiliaries.data_builder",
           "federatedscope.core.auxiliaries.runner_builder",
           "federatedscope.core.auxiliaries.worker_builder",
           "federatedscope.core.auxiliaries.outdir",
           "federatedscope.core.cmd_args", "federatedscope.cv", "federatedscope.nlp")
# Every server draws curves.png at its end: matplotlib's ~0.9 CPU-s of imports, paid once here.
# Optional, as for users: a venv without it still runs the suite.
PRELOAD_IF_INSTALLED = ("matplotlib.figure", "matplotlib.backends.backend_agg")


def forkable(cmd: Sequence[str], env_changes: Dict[str, Optional[str]]) -> bool:
    return (len(cmd) >= 2 and cmd[0] == sys.executable and str(cmd[1]).endswith(".py")
            and not any(k.startswith(UNFORKABLE_ENV) for k in env_changes))


# ============================================================================ the server side
def _serve() -> dict:
    """The zygote's loop. Returns (in a forked child only) the request that child must run."""
    for name in PRELOAD:
        __import__(name)
    for name in PRELOAD_IF_INSTALLED:
        try:
            __import__(name)
        except ImportError:
            pass
    inp, out = sys.stdin.fileno(), sys.stdout.fileno()
    buf = b""
    while True:
        chunk = os.read(inp, 1 << 16)
        if not chunk:   # the test process is gone: so are we (unreaped children go to init)
            os._exit(0)
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            req = json.loads(line)
            if "reap" in req:
                _, status = os.waitpid(req["reap"], 0)
                answer = {"code": os.waitstatus_to_exitcode(status)}
            else:
                pid = os.fork()
                if pid == 0:
                    return req
                answer = {"pid": pid}
            os.write(out, (json.dumps(answer) + "\n").encode())


def _become(req: dict) -> None:
    """In the forked child: turn into ``python argv[0] argv[1:]`` as exec would have."""
    null = os.open(os.devnull, os.O_RDONLY)
    log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(req["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) \
        if req.get("err") else log
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(err, 2)
    os.closerange(3, 1 << 16)      # the zygote's pipes
    os.chdir(req["cwd"])
    tunables = os.environ.get("GLIBC_TUNABLES")   # the zygote's: this child runs under them
    os.environ.clear()
    os.environ.update(req["env"])
    if tunables is not None:
        os.environ.setdefault("GLIBC_TUNABLES", tunables)
    if req.get("cpus"):
        os.sched_setaffinity(0, set(req["cpus"]))
    script = os.path.abspath(req["argv"][0])
    sys.argv = [script] + req["argv"][1:]
    sys.path[0] = os.path.dirname(script)
    import runpy
    runpy.run_path(script, run_name="__main__")


# ============================================================================ the test side
class ForkedProcess:
    """The part of ``subprocess.Popen`` the harness uses, for a child of the fork server."""

    def __init__(self, server: "ForkServer", pid: int, args: List[str]):
        self._server, self.pid, self.args = server, pid, args
        self.returncode: Optional[int] = None
        self._pidfd = os.pidfd_open(pid)    # safe: the zygote reaps only when asked

    def _exited(self, seconds: float) -> bool:
        return bool(select.select([self._pidfd], [], [], max(0.0, seconds))[0])

    def poll(self) -> Optional[int]:
        if self.returncode is None and self._exited(0):
            self.returncode = self._server.ask({"reap": self.pid})["code"]
            os.close(self._pidfd)
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        if self.returncode is None:
            if not self._exited(1e9 if timeout is None else timeout):
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.poll()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            signal.pidfd_send_signal(self._pidfd, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """One zygote per test process, started on first use."""

    def __init__(self):
        self._proc: Optional[subprocess.Popen] = None
        self._lock = threading.Lock()

    def _ensure(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
            env = malloc_tuning.hugepage_env(env, malloc_tuning.glibc_version(),
                                             malloc_tuning.thp_on_request()) or env
            self._proc = subprocess.Popen([sys.executable, "-m", "harness.forkserver"], cwd=root,
                                          env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        return self._proc

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    def ask(self, request: dict, timeout: float = 120.0) -> dict:
        """One request, its answer (the first one waits for the zygote's imports)."""
        with self._lock:
            proc = self._ensure()
            proc.stdin.write((json.dumps(request) + "\n").encode())
            proc.stdin.flush()
            fd = proc.stdout.fileno()
            if not select.select([fd], [], [], timeout)[0]:
                raise RuntimeError(f"fork server did not answer {request} within {timeout:.0f}s")
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"fork server exited (code {proc.wait()})")
            return json.loads(line)

    def start(self, argv: Sequence[str], env: Dict[str, str], cwd: str, log: str,
              cpus: Optional[Sequence[int]], err: str = "") -> ForkedProcess:
        """``argv[0]`` (a Python script) with stdout in ``log`` and stderr in ``err`` (default:
        ``log`` too)."""
        pid = self.ask({"argv": [str(a) for a in argv], "env": env, "cwd": cwd, "log": log,
                        "err": err, "cpus": list(cpus) if cpus else None})["pid"]
        return ForkedProcess(self, pid, list(argv))

    def close(self) -> None:
        """The zygote exits at end of input; its children are not touched (each test's clean-up
        kills its own by PID)."""
        with self._lock:
            if self._proc is not None:
                self._proc.stdin.close()
                self._proc.wait()
                self._proc.stdout.close()
                self._proc = None


if __name__ == "__main__":
    _become(_serve())
