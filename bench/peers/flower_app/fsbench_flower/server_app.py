"""ServerApp: Flower's own FedAvg strategy over all SuperNodes, evaluating after every round.

Round times are taken where this project's server takes them: from sending the training
messages to having aggregated the replies. The result (per-round seconds, accuracies) is written
as JSON to ``run_config["out"]`` (temp + rename).
"""
import time

import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from bench.child import write_json
from bench.peers import floor

app = ServerApp()


class TimedFedAvg(FedAvg):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.started, self.rounds_s = {}, []

    def configure_train(self, server_round, arrays, config, grid):
        self.started[server_round] = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        out = super().aggregate_train(server_round, replies)
        self.rounds_s.append(time.perf_counter() - self.started[server_round])
        return out


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    torch.set_num_threads(1)
    torch.manual_seed(int(rc["seed"]))  # same initial model as the floor and the project
    model = floor.build_model(int(rc["hidden"]))
    n = int(rc["num-nodes"])
    strategy = TimedFedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=n,
                           min_evaluate_nodes=n, min_available_nodes=n)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                            num_rounds=int(rc["num-server-rounds"]))
    by_round = result.evaluate_metrics_clientapp
    accs = [dict(by_round[r]) for r in sorted(by_round)]
    rep = {"rounds_s": strategy.rounds_s, "eval": accs,
           "final_test_acc": accs[-1].get("test-acc") if accs else None}
    write_json(str(rc["out"]), rep, indent=1)
