"""Build the command lines of a real distributed job (server + clients) for tests."""
import json
import os
from typing import List, Optional, Sequence

from conftest import free_port
from proc_utils import ROOT, start_main

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
        self.common = ["data.root", data_root, "data.subsample", "1.0",
                       "distribute.server_port", str(self.port), "outdir", self.out,
                       "federate.total_round_num", str(rounds)] + list(common)
        if manifest is None:
            self.common += ["distributed_data.enabled", "False"]

    def log(self, name: str) -> str:
        return os.path.join(self.tmp, f"{name}.log")

    def server(self, extra: Sequence[str] = (), env=None, name: str = "server"):
        args = ["--cfg", os.path.join(CFG, "distributed_femnist_server.yaml")] + self.common
        if self.manifest:
            args += ["distributed_data.manifest", self.manifest]
        return start_main(args + list(extra), self.log(name), env)

    def client(self, k: int, extra: Sequence[str] = (), env=None, name: Optional[str] = None):
        args = ["--cfg", os.path.join(CFG, "distributed_femnist_client_1.yaml")] + self.common
        args += ["distribute.client_id", str(k), "expname", f"client_{k}"]
        if self.manifest:
            shard = os.path.join(os.path.dirname(self.manifest), f"client_{k}")
            args += ["distributed_data.shard_path", shard]
        else:
            args += ["distribute.data_idx", str(k)]
        return start_main(args + list(extra), self.log(name or f"client_{k}"), env)

    def server_log(self) -> str:
        return open(self.log("server")).read()

    def eval_lines(self) -> List[dict]:
        for dp, _, files in os.walk(self.out):
            if "eval_results.log" in files and not os.path.basename(dp).startswith("client"):
                with open(os.path.join(dp, "eval_results.log")) as f:
                    return [json.loads(line) for line in f if line.strip()]
        return []

    def final(self) -> dict:
        finals = [line for line in self.eval_lines() if line.get("Final")]
        assert finals, "no final evaluation line"
        return finals[-1]
