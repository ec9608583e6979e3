"""The config code's contract, pinned value by value: every default equals doc/config.md's table,
how a value is typed on its way in, each check of ``finalize`` / ``assert_fl_algo_cfg`` /
``assert_data_cfg`` at its edge with the exact message an operator acts on, the derived values
(FedOpt, FedProx, personalization, expname) and the environment expansion of every path key."""
import logging
import os
import re

import pytest

from federatedscope.core.cmd_args import override_pairs, parse_args
from federatedscope.core.configs.config import (ConfigError, expand_env, finalize,
                                                get_default_cfg, load_cfg, same_value)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(*pairs):
    return finalize(load_cfg(None, list(pairs)))


def _refused(pairs, text):
    """finalize refuses ``pairs`` with exactly ``text`` (the whole message)."""
    with pytest.raises(ConfigError) as err:
        _cfg(*pairs)
    assert str(err.value) == text


# ------------------------------------------------------------------ defaults = the documented table
def _leaves(node, prefix=""):
    for k in sorted(node):
        v = node[k]
        if isinstance(v, dict):
            yield from _leaves(v, prefix + k + ".")
        else:
            yield prefix + k, v


def test_every_default_is_the_one_doc_config_md_documents():
    """A user reads the defaults in doc/config.md; a default changed in the code alone (or a key
    added or dropped) is a silent change of every run that does not set it."""
    with open(os.path.join(ROOT, "doc", "config.md"), encoding="utf-8") as f:
        rows = re.findall(r"^\| `([\w.]+)` \| `((?:[^`\\]|\\.)*)` \|", f.read(), flags=re.M)
    documented = {k: v.replace("\\|", "|") for k, v in rows}
    code = {k: repr(v) for k, v in _leaves(get_default_cfg())}
    assert len(code) > 150
    assert code == documented


def test_fs_defaults_written_out():
    """FederatedScope's own defaults of the keys every FS config relies on (hand-copied)."""
    c = get_default_cfg()
    assert (c.federate.total_round_num, c.federate.sample_client_num, c.federate.method) == \
        (50, -1, "FedAvg")
    assert (c.dataloader.batch_size, c.dataloader.shuffle, c.dataloader.num_workers) == (64, True, 0)
    assert (c.train.optimizer.lr, c.train.local_update_steps, c.train.batch_or_epoch) == \
        (0.1, 1, "batch")
    assert list(c.data.splits) == [0.6, 0.2, 0.2] and c.data.subsample == 1.0
    assert (c.distribute.data_idx, c.distribute.client_id, c.distribute.role) == (-1, -1, "client")
    assert c.aggregator.max_sample_ratio == 10.0 and c.personalization.local_update_steps == -1
    assert list(c.eval.report) == ["weighted_avg", "avg", "fairness", "raw"]
    assert c.early_stop.patience == 5
    assert c.distribute.grpc_max_send_message_length == 300 * 1024 * 1024


def test_open_and_closed_nodes(tmp_path):
    """The scheduler, optimizer and BFT_args nodes take further keys from a YAML (torch's / the
    rules' arguments, FS's new_allowed nodes); an optimizer key its class does not take is refused
    at finalize, naming it; the other nodes are closed."""
    y = tmp_path / "open.yaml"
    y.write_text("train:\n  scheduler:\n    type: StepLR\n    step_size: 2\n    gamma: 0.5\n"
                 "finetune:\n  scheduler:\n    type: StepLR\n    step_size: 3\n"
                 "aggregator:\n  BFT_args:\n    my_rule_arg: 4\n")
    # a fresh tree each time (load_cfg clones the module-level one built at import)
    cfg = get_default_cfg()
    cfg.merge_from_file(str(y))
    assert (cfg.train.scheduler.step_size, cfg.train.scheduler.gamma) == (2, 0.5)
    assert cfg.finetune.scheduler.step_size == 3 and cfg.aggregator.BFT_args.my_rule_arg == 4
    assert finalize(load_cfg(str(y), [])).aggregator.BFT_args.my_rule_arg == 4
    bad = tmp_path / "closed.yaml"
    bad.write_text("train:\n  optimizer:\n    betas: [0.9, 0.99]\n")
    assert load_cfg(str(bad), []).train.optimizer.betas == [0.9, 0.99]
    with pytest.raises(ConfigError, match=r"^train\.optimizer\.betas: torch\.optim\.SGD takes no "
                                          r"argument 'betas'"):
        finalize(load_cfg(str(bad), []))
    for node in ("personalization", "fedopt", "fedprox", "finetune", "train", "aggregator",
                 "federate"):
        bad.write_text("".join("  " * i + part + ":\n" for i, part in enumerate(node.split(".")))
                       + "  " * len(node.split(".")) + "nosuch: 1\n")
        with pytest.raises(ConfigError, match="nosuch"):
            get_default_cfg().merge_from_file(str(bad))


