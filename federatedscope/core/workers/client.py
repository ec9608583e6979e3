"""The FL client: declares its data, trains on its own splits, evaluates, and stops when told.

Messages are dispatched through FS's handler registry: ``register_handlers(msg_type,
callback_func)`` maps a message type to a callable taking the ``Message``; the defaults are
registered in ``__init__`` (``_register_default_handlers``), and a subclass or a script replaces
one or adds its own type the way FS users do. (A new type sent over gRPC must also be declared
with ``core/message.py: register_message_type``: the transport validates everything a peer sends.)

In shard mode the client's data comes from ``DistributedShardLoader`` (``client_splits`` is the
plan's client.py branch) and its join carries the loader's declaration (counts per split,
fingerprint, label histogram, sample type) and ``shard_last_modified``; its FedAvg weight is the
declared train count, which the server checks. Before each round it asks the loader whether the
shard changed on disk and, if so, reloads and re-declares; a reload that fails its checks keeps
the old shard and tells the server (``refresh_error``) instead of ending the process.
"""
import logging
from typing import Callable, Dict, Optional, Tuple

from federatedscope.core.message import (ASSIGN_ID, EVALUATE, FINISH, JOIN_IN, METRICS, MODEL_PARA,
                                         REDECLARE, REFUSE, SERVER_ID, Message, clip_text,
                                         register_message_type)
from federatedscope.core.workers.base_worker import ClientComm

logger = logging.getLogger("federatedscope")


def client_splits(data) -> Tuple[Dict[str, object], Optional[object]]:
    """(splits for the trainer, shard loader or None) from what ``get_data`` gave a client.

    A ``DistributedShardLoader`` hands its datasets straight to the trainer and stays with the
    client (declaration, refresh); a ``ClientData`` may carry the loader it came from
    (standalone simulation of shards); FS's data_idx ``ClientData`` has none."""
    from federatedscope.core.data.distributed_loader import DistributedShardLoader
    if isinstance(data, DistributedShardLoader):
        return dict(data.datasets), data
    return dict(data), getattr(data, "loader", None)


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
        self.msg_handlers: Dict[str, Callable[[Message], None]] = {}
        self._register_default_handlers()

    # ------------------------------------------------------- handler registry
    def register_handlers(self, msg_type: str, callback_func: Callable[[Message], None]) -> None:
        """FS's registry: ``callback_func(message)`` handles every ``msg_type`` from now on
        (replacing the previous handler of that type). A new type is also let through the
        transport's validation, as a message the server may send."""
        register_message_type(msg_type, sender="server")
        self.msg_handlers[msg_type] = callback_func

    def _register_default_handlers(self) -> None:
        self.register_handlers(ASSIGN_ID, self.callback_funcs_for_assign_id)
        self.register_handlers(MODEL_PARA, self.callback_funcs_for_model_para)
        self.register_handlers(EVALUATE, self.callback_funcs_for_evaluate)
        self.register_handlers(FINISH, self.callback_funcs_for_finish)
        self.register_handlers(REFUSE, self.callback_funcs_for_refuse)

    def handle(self, msg: Message) -> None:
        handler = self.msg_handlers.get(msg.msg_type)
        if handler is None:
            logger.warning(f"Client #{self.ID}: no handler registered for "
                           f"{clip_text(msg.msg_type)}; ignored")
            return
        handler(msg)

    # ---------------------------------------------------------------- join
    def join_message(self) -> Message:
        content: Dict = {"client_id": self.ID, "token": self.token,
                         "num_samples": {s: self.trainer.num_samples(s)
                                         for s in ("train", "val", "test")}}
        if self.loader is not None:
            content["declaration"] = self.loader.declaration().to_dict()
            content["shard_last_modified"] = float(self.loader.last_modified)
        for key in self.cfg.federate.join_in_info:
            if key == "num_sample":
                content["num_sample"] = self.trainer.num_samples("train")
        return Message(JOIN_IN, self.ID, SERVER_ID, 0, content)

    # -------------------------------------------------------- default handlers
    def callback_funcs_for_assign_id(self, msg: Message) -> None:
        self.ID = int(msg.content["client_id"])
        logger.info(f"Client #{self.ID}: joined the federation")
        if self.trainer.num_samples("train") == 0:
            logger.warning(f"Client #{self.ID}: no train samples in its data: it will send "
                           f"updates of weight 0 (re-cut the shards, or check data.splits)")

    def callback_funcs_for_refuse(self, msg: Message) -> None:
        self.refused = str(msg.content["reason"])
        logger.error(f"Client #{self.ID}: refused by the server: {self.refused}")
        self.finished = True

    def callback_funcs_for_model_para(self, msg: Message) -> None:
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

    def callback_funcs_for_evaluate(self, msg: Message) -> None:
        if msg.tensors:
            self.trainer.set_state(msg.tensors)
        results: Dict[str, float] = {}
        for split in self.cfg.eval.split:
            results.update(self.trainer.evaluate(split))
        results = self._select_metrics(results)
        logger.info(f"Client #{self.ID}: evaluation after round {msg.state}: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in sorted(results.items())))
        self.comm.send(Message(METRICS, self.ID, SERVER_ID, msg.state, {"results": results}))

    def callback_funcs_for_finish(self, msg: Message) -> None:
        if msg.tensors:
            self.trainer.set_state(msg.tensors)
        logger.info(f"Client #{self.ID}: training finished ({self.rounds_trained} rounds trained)")
        self.finished = True

    # ------------------------------------------------------------- internals
    def _refresh_shard(self) -> None:
        if self.loader is None or not self.loader.has_changed():
            return
        from federatedscope.core.data.distributed_loader import ShardError
        try:
            self.loader.reload()
        except ShardError as e:
            self._refresh_failed(e)
            return
        self.trainer.data = dict(self.loader.datasets)
        logger.info(f"Client #{self.ID}: shard changed on disk; re-declaring "
                    f"({self.loader.num_samples['train']} train samples)")
        self.comm.send(Message(REDECLARE, self.ID, SERVER_ID, 0,
                               {"declaration": self.loader.declaration().to_dict()}))

    def _refresh_failed(self, error: Exception) -> None:
        """Keep training on the shard that was verified; say what is wrong on disk (the
        ShardError names the file and the command that re-makes it) and tell the server, with
        the old declaration, so it can log it next to the round."""
        self.loader.acknowledge_disk_state()  # one error per change on disk, not one per round
        logger.error(f"Client #{self.ID}: the shard at {self.loader.shard_path} changed on disk "
                     f"but the new contents fail their checks, so this client keeps training on "
                     f"the shard it loaded before ({self.loader.num_samples['train']} train "
                     f"samples, fingerprint {self.loader.fingerprint[:12]}): {error}")
        self.comm.send(Message(REDECLARE, self.ID, SERVER_ID, 0,
                               {"declaration": self.loader.declaration().to_dict(),
                                "refresh_error": clip_text(str(error), 300)}))

    def _select_metrics(self, results: Dict[str, float]) -> Dict[str, float]:
        wanted = set(self.cfg.eval.metrics) | {"loss", "total", "avg_loss"}
        return {k: v for k, v in results.items() if k.split("_", 1)[1] in wanted}
