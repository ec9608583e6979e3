"""Local training and evaluation of one client's model on its own splits (contract C8).

The trainer consumes any ``BatchSource`` (``core/data/datasets.py``): in-memory, memory-mapped or
streaming data look the same to it. A fresh optimizer (and scheduler, ``train.scheduler``) is
built for every round, as in FS, so no momentum from an earlier round (or an earlier connection)
leaks into the new global model.

Algorithms on the client side (doc/algorithms.md):
- FedBN / ``personalization.local_param``: a state key is *local* when any of those strings is a
  substring of its name (FS's rule). Local keys are never uploaded and never overwritten by the
  global model; they are this client's ``personal_state()``.
- FedProx: ``regularizer`` (set from ``fedprox.*`` by cfg_fl_algo) pulls the weights toward the
  received global ones (``regularizer.py``).
- Ditto: ``ditto.py`` (a personal model next to the global one).
- ``finetune.before_eval``: evaluation runs on a fine-tuned copy; the model itself, and so the
  next upload, is unchanged. ``finetune.freeze_param`` (comma-separated name fragments, FS's
  substring rule) keeps the matching parameters of that copy fixed.
- ``grad.grad_accum_count`` N: as in FS, each batch's loss is divided by N and the optimizer steps
  after every N batches, so one step sees the mean gradient of N batches; in 'batch' mode
  ``local_update_steps`` counts steps (N batches each). A round's last, shorter window (epoch
  mode) still steps, its gradient rescaled to the mean over the batches it holds.
"""
import copy
import logging
from typing import Dict, Iterator, Mapping, Optional, Tuple

import torch
from torch import nn

import federatedscope.register as register
from federatedscope.core.data.datasets import BatchSource
from federatedscope.core.trainers.optimizer import build_optimizer
from federatedscope.core.trainers.regularizer import ParamPull
from federatedscope.core.trainers.scheduler import build_scheduler

logger = logging.getLogger("federatedscope")
State = Dict[str, torch.Tensor]
Batch = Tuple[torch.Tensor, torch.Tensor]
SAME_MODEL = ("give every process the same model.* keys (model.type, model.hidden, "
              "model.out_channels, ...), in the YAML, the command line and any --client_cfg "
              "client_<id> section")


def _form(value) -> str:
    """Shape and dtype as a message shows them: [32, 3136] float32."""
    if not isinstance(value, torch.Tensor):
        return type(value).__name__
    return f"{list(value.shape)} {str(value.dtype).replace('torch.', '')}"


def is_local_key(name: str, local_param) -> bool:
    """FS's rule: a key stays on the client when any ``local_param`` string occurs in its name."""
    return any(fragment in name for fragment in local_param)


def resolve_device(device: str) -> str:
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"device {device} requested (use_gpu) but CUDA is not available; "
                       f"training on cpu")
        return "cpu"
    return str(device)


