"""Plain SGD (momentum, weight decay), numerically the same update as ``torch.optim.SGD``.

Why not ``torch.optim.SGD``: constructing any ``torch.optim`` optimizer imports torch._dynamo and
sympy (~800 modules, ~70 MB of RSS measured here), which is a third of a client's memory budget.
The update rule below is torch's for ``dampening=0, nesterov=False``.

It is a ``torch.optim.Optimizer`` by type (without running that constructor, which is what costs
the imports) and keeps its learning rate, momentum and weight decay in ``param_groups[0]``, so
torch's own ``lr_scheduler`` classes drive it exactly as they drive ``torch.optim.SGD``.
"""
from typing import Dict, Iterable, List

import torch


class PlainSGD(torch.optim.Optimizer):
    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0):  # noqa: no super().__init__ on purpose (see above)
        self.params: List[torch.nn.Parameter] = [p for p in params if p.requires_grad]
        self.defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        self.param_groups = [dict(self.defaults, params=self.params)]
        self.state: Dict = {}
        # what torch's LRScheduler patches and Optimizer.__repr__/hooks read
        self._optimizer_step_pre_hooks: Dict = {}
        self._optimizer_step_post_hooks: Dict = {}
        self.buffers: Dict[int, torch.Tensor] = {}

    # Read from the param group at every step, as torch.optim.SGD does: OneCycleLR and CyclicLR
    # (cycle_momentum, their default) move the momentum as well as the learning rate.
    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    @property
    def momentum(self) -> float:
        return self.param_groups[0]["momentum"]

    @property
    def weight_decay(self) -> float:
        return self.param_groups[0]["weight_decay"]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self, closure=None) -> None:
        lr, momentum, weight_decay = self.lr, self.momentum, self.weight_decay
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            d_p = p.grad
            if weight_decay != 0:
                d_p = d_p.add(p, alpha=weight_decay)
            if momentum != 0:
                buf = self.buffers.get(i)
                if buf is None:
                    buf = self.buffers[i] = torch.clone(d_p).detach()
                else:
                    buf.mul_(momentum).add_(d_p)
                d_p = buf
            p.add_(d_p, alpha=-lr)
