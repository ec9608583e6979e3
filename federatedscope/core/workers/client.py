"""The FL client: declares its data, trains on its own splits, evaluates, and stops when told.

In shard mode the client's data comes from ``DistributedShardLoader`` and its join carries the
loader's declaration (counts per split, fingerprint, label histogram, sample type); its FedAvg
weight is the declared train count, which the server checks. Before each round it asks the loader
whether the shard changed on disk and, if so, reloads and re-declares.
"""
import logging
from typing import Dict, Optional

from federatedscope.core.message import (ASSIGN_ID, EVALUATE, FINISH, JOIN_IN, METRICS, MODEL_PARA,
                                         REDECLARE, REFUSE, SERVER_ID, Message)
from federatedscope.core.workers.base_worker import ClientComm

logger = logging.getLogger("federatedscope")


class Client:
    def __init__(self, cfg, client_id: int, trainer, comm: ClientComm, loader=None,
                 token: str = ""):
        self.cfg = cfg
        self.ID = client_id
        self.trainer = trainer
        self.comm = comm
        self.loader = loader
        self.token = token
        self.finished = False
        self.refused: Optional[str] = None
        self.rounds_trained = 0

    # ---------------------------------------------------------------- join
    def join_message(self) -> Message:
        content: Dict = {"client_id": self.ID, "token": self.token,
                         "num_samples": {s: self.trainer.num_samples(s)
                                         for s in ("train", "val", "test")}}
        if self.loader is not None:
            content["declaration"] = self.loader.declaration().to_dict()
        for key in self.cfg.federate.join_in_info:
            if key == "num_sample":
                content["num_sample"] = self.trainer.num_samples("train")
        return Message(JOIN_IN, self.ID, SERVER_ID, 0, content)

    # ------------------------------------------------------------- handling
    def handle(self, msg: Message) -> None:
        handler = {ASSIGN_ID: self._on_assign, MODEL_PARA: self._on_model_para,
                   EVALUATE: self._on_evaluate, FINISH: self._on_finish,
                   REFUSE: self._on_refuse}.get(msg.msg_type)
        if handler is None:
            logger.warning(f"Client #{self.ID}: unexpected {msg.msg_type} ignored")
            return
        handler(msg)

    def _on_assign(self, msg: Message) -> None:
        self.ID = int(msg.content["client_id"])
        logger.info(f"Client #{self.ID}: joined the federation")

    def _on_refuse(self, msg: Message) -> None:
        self.refused = str(msg.content["reason"])
        logger.error(f"Client #{self.ID}: refused by the server: {self.refused}")
        self.finished = True

    def _refresh_shard(self) -> None:
        if self.loader is None or not self.loader.has_changed():
            return
        self.loader.reload()
        self.trainer.data = dict(self.loader.datasets)
        logger.info(f"Client #{self.ID}: shard changed on disk; re-declaring "
                    f"({self.loader.num_samples['train']} train samples)")
        self.comm.send(Message(REDECLARE, self.ID, SERVER_ID, 0,
                               {"declaration": self.loader.declaration().to_dict()}))

    def _on_model_para(self, msg: Message) -> None:
        self._refresh_shard()
        if msg.tensors:
            self.trainer.set_state(msg.tensors)
        seed = (self.cfg.seed * 1_000_003 + self.ID) * 10_007 + msg.state
        size, state, metrics = self.trainer.train(seed)
        self.rounds_trained += 1
        logger.info(f"Client #{self.ID}: round {msg.state + 1} trained on {size} samples "
                    f"(train_avg_loss={metrics.get('train_avg_loss', 0):.4f})")
        self.comm.send(Message(MODEL_PARA, self.ID, SERVER_ID, msg.state,
                               {"sample_size": size}, state))

    def _on_evaluate(self, msg: Message) -> None:
        if msg.tensors:
            self.trainer.set_state(msg.tensors)
        results: Dict[str, float] = {}
        for split in self.cfg.eval.split:
            results.update(self.trainer.evaluate(split))
        results = self._select_metrics(results)
        logger.info(f"Client #{self.ID}: evaluation after round {msg.state}: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in sorted(results.items())))
        self.comm.send(Message(METRICS, self.ID, SERVER_ID, msg.state, {"results": results}))

    def _select_metrics(self, results: Dict[str, float]) -> Dict[str, float]:
        wanted = set(self.cfg.eval.metrics) | {"loss", "total", "avg_loss"}
        return {k: v for k, v in results.items() if k.split("_", 1)[1] in wanted}

    def _on_finish(self, msg: Message) -> None:
        if msg.tensors:
            self.trainer.set_state(msg.tensors)
        logger.info(f"Client #{self.ID}: training finished ({self.rounds_trained} rounds trained)")
        self.finished = True
