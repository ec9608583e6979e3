"""The FL client: declares its data, trains on its own splits, evaluates, and stops when told.

Messages are dispatched through FS's handler registry (``base_worker.Worker``): the defaults are
the ``callback_funcs_*`` methods, so a subclass overriding one, or a script calling
``register_handlers``, changes it the way FS users do.

In shard mode the client's data comes from ``DistributedShardLoader`` and its join carries the loader's declaration (counts per split,
fingerprint, label histogram, sample type) and ``shard_last_modified``; its FedAvg weight is the
declared train count, which the server checks. Before each round it asks the loader whether the
shard changed on disk and, if so, reloads and re-declares; a reload that fails its checks keeps
the old shard and tells the server (``refresh_error``) instead of ending the process.

What stays on the client (``trainer.personal_state()``: FedBN's norm layers, Ditto's personal
model) survives a restart of the client process: after each trained round it is saved atomically
as ``client_<id>.pt`` in ``personalization.state_dir`` (default ``<outdir>/<expname>/client_state``
of the configured outdir, never a fresh ``sub_exp_*`` directory, so a restarted client with the
same config finds it) and loaded back (``weights_only=True``) when the server assigns it the same
id again in the same job. The file carries the job id the server sent with the id: a new run
into the same outdir (another seed, another model) starts afresh, as FS's clients always do.
"""
import logging
import os
from typing import Dict, Optional

import torch

from federatedscope.core.aggregators.aggregator import cfg_value
from federatedscope.core.auxiliaries.utils import atomic_torch_save
from federatedscope.core.data.shard_format import ShardError
from federatedscope.core.message import (ASSIGN_ID, EVALUATE, FINISH, JOIN_IN, METRICS, MODEL_PARA,
                                         REDECLARE, REFUSE, SERVER_ID, Message, clip_text)
from federatedscope.core.communication.transport import ClientComm
from federatedscope.core.trainers.trainer import get_trainer
from federatedscope.core.workers.admission import BAD_TOKEN
from federatedscope.core.workers.base_worker import Worker

logger = logging.getLogger("federatedscope")


def personal_state_dir(cfg) -> str:
    """``personalization.state_dir``, else ``<outdir>/<expname>/client_state`` of the configured
    outdir (``cfg.outdir`` after ``update_logger`` may be a fresh ``sub_exp_*`` directory)."""
    configured = str(cfg_value(cfg, "personalization.state_dir", "") or "")
    if configured:
        return configured
    run_dir = os.path.normpath(cfg.outdir)        # resolved: <outdir>/<expname>[/sub_exp_*]
    if os.path.basename(run_dir).startswith("sub_exp_"):
        run_dir = os.path.dirname(run_dir)
    elif os.path.basename(run_dir) != cfg.expname:   # not resolved yet: the configured outdir
        run_dir = os.path.join(run_dir, cfg.expname)
    return os.path.join(run_dir, "client_state")


