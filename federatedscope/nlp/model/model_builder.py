"""Registers FS's ``lstm`` with the registry (``func(model_config, input_shape)``)."""
from typing import Optional, Sequence

from federatedscope.nlp.model.rnn import LSTM
from federatedscope.register import register_model


def get_rnn(model_config, input_shape: Optional[Sequence[int]] = None):
    if str(model_config.type).lower() != "lstm":
        return None
    # FS: in_channels (vocabulary size) falls back to the sample length when unset (0)
    in_channels = int(model_config.in_channels or 0) or int(tuple(input_shape or (0,))[-1])
    if in_channels <= 0:
        raise ValueError("model.type=lstm needs model.in_channels (the vocabulary size, 80 for "
                         "shakespeare) or a dataset whose input shape gives it")
    return LSTM(in_channels=in_channels, hidden=int(model_config.hidden),
                out_channels=int(model_config.out_channels),
                embed_size=int(getattr(model_config, "embed_size", 8)),
                dropout=float(model_config.dropout))


register_model("lstm", get_rnn)