# ------------------------------------------------------------------ how values come in
def test_whole_numbers_become_floats_but_bools_and_fractions_keep_their_type(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  optimizer:\n    lr: 2\nfederate:\n  round_timeout: 30\n")
    cfg = load_cfg(str(y), ["aggregator.max_sample_ratio", "3"])
    for v, want in [(cfg.train.optimizer.lr, 2.0), (cfg.federate.round_timeout, 30.0),
                    (cfg.aggregator.max_sample_ratio, 3.0)]:
        assert v == want and type(v) is float
    with pytest.raises(ConfigError, match=r"^command line: Type mismatch .*train\.optimizer\.lr"):
        load_cfg(None, ["train.optimizer.lr", "True"])
    with pytest.raises(ConfigError, match=r"^command line: Type mismatch .*total_round_num"):
        load_cfg(None, ["federate.total_round_num", "2.5"])
    y.write_text("federate:\n  total_round_num: 2.5\n")
    with pytest.raises(ConfigError, match=r"^" + re.escape(str(y)) + r": Type mismatch"):
        load_cfg(str(y), [])


@pytest.mark.parametrize("text,value", [("true", True), ("TRUE", True), ("True", True),
                                        ("false", False), ("FaLsE", False)])
def test_boolean_spellings_on_the_command_line(text, value):
    cfg = load_cfg(None, ["distributed_data.streaming", text], [f"federate.online_aggr={text}"])
    assert cfg.distributed_data.streaming is value and cfg.federate.online_aggr is value


def test_only_values_are_normalised_never_keys():
    # a string key whose value spells a boolean word stays that word (only bool keys convert it)
    assert load_cfg(None, ["expname", "trueish"]).expname == "trueish"
    with pytest.raises(ConfigError, match="Type mismatch"):
        load_cfg(None, ["expname", "true"])  # a string key: True is not a string
    with pytest.raises(ConfigError, match=r"^command line: Non-existent key: true$"):
        load_cfg(None, ["true", "1"])
    with pytest.raises(ConfigError, match=r"^command line: Non-existent key: TRUE$"):
        load_cfg(None, ["seed", "1", "TRUE", "1"])      # a later key: still not normalised
    assert load_cfg(None, ["seed", "1", "distributed_data.streaming", "TRUE", "expname", "e",
                           "distributed_data.verify_checksum", "false"]
                    ).distributed_data.verify_checksum is False


def test_programmatic_overrides_take_typed_values():
    # FS's own builders call merge_from_list with ints and bools, not only strings
    cfg = get_default_cfg()
    cfg.merge_from_list(["federate.client_num", 4, "distributed_data.streaming", True,
                         "train.optimizer.lr", 2])
    assert (cfg.federate.client_num, cfg.distributed_data.streaming) == (4, True)
    assert cfg.train.optimizer.lr == 2.0 and type(cfg.train.optimizer.lr) is float


def test_an_unreadable_config_file_is_a_config_error_naming_it(tmp_path, monkeypatch):
    # root reads any file whatever its mode, so the refusal is simulated at open(); what main
    # prints must name the file, not advise on the output directory
    import builtins
    cfg_file = tmp_path / "locked.yaml"
    cfg_file.write_text("federate:\n  client_num: 4\n")
    real_open = builtins.open

    def refusing(path, *a, **kw):
        if str(path) == str(cfg_file):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **kw)
    monkeypatch.setattr(builtins, "open", refusing)
    with pytest.raises(ConfigError) as err:
        load_cfg(str(cfg_file), [])
    assert str(err.value) == f"config file {cfg_file} cannot be read: Permission denied"
    monkeypatch.setattr(builtins, "open", real_open)
    assert load_cfg(str(cfg_file), []).federate.client_num == 4


def test_the_config_file_is_decoded_as_utf8_not_by_the_locale(tmp_path, monkeypatch):
    # in-process stand-in for the C locale below: open() without an encoding decodes as ASCII
    import builtins
    real_open = builtins.open

    def ascii_default(path, mode="r", *a, **kw):
        if "b" not in mode and kw.get("encoding") is None:
            kw["encoding"] = "ascii"
        return real_open(path, mode, *a, **kw)
    monkeypatch.setattr(builtins, "open", ascii_default)
    cfg_file = tmp_path / "zh.yaml"
    cfg_file.write_bytes("# 采样率\nfederate:\n  sample_client_rate: 0.25\n".encode("utf-8"))
    assert load_cfg(str(cfg_file), []).federate.sample_client_rate == 0.25


