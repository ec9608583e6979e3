"""FedOpt (FS's ``fedopt.use`` / ``federate.method FedOpt``): an optimizer on the server.

The round's combined update (FedAvg or a robust rule) is turned into a pseudo-gradient
``g = global - combined`` and the server takes one optimizer step on the global model with it.
Computed in float64 (a difference of two float32 values is exact there, which keeps SGD at lr 1.0
bit-identical to FedAvg). Integer buffers take the combined value.

``fedopt.optimizer`` is FS's open node: ``type`` is any ``torch.optim`` class or one registered
with ``register_optimizer`` (FedAdam: ``type: Adam``), every other key its argument
(``core/trainers/optimizer.py: get_optimizer``). Plain SGD (arguments lr and momentum only) is
written out, as torch defines it (dampening 0): ``buf = momentum * buf + g``;
``global -= lr * buf`` (``buf = g`` without momentum), so lr 1.0 without momentum is exactly the
combined model. Any other optimizer steps float64 copies of the global model's floating keys and
keeps its own state (Adam's moments) across rounds. Either state is in ``state_dict``, which goes
into the server checkpoint.
"""
import copy
from typing import Dict, List, Optional

import torch

State = Dict[str, torch.Tensor]


def _config_error(text: str):
    from federatedscope.core.configs.config import ConfigError
    return ConfigError(text)


class FedOptimizer:
    def __init__(self, opt_type: str = "SGD", lr: float = 1.0, momentum: float = 0.0,
                 **kwargs):
        if not lr > 0 or not 0 <= momentum < 1:
            raise _config_error(f"fedopt.optimizer: lr > 0 and 0 <= momentum < 1 are required "
                                f"(got lr={lr}, momentum={momentum})")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.buffers: State = {}
        # anything but plain SGD goes through FS's get_optimizer, built on the first step
        self.general = str(opt_type).lower() != "sgd" or bool(kwargs)
        self.spec = (str(opt_type), dict(kwargs, momentum=momentum))
        self._keys: List[str] = []
        self._params: List[torch.nn.Parameter] = []
        self._optimizer = None
        self._pending: Optional[dict] = None   # a restored optimizer state, loaded when built
        if self.general:
            self._build([torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))])

    def _build(self, params: List[torch.nn.Parameter]):
        from federatedscope.core.trainers.optimizer import get_optimizer
        opt_type, kwargs = self.spec
        try:
            return get_optimizer(params, opt_type, self.lr, **kwargs)
        except (ValueError, TypeError) as e:
            raise _config_error(f"fedopt.optimizer: {e}; set fedopt.optimizer.type to a "
                                f"torch.optim class (or a registered optimizer) and give only "
                                f"its arguments as keys of fedopt.optimizer") from None

    def step(self, global_state: State, combined: State) -> State:
        if self.general:
            return self._general_step(global_state, combined)
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

    def _general_step(self, global_state: State, combined: State) -> State:
        keys = [k for k in combined if global_state[k].is_floating_point()]
        if self._optimizer is None:
            self._keys = keys
            self._params = [torch.nn.Parameter(global_state[k].to(torch.float64).clone())
                            for k in keys]
            self._optimizer = self._build(self._params)
            if self._pending:
                self._optimizer.load_state_dict(self._pending)
                self._pending = None
        elif keys != self._keys:
            raise ValueError(f"fedopt: the round's floating keys changed ({len(keys)} now, "
                             f"{len(self._keys)} before); the server optimizer's state is per key")
        with torch.no_grad():
            for key, p in zip(keys, self._params):
                old = global_state[key].to(torch.float64)
                p.copy_(old)
                p.grad = old - combined[key].to(torch.float64)
        self._optimizer.step()
        out: State = {k: v for k, v in combined.items() if k not in self._keys}
        for key, p in zip(keys, self._params):
            out[key] = p.detach().to(global_state[key].dtype).clone()
        return out

    def state_dict(self) -> dict:
        state = {"fedopt_buffers": {k: v.clone() for k, v in self.buffers.items()}}
        if self._optimizer is not None:
            # a copy: the next step updates the live moments in place
            state["fedopt_optimizer"] = copy.deepcopy(self._optimizer.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        self.buffers = {k: v.to(torch.float64).clone()
                        for k, v in dict(state.get("fedopt_buffers") or {}).items()}
        self._pending = state.get("fedopt_optimizer")
