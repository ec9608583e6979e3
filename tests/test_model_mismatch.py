"""A client whose model differs from the server's (another ``model.hidden`` on its command line or
in its ``--client_cfg`` section): the global model it receives is refused before torch loads it,
with a ConfigError (main.py: exit 1) naming each key that differs, both shapes and the fix, instead
of torch's "size mismatch" traceback. Real ConvNet2 models, four clients, in-process.
"""
import pytest
import torch

from federatedscope.core.auxiliaries.model_builder import get_model
from federatedscope.core.configs.config import ConfigError
from federatedscope.core.message import EVALUATE, FINISH, MODEL_PARA, SERVER_ID, Message
from federatedscope.core.workers.client import Client
from server_harness import FakeComm, make_cfg

FIX = ("give every process the same model.* keys (model.type, model.hidden, model.out_channels, "
       "...), in the YAML, the command line and any --client_cfg client_<id> section")


def _client(tmp_path, cid, *opts):
    cfg = make_cfg(tmp_path, "seed", 7, "model.out_channels", 62, *opts)   # model.hidden 8
    torch.manual_seed(cid)
    return Client(ID=cid, config=cfg, data={}, model=get_model(cfg), comm=FakeComm())


def test_a_client_with_another_hidden_size_names_the_keys_both_shapes_and_the_fix(tmp_path):
    torch.manual_seed(0)
    server = {k: v.clone() for k, v in
              get_model(make_cfg(tmp_path, "model.out_channels", 62)).state_dict().items()}
    clients = {cid: _client(tmp_path, cid, *(["model.hidden", 16] if cid == 3 else []))
               for cid in (1, 2, 3, 4)}
    for rnd in range(2):          # the others train round after round on the server's model
        for cid, c in clients.items():
            if cid == 3:
                continue
            c.handle(Message(MODEL_PARA, SERVER_ID, cid, rnd, {}, dict(server)))
            assert len(c.comm.sent) == rnd + 1
            assert all(torch.equal(v, server[k])
                       for k, v in c.trainer.model.state_dict().items())
    before = {k: v.clone() for k, v in clients[3].trainer.model.state_dict().items()}
    for msg_type in (MODEL_PARA, EVALUATE, FINISH):   # every message that carries the model
        with pytest.raises(ConfigError) as e:
            clients[3].handle(Message(msg_type, SERVER_ID, 3, 1, {}, dict(server)))
        assert str(e.value) == (
            "global state does not fit this model: the server's global model has other shapes "
            "than this client's: fc1.weight (server [8, 3136] float32, this client [16, 3136] "
            "float32); fc1.bias (server [8] float32, this client [16] float32); fc2.weight "
            "(server [62, 8] float32, this client [62, 16] float32); " + FIX)
    assert clients[3].comm.sent == [] and clients[3].rounds_trained == 0
    assert all(torch.equal(v, before[k]) for k, v in clients[3].trainer.model.state_dict().items())


def test_a_dtype_that_differs_is_named_and_more_than_five_keys_are_counted(tmp_path):
    c = _client(tmp_path, 2)
    own = c.trainer.model.state_dict()
    # 18 keys, 16 of them floating: conv1, conv2, fc1, fc2 (weight, bias), bn1, bn2 (weight,
    # bias, running_mean, running_var; num_batches_tracked is int64 and stays so)
    doubled = {k: v.double() if v.is_floating_point() else v for k, v in own.items()}
    assert len(own) == 18 and sum(v.dtype == torch.float64 for v in doubled.values()) == 16
    with pytest.raises(ConfigError) as e:
        c.trainer.set_state(doubled)
    text = str(e.value)
    assert text.startswith("global state does not fit this model: the server's global model has "
                           "other shapes than this client's: conv1.weight (server [32, 1, 5, 5] "
                           "float64, this client [32, 1, 5, 5] float32); ")
    assert text.endswith(" (and 11 more); " + FIX) and text.count("float64") == 5
    c.trainer.set_state({k: v.clone() for k, v in own.items()})    # the same forms load


@pytest.mark.parametrize("n,tail", [(5, ""), (6, " (and 1 more)")])
def test_five_differing_keys_are_all_named_and_a_sixth_is_counted(tmp_path, n, tail):
    c = _client(tmp_path, 4)
    own = c.trainer.model.state_dict()
    floats = [k for k, v in own.items() if v.is_floating_point()][:n]
    with pytest.raises(ConfigError) as e:
        c.trainer.set_state({k: v.double() if k in floats else v for k, v in own.items()})
    text = str(e.value)
    assert text.count("float64") == 5 and text.endswith(f"float32){tail}; {FIX}")


def test_a_value_that_is_no_tensor_is_named_by_its_type():
    from federatedscope.core.trainers.trainer import _form
    assert (_form(3), _form("w"), _form(torch.zeros(2, 3, dtype=torch.int64))) == \
        ("int", "str", "[2, 3] int64")