def test_a_config_with_non_ascii_comments_loads_under_the_c_locale(tmp_path):
    # FS's YAMLs carry comments in Chinese; a C locale (ASCII) must not turn them into a parse
    # error. A child process: the locale's encoding is fixed when the interpreter starts.
    import subprocess
    import sys
    cfg_file = tmp_path / "zh.yaml"
    cfg_file.write_bytes("# 客户端数量\nfederate:\n  client_num: 7\n".encode("utf-8"))
    code = ("from federatedscope.core.configs.config import load_cfg; import sys; "
            "print(load_cfg(sys.argv[1], []).federate.client_num)")
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONIOENCODING="utf-8")
    out = subprocess.run([sys.executable, "-c", code, str(cfg_file)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, "7"), out.stderr[-800:]


def test_file_errors_name_the_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as err:
        load_cfg(missing, [])
    assert str(err.value) == f"config file not found: {missing}"
    broken = tmp_path / "broken.yaml"
    broken.write_text("federate: [1, 2\n")
    with pytest.raises(ConfigError, match=r"^" + re.escape(str(broken)) + r": cannot parse YAML: "):
        load_cfg(str(broken), [])
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("federate:\n  rounds: 3\n")
    with pytest.raises(ConfigError) as err:
        load_cfg(str(unknown), [])
    assert str(err.value) == (f"{unknown}: Non-existent config key: federate.rounds (see "
                              f"doc/config.md for the keys this version knows)")


def test_command_line_errors_are_exact():
    with pytest.raises(ConfigError) as err:
        load_cfg(None, ["seed", "1", "federate.mode"])
    assert str(err.value) == ("command-line overrides must be 'key value' pairs; got an odd number "
                              "of items: ['seed', '1', 'federate.mode']")
    with pytest.raises(ConfigError) as err:
        load_cfg(None, ["federate.nope", "1"])
    assert str(err.value) == "command line: Non-existent key: federate.nope"
    with pytest.raises(ConfigError) as err:
        override_pairs(["seed=1", "seed:2"])
    assert str(err.value) == "--override expects key=value, got 'seed:2'"
    assert override_pairs([" seed = 3 ", "expname=a=b"]) == ["seed", "3", "expname", "a=b"]


def test_parse_args_collects_overrides_given_anywhere():
    a = parse_args(["--cfg", "x.yaml", "--client_cfg", "c.yaml", "seed", "1", "--override",
                    "expname=e", "--override=federate.total_round_num=4", "eval.freq", "2",
                    "--override"])
    assert (a.cfg_file, a.client_cfg_file) == ("x.yaml", "c.yaml")
    assert a.opts == ["seed", "1", "eval.freq", "2"]
    assert a.override == ["expname=e", "federate.total_round_num=4", ""]
    empty = parse_args([])
    assert (empty.cfg_file, empty.client_cfg_file, empty.override, empty.opts) == ("", "", [], [])


def test_usage_names_the_program_and_options_are_never_abbreviated(capsys):
    # an abbreviated option is an error, not a silent --client_cfg (allow_abbrev=False)
    with pytest.raises(SystemExit) as ex:
        parse_args(["--client", "c.yaml"])
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: federatedscope/main.py [-h] [--cfg CFG_FILE]")
    assert "[--client_cfg CLIENT_CFG_FILE]" in err and "[--override KEY=VALUE]" in err
    assert err.rstrip().endswith("federatedscope/main.py: error: unrecognized arguments: --client")


def test_help_lists_every_option_with_its_text(capsys):
    from federatedscope.core.cmd_args import _DESCRIPTION, _HELP
    with pytest.raises(SystemExit) as ex:
        parse_args(["--help"])
    assert ex.value.code == 0
    flat = " ".join(capsys.readouterr().out.split())
    assert _DESCRIPTION in flat
    for name, text in _HELP.items():
        assert " ".join(text.split()) in flat, name
    for option in ("--cfg CFG_FILE", "--client_cfg CLIENT_CFG_FILE", "--override KEY=VALUE"):
        assert option in flat


def test_same_value_compares_lists_and_tuples_by_content():
    assert same_value((10, 5), [10, 5]) and same_value([], ())
    assert not same_value((10, 5), [5, 10]) and not same_value(1, 2) and same_value("a", "a")
    # only two sequences compare by content: a string is not the list of its characters
    assert not same_value("ab", ["a", "b"]) and not same_value(["a", "b"], "ab")


# ------------------------------------------------------------------ refused keys
def test_refused_key_message_is_exact():
    _refused(["federate.use_ss", "True"],
             "federate.use_ss=True is not implemented here (FederatedScope: secret-sharing "
             "aggregation); this version would silently ignore it. Remove federate.use_ss from "
             "your YAML / command line or set it back to its default (append `federate.use_ss "
             "False` to the command); see doc/config.md, 'Refused keys'")
    # the table's first non-default key is named, whichever comes later in the table
    with pytest.raises(ConfigError, match=r"^early_stop\.improve_indicator_mode='mean'"):
        _cfg("wandb.use", "True", "early_stop.improve_indicator_mode", "'mean'")


def test_accepted_unused_keys_log_only_when_set(caplog):
    with caplog.at_level(logging.INFO, logger="federatedscope"):
        _cfg("distribute.client_port", "50051", "personalization.K", "5")
    lines = [r.getMessage() for r in caplog.records if "changes nothing" in r.getMessage()]
    assert lines == ["distribute.client_port=50051 is accepted and changes nothing here: clients "
                     "only dial out; FS's client configs set it"]


# ------------------------------------------------------------------ finalize's checks
@pytest.mark.parametrize("pairs,text", [
    (["federate.mode", "cloud"], "federate.mode='cloud' is not supported; choose one of "
                                 "['standalone', 'distributed']"),
    (["aggregator.robust_rule", "mean"], "aggregator.robust_rule='mean' is not supported; choose "
     "one of ['fedavg', 'krum', 'median', 'trimmedmean', 'bulyan', 'normbounding']"),
    (["eval.metrics", "['acc', 'f1']"], "eval.metrics: unknown metric 'f1'; known: ['acc', "
                                        "'correct', 'loss', 'total', 'avg_loss']"),
    (["eval.report", "['raw', 'best']"], "eval.report: unknown report 'best'; known: "
                                         "['weighted_avg', 'avg', 'raw', 'fairness']"),
    (["data.splits", "[0.5, 0.5]"], "data.splits=[0.5, 0.5] must be 3 non-negative fractions "
                                    "summing to 1"),
    (["data.splits", "[0.5, 0.5, 0.5]"], "data.splits=[0.5, 0.5, 0.5] must be 3 non-negative "
                                         "fractions summing to 1"),
    (["data.splits", "[1.1, -0.1, 0.0]"], "data.splits=[1.1, -0.1, 0.0] must be 3 non-negative "
                                          "fractions summing to 1"),
    (["data.splits", "[0.5, 0.3, 0.2000011]"], "data.splits=[0.5, 0.3, 0.2000011] must be 3 "
                                               "non-negative fractions summing to 1"),
    (["data.splits", "[0.5, 0.3, 0.1999989]"], "data.splits=[0.5, 0.3, 0.1999989] must be 3 "
                                               "non-negative fractions summing to 1"),
    (["data.subsample", "0.0"], "data.subsample=0.0 must be in (0, 1]"),
    (["data.subsample", "1.5"], "data.subsample=1.5 must be in (0, 1]"),
    (["federate.total_round_num", "0"], "federate.total_round_num must be >= 1"),
    (["eval.freq", "0"], "eval.freq must be >= 1"),
    (["dataloader.batch_size", "0"], "dataloader.batch_size must be >= 1"),
    (["grad.grad_accum_count", "0"], "grad.grad_accum_count=0 must be >= 1 (1: a step after "
                                     "every batch)"),
    (["grad.grad_accum_count", "2", "federate.method", "DITTO"],
     "grad.grad_accum_count > 1 is not implemented for federate.method Ditto (two models step "
     "in one round); set grad.grad_accum_count 1"),
    (["federate.results_write_timeout", "-1.0"], "federate.results_write_timeout=-1.0 must be "
     "> 0 (seconds the results may stay unwritable before exit 4)"),
])
def test_finalize_refusals_are_exact(pairs, text):
    _refused(pairs, text)


@pytest.mark.parametrize("pairs", [
    ["data.splits", "[0.5, 0.3, 0.2000009]"], ["data.splits", "[0.0, 0.0, 1.0]"],
    ["data.subsample", "1e-9"], ["grad.grad_accum_count", "2"],
    ["grad.grad_accum_count", "1", "federate.method", "Ditto"],
    ["federate.results_write_timeout", "1e-3"], ["federate.mode", "STANDALONE"],
    ["distribute.grpc_compression", "GZip"], ["aggregator.robust_rule", "Krum"],
])
def test_finalize_accepts_the_edges(pairs):
    _cfg(*pairs)


def test_choices_are_matched_case_insensitively_but_kept_as_written():
    cfg = _cfg("aggregator.robust_rule", "TrimmedMean", "train.optimizer.type", "sgd")
    assert cfg.aggregator.robust_rule == "TrimmedMean" and cfg.train.optimizer.type == "sgd"


def test_the_tree_is_frozen_after_finalize():
    cfg = _cfg()
    assert cfg.is_frozen()
    with pytest.raises(AttributeError):
        cfg.seed = 3


@pytest.mark.parametrize("pairs,expname", [
    ([], "FedAvg_convnet2_on_femnist"),
    (["expname_tag", "t2"], "FedAvg_convnet2_on_femnist_t2"),
    (["federate.method", "Ditto", "model.type", "lstm", "data.type", "shakespeare"],
     "Ditto_lstm_on_shakespeare"),
    (["federate.mode", "distributed", "distribute.role", "server", "distribute.client_id", "3"],
     "FedAvg_convnet2_on_femnist_server"),
    (["federate.mode", "distributed", "distribute.client_id", "1", "distribute.data_idx", "3"],
     "FedAvg_convnet2_on_femnist_client_1"),
    (["federate.mode", "distributed", "distribute.client_id", "0", "distribute.data_idx", "3"],
     "FedAvg_convnet2_on_femnist_client_data_idx_3"),
    (["federate.mode", "distributed", "distribute.data_idx", "1"],
     "FedAvg_convnet2_on_femnist_client_data_idx_1"),
    # shard mode: data_idx is not the client's partition, so it is not in the name
    (["federate.mode", "distributed", "distributed_data.enabled", "True",
      "distribute.data_idx", "2"], "FedAvg_convnet2_on_femnist_client"),
    (["federate.mode", "distributed", "distributed_data.enabled", "True",
      "distribute.client_id", "7", "expname_tag", "x"], "FedAvg_convnet2_on_femnist_client_7_x"),
    (["federate.mode", "distributed", "distribute.role", "server", "expname", "mine"], "mine"),
])
def test_expname_is_derived_from_method_model_data_role_and_tag(pairs, expname):
    cfg = _cfg(*pairs)
    assert cfg.expname == expname
    assert cfg.distribute.use is ("distributed" in pairs)


# ------------------------------------------------------------------ environment variables
PATH_KEYS = ["distributed_data.shard_path", "distributed_data.manifest", "distribute.token_file",
             "distribute.tls_ca", "distribute.tls_cert", "distribute.tls_key", "data.root"]


@pytest.mark.parametrize("key", PATH_KEYS)
def test_every_path_key_expands_environment_variables(key, monkeypatch):
    monkeypatch.setenv("FS_BASE", "/srv/fl")
    monkeypatch.setenv("FS_K", "client_3")
    pairs = ["federate.mode", "distributed", "distribute.role", "server"]
    cfg = _cfg(*pairs, key, "${FS_BASE}/$FS_K/x_$FS_K.bin")
    section, name = key.split(".")
    assert getattr(getattr(cfg, section), name) == "/srv/fl/client_3/x_client_3.bin"
    monkeypatch.delenv("FS_K")
    with pytest.raises(ConfigError) as err:
        _cfg(*pairs, key, "$FS_BASE/$FS_K")
    assert str(err.value) == (f"{key}='$FS_BASE/$FS_K' references ${{FS_K}}, which is not set; "
                              f"export FS_K=... or give the path directly")


def test_expand_env_leaves_plain_text_and_other_keys_alone(monkeypatch):
    monkeypatch.setenv("A_1", "v")
    assert expand_env("a$A_1${A_1}$$-$1/x", "k") == "avv$$-$1/x"
    assert expand_env("", "k") == ""
    # keys outside the path list are taken literally
    assert _cfg("expname", "$A_1").expname == "$A_1"


# ------------------------------------------------------------------ algorithm keys (cfg_fl_algo)
def _fail_text(text):
    return text + " (see doc/algorithms.md)"



def _unknown_optimizer(key: str, name: str) -> str:
    return (f"{key}: unknown optimizer type {name!r} (not registered with "
            f"federatedscope.register.register_optimizer, and not a class of torch.optim, e.g. "
            f"SGD, Adam, AdamW, RMSprop, Adagrad); set {key}.type to a torch.optim class (or a "
            f"registered optimizer) and give only its arguments as keys of {key}")


@pytest.mark.parametrize("pairs,text", [
    (["federate.method", "pFedMe"], "federate.method='pFedMe' (pFedMe) is not implemented here; "
                                    "use one of FedAvg, FedOpt, Ditto"),
    (["federate.method", "FedEM"], "federate.method='FedEM' (FedEM) is not implemented here; use "
                                   "one of FedAvg, FedOpt, Ditto"),
    (["federate.method", "local"], "federate.method='local' (local-only training) is not "
                                   "implemented here; use one of FedAvg, FedOpt, Ditto"),
    (["federate.method", "fedsgd"], "federate.method='fedsgd' is not supported; choose one of "
                                    "FedAvg, FedOpt, Ditto"),
    (["fedopt.optimizer.type", "Adamz"], _unknown_optimizer("fedopt.optimizer", "Adamz")),
    (["federate.method", "FedOpt", "fedopt.optimizer.lr", "0.0"],
     "fedopt.optimizer.lr=0.0 must be > 0 (FS's FEMNIST recipe uses 1.0)"),
    (["fedopt.use", "True", "fedopt.optimizer.lr", "-1.0"],
     "fedopt.optimizer.lr=-1.0 must be > 0 (FS's FEMNIST recipe uses 1.0)"),
    (["fedopt.optimizer.momentum", "1.0"], "fedopt.optimizer.momentum=1.0 must be in [0, 1)"),
    (["fedopt.optimizer.momentum", "-0.1"], "fedopt.optimizer.momentum=-0.1 must be in [0, 1)"),
    (["fedprox.mu", "-0.5"], "fedprox.mu=-0.5 must be >= 0"),
    (["regularizer.type", "l2"], "regularizer.type='l2' is not supported; use '' or "
                                 "'proximal_regularizer'"),
    (["regularizer.mu", "-0.5"], "regularizer.mu=-0.5 must be >= 0"),
    (["fedprox.use", "True", "fedprox.mu", "0.5", "regularizer.type", "proximal_regularizer",
      "regularizer.mu", "0.2"], "fedprox.mu=0.5 and regularizer.mu=0.2 disagree; set only "
                                "fedprox.mu"),
    (["personalization.local_param", "['bn', '']"], "personalization.local_param=['bn', ''] "
     "must be a list of non-empty name fragments, e.g. ['bn', 'norms']"),
    (["personalization.local_update_steps", "0"], "personalization.local_update_steps=0 must be "
     ">= 1 (or -1: the same as train.local_update_steps)"),
    (["personalization.local_update_steps", "-2"], "personalization.local_update_steps=-2 must "
     "be >= 1 (or -1: the same as train.local_update_steps)"),
    (["personalization.regular_weight", "-0.1"], "personalization.regular_weight=-0.1 must be "
                                                 ">= 0"),
    (["finetune.batch_or_epoch", "step"], "finetune.batch_or_epoch='step' must be 'batch' or "
                                          "'epoch'"),
    (["finetune.local_update_steps", "0"], "finetune.local_update_steps=0 must be >= 1"),
    (["finetune.optimizer.type", "Adamz"], _unknown_optimizer("finetune.optimizer", "Adamz")),
    (["train.optimizer.type", "sgdx"], _unknown_optimizer("train.optimizer", "sgdx")),
    (["fedopt.optimizer.type", "Adam", "fedopt.optimizer.momentum", "0.9"],
     "fedopt.optimizer.momentum: torch.optim.Adam takes no argument 'momentum' (it takes amsgrad, "
     "betas, capturable, decoupled_weight_decay, differentiable, eps, foreach, fused, lr, "
     "maximize, weight_decay); remove fedopt.optimizer.momentum from the YAML or set "
     "fedopt.optimizer.type to an optimizer that takes it"),
    (["finetune.optimizer.lr", "-0.1"], "finetune.optimizer.lr=-0.1 must be >= 0"),
    (["trainer.type", "mytrainer"], "trainer.type='mytrainer' is neither built in ('general', "
     "'cvtrainer') nor registered with federatedscope.register.register_trainer"),
    (["criterion.type", "L1Loss2"], "criterion.type='L1Loss2' is neither built in "
     "('CrossEntropyLoss') nor registered with federatedscope.register.register_criterion"),
])
def test_algorithm_refusals_are_exact(pairs, text):
    _refused(pairs, _fail_text(text))


@pytest.mark.parametrize("pairs", [
    ["federate.method", "fedavg"], ["federate.method", "FEDOPT", "fedopt.optimizer.lr", "1e-6"],
    ["federate.method", "ditto"], ["fedopt.optimizer.type", "sgd", "fedopt.optimizer.lr", "0.0"],
    ["fedopt.optimizer.momentum", "0.0"], ["fedopt.optimizer.momentum", "0.99"],
    ["fedprox.mu", "0.0", "regularizer.mu", "0.0", "regularizer.type", "proximal_regularizer"],
    ["personalization.local_update_steps", "1", "personalization.regular_weight", "0.0"],
    ["personalization.local_param", "['bn', 'norms']"],
    ["finetune.local_update_steps", "1", "finetune.batch_or_epoch", "batch",
     "finetune.optimizer.lr", "0.0", "finetune.optimizer.type", "SGD"],
    ["trainer.type", "cvtrainer", "criterion.type", "CrossEntropyLoss"],
])
def test_algorithm_checks_accept_the_edges(pairs):
    _cfg(*pairs)


def test_fedopt_method_switches_the_server_optimizer_on():
    assert _cfg("federate.method", "FedOpt", "fedopt.optimizer.lr", "1.0").fedopt.use is True
    assert _cfg("federate.method", "FedAvg").fedopt.use is False
    assert _cfg("federate.method", "Ditto").fedopt.use is False


def test_fedprox_sets_the_proximal_regularizer_from_its_mu():
    cfg = _cfg("fedprox.use", "True", "fedprox.mu", "0.3")
    assert (cfg.regularizer.type, cfg.regularizer.mu) == ("proximal_regularizer", 0.3)
    agree = _cfg("fedprox.use", "True", "fedprox.mu", "0.3", "regularizer.type",
                 "proximal_regularizer", "regularizer.mu", "0.3")
    assert agree.regularizer.mu == 0.3
    unset = _cfg("fedprox.use", "True", "fedprox.mu", "0.3", "regularizer.type",
                 "proximal_regularizer", "regularizer.mu", "0.0")
    assert unset.regularizer.mu == 0.3 and type(unset.regularizer.mu) is float
    off = _cfg("fedprox.mu", "0.3", "regularizer.type", "proximal_regularizer",
               "regularizer.mu", "0.2")
    assert (off.regularizer.type, off.regularizer.mu) == ("proximal_regularizer", 0.2)
    plain = _cfg("fedprox.mu", "0.3")
    assert (plain.regularizer.type, plain.regularizer.mu) == ("", 0.0)


def test_personalization_derived_values_follow_train():
    cfg = _cfg("train.local_update_steps", "4", "train.optimizer.lr", "0.05",
               "federate.method", "Ditto")
    assert (cfg.personalization.local_update_steps, cfg.personalization.lr) == (4, 0.05)
    own = _cfg("train.local_update_steps", "4", "personalization.local_update_steps", "2",
               "personalization.lr", "0.01", "federate.method", "Ditto")
    assert (own.personalization.local_update_steps, own.personalization.lr) == (2, 0.01)
    neg = _cfg("train.optimizer.lr", "0.2", "personalization.lr", "-1.0")
    assert neg.personalization.lr == 0.2


@pytest.mark.parametrize("pairs,warns", [
    (["personalization.regular_weight", "0.5"], True),
    (["personalization.local_update_steps", "3"], True),
    (["personalization.regular_weight", "0.5", "federate.method", "DITTO"], False),
    (["personalization.regular_weight", "0.1", "personalization.local_update_steps", "-1",
      "train.local_update_steps", "3"], False),
    (["personalization.local_update_steps", "3", "train.local_update_steps", "3"], False),
])
def test_ditto_keys_outside_ditto_warn(pairs, warns, caplog):
    with caplog.at_level(logging.WARNING, logger="federatedscope"):
        _cfg(*pairs)
    hits = [r.getMessage() for r in caplog.records if "act only with" in r.getMessage()]
    assert hits == (["personalization.regular_weight / local_update_steps act only with "
                     "federate.method Ditto (as in FederatedScope); they are unused here"]
                    if warns else [])


def test_scheduler_is_probed_for_train_and_finetune(tmp_path):
    y = tmp_path / "s.yaml"
    y.write_text("finetune:\n  scheduler:\n    type: StepLR\n    step_sise: 2\n")
    with pytest.raises(ConfigError) as err:
        finalize(load_cfg(str(y), []))
    text = str(err.value)
    assert text.startswith("finetune.scheduler: 'StepLR' with arguments {'step_sise': 2} cannot "
                           "be built: ")
    assert text.endswith("give torch.optim.lr_scheduler's class name and its arguments as keys "
                         "of finetune.scheduler in the YAML (e.g. type: StepLR, step_size: 2, "
                         "gamma: 0.5) (see doc/algorithms.md)")
    with pytest.raises(ConfigError, match=r"^train\.scheduler: 'NoSuchLR' with arguments \{\}"):
        _cfg("train.scheduler.type", "NoSuchLR")


# ------------------------------------------------------------------ data keys (cfg_data)
def test_alias_disagreement_message_is_exact():
    with pytest.raises(ConfigError) as err:
        _cfg("data.num_workers", "2", "dataloader.num_workers", "3")
    assert str(err.value) == (
        "data.num_workers=2 (FS's deprecated name) and dataloader.num_workers=3 disagree; keep "
        "only dataloader.num_workers (remove data.num_workers from the YAML, or append "
        "`data.num_workers 3` to the command)")


def test_alias_at_its_default_leaves_the_new_key_alone(caplog):
    with caplog.at_level(logging.WARNING, logger="federatedscope"):
        cfg = _cfg("data.batch_size", "64", "dataloader.batch_size", "8", "data.shuffle", "True",
                   "dataloader.shuffle", "False", "data.loader", "''")
    assert (cfg.dataloader.batch_size, cfg.dataloader.shuffle, cfg.dataloader.type) == \
        (8, False, "base")
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]