class GeneralTorchTrainer:
    def __init__(self, model: nn.Module, data: Mapping[str, BatchSource], device: str, cfg):
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.data = dict(data)
        self.cfg = cfg
        self.criterion = resolve_criterion(cfg.criterion.type, self.device)
        self.local_keys = frozenset(k for k in self.model.state_dict()
                                    if is_local_key(k, cfg.personalization.local_param))
        self._version = 0          # bumped whenever the evaluated weights may change
        self._finetuned: Optional[Tuple[int, nn.Module]] = None
        self._last_seed = 0

    # --- model state ---
    def get_state(self, local: Optional[bool] = None) -> State:
        """A copy of the model's state: every key, or (``local`` True/False) only the local or
        only the global keys. Filtered before copying: a round's upload and its personal state
        would otherwise each copy the whole model."""
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
                if local is None or (k in self.local_keys) == local}

    def upload_state(self) -> State:
        return self.get_state(local=False)

    def set_state(self, state: State) -> None:
        """Load the global keys; local keys (``personalization.local_param``) keep their values
        whether or not ``state`` carries them."""
        own = self.model.state_dict()
        unknown = sorted(set(state) - set(own))
        missing = sorted(set(own) - set(state) - self.local_keys)
        if unknown or missing:
            raise ValueError(f"global state does not fit this model: unknown keys {unknown[:5]}, "
                             f"missing keys {missing[:5]} (same model.* config on server and "
                             f"clients? same personalization.local_param?)")
        loaded = {k: v for k, v in state.items() if k not in self.local_keys}
        # checked here: torch's own error is a traceback naming neither the config nor the fix
        differ = [f"{k} (server {_form(v)}, this client {_form(own[k])})"
                  for k, v in loaded.items() if _form(v) != _form(own[k])]
        if differ:
            # imported here: the benchmarks' floor imports the trainer where yacs is absent
            from federatedscope.core.configs.config import ConfigError
            raise ConfigError(f"global state does not fit this model: the server's global model "
                              f"has other shapes than this client's: {'; '.join(differ[:5])}"
                              + (f" (and {len(differ) - 5} more)" if len(differ) > 5 else "")
                              + f"; {SAME_MODEL}")
        self.model.load_state_dict(loaded, strict=False)
        self._version += 1

    def personal_state(self) -> State:
        """What this client keeps for itself between rounds (FedBN's layers); {} when none."""
        return self.get_state(local=True)

    def load_personal_state(self, state: State) -> None:
        expected = set(self.local_keys)
        if set(state) != expected:
            raise ValueError(f"personal state keys {sorted(state)[:5]} do not match this "
                             f"trainer's {sorted(expected)[:5]} (personalization.local_param or "
                             f"federate.method changed since it was saved?)")
        self.model.load_state_dict(state, strict=False)
        self._version += 1

    def num_samples(self, split: str) -> int:
        src = self.data.get(split)
        return len(src) if src is not None else 0

    def _optimizer(self, model: Optional[nn.Module] = None, lr: Optional[float] = None,
                   o=None) -> torch.optim.Optimizer:
        """The optimizer node ``o`` asks for (default: ``train.optimizer``; FS's
        ``get_optimizer``: type and every argument of the node) over ``model`` (default: the
        global one), with ``lr`` (default: ``o.lr``)."""
        o = o if o is not None else self.cfg.train.optimizer
        model = model if model is not None else self.model
        return build_optimizer(model, o, lr)

    # --- training ---
    def train(self, seed: int) -> Tuple[int, State, Dict[str, float]]:
        """Run ``local_update_steps`` batches or epochs; returns (train samples, upload, metrics).

        ``seed`` fixes the shuffle order and dropout for this round, so the same client in a
        standalone simulation and in its own process trains identically.
        """
        src = self.data.get("train")
        n = len(src) if src is not None else 0
        if n == 0:
            return 0, self.upload_state(), {"train_total": 0}
        self._begin_round(seed)
        t = self.cfg.train
        opt = self._optimizer(self.model, t.optimizer.lr)
        sched = build_scheduler(opt, t.scheduler)
        prox = self._prox()
        acc = _Tally()
        for batch, window in self._accumulated(src, seed, t.local_update_steps,
                                               t.batch_or_epoch == "epoch"):
            acc.add(*self._step(self.model, opt, batch, sched,
                                pre_clip=prox.apply if prox else None, window=window))
        self._version += 1
        return n, self.upload_state(), acc.metrics("train")

    def _prox(self) -> Optional[ParamPull]:
        """FedProx's pull toward the weights as received (None when off)."""
        reg = self.cfg.regularizer
        return ParamPull.toward_current(self.model, reg.mu) if reg.type and reg.mu else None

    def _begin_round(self, seed: int) -> None:
        self._finetuned = None   # a stale fine-tuned copy would hold a second model in memory
        torch.manual_seed(seed)
        self._last_seed = seed
        self.model.train()

    def _step(self, model: nn.Module, opt, batch: Batch, sched=None, pre_clip=None,
              post_clip=None, window: Tuple[int, int, bool] = (0, 1, True)
              ) -> Tuple[float, int, int]:
        """One batch: backward, and an optimizer step when its accumulation ``window`` (index
        in the window, ``grad.grad_accum_count``, whether the window ends here) ends; returns
        (summed loss, samples, correct)."""
        index, count, ends = window
        xb, yb = batch[0].to(self.device), batch[1].to(self.device)
        if index == 0:
            opt.zero_grad(set_to_none=True)
        out = model(xb)
        loss = self.criterion(out, yb)   # FS's convention: the batch mean
        (loss / count if count > 1 else loss).backward()
        if not ends:
            return float(loss.detach()) * len(yb), len(yb), int((out.argmax(1) == yb).sum())
        if index + 1 < count:   # a short last window: the mean over the batches it holds
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.mul_(count / (index + 1))
        if pre_clip is not None:
            pre_clip()
        clip = self.cfg.grad.grad_clip
        if clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        if post_clip is not None:
            post_clip()
        opt.step()
        if sched is not None:
            sched.step()
        return float(loss.detach()) * len(yb), len(yb), int((out.argmax(1) == yb).sum())

    def _accumulated(self, src: BatchSource, seed: int, steps: int, by_epoch: bool
                     ) -> Iterator[Tuple[Batch, Tuple[int, int, bool]]]:
        """The round's batches, each with its accumulation window for ``_step``: 'batch' mode
        runs ``steps`` optimizer steps of ``grad.grad_accum_count`` batches each (FS)."""
        count = self.cfg.grad.grad_accum_count
        batches = self._round_batches(src, seed, steps if by_epoch else steps * count, by_epoch)
        index, pending = 0, next(batches, None)
        while pending is not None:
            following = next(batches, None)
            ends = index + 1 == count or following is None
            yield pending[1], (index, count, ends)
            index, pending = (0 if ends else index + 1), following

    def _round_batches(self, src: BatchSource, seed: int, steps: int,
                       by_epoch: bool) -> Iterator[Tuple[int, Batch]]:
        """``steps`` epochs, or that many batches (continuing into further epochs), each with
        its unit index (epoch or batch number); epoch e is shuffled with seed
        ``seed * 1000003 + e``."""
        dl = self.cfg.dataloader
        left, epoch, unit = steps, 0, 0
        while (epoch < steps) if by_epoch else (left > 0):
            for batch in src.iter_batches(dl.batch_size, dl.shuffle, seed * 1000003 + epoch,
                                          dl.num_workers, dl.drop_last, dl.pin_memory):
                if not by_epoch:
                    if left == 0:
                        return
                    left -= 1
                yield (epoch if by_epoch else unit), batch
                unit += 1
            epoch += 1
            if not by_epoch and left == steps:  # drop_last left no batch: no step can be taken
                return

    # --- evaluation ---
    def eval_model(self) -> nn.Module:
        """The model evaluation reports on (Ditto: the personal one)."""
        return self.model

    def evaluate(self, split: str) -> Dict[str, float]:
        src = self.data.get(split)
        if src is None or len(src) == 0:
            return {}
        model = self._finetuned_model() if self.cfg.finetune.before_eval else self.eval_model()
        model.eval()
        acc = _Tally()
        with torch.no_grad():
            # Modest batches: ConvNet2 activations for 256 samples cost ~60 MB of peak RSS.
            for xb, yb in src.iter_batches(max(self.cfg.dataloader.batch_size, 64), False, 0):
                xb, yb = xb.to(self.device), yb.to(self.device)
                out = model(xb)
                acc.add(float(self.criterion(out, yb)) * len(yb), len(yb),
                        int((out.argmax(1) == yb).sum()))
        return acc.metrics(split, with_correct=True)

    def _finetuned_model(self) -> nn.Module:
        """``finetune.before_eval``: a copy of the evaluated model trained ``finetune.*`` steps
        on the train split, built once per model version (one evaluation asks for several
        splits), never written back."""
        if self._finetuned is not None and self._finetuned[0] == self._version:
            return self._finetuned[1]
        model = copy.deepcopy(self.eval_model())
        src = self.data.get("train")
        if src is not None and len(src) > 0:
            f = self.cfg.finetune
            seed = self._last_seed * 31 + 17   # differs from the round's own shuffle
            torch.manual_seed(seed)
            model.train()
            frozen = [part.strip() for part in str(f.freeze_param).split(",") if part.strip()]
            for name, param in model.named_parameters():
                if is_local_key(name, frozen):   # FS's substring rule, as for local_param
                    param.requires_grad_(False)
            opt = self._optimizer(model, f.optimizer.lr, f.optimizer)
            sched = build_scheduler(opt, f.scheduler)
            tunable = any(p.requires_grad for p in model.parameters())   # else nothing to tune
            for batch, window in self._accumulated(src, seed, f.local_update_steps * tunable,
                                                   f.batch_or_epoch == "epoch"):
                self._step(model, opt, batch, sched, window=window)
        self._finetuned = (self._version, model)
        return model


