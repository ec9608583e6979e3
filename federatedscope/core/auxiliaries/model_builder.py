"""FS's ``get_model``: the model registered for ``model.type``, built from the config alone, so a
server needs no data to know the input shape.

Every callable registered with ``register_model`` is asked in turn (``func(model_config,
input_shape) -> nn.Module or None``); the first model is the answer. The input shape is
``model.input_shape`` when set, else the registered ``DatasetSpec``'s ``model_input`` for
``data.type``; the core keeps no per-dataset table.
"""
from typing import Tuple

from torch import nn

from federatedscope import register
from federatedscope.core.configs.config import ConfigError
from federatedscope.core.data.dataset_spec import get_spec


def input_shape(cfg) -> Tuple[int, ...]:
    if cfg.model.input_shape:
        shape = tuple(int(v) for v in cfg.model.input_shape)
        if len(shape) == 2:
            shape = (1,) + shape
        if len(shape) != 3:
            raise ConfigError(f"model.input_shape={list(cfg.model.input_shape)} must be "
                              f"[channels, height, width] or [height, width]")
        return shape
    try:
        return tuple(get_spec(cfg.data.type).model_input)
    except ConfigError as e:
        raise ConfigError(f"cannot infer the model input shape: {e}; set model.input_shape") \
            from None


def get_model(cfg) -> nn.Module:
    shape = input_shape(cfg)
    for func in register.model_dict.values():
        model = func(cfg.model, shape)
        if model is not None:
            return model
    raise ConfigError(f"model.type={cfg.model.type!r} has no registered builder; registered: "
                      f"{sorted(register.model_dict)} (a package adds one with "
                      f"federatedscope.register.register_model)")


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
