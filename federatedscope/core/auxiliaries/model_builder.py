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


def count_flops(model: nn.Module, shape: Tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one sample (Conv2d and Linear layers), x2."""
    import torch
    total = [0]

    def conv_hook(mod, _inp, out):
        k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
        total[0] += 2 * k * out.numel()

    def linear_hook(mod, _inp, out):
        total[0] += 2 * mod.in_features * out.numel()

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros((1,) + tuple(shape)))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return total[0]