class _Tally:
    def __init__(self):
        self.loss, self.total, self.correct = 0.0, 0, 0

    def add(self, loss: float, n: int, correct: int) -> None:
        self.loss += loss
        self.total += n
        self.correct += correct

    def metrics(self, split: str, with_correct: bool = False) -> Dict[str, float]:
        n = max(self.total, 1)
        out = {f"{split}_loss": self.loss, f"{split}_total": self.total,
               f"{split}_avg_loss": self.loss / n, f"{split}_acc": self.correct / n}
        if with_correct:
            out[f"{split}_correct"] = self.correct
        return out


# --- registry (contract C8): registered entries answer before the built-ins ---
def _builtin_trainer(trainer_type: str):
    # 'cvtrainer' is FS's name for the general trainer applied to images; both behave the same.
    return GeneralTorchTrainer if str(trainer_type).lower() in ("general", "cvtrainer") else None


def _builtin_criterion(criterion_type: str, device):
    if str(criterion_type).lower() == "crossentropyloss":
        return nn.CrossEntropyLoss().to(device)
    return None


_BUILTINS = {"general": _builtin_trainer, "CrossEntropyLoss": _builtin_criterion}
register.register_trainer("general", _builtin_trainer)
register.register_criterion("CrossEntropyLoss", _builtin_criterion)


