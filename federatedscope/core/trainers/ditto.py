"""Ditto (Li et al., ICML 2021) as FederatedScope runs it (``federate.method Ditto``).

Each client keeps a personal model next to the global one. In a round, over one stream of
batches (or epochs): the first ``personalization.local_update_steps`` units train the personal
model, with ``personalization.regular_weight * (w_personal - w_global)`` added to its gradient
(after clipping, as FS's regularized optimizer does; ``w_global`` is the global model as
received, fixed for the round); the next ``train.local_update_steps`` units train the global
model as FedAvg does, and only the global model is uploaded. Evaluation reports the personal
model (FS evaluates Ditto on its local model).

The personal model's learning rate is ``personalization.lr`` (default: ``train.optimizer.lr``);
FS's trainer uses ``train.optimizer.lr`` for both models, which is the same unless both are set
(doc/algorithms.md). The personal model starts as a copy of the first global model received
(FS copies the initial model, which is the same weights here: every process builds the model
from the same seed).
"""
import copy
from typing import Dict, Tuple

from federatedscope.core.trainers.regularizer import ParamPull
from federatedscope.core.trainers.scheduler import build_scheduler
from federatedscope.core.trainers.trainer import GeneralTorchTrainer, State, _Tally

PERSONAL_PREFIX = "ditto_personal."


class DittoMixin:
    """Turns a ``GeneralTorchTrainer`` (or a registered subclass) into FS's Ditto trainer."""

    personal_model = None

    def train(self, seed: int) -> Tuple[int, State, Dict[str, float]]:
        src = self.data.get("train")
        n = len(src) if src is not None else 0
        if n == 0:
            return 0, self.upload_state(), {"train_total": 0}
        if self.personal_model is None:
            self.personal_model = copy.deepcopy(self.model)
        self._begin_round(seed)
        self.personal_model.train()
        cfg, p = self.cfg, self.cfg.personalization
        global_opt = self._optimizer(self.model, cfg.train.optimizer.lr)
        sched = build_scheduler(global_opt, cfg.train.scheduler)
        personal_opt = self._optimizer(self.personal_model, p.lr)
        anchors = [w.detach().clone() for w in self.model.parameters()]
        pull = ParamPull(self.personal_model, anchors, p.regular_weight)
        prox = self._prox()
        by_epoch = cfg.train.batch_or_epoch == "epoch"
        personal, shared = _Tally(), _Tally()
        for unit, batch in self._round_batches(src, seed, p.local_update_steps +
                                               cfg.train.local_update_steps, by_epoch):
            if unit < p.local_update_steps:
                personal.add(*self._step(self.personal_model, personal_opt, batch,
                                         post_clip=pull.apply))
            else:
                shared.add(*self._step(self.model, global_opt, batch, sched,
                                       pre_clip=prox.apply if prox else None))
        self._version += 1
        metrics = shared.metrics("train")
        metrics["train_total_local_model"] = personal.total
        return n, self.upload_state(), metrics

    def eval_model(self):
        return self.personal_model if self.personal_model is not None else self.model

    def personal_state(self) -> State:
        state = super().personal_state()
        if self.personal_model is not None:
            state.update({PERSONAL_PREFIX + k: v.detach().cpu().clone()
                          for k, v in self.personal_model.state_dict().items()})
        return state

    def load_personal_state(self, state: State) -> None:
        own = {k: v for k, v in state.items() if not k.startswith(PERSONAL_PREFIX)}
        personal = {k[len(PERSONAL_PREFIX):]: v for k, v in state.items()
                    if k.startswith(PERSONAL_PREFIX)}
        if personal:
            self.personal_model = copy.deepcopy(self.model)
            self.personal_model.load_state_dict(personal, strict=True)
        super().load_personal_state(own)


_CLASSES: Dict[type, type] = {}


def ditto_class(base: type) -> type:
    """FS's ``wrap_DittoTrainer`` as a class: Ditto's training on top of ``base``."""
    if not issubclass(base, GeneralTorchTrainer):
        raise ValueError(f"federate.method Ditto needs a trainer derived from "
                         f"GeneralTorchTrainer; trainer.type gives {base.__name__}")
    if base not in _CLASSES:
        _CLASSES[base] = type(f"Ditto{base.__name__}", (DittoMixin, base), {})
    return _CLASSES[base]
