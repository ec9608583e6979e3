"""A real federated job (server + N clients over loopback gRPC), for tests and benchmarks.

The first server of a job binds port 0 (the OS picks a free port inside ``bind``) and logs
"listening on HOST:PORT"; ``Job.port`` reads it back, and clients (and a restarted server,
which must come back where the clients look for it) use that port.
"""
import json
import os
import subprocess
from typing import List, Optional, Sequence

import torch  # noqa: F401  (imported now, not on the first checkpoint read with a server frozen)

from harness.procs import ROOT, ProcessFailed, checkpoint_round, start_main, wait_for, wait_port

CFG = os.path.join(ROOT, "scripts", "distributed_scripts", "distributed_configs")
SERVER_YAML = os.path.join(CFG, "distributed_femnist_server.yaml")
CLIENT_YAML = os.path.join(CFG, "distributed_femnist_client_1.yaml")


# For tests of liveness, faults and recovery, where what is learnt does not matter, only that
# rounds happen: a round trains 3 batches instead of an epoch (a tenth of the CPU on the
# FEMNIST sample), so the process tier spends its time on what it tests.
LIGHT_TRAINING = ("train.batch_or_epoch", "batch", "train.local_update_steps", "3")


class Job:
    """One job in ``tmp``: FS's data_idx mode, or shard mode when ``manifest`` is set.
    ``common`` options go to every process; ``clients`` is the data_idx server's client_num."""

    def __init__(self, tmp, data_root: str, rounds: int = 2, manifest: Optional[str] = None,
                 common: Sequence[str] = (), clients: int = 3, outdir: Optional[str] = None):
        self.tmp = str(tmp)
        self.root = data_root
        self.out = outdir or os.path.join(self.tmp, "exp")
        self.manifest = manifest
        self.rounds = rounds
        self.clients = clients
        self.ckpt = os.path.join(self.tmp, "ckpt", "server.pt")
        self._port: Optional[int] = None
        self._first_server: Optional[subprocess.Popen] = None
        self.common = ["data.root", data_root, "data.subsample", "1.0", "outdir", self.out,
                       "federate.total_round_num", str(rounds)] + list(common)
        if manifest is None:
            self.common += ["distributed_data.enabled", "False"]

    @property
    def mode(self) -> str:
        return "shard" if self.manifest else "data_idx"

    @property
    def port(self) -> int:
        """The server's port: read back from the first server's log (waits for it)."""
        if self._port is None:
            if self._first_server is None:
                raise ProcessFailed("no server started yet: start one (job.server()) or set "
                                    "job.port before starting clients")
            self._port = wait_port(self._first_server)
        return self._port

    @port.setter
    def port(self, value: int) -> None:
        self._port = int(value)

    def log(self, name: str) -> str:
        return os.path.join(self.tmp, f"{name}.log")

    def server_args(self, extra: Sequence[str] = (), port: int = 0) -> List[str]:
        args = ["--cfg", SERVER_YAML] + self.common + ["distribute.server_port", str(port)]
        if self.manifest:
            args += ["distributed_data.manifest", self.manifest]
        else:
            args += ["federate.client_num", str(self.clients)]
        return args + list(extra)

    def client_args(self, k: int, extra: Sequence[str] = ()) -> List[str]:
        args = ["--cfg", CLIENT_YAML] + self.common + [
            "distribute.server_port", str(self.port), "distribute.client_id", str(k),
            "expname", f"client_{k}"]
        if self.manifest:
            args += ["distributed_data.shard_path",
                     os.path.join(os.path.dirname(self.manifest), f"client_{k}")]
        else:
            args += ["distribute.data_idx", str(k)]
        return args + list(extra)

    def launch(self, args: List[str], name: str, env=None) -> subprocess.Popen:
        """How a process is started (the benchmarks wrap it in their measuring child)."""
        return start_main(args, self.log(name), env, name=name)

    def server(self, extra: Sequence[str] = (), env=None, name: str = "server") -> subprocess.Popen:
        """The first server binds port 0; later ones (a restart) reuse the port it got."""
        first = self._first_server is None and self._port is None
        proc = self.launch(self.server_args(extra, 0 if first else self.port), name, env)
        if first:
            self._first_server = proc
        return proc

    def client(self, k: int, extra: Sequence[str] = (), env=None,
               name: Optional[str] = None) -> subprocess.Popen:
        return self.launch(self.client_args(k, extra), name or f"client_{k}", env)

    def server_log(self, name: str = "server") -> str:
        with open(self.log(name)) as f:
            return f.read()

    def wait_round(self, r: int, watch, timeout: float = 180) -> None:
        """Wait until the server's checkpoint (``federate.save_to`` = ``self.ckpt``) says at least
        ``r`` rounds are done: a state on disk, not a log line that a fast round could outrun."""
        wait_for(lambda: checkpoint_round(self.ckpt) >= r, timeout,
                 f"checkpoint round >= {r} ({self.ckpt})", watch=watch)

    def eval_lines(self) -> List[dict]:
        for dp, _, files in os.walk(self.out):
            if "eval_results.log" in files and not os.path.basename(dp).startswith("client"):
                with open(os.path.join(dp, "eval_results.log")) as f:
                    return [json.loads(line) for line in f if line.strip()]
        return []

    def eval_rounds(self) -> List[int]:
        """The Round of every (non-final) evaluation line, in file order."""
        return [line["Round"] for line in self.eval_lines() if not line.get("Final")]

    def final(self) -> dict:
        finals = [line for line in self.eval_lines() if line.get("Final")]
        assert finals, "no final evaluation line"
        return finals[-1]

    def assert_eval_complete(self) -> None:
        """eval.freq=1: exactly one evaluation line per round, in round order, then one Final."""
        lines = self.eval_lines()
        assert self.eval_rounds() == list(range(1, self.rounds + 1)), \
            f"eval_results.log rounds {self.eval_rounds()}; want 1..{self.rounds} once each"
        assert sum(1 for line in lines if line.get("Final")) == 1 and lines[-1].get("Final"), \
            "eval_results.log must end with exactly one Final line"


def known_bug(ok: bool, fixed: bool, what: str) -> None:
    """An assertion the code does not keep yet, with strict-xfail semantics at the line where it
    is checked (the assertions before it still run and still fail the test):
    ``fixed=False``: xfail while broken, FAIL once it works (so the flag gets flipped);
    ``fixed=True``: a plain assertion."""
    import pytest
    if fixed:
        assert ok, what
    elif ok:
        pytest.fail(f"known bug now fixed: {what}; set its flag to True in the test")
    else:
        pytest.xfail(what)