def _ask(registry: Dict, *args):
    ordered = [f for k, f in registry.items() if _BUILTINS.get(k) is not f]
    ordered += [f for k, f in registry.items() if _BUILTINS.get(k) is f]
    for func in ordered:
        found = func(*args)
        if found is not None:
            return found
    return None


def resolve_trainer_class(trainer_type: str):
    return _ask(register.trainer_dict, trainer_type)


def resolve_criterion(criterion_type: str, device):
    return _ask(register.criterion_dict, criterion_type, device)


def get_trainer(model: nn.Module, data: Mapping[str, BatchSource], device: str, cfg):
    """FS's builder: the class registered for ``trainer.type`` (else the built-in), made a Ditto
    trainer when ``federate.method`` is Ditto; constructed as ``cls(model, data, device, cfg)``."""
    cls = resolve_trainer_class(cfg.trainer.type)
    if cls is None:
        raise ValueError(f"trainer.type={cfg.trainer.type!r} is not registered")
    if str(cfg.federate.method).lower() == "ditto":
        from federatedscope.core.trainers.ditto import ditto_class
        cls = ditto_class(cls)
    trainer = cls(model, data, device, cfg)
    line = describe(trainer)
    if line not in _DESCRIBED:   # once per process, not once per simulated client
        _DESCRIBED.add(line)
        logger.info(line)
    return trainer


_DESCRIBED: set = set()


def describe(trainer) -> str:
    """One line saying which client-side algorithms this trainer runs (logged by the client)."""
    cfg = trainer.cfg
    parts = [type(trainer).__name__, f"on {getattr(trainer, 'device', '?')}"]
    if cfg.regularizer.type and cfg.regularizer.mu:
        parts.append(f"proximal term mu={cfg.regularizer.mu}")
    if getattr(trainer, "local_keys", None):
        parts.append(f"{len(trainer.local_keys)} local keys kept on the client")
    if str(cfg.federate.method).lower() == "ditto":
        p = cfg.personalization
        parts.append(f"Ditto personal model (regular_weight={p.regular_weight}, lr={p.lr}, "
                     f"local_update_steps={p.local_update_steps})")
    if cfg.train.scheduler.type:
        parts.append(f"scheduler {cfg.train.scheduler.type}")
    if cfg.finetune.before_eval:
        parts.append(f"fine-tuning {cfg.finetune.local_update_steps} "
                     f"{cfg.finetune.batch_or_epoch}(s) before evaluation")
    return "Trainer: " + ", ".join(parts)
