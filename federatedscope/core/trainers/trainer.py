"""Local training and evaluation of one client's model on its own splits.

The trainer consumes any ``BatchSource`` (``core/data/datasets.py``): in-memory, memory-mapped or
streaming data look the same to it. A fresh optimizer is built for every round, so no momentum from
an earlier round (or an earlier connection) leaks into the new global model.
"""
import logging
from typing import Dict, Iterator, Mapping, Tuple

import torch
from torch import nn

from federatedscope.core.data.datasets import BatchSource
from federatedscope.core.trainers.optimizer import PlainSGD

logger = logging.getLogger("federatedscope")
State = Dict[str, torch.Tensor]


class GeneralTorchTrainer:
    def __init__(self, model: nn.Module, data: Mapping[str, BatchSource], device: str, cfg):
        self.model = model.to(device)
        self.data = dict(data)
        self.device = device
        self.cfg = cfg
        self.criterion = nn.CrossEntropyLoss(reduction="sum")

    # --- model state ---
    def get_state(self) -> State:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def set_state(self, state: State) -> None:
        self.model.load_state_dict(state, strict=True)

    def num_samples(self, split: str) -> int:
        src = self.data.get(split)
        return len(src) if src is not None else 0

    def _optimizer(self) -> PlainSGD:
        o = self.cfg.train.optimizer
        return PlainSGD(self.model.parameters(), lr=o.lr, momentum=o.momentum,
                        weight_decay=o.weight_decay)

    # --- training ---
    def train(self, seed: int) -> Tuple[int, State, Dict[str, float]]:
        """Run ``local_update_steps`` batches or epochs; returns (train samples, state, metrics).

        ``seed`` fixes the shuffle order and dropout for this round, so the same client in a
        standalone simulation and in its own process trains identically.
        """
        src = self.data.get("train")
        n = len(src) if src is not None else 0
        if n == 0:
            return 0, self.get_state(), {"train_total": 0}
        torch.manual_seed(seed)
        self.model.train()
        opt = self._optimizer()
        clip = self.cfg.grad.grad_clip
        loss_sum, seen, correct = 0.0, 0, 0
        for xb, yb in self._round_batches(src, seed):
            xb, yb = xb.to(self.device), yb.to(self.device)
            opt.zero_grad(set_to_none=True)
            out = self.model(xb)
            loss = self.criterion(out, yb)
            (loss / len(yb)).backward()
            if clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            opt.step()
            loss_sum += float(loss.detach())
            seen += len(yb)
            correct += int((out.argmax(1) == yb).sum())
        metrics = {"train_loss": loss_sum, "train_total": seen,
                   "train_avg_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}
        return n, self.get_state(), metrics

    def _round_batches(self, src: BatchSource, seed: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """``local_update_steps`` epochs, or that many batches (continuing into further epochs);
        epoch e is shuffled with seed ``seed * 1000003 + e``."""
        steps = self.cfg.train.local_update_steps
        bs, shuffle = self.cfg.dataloader.batch_size, self.cfg.dataloader.shuffle
        by_epoch = self.cfg.train.batch_or_epoch == "epoch"
        left, epoch = steps, 0
        while (epoch < steps) if by_epoch else (left > 0):
            dl = self.cfg.dataloader
            for batch in src.iter_batches(bs, shuffle, seed * 1000003 + epoch, dl.num_workers,
                                          dl.drop_last, dl.pin_memory):
                if not by_epoch:
                    if left == 0:
                        return
                    left -= 1
                yield batch
            epoch += 1
            if not by_epoch and left == steps:  # drop_last left no batch: no step can be taken
                return

    # --- evaluation ---
    @torch.no_grad()
    def evaluate(self, split: str) -> Dict[str, float]:
        src = self.data.get(split)
        if src is None or len(src) == 0:
            return {}
        self.model.eval()
        loss_sum, correct, total = 0.0, 0, 0
        # Modest batches: ConvNet2 activations for 256 samples cost ~60 MB of peak RSS.
        for xb, yb in src.iter_batches(max(self.cfg.dataloader.batch_size, 64), False, 0):
            xb, yb = xb.to(self.device), yb.to(self.device)
            out = self.model(xb)
            loss_sum += float(self.criterion(out, yb))
            correct += int((out.argmax(1) == yb).sum())
            total += len(yb)
        return {f"{split}_acc": correct / total, f"{split}_correct": correct,
                f"{split}_loss": loss_sum, f"{split}_total": total,
                f"{split}_avg_loss": loss_sum / total}


def get_trainer(model: nn.Module, data: Mapping[str, BatchSource], device: str, cfg):
    # 'cvtrainer' is FS's name for the general trainer applied to images; both behave the same here.
    return GeneralTorchTrainer(model, data, device, cfg)
