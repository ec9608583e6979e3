"""FS's lstm model, character_loss criterion and nlptrainer, through the registry."""
import math
from types import SimpleNamespace

import pytest
import torch

from federatedscope import register
from federatedscope.core.trainers.trainer import GeneralTorchTrainer
from federatedscope.nlp.dataset.shakespeare import ALL_LETTERS
from federatedscope.nlp.loss.character_loss import CHARACTERS_WEIGHTS
from federatedscope.nlp.model.rnn import LSTM
from federatedscope.nlp.trainer.trainer import NLPTrainer


def _cfg(**kw):
    base = dict(type="lstm", in_channels=80, out_channels=80, embed_size=8, hidden=32,
                dropout=0.0)
    base.update(kw)
    return SimpleNamespace(**base)


def test_lstm_from_registry_predicts_one_character_per_sequence():
    model = register.model_dict["lstm"](_cfg(), (80,))
    assert isinstance(model, LSTM) and model.n_layers == 2
    assert model.encoder.num_embeddings == 80 and model.encoder.embedding_dim == 8
    out = model(torch.randint(0, 80, (5, 80)))
    assert out.shape == (5, 80)
    # FS's fallback: in_channels 0 takes the sample length
    assert register.model_dict["lstm"](_cfg(in_channels=0), (80,)).in_channels == 80
    assert register.model_dict["lstm"](_cfg(type="convnet2"), (80,)) is None
    with pytest.raises(ValueError, match="model.in_channels"):
        register.model_dict["lstm"](_cfg(in_channels=0), ())


def test_lstm_uses_only_the_last_position():
    torch.manual_seed(0)
    model = LSTM(in_channels=80, hidden=16, out_channels=80).eval()
    x = torch.randint(0, 80, (3, 80))
    steps, _ = model.rnn(model.encoder(x))
    # FS decodes every step and keeps the last one: the prediction of the character after x
    assert torch.allclose(model(x), model.decoder(steps[:, -1]))
    assert not torch.allclose(model(x), model.decoder(steps[:, 0]))
    # embed_size 0: already-embedded float input of width in_channels
    m0 = LSTM(in_channels=6, hidden=4, out_channels=3, embed_size=0)
    assert m0(torch.randn(2, 10, 6)).shape == (2, 3)


def test_character_loss_weights_and_value():
    crit = register.criterion_dict["character_loss"]("character_loss", "cpu")
    w = crit.weight
    assert w.shape == (80,)
    assert w[ALL_LETTERS.index(" ")].item() == pytest.approx(8 * 0.042500849608091536)
    assert w[ALL_LETTERS.index("b")].item() == 8.0  # not in FedEM's table: weight 1 x 8
    assert len(CHARACTERS_WEIGHTS) == 23
    logits = torch.zeros(2, 80)
    y = torch.tensor([ALL_LETTERS.index("e"), ALL_LETTERS.index("b")])
    # zero logits: every sample's CE is log(80); the weighted mean of equal values is log(80)
    assert crit(logits, y).item() == pytest.approx(math.log(80), rel=1e-5)
    s = register.criterion_dict["character_loss"]("character_loss", "cpu", reduction="sum")
    expected = (8 * 0.13455606165058104 + 8.0) * math.log(80)
    assert s(logits, y).item() == pytest.approx(expected, rel=1e-5)
    assert register.criterion_dict["character_loss"]("CrossEntropyLoss", "cpu") is None


def test_nlptrainer_is_registered_under_fs_name():
    cls = register.trainer_dict["nlptrainer"]("nlptrainer")
    assert cls is NLPTrainer and issubclass(cls, GeneralTorchTrainer)
    assert register.trainer_dict["nlptrainer"]("cvtrainer") is None


@pytest.mark.parametrize("shape", [(3, 84, 84), (3, 32, 32)])
def test_convnet2_runs_on_celeba_and_cifar_sizes(shape):
    from federatedscope.cv.model.cnn import ConvNet2
    c, h, w = shape
    model = ConvNet2(in_channels=c, h=h, w=w, hidden=32, class_num=2)
    assert model(torch.rand(4, *shape)).shape == (4, 2)
    assert model.fc1.in_features == (h // 4) * (w // 4) * 64
