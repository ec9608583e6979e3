"""ClientApp: each SuperNode trains/evaluates on its own shard only (node config ``shard-path``).

Uses the same pieces as bench/peers/floor.py (imported: PYTHONPATH holds the project root), so
the only difference from the floor is Flower's runtime around them.
"""
from types import SimpleNamespace

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from bench.peers import floor

app = ClientApp()


def _model(context: Context) -> torch.nn.Module:
    torch.set_num_threads(1)  # as every process of the project and the floor
    return floor.build_model(int(context.run_config["hidden"]))


def _args(rc) -> SimpleNamespace:
    """floor.train_one's settings, from the run config."""
    return SimpleNamespace(lr=float(rc["lr"]), batch_size=int(rc["batch-size"]),
                           grad_clip=float(rc["grad-clip"]))


@app.train()
def train(msg: Message, context: Context) -> Message:
    model = _model(context)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    shard, cid = str(context.node_config["shard-path"]), int(context.node_config["cid"])
    x, y = floor.load_split(shard, "train")
    rnd = int(msg.content["config"]["server-round"]) - 1
    floor.train_one(model, x, y, floor.train_seed(int(context.run_config["seed"]), cid, rnd),
                    _args(context.run_config))
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"num-examples": len(y)})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    model = _model(context)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    shard = str(context.node_config["shard-path"])
    metrics = {}
    for split in ("test", "val"):
        d = floor.load_split(shard, split)
        if d is not None:
            metrics[f"{split}-correct"] = floor.evaluate(model, *d)
            metrics[f"{split}-total"] = len(d[1])
    # FedAvg weighs by num-examples: test counts, so test-acc aggregates to correct / total
    metrics["test-acc"] = metrics["test-correct"] / max(1, metrics["test-total"])
    metrics["num-examples"] = metrics["test-total"]
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
