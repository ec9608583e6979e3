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
into the server checkpoint, with the optimizer's type.

On resume (``federate.restore_from``) only the state carries over (moments, step counts, momentum
buffers): the hyper-parameters (lr, betas, eps, ...) are this run's ``fedopt.optimizer``, since a
user who changes them on resume means it (torch's ``load_state_dict`` would put the saved ones
back). State written by another optimizer type cannot drive this one: it is dropped with one
warning and this optimizer starts afresh. Checkpoints from before the type was stored still load.
"""
import copy
import logging
from typing import Dict, List, Optional

import torch

logger = logging.getLogger("federatedscope")
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
                self._load_pending()
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

    def _load_pending(self) -> None:
        """The restored state into the optimizer just built, under this run's hyper-parameters."""
        pending, self._pending = self._pending, None
        configured = [{k: v for k, v in g.items() if k != "params"}
                      for g in self._optimizer.param_groups]
        try:
            self._optimizer.load_state_dict(pending)
        except (ValueError, KeyError, TypeError) as e:   # torch: groups or sizes differ
            self._optimizer = self._build(self._params)
            logger.warning(f"fedopt.optimizer: the checkpoint's server optimizer state does not "
                           f"fit this run's {self.spec[0]} over {len(self._params)} tensors ({e}); "
                           f"it starts afresh (restore with the fedopt.optimizer.type it was "
                           f"written with to continue it)")
            return
        saved = dict(self._optimizer.param_groups[0])
        for group, hyper in zip(self._optimizer.param_groups, configured):
            group.update(hyper)       # load_state_dict put the checkpoint's values back
        changed = sorted(k for k, v in configured[0].items() if not _same(saved.get(k), v))
        if changed:
            logger.info(f"fedopt.optimizer: restored the server optimizer's state under this "
                        f"run's " + ", ".join(f"{k}={configured[0][k]}" for k in changed)
                        + " (the checkpoint's: "
                        + ", ".join(f"{k}={saved.get(k)}" for k in changed) + ")")

    def _type(self) -> str:
        return self.spec[0].lower()

    def state_dict(self) -> dict:
        state = {"fedopt_type": self.spec[0],
                 "fedopt_buffers": {k: v.clone() for k, v in self.buffers.items()}}
        if self._optimizer is not None:
            # a copy: the next step updates the live moments in place
            state["fedopt_optimizer"] = copy.deepcopy(self._optimizer.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        buffers = dict(state.get("fedopt_buffers") or {})
        pending = state.get("fedopt_optimizer")
        written_by = self._writer(state.get("fedopt_type"), buffers, pending)
        if written_by:
            logger.warning(f"fedopt.optimizer.type is {self.spec[0]} but the checkpoint's server "
                           f"optimizer state was written by {written_by}; that state cannot "
                           f"drive {self.spec[0]}, so it starts afresh from this round (restore "
                           f"with the fedopt.optimizer.type the checkpoint was written with to "
                           f"continue its state)")
            buffers, pending = {}, None
        self.buffers = {k: v.to(torch.float64).clone() for k, v in buffers.items()}
        self._pending = pending
        self._optimizer = None        # built, with the restored state, on the next step

    def _writer(self, saved_type, buffers: dict, pending) -> str:
        """Which optimizer wrote state this one cannot take, or "" when it can. A checkpoint
        without ``fedopt_type`` (written before it was stored) is judged by its form: plain
        SGD's buffers by name, or another optimizer's torch state."""
        if saved_type is not None and str(saved_type).lower() != self._type():
            return str(saved_type)
        if self.general and buffers and not pending:
            return "plain SGD (momentum buffers by key, not a torch optimizer's state)"
        if not self.general and pending:
            return (f"{saved_type or 'another optimizer'} with other arguments (a torch "
                    f"optimizer's state, not plain SGD's momentum buffers)")
        return ""


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except (RuntimeError, TypeError):   # tensors of several elements
        return False
