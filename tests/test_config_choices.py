"""finalize()'s checks, value by value: every value the docs allow is accepted, its neighbours are
refused with the key named. Values are written out here (FS's spellings), not read from
config.py, so a misspelt choice there fails."""
import pytest

from federatedscope.core.configs.config import ConfigError, finalize, load_cfg

ALLOWED = [
    ("federate.mode", ["standalone", "distributed", "Distributed"]),
    ("backend", ["torch"]),
    ("distribute.role", ["server", "client"]),
    ("distribute.grpc_compression", ["nocompression", "deflate", "gzip"]),
    ("train.batch_or_epoch", ["batch", "epoch"]),
    ("aggregator.robust_rule", ["fedavg", "krum", "median", "trimmedmean", "bulyan",
                                "normbounding"]),
]


@pytest.mark.parametrize("key,values", ALLOWED, ids=[k for k, _ in ALLOWED])
def test_documented_choices_are_accepted_and_others_refused(key, values):
    # a distributed client would also need its data_idx
    server = [] if key == "distribute.role" else ["distribute.role", "server"]
    for v in values:
        cfg = finalize(load_cfg(None, [key, v] + server))
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        assert node == v
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ".*choose one of"):
        finalize(load_cfg(None, [key, values[0] + "x"] + server))


def test_optimizer_types_are_torch_optim_classes_checked_at_finalize_naming_the_key():
    """train.optimizer.type is any torch.optim class (FS's get_optimizer), any case when only one
    class matches; another name is refused naming the key (tests/test_optimizers.py: more)."""
    for v in ["SGD", "sgd", "Adam", "adamw", "RMSprop", "Adagrad"]:
        assert finalize(load_cfg(None, ["train.optimizer.type", v])).train.optimizer.type == v
    with pytest.raises(ConfigError, match=r"^train\.optimizer: unknown optimizer type 'SGDx'"):
        finalize(load_cfg(None, ["train.optimizer.type", "SGDx"]))


@pytest.mark.parametrize("key,good,builder", [
    ("model.type", ["convnet2", "ConvNet2", "lstm"], "get_model"),
    ("trainer.type", ["general", "cvtrainer", "nlptrainer"], "finalize"),
    ("criterion.type", ["CrossEntropyLoss", "character_loss"], "finalize"),
])
def test_types_are_checked_by_the_registry_naming_the_key(key, good, builder):
    """model/trainer/criterion types are whatever is registered (built in or a package's):
    each registered one resolves, a misspelt one is refused naming the key."""
    from federatedscope.core.auxiliaries.model_builder import get_model

    def build(v):
        if builder == "get_model":
            extra = ["data.type", "shakespeare", "model.in_channels", "80",
                     "model.out_channels", "80"] if v == "lstm" else []
            return get_model(finalize(load_cfg(None, [key, v] + extra)))
        return finalize(load_cfg(None, [key, v]))      # checked against the registry
    for v in good:
        assert build(v) is not None
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build(good[0] + "x")


@pytest.mark.parametrize("metric", ["acc", "correct", "loss", "total", "avg_loss"])
def test_known_metrics_are_accepted(metric):
    cfg = finalize(load_cfg(None, ["eval.metrics", f"['{metric}']"]))
    assert list(cfg.eval.metrics) == [metric]


@pytest.mark.parametrize("report", ["weighted_avg", "avg", "raw", "fairness"])
def test_known_reports_are_accepted(report):
    assert list(finalize(load_cfg(None, ["eval.report", f"['{report}']"])).eval.report) == [report]


def test_unknown_metric_and_report_are_named():
    with pytest.raises(ConfigError, match="unknown metric 'f1'"):
        finalize(load_cfg(None, ["eval.metrics", "['acc', 'f1']"]))
    with pytest.raises(ConfigError, match="unknown report 'median'"):
        finalize(load_cfg(None, ["eval.report", "['avg', 'median']"]))


@pytest.mark.parametrize("key,bad,ok", [
    ("federate.total_round_num", 0, 1), ("eval.freq", 0, 1), ("dataloader.batch_size", 0, 1),
    ("data.subsample", 0.0, 1.0), ("data.subsample", 1.01, 0.01),
    ("federate.results_write_timeout", 0.0, 0.5),
])
def test_range_checks_at_their_edges(key, bad, ok):
    finalize(load_cfg(None, [key, str(ok)]))
    with pytest.raises(ConfigError, match=key.split(".")[-1]):
        finalize(load_cfg(None, [key, str(bad)]))


@pytest.mark.parametrize("splits,ok", [
    ("[0.6, 0.2, 0.2]", True), ("[1.0, 0.0, 0.0]", True), ("[0.6, 0.2, 0.2000001]", True),
    ("[0.6, 0.2, 0.21]", False), ("[0.5, 0.5]", False), ("[1.2, -0.1, -0.1]", False),
])
def test_data_splits(splits, ok):
    if ok:
        finalize(load_cfg(None, ["data.splits", splits]))
    else:
        with pytest.raises(ConfigError, match="data.splits"):
            finalize(load_cfg(None, ["data.splits", splits]))


def test_distributed_mode_turns_distribute_use_on_and_names_the_run():
    cfg = finalize(load_cfg(None, ["federate.mode", "distributed", "distribute.role", "client",
                                   "distribute.client_id", "4", "distribute.data_idx", "1",
                                   "expname_tag", "t"]))
    assert cfg.distribute.use is True
    assert cfg.expname == "FedAvg_convnet2_on_femnist_client_4_t"
    cfg = finalize(load_cfg(None, ["federate.mode", "distributed", "distribute.role", "server"]))
    assert cfg.expname == "FedAvg_convnet2_on_femnist_server"
    cfg = finalize(load_cfg(None, ["federate.mode", "distributed", "distribute.data_idx", "2"]))
    # no client_id: the server assigns the id at join, so the name says which partition it runs
    assert cfg.expname == "FedAvg_convnet2_on_femnist_client_data_idx_2"
    assert finalize(load_cfg(None, [])).distribute.use is False
    assert finalize(load_cfg(None, ["expname", "mine"])).expname == "mine"