def test_alias_set_with_the_new_key_at_its_default_takes_the_alias():
    # dataloader.batch_size at FS's default 64 does not count as set: the alias wins
    cfg = _cfg("data.batch_size", "16", "dataloader.batch_size", "64")
    assert cfg.dataloader.batch_size == 16


@pytest.mark.parametrize("pairs,refused", [
    (["federate.mode", "Distributed", "distribute.data_idx", "0"], True),
    (["federate.mode", "distributed", "distribute.data_idx", "1"], False),
    (["federate.mode", "distributed", "distribute.role", "server", "distribute.data_idx", "0"],
     False),
    (["federate.mode", "distributed", "distributed_data.enabled", "True"], False),
    (["distribute.data_idx", "0"], False),
])
def test_data_idx_is_checked_only_for_a_distributed_data_idx_client(pairs, refused):
    if refused:
        _refused(pairs, "distribute.data_idx=0 is not a partition: a data_idx-mode client needs "
                        "distribute.data_idx in 1..number of partitions of data.root (FEMNIST: "
                        "its writers kept by data.subsample; independent of "
                        "federate.client_num); set it, or use shards (distributed_data.enabled "
                        "True)")
    else:
        _cfg(*pairs)


BEST = "eval.best_res_update_round_wise_key"


@pytest.mark.parametrize("pairs,why", [
    ([BEST, "test_accuracy"], "names the metric 'accuracy'; the trainer reports ['acc', "
                              "'correct', 'loss', 'total', 'avg_loss']; set it to e.g. "
                              "'test_loss' or 'test_acc'"),
    ([BEST, "train_loss", "eval.split", "['val', 'test']"],
     "names the split 'train', which eval.split=['val', 'test'] does not evaluate; set it to "
     "e.g. 'val_loss' or 'val_acc'"),
    ([BEST, "val_acc", "eval.split", "['test']", "early_stop.patience", "0"],
     "names the split 'val', which eval.split=['test'] does not evaluate; set it to e.g. "
     "'test_loss' or 'test_acc'"),
    # no split evaluated at all: the example falls back to the test split's keys
    ([BEST, "test_acc", "eval.split", "[]"],
     "names the split 'test', which eval.split=[] does not evaluate; set it to e.g. "
     "'test_loss' or 'test_acc'"),
    # FS's image trainer writes the same metrics as the general one
    ([BEST, "val_accuracy", "trainer.type", "cvtrainer"],
     "names the metric 'accuracy'; the trainer reports ['acc', 'correct', 'loss', 'total', "
     "'avg_loss']; set it to e.g. 'test_loss' or 'test_acc'"),
])
def test_a_best_key_the_config_names_must_be_reported(pairs, why):
    key = pairs[pairs.index(BEST) + 1]
    _refused(pairs, f"{BEST}={key!r} {why}")


def test_fs_default_best_key_without_its_split_is_only_warned(caplog):
    with caplog.at_level(logging.WARNING, logger="federatedscope"):
        _cfg("eval.split", "['test']")
    assert [r.getMessage() for r in caplog.records] == [
        f"{BEST}='val_loss' names the split 'val', which eval.split=['test'] does not evaluate; "
        f"set it to e.g. 'test_loss' or 'test_acc': no best round is tracked and early stopping "
        f"cannot fire"]


@pytest.mark.parametrize("key", ["val_avg_loss", "test_acc", "val_correct", "test_total"])
def test_every_reported_key_may_pick_the_best_round(key, caplog):
    with caplog.at_level(logging.WARNING, logger="federatedscope"):
        _cfg(BEST, key, "early_stop.patience", "2")
    assert caplog.records == []
