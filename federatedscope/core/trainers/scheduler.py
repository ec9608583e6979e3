"""Learning-rate schedulers by FederatedScope's names (``train.scheduler``, ``finetune.scheduler``).

FS's rule (``get_scheduler``): a scheduler registered with ``register_scheduler`` answers first;
otherwise ``type`` is a class of ``torch.optim.lr_scheduler`` (StepLR, MultiStepLR, ExponentialLR,
...) built with every other key of the node as keyword arguments (``warmup_ratio`` is FS's own
key, not torch's, and is not passed). As in FS's trainer, a new scheduler is built with the new
optimizer at the start of every round and stepped once after every optimizer step (per batch).
"""
import inspect
from typing import Dict, Optional

import torch

import federatedscope.register as register
from federatedscope.core.trainers.optimizer import PlainSGD

# node keys that are FS's own, not torch scheduler arguments
_FS_KEYS = ("type", "warmup_ratio")
# schedulers that need something FS's trainer does not give them (a metric, warm-up lengths)
_UNSUPPORTED = {"ReduceLROnPlateau": "it steps on a validation metric, not per batch",
                "warmup_step": "FS's NLP warm-up needs warmup_steps/total_steps",
                "warmup_noam": "FS's NLP warm-up needs warmup_steps"}


def scheduler_kwargs(node) -> Dict:
    """The torch arguments of a ``train.scheduler``-like node (every key but FS's own)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in node.items()
            if k not in _FS_KEYS}


def get_scheduler(optimizer, type: str, **kwargs) -> Optional[object]:  # noqa: A002 (FS's name)
    """FS's builder: None when ``type`` is empty."""
    for func in register.scheduler_dict.values():
        scheduler = func(optimizer, type, **kwargs)
        if scheduler is not None:
            return scheduler
    if not type:
        return None
    if type in _UNSUPPORTED:
        raise ValueError(f"scheduler {type!r} is not supported here: {_UNSUPPORTED[type]}")
    cls = getattr(torch.optim.lr_scheduler, type, None)
    if not (inspect.isclass(cls) and issubclass(cls, torch.optim.lr_scheduler.LRScheduler)):
        raise ValueError(f"unknown scheduler type {type!r} (not registered, and not a class of "
                         f"torch.optim.lr_scheduler)")
    return cls(optimizer, **kwargs)


def build_scheduler(optimizer, node) -> Optional[object]:
    """The scheduler a ``train.scheduler``-like config node asks for, or None."""
    return get_scheduler(optimizer, node.type, **scheduler_kwargs(node))


def probe_scheduler(type: str, kwargs: Dict) -> None:  # noqa: A002
    """Build the scheduler on a stand-in optimizer (config check); raises what torch raises."""
    get_scheduler(PlainSGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), type, **kwargs)
