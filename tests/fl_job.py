"""Build the command lines of a real distributed job (server + clients) for tests."""
import json
import os
from typing import List, Optional, Sequence

from conftest import free_port
from proc_utils import ROOT, checkpoint_round, start_main, wait_for

CFG = os.path.join(ROOT, "scripts", "distributed_scripts", "distributed_configs")


class Job:
    """One federated job in ``tmp``: legacy data_idx mode, or shard mode when ``manifest`` is set."""

    def __init__(self, tmp, data_root: str, rounds: int = 2, manifest: Optional[str] = None,
                 common: Sequence[str] = ()):
        self.tmp = str(tmp)
        self.root = data_root
        self.port = free_port()
        self.out = os.path.join(self.tmp, "exp")
        self.manifest = manifest
        self.rounds = rounds
        self.ckpt = os.path.join(self.tmp, "ckpt", "server.pt")
        self.common = ["data.root", data_root, "data.subsample", "1.0",
                       "distribute.server_port", str(self.port), "outdir", self.out,
                       "federate.total_round_num", str(rounds)] + list(common)
        if manifest is None:
            self.common += ["distributed_data.enabled", "False"]

    @property
    def mode(self) -> str:
        return "shard" if self.manifest else "data_idx"

    def log(self, name: str) -> str:
        return os.path.join(self.tmp, f"{name}.log")

    def server(self, extra: Sequence[str] = (), env=None, name: str = "server"):
        args = ["--cfg", os.path.join(CFG, "distributed_femnist_server.yaml")] + self.common
        if self.manifest:
            args += ["distributed_data.manifest", self.manifest]
        return start_main(args + list(extra), self.log(name), env, name=name)

    def client(self, k: int, extra: Sequence[str] = (), env=None, name: Optional[str] = None):
        args = ["--cfg", os.path.join(CFG, "distributed_femnist_client_1.yaml")] + self.common
        args += ["distribute.client_id", str(k), "expname", f"client_{k}"]
        if self.manifest:
            shard = os.path.join(os.path.dirname(self.manifest), f"client_{k}")
            args += ["distributed_data.shard_path", shard]
        else:
            args += ["distribute.data_idx", str(k)]
        name = name or f"client_{k}"
        return start_main(args + list(extra), self.log(name), env, name=name)

    def server_log(self, name: str = "server") -> str:
        return open(self.log(name)).read()

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
