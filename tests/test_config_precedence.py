"""Where a config value comes from when several sources set it (doc/config.md): defaults < YAML <
trailing ``key value`` pairs < ``--override key=value``, whatever the order of the options on the
command line. FS's per-client file (``--client_cfg``) never changes the global config: a client's
section is merged over it for that client only (tests/test_client_cfg.py)."""
import pytest

from federatedscope.core.cmd_args import parse_args
from federatedscope.core.configs.config import ConfigError, load_cfg


@pytest.fixture
def yamls(tmp_path):
    main = tmp_path / "server.yaml"
    main.write_text("seed: 11\nfederate:\n  total_round_num: 3\n  sample_client_num: 4\n"
                    "train:\n  optimizer:\n    lr: 0.5\n")
    client = tmp_path / "client.yaml"   # FS's per-client format
    client.write_text("client_2:\n  train:\n    optimizer:\n      lr: 0.25\n")
    return str(main), str(client)


def _cfg(argv):
    a = parse_args(argv)
    return load_cfg(a.cfg_file, a.opts, a.override)


@pytest.mark.parametrize("argv", [
    # the same sources in three command-line orders: the source decides, not the position
    ["--override", "federate.total_round_num=9", "federate.total_round_num", "7", "seed", "2"],
    ["federate.total_round_num", "7", "seed", "2", "--override", "federate.total_round_num=9"],
    ["federate.total_round_num", "7", "--override=federate.total_round_num=9", "seed", "2"],
])
def test_override_beats_trailing_pairs_beat_yaml_and_client_cfg_stays_apart(yamls, argv):
    main, client = yamls
    cfg = _cfg(["--cfg", main, "--client_cfg", client] + argv)
    assert cfg.federate.total_round_num == 9     # --override over the pair (7), YAML (3)
    assert cfg.seed == 2                         # pair over YAML (11)
    assert cfg.train.optimizer.lr == 0.5         # YAML; client_2's section is not global
    assert cfg.federate.sample_client_num == 4   # YAML over the default (-1)
    assert cfg.federate.client_num == 0          # untouched default


def test_later_override_of_the_same_key_wins(yamls):
    main, _ = yamls
    cfg = _cfg(["--cfg", main, "--override", "seed=5", "--override", "seed=6", "seed", "4"])
    assert cfg.seed == 6


def test_without_override_the_last_trailing_pair_wins(yamls):
    main, _ = yamls
    assert _cfg(["--cfg", main, "seed", "4", "seed", "8"]).seed == 8


def test_override_values_are_typed_like_the_default(yamls):
    main, _ = yamls
    cfg = _cfg(["--cfg", main, "--override", "distributed_data.enabled=true",
                "--override", "train.optimizer.lr=1", "--override", "expname= spaced "])
    assert cfg.distributed_data.enabled is True
    assert cfg.train.optimizer.lr == 1.0 and isinstance(cfg.train.optimizer.lr, float)
    assert cfg.expname == "spaced"


@pytest.mark.parametrize("bad,names", [
    (["--override", "seed"], "seed"),                       # no '='
    (["--override", "no_such.key=1"], "no_such"),
    (["seed"], "odd number"),
])
def test_bad_command_lines_name_the_item(yamls, bad, names):
    main, _ = yamls
    with pytest.raises(ConfigError, match=names):
        _cfg(["--cfg", main] + bad)