class Client(Worker):
    default_handlers = (
        (ASSIGN_ID, "callback_funcs_for_assign_id"), (MODEL_PARA, "callback_funcs_for_model_para"),
        (EVALUATE, "callback_funcs_for_evaluate"), (FINISH, "callback_funcs_for_finish"),
        (REFUSE, "callback_funcs_for_refuse"))
    peer_role = "server"

    def __init__(self, ID: int = -1, server_id: int = SERVER_ID, state: int = -1, config=None,
                 data=None, model=None, device="cpu", strategy=None, is_unseen_client=False,
                 *args, trainer=None, comm: Optional[ClientComm] = None, loader=None,
                 token: str = "", **kwargs):
        """FS's arguments in FS's order (an FS subclass passes them on), then what FS builds
        inside. Without ``trainer`` the client builds FS's: ``get_trainer(model, data, device,
        config)``. ``state`` is the last round it was sent; ``strategy`` and
        ``is_unseen_client`` are unused (every client of a job trains)."""
        super().__init__(ID, config, comm)
        self.server_id, self.state, self.data, self.model = server_id, state, data, model
        self.trainer = trainer if trainer is not None else get_trainer(model, data, device, config)
        self.loader = loader
        self.token = token
        self.finished = False
        self.refused: Optional[str] = None
        self.rounds_trained = 0
        self.job_id = ""          # the server's name for this job (sent with the id)

    def handle(self, msg: Message) -> None:
        if not self.dispatch(msg):
            logger.warning(f"Client #{self.ID}: no handler registered for "
                           f"{clip_text(msg.msg_type)}; ignored")

    # ---------------------------------------------------------------- join
    def join_message(self) -> Message:
        content: Dict = {"client_id": self.ID, "token": self.token,
                         "local_param": [str(p) for p in self.cfg.personalization.local_param],
                         "fedopt": bool(self.cfg.fedopt.use),
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
        job = msg.content.get("job_id")
        self.job_id = job if isinstance(job, str) and job.isalnum() and len(job) <= 64 else ""
        logger.info(f"Client #{self.ID}: joined the federation")
        self._load_personal_state()
        if self.trainer.num_samples("train") == 0:
            logger.warning(f"Client #{self.ID}: no train samples in its data: it will send "
                           f"updates of weight 0 (re-cut the shards, or check data.splits)")

    def callback_funcs_for_refuse(self, msg: Message) -> None:
        self.refused = str(msg.content["reason"])
        fix = self._token_fix() if self.refused == BAD_TOKEN else ""
        logger.error(f"Client #{self.ID}: refused by the server: {self.refused}{fix}")
        self.finished = True

    def _token_fix(self) -> str:
        """The fix for "bad token", from what this client knows: whether it sent a token (the
        server tells a refused peer only the reason class)."""
        mine = f"client_{self.ID if self.ID > 0 else '<id>'}.token"
        if not self.token:
            return (f": this client sent no token (distribute.token and distribute.token_file "
                    f"are empty), but the server wants one. Shards cut with tokens (the managed "
                    f"launcher's default) list a token_hash per client in the manifest: give this "
                    f"client its file, distribute.token_file <manifest dir>/tokens/{mine} "
                    f"(the launcher's folder; or the --tokens DIR given to "
                    f"prepare_femnist_shards.py / make_client_tokens.py). A server with a shared "
                    f"secret and no token hashes wants it as distribute.token")
        source = (f"distribute.token_file {self.cfg.distribute.token_file}"
                  if self.cfg.distribute.token_file else "distribute.token")
        return (f": the token this client sent ({source}) does not match the manifest's "
                f"token_hash for client id {self.ID} (or the server's shared distribute.token); "
                f"give it the file written for client {self.ID} (<tokens dir>/{mine}), or "
                f"re-issue the tokens with scripts/tools/make_client_tokens.py --manifest M "
                f"--out DIR and give each client its new file")

    def callback_funcs_for_model_para(self, msg: Message) -> None:
        self._refresh_shard()
        if msg.tensors:
            self.trainer.set_state(msg.tensors)
        self.state = msg.state
        seed = (self.cfg.seed * 1_000_003 + self.ID) * 10_007 + msg.state
        size, state, metrics = self.trainer.train(seed)
        self.rounds_trained += 1
        self._save_personal_state()
        logger.info(f"Client #{self.ID}: round {msg.state + 1} trained on {size} samples "
                    f"(train_avg_loss={metrics.get('train_avg_loss', 0):.4f})")
        self.comm.send(Message(MODEL_PARA, self.ID, SERVER_ID, msg.state,
                               {"sample_size": size}, state))

    def callback_funcs_for_evaluate(self, msg: Message) -> None:
        self.state = msg.state
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
    def personal_state_path(self) -> str:
        return os.path.join(personal_state_dir(self.cfg), f"client_{self.ID}.pt")

    def _save_personal_state(self) -> None:
        state = self.trainer.personal_state()
        if not state:
            return
        path = self.personal_state_path()
        try:
            atomic_torch_save(path, {"job_id": self.job_id,
                                     "state": {k: v.detach().cpu() for k, v in state.items()}})
        except OSError as e:
            logger.error(f"Client #{self.ID}: cannot save its personal state to {path} ({e}); "
                         f"training goes on, a restart would start it afresh (free space or "
                         f"set personalization.state_dir)")

    def _load_personal_state(self) -> None:
        path = self.personal_state_path()
        if not os.path.exists(path):
            return
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file means: start afresh
            logger.error(f"Client #{self.ID}: personal state {path} is unreadable ({e}); "
                         f"starting afresh (remove the file to silence this)")
            return
        saved_in = state.get("job_id") if isinstance(state, dict) else None
        if not self.job_id or saved_in != self.job_id or not isinstance(state.get("state"), dict):
            logger.info(f"Client #{self.ID}: the personal state in {path} was saved by another "
                        f"run (job {clip_text(saved_in, 64)}, this one {self.job_id or 'unnamed'})"
                        f"; starting afresh (the file is replaced after this run's first round)")
            return
        state = state["state"]
        self.trainer.load_personal_state(state)
        logger.info(f"Client #{self.ID}: restored its personal state ({len(state)} tensors) "
                    f"from {path}")

    def _refresh_shard(self) -> None:
        if self.loader is None or not self.loader.has_changed():
            return
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
