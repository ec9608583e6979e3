"""Plain SGD (momentum, weight decay), numerically the same update as ``torch.optim.SGD``.

Why not ``torch.optim.SGD``: constructing any ``torch.optim`` optimizer imports torch._dynamo and
sympy (~800 modules, ~70 MB of RSS measured here), which is a third of a client's memory budget.
The update rule below is torch's for ``dampening=0, nesterov=False``.
"""
from typing import Dict, Iterable, List

import torch


class PlainSGD:
    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        self.params: List[torch.nn.Parameter] = [p for p in params if p.requires_grad]
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.buffers: Dict[int, torch.Tensor] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            d_p = p.grad
            if self.weight_decay != 0:
                d_p = d_p.add(p, alpha=self.weight_decay)
            if self.momentum != 0:
                buf = self.buffers.get(i)
                if buf is None:
                    buf = self.buffers[i] = torch.clone(d_p).detach()
                else:
                    buf.mul_(self.momentum).add_(d_p)
                d_p = buf
            p.add_(d_p, alpha=-self.lr)
