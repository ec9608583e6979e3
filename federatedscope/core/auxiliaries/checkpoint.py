"""Server checkpoints: everything needed to continue a job identically after a kill.

Written atomically (temp file + fsync + rename + directory fsync) at two points of every round:
right after aggregation, *before* anything about the new round is announced (so a kill can never
fall between "aggregated" and the checkpoint), and again once that round's evaluation is reported.
``eval_owed`` is the round whose evaluation was due but not yet written when the file was saved: a
restored server redoes it, unless ``eval_results.log`` shows it was written after all.

Read back with ``torch.load(weights_only=True)``: a checkpoint is only tensors, numbers and strings,
so a tampered file cannot execute code. ``aggregator`` is the round strategy's own state (FedOpt's
momentum buffers), so a restored FedOpt server steps exactly as the one that was killed.
"""
import glob
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch

from federatedscope.core.auxiliaries.utils import atomic_torch_save

logger = logging.getLogger("federatedscope")
FORMAT = "fs-checkpoint-v2"


@dataclass
class Checkpoint:
    round: int                      # rounds completed (the next round to run)
    model: Dict[str, torch.Tensor]
    torch_rng: torch.Tensor
    seed: int
    eval_owed: int = -1             # round whose evaluation is due and not yet reported; -1: none
    monitor: dict = field(default_factory=dict)   # Monitor.state_dict()
    aggregator: dict = field(default_factory=dict)  # Aggregator.state_dict() (FedOpt's buffers)
    job_id: str = ""                # the job's id: clients keep personal state only within it


def save_checkpoint(path: str, ckpt: Checkpoint) -> None:
    monitor = {k: (float(v) if isinstance(v, float) else v) for k, v in ckpt.monitor.items()}
    atomic_torch_save(path, {"format": FORMAT, "round": ckpt.round, "model": ckpt.model,
                             "torch_rng": ckpt.torch_rng, "seed": ckpt.seed,
                             "eval_owed": ckpt.eval_owed, "monitor": monitor,
                             "aggregator": ckpt.aggregator, "job_id": ckpt.job_id})


def remove_orphan_temps(path: str) -> None:
    """A kill during a write leaves ``.<name>.*.tmp`` beside the checkpoint; nothing reads it."""
    pattern = os.path.join(os.path.dirname(os.path.abspath(path)),
                           "." + glob.escape(os.path.basename(path)) + ".*.tmp")
    for tmp in glob.glob(pattern):
        try:
            os.unlink(tmp)
            logger.info(f"removed {tmp}, left by an interrupted checkpoint write")
        except OSError:
            pass


def recorded_run_dir(path: str) -> str:
    """The run directory the checkpoint at ``path`` was written from ('' when it names none or
    cannot be read: ``load_checkpoint`` reports that later, with the fix). Memory-mapped, so the
    model's tensors are not read for it."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        run_dir = obj.get("monitor", {}).get("run_dir", "") if isinstance(obj, dict) else ""
    except Exception:   # any unreadable file: load_checkpoint names it
        return ""
    return run_dir if isinstance(run_dir, str) else ""


def load_checkpoint(path: str) -> Optional[Checkpoint]:
    remove_orphan_temps(path)
    if not os.path.exists(path):
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"checkpoint {path} is unreadable ({e}); remove it or point "
                         f"federate.restore_from elsewhere") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path}: not a {FORMAT} file; remove it or point "
                         f"federate.restore_from elsewhere")
    return Checkpoint(round=int(obj["round"]), model=obj["model"], torch_rng=obj["torch_rng"],
                      seed=int(obj["seed"]), eval_owed=int(obj.get("eval_owed", -1)),
                      monitor=dict(obj.get("monitor") or {}),
                      aggregator=dict(obj.get("aggregator") or {}),
                      job_id=str(obj.get("job_id") or ""))
