"""The pull of a model's parameters toward fixed anchors: ``grad += weight * (w - anchor)``.

Two FederatedScope algorithms add exactly this to the gradient:
- FedProx (``fedprox.use``/``fedprox.mu``, FS's ``proximal_regularizer``): the loss gains
  ``mu/2 * ||w - w_global||^2``, whose gradient is ``mu * (w - w_global)``; the anchors are the
  parameters as received at the start of the round. It is part of the loss in FS, so it is added
  before gradient clipping.
- Ditto (``personalization.regular_weight``): FS's regularized optimizer adds
  ``regular_weight * (w_personal - w_global)`` to the personal model's gradient inside
  ``step()``, i.e. after clipping.
The gradient is added directly instead of through autograd of the squared norm, so the update is
exactly the formula above (autograd through ``norm()**2`` rounds differently).
"""
from typing import List

import torch
from torch import nn


class ParamPull:
    def __init__(self, model: nn.Module, anchors: List[torch.Tensor], weight: float):
        self.params = [p for p in model.parameters()]
        if len(anchors) != len(self.params):
            raise ValueError(f"{len(anchors)} anchors for {len(self.params)} parameters")
        self.anchors = anchors
        self.weight = float(weight)

    @classmethod
    def toward_current(cls, model: nn.Module, weight: float) -> "ParamPull":
        """Anchored at the model's parameters as they are now (FedProx: the received global)."""
        return cls(model, [p.detach().clone() for p in model.parameters()], weight)

    @torch.no_grad()
    def apply(self) -> None:
        if self.weight == 0:
            return
        for p, a in zip(self.params, self.anchors):
            if p.grad is not None:
                p.grad.add_((p - a).mul_(self.weight))
