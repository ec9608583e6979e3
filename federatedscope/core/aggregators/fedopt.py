"""FedOpt (FS's ``fedopt.use`` / ``federate.method FedOpt``): an optimizer on the server.

The round's combined update (FedAvg or a robust rule) is turned into a pseudo-gradient
``g = global - combined`` and the server takes one optimizer step on the global model with it.
SGD as torch defines it (dampening 0): ``buf = momentum * buf + g``; ``global -= lr * buf``
(``buf = g`` without momentum). So lr 1.0 without momentum is exactly the combined model, and
lr 0.5 moves half-way. Computed in float64 (a difference of two float32 values is exact there,
which keeps lr 1.0 bit-identical to FedAvg). Integer buffers take the combined value.
The momentum buffers are state: ``state_dict`` goes into the server checkpoint.
"""
from typing import Dict

import torch

State = Dict[str, torch.Tensor]
OPTIMIZERS = ("sgd",)


class FedOptimizer:
    def __init__(self, opt_type: str = "SGD", lr: float = 1.0, momentum: float = 0.0):
        if str(opt_type).lower() not in OPTIMIZERS:
            from federatedscope.core.configs.config import ConfigError
            raise ConfigError(f"fedopt.optimizer.type={opt_type!r}: the server optimizer "
                              f"supports {list(OPTIMIZERS)}")
        if not lr > 0 or not 0 <= momentum < 1:
            from federatedscope.core.configs.config import ConfigError
            raise ConfigError(f"fedopt.optimizer: lr > 0 and 0 <= momentum < 1 are required "
                              f"(got lr={lr}, momentum={momentum})")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.buffers: State = {}

    def step(self, global_state: State, combined: State) -> State:
        out: State = {}
        for key, new in combined.items():
            old = global_state[key]
            if not old.is_floating_point():
                out[key] = new
                continue
            grad = old.to(torch.float64) - new.to(torch.float64)
            if self.momentum:
                buf = self.buffers.get(key)
                buf = grad if buf is None else buf.mul_(self.momentum).add_(grad)
                self.buffers[key] = buf
                grad = buf
            out[key] = (old.to(torch.float64) - self.lr * grad).to(old.dtype)
        return out

    def state_dict(self) -> dict:
        return {"fedopt_buffers": {k: v.clone() for k, v in self.buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.buffers = {k: v.to(torch.float64).clone()
                        for k, v in dict(state.get("fedopt_buffers") or {}).items()}
