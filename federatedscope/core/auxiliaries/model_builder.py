"""Build the model from the config alone, so a server needs no data to know the input shape."""
from typing import Tuple

from torch import nn

from federatedscope.core.configs.config import ConfigError

# Input shape per dataset when ``model.input_shape`` is not given: (channels, height, width).
_DATASET_SHAPES = {"femnist": (1, 28, 28)}


def input_shape(cfg) -> Tuple[int, ...]:
    if cfg.model.input_shape:
        shape = tuple(int(v) for v in cfg.model.input_shape)
        if len(shape) == 2:
            shape = (1,) + shape
        if len(shape) != 3:
            raise ConfigError(f"model.input_shape={list(cfg.model.input_shape)} must be "
                              f"[channels, height, width] or [height, width]")
        return shape
    if cfg.data.type.lower() in _DATASET_SHAPES:
        return _DATASET_SHAPES[cfg.data.type.lower()]
    raise ConfigError("cannot infer the model input shape: set model.input_shape")


def get_model(cfg) -> nn.Module:
    if cfg.model.type.lower() == "convnet2":
        from federatedscope.cv.model.cnn import ConvNet2
        c, h, w = input_shape(cfg)
        if cfg.model.in_channels:
            c = cfg.model.in_channels
        return ConvNet2(in_channels=c, h=h, w=w, hidden=cfg.model.hidden,
                        class_num=cfg.model.out_channels, dropout=cfg.model.dropout)
    raise ConfigError(f"model.type={cfg.model.type!r} is not supported")
