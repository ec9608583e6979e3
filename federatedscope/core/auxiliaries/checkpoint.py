"""Server checkpoints: global model + round + RNG state, written atomically every round.

Read back with ``torch.load(weights_only=True)``: a checkpoint is only tensors, ints and strings,
so a tampered file cannot execute code.
"""
import logging
import os
from dataclasses import dataclass
from typing import Dict, Optional

import torch

from federatedscope.core.auxiliaries.utils import atomic_torch_save

logger = logging.getLogger("federatedscope")
FORMAT = "fs-checkpoint-v1"


@dataclass
class Checkpoint:
    round: int                      # rounds completed (the next round to run)
    model: Dict[str, torch.Tensor]
    torch_rng: torch.Tensor
    seed: int


def save_checkpoint(path: str, ckpt: Checkpoint) -> None:
    atomic_torch_save(path, {"format": FORMAT, "round": ckpt.round, "model": ckpt.model,
                             "torch_rng": ckpt.torch_rng, "seed": ckpt.seed})


def load_checkpoint(path: str) -> Optional[Checkpoint]:
    if not os.path.exists(path):
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"checkpoint {path} is unreadable ({e}); remove it or point "
                         f"federate.restore_from elsewhere") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path}: not a {FORMAT} file")
    return Checkpoint(round=int(obj["round"]), model=obj["model"], torch_rng=obj["torch_rng"],
                      seed=int(obj["seed"]))
