"""Worker subclasses written for FederatedScope, unchanged: an ``__init__`` with FS's parameters
passed on positionally to ``super().__init__``, FS's ``self.state`` as the round, a step
overridden by its FS name. They run a whole standalone job through ``get_runner`` (4 clients of
the generated FEMNIST sample, 3 rounds, in this process)."""
import inspect
import json
import os

import pytest

from federatedscope.core.workers.client import Client
from federatedscope.core.workers.server import Server
from harness.fs_flow import fs_run

ROUNDS, CLIENTS = 3, 4


class FSServer(Server):
    """As FS's contributed servers are written."""
    made = []

    def __init__(self, ID=-1, state=0, config=None, data=None, model=None, client_num=5,
                 total_round_num=10, device='cpu', strategy=None, **kwargs):
        super(FSServer, self).__init__(ID, state, config, data, model, client_num,
                                       total_round_num, device, strategy, **kwargs)
        self.seen_rounds, self.moved_to = [], []
        self.told = (ID, client_num, total_round_num, device)
        FSServer.made.append(self)

    def _start_new_training_round(self, aggregated_num=0):
        assert self.state < self._cfg.federate.total_round_num      # FS's names for both
        self.seen_rounds.append(self.state)       # FS's state: the rounds completed
        super()._start_new_training_round(aggregated_num)

    def check_and_move_on(self, check_eval_result=False, min_received_num=None):
        moved = super().check_and_move_on(check_eval_result, min_received_num)
        if moved and not check_eval_result:
            self.moved_to.append(self.state)
        return moved


class FSClient(Client):
    made = []

    def __init__(self, ID=-1, server_id=None, state=-1, config=None, data=None, model=None,
                 device='cpu', strategy=None, is_unseen_client=False, *args, **kwargs):
        super(FSClient, self).__init__(ID, server_id, state, config, data, model, device,
                                       strategy, is_unseen_client, *args, **kwargs)
        self.trained_states = []
        FSClient.made.append(self)

    def callback_funcs_for_model_para(self, message):
        super().callback_funcs_for_model_para(message)
        self.trained_states.append(self.state)     # FS's client state: the round it was sent


def test_fs_written_subclasses_run_a_job_with_their_overrides(femnist_root, tmp_path):
    FSServer.made, FSClient.made = [], []
    cfg, code = fs_run([
        "federate.mode", "standalone", "distribute.use", "False", "distributed_data.enabled",
        "False", "data.root", femnist_root, "data.subsample", "1.0", "federate.client_num",
        CLIENTS, "federate.total_round_num", ROUNDS, "train.batch_or_epoch", "batch",
        "train.local_update_steps", 2, "eval.freq", 2, "outdir", tmp_path / "out",
        "expname", "fs", "verbose", 0], server=lambda _: FSServer, client=lambda _: FSClient)
    assert code == 0
    (server,) = FSServer.made
    assert server.told == (0, CLIENTS, ROUNDS, "cpu")      # what the runner passed, FS's names
    assert server.seen_rounds == [0, 1, 2] and server.state == ROUNDS and server.finished
    assert server.moved_to == [1, 2, 3]
    clients = sorted(FSClient.made, key=lambda c: c.ID)
    assert [c.ID for c in clients] == [1, 2, 3, 4]
    assert all(c.trained_states == [0, 1, 2] and c.finished for c in clients)
    assert all(c.server_id == 0 and c.trainer.num_samples("train") > 0 for c in clients)
    with open(os.path.join(cfg.outdir, "eval_results.log")) as f:
        rounds = [json.loads(line).get("Round") for line in f if '"Final"' not in line]
    assert rounds == [2, 3]                        # eval.freq 2, and after the last round


def test_fs_import_paths_of_the_workers():
    import federatedscope.core.workers as workers
    from federatedscope.core.workers import BaseWorker, Client as C, Server as S
    from federatedscope.core.workers.base_worker import Worker
    assert (S, C, BaseWorker) == (Server, Client, Worker)
    with pytest.raises(AttributeError, match="no attribute 'BaseServer'"):
        workers.BaseServer


def test_the_workers_take_fs_parameters_in_fs_order():
    assert list(inspect.signature(Server).parameters)[:9] == [
        "ID", "state", "config", "data", "model", "client_num", "total_round_num", "device",
        "strategy"]
    assert list(inspect.signature(Client).parameters)[:9] == [
        "ID", "server_id", "state", "config", "data", "model", "device", "strategy",
        "is_unseen_client"]
