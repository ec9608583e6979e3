"""The client worker's side of admission, in-process (fake trainer, fake loader, fake comm): what
its join declares, the seed and sample size of each round, which metrics it reports, and how a
changed shard or a personal state on disk is handled."""
import datetime
import logging
import os

import pytest
import torch

from federatedscope.core.data.shard_format import ShardDeclaration, ShardError
from federatedscope.core.message import (ASSIGN_ID, EVALUATE, FINISH, JOIN_IN, METRICS,
                                         MODEL_PARA, REDECLARE, REFUSE, SERVER_ID, Message)
from federatedscope.core.workers.client import Client, personal_state_dir
from server_harness import FakeComm, make_cfg

COUNTS = {"train": 12, "val": 3, "test": 4}


class Trainer:
    def __init__(self, personal=None, counts=None):
        self.counts = dict(counts or COUNTS)
        self.personal = dict(personal or {})
        self.seeds, self.states, self.loaded, self.data = [], [], None, None

    def num_samples(self, split):
        return self.counts[split]

    def set_state(self, state):
        self.states.append(state)

    def train(self, seed):
        self.seeds.append(seed)
        for v in self.personal.values():
            v += 1.0
        return self.counts["train"], {"w": torch.full((2,), float(len(self.seeds)))}, \
            {"train_avg_loss": 0.123456}

    def evaluate(self, split):
        n = self.counts[split]
        return {f"{split}_acc": 0.5, f"{split}_correct": n // 2, f"{split}_total": n,
                f"{split}_loss": 2.0 * n, f"{split}_avg_loss": 2.0, f"{split}_balanced_acc": 0.4}

    def personal_state(self):
        return dict(self.personal)

    def load_personal_state(self, state):
        self.loaded = state


class Loader:
    def __init__(self, changed=False, fails=None):
        self.changed, self.fails, self.acks, self.reloads = changed, fails, 0, 0
        self.last_modified = 1234
        self.shard_path = "/data/shards/client_3"
        self.fingerprint = "ab" * 32
        self.num_samples = dict(COUNTS)
        self.datasets = {"train": "T", "test": "E"}

    def declaration(self):
        return ShardDeclaration(3, dict(self.num_samples), self.fingerprint, [12], "uint8[2]")

    def has_changed(self):
        return self.changed

    def reload(self):
        self.reloads += 1
        if self.fails:
            raise self.fails
        self.num_samples = {"train": 20, "val": 3, "test": 4}
        self.datasets = {"train": "T2"}

    def acknowledge_disk_state(self):
        self.acks += 1


def _client(tmp_path, *opts, trainer=None, loader=None, token="", cid=3):
    cfg = make_cfg(tmp_path, "seed", 7, *opts)
    comm = FakeComm()
    return Client(ID=cid, config=cfg, trainer=trainer or Trainer(), comm=comm, loader=loader,
                  token=token), comm


def test_the_join_declares_the_trainer_counts_and_the_shard(tmp_path):
    plain = Client(ID=2, config=make_cfg(tmp_path), trainer=Trainer(), comm=FakeComm())  # no token
    assert plain.join_message().content["token"] == "" and plain.loader is None
    assert plain.finished is False and plain.refused is None and plain.rounds_trained == 0
    c, _ = _client(tmp_path, token="tok")
    m = c.join_message()
    assert (m.msg_type, m.sender, m.receiver, m.state) == (JOIN_IN, 3, SERVER_ID, 0)
    assert m.content == {"client_id": 3, "token": "tok", "num_samples": COUNTS, "local_param": [],
                         "fedopt": False}
    fedbn, _ = _client(tmp_path, "personalization.local_param", ["bn", "norm"])
    assert fedbn.join_message().content["local_param"] == ["bn", "norm"]   # the server checks it
    fedopt, _ = _client(tmp_path, "fedopt.use", True)
    assert fedopt.join_message().content["fedopt"] is True               # the server warns on it
    c, _ = _client(tmp_path, "federate.join_in_info", ["other"])
    other = c.join_message().content
    assert "num_sample" not in other and "other" not in other
    c, _ = _client(tmp_path, "federate.join_in_info", ["num_sample"], loader=Loader())
    m = c.join_message()
    assert m.content["num_sample"] == 12
    assert m.content["declaration"] == Loader().declaration().to_dict()
    assert m.content["shard_last_modified"] == 1234.0
    assert isinstance(m.content["shard_last_modified"], float) and m.content["token"] == ""


def test_each_round_trains_with_its_own_seed_and_sends_the_declared_size(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="federatedscope")
    c, comm = _client(tmp_path)
    g = {"w": torch.zeros(2)}
    for r in range(4):
        c.handle(Message(MODEL_PARA, SERVER_ID, 3, r, {}, g if r != 2 else None))
    assert c.trainer.seeds == [(7 * 1_000_003 + 3) * 10_007 + r for r in range(4)]
    assert c.state == 3                          # FS's client state: the round it was sent
    assert c.trainer.states == [g, g, g] and c.rounds_trained == 4
    sent = [(to, m.msg_type, m.sender, m.state, m.content, float(m.tensors["w"][0]))
            for to, m in comm.sent]
    assert sent == [(SERVER_ID, MODEL_PARA, 3, r, {"sample_size": 12}, float(r + 1))
                    for r in range(4)]
    assert [r.getMessage() for r in caplog.records if "trained on" in r.getMessage()] == [
        f"Client #3: round {r} trained on 12 samples (train_avg_loss=0.1235)" for r in (1, 2, 3, 4)]
    caplog.clear()
    quiet_trainer = Trainer()
    quiet_trainer.train = lambda seed: (12, {"w": torch.zeros(2)}, {})   # reports no loss
    q, _ = _client(tmp_path, trainer=quiet_trainer)
    q.handle(Message(MODEL_PARA, SERVER_ID, 3, 0, {}, None))
    assert "Client #3: round 1 trained on 12 samples (train_avg_loss=0.0000)" in caplog.text


def test_evaluation_reports_the_configured_metrics_of_each_split(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="federatedscope")
    c, comm = _client(tmp_path, "eval.metrics", ["acc"], "eval.split", ["val", "test"])
    g = {"w": torch.ones(2)}
    assert c.state == -1                         # FS's: nothing sent yet
    c.handle(Message(EVALUATE, SERVER_ID, 3, 6, {}, g))
    assert c.state == 6
    (to, m), = comm.sent
    assert (to, m.msg_type, m.sender, m.state) == (SERVER_ID, METRICS, 3, 6)
    assert c.trainer.states == [g] and c.trainer.states[0] is g
    assert m.content == {"results": {
        "val_acc": 0.5, "val_total": 3, "val_loss": 6.0, "val_avg_loss": 2.0,
        "test_acc": 0.5, "test_total": 4, "test_loss": 8.0, "test_avg_loss": 2.0}}
    assert ("Client #3: evaluation after round 6: test_acc=0.5, test_avg_loss=2, test_loss=8, "
            "test_total=4, val_acc=0.5") in caplog.text
    c2, comm2 = _client(tmp_path, "eval.metrics", ["correct"], "eval.split", ["test"])
    c2.handle(Message(EVALUATE, SERVER_ID, 3, 1, {}, None))
    assert comm2.sent[0][1].content["results"] == {"test_correct": 2, "test_total": 4,
                                                   "test_loss": 8.0, "test_avg_loss": 2.0}
    assert c2.trainer.states == []


def test_assign_refuse_finish_and_an_unknown_type(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="federatedscope")
    c, _ = _client(tmp_path, cid=-1, trainer=Trainer(counts={"train": 0, "val": 1, "test": 1}))
    c.handle(Message(ASSIGN_ID, SERVER_ID, -1, 0, {"client_id": "4"}))
    assert c.ID == 4 and "Client #4: joined the federation" in caplog.text
    assert ("Client #4: no train samples in its data: it will send updates of weight 0 (re-cut "
            "the shards, or check data.splits)") in caplog.text
    c.handle(Message("no_such_type", SERVER_ID, 4, 0, {}))
    assert "Client #4: no handler registered for no_such_type; ignored" in caplog.text
    assert not c.finished
    g = {"w": torch.ones(2)}
    c.handle(Message(FINISH, SERVER_ID, 4, 9, {}, g))
    assert c.finished and c.refused is None and c.trainer.states[0] is g
    assert "Client #4: training finished (0 rounds trained)" in caplog.text
    d, _ = _client(tmp_path)
    d.handle(Message(FINISH, SERVER_ID, 3, 9, {}, None))
    assert d.trainer.states == []
    d.handle(Message(REFUSE, SERVER_ID, 3, 0, {"reason": "bad token"}))
    assert d.refused == "bad token" and d.finished
    assert "Client #3: refused by the server: bad token" in caplog.text
    e, _ = _client(tmp_path)
    e.handle(Message(ASSIGN_ID, SERVER_ID, 3, 0, {"client_id": 3}))
    assert "no train samples" not in caplog.text.split("Client #3: joined")[1]


def test_the_personal_state_directory(tmp_path):
    base = str(tmp_path)
    cfg = make_cfg(tmp_path)
    assert personal_state_dir(cfg) == os.path.join(base, "job", "client_state")
    cfg.defrost()
    cfg.outdir = os.path.join(base, "job")                              # resolved already
    assert personal_state_dir(cfg) == os.path.join(base, "job", "client_state")
    cfg.outdir = os.path.join(base, "job", "sub_exp_1") + os.sep
    assert personal_state_dir(cfg) == os.path.join(base, "job", "client_state")
    cfg.outdir = os.path.join(base, "runs")                             # not resolved yet
    assert personal_state_dir(cfg) == os.path.join(base, "runs", "job", "client_state")
    cfg.personalization.state_dir = os.path.join(base, "mine")
    assert personal_state_dir(cfg) == os.path.join(base, "mine")
    # a config without the personalization keys (built without the algorithm extensions)
    from types import SimpleNamespace
    bare = SimpleNamespace(outdir=os.path.join(base, "out"), expname="exp")
    assert personal_state_dir(bare) == os.path.join(base, "out", "exp", "client_state")


def test_a_personal_state_is_saved_each_round_and_restored_under_the_same_id(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="federatedscope")
    c, _ = _client(tmp_path, trainer=Trainer({"bn": torch.zeros(3)}))
    c.handle(Message(ASSIGN_ID, SERVER_ID, 3, 0, {"client_id": 3, "job_id": "a1b2"}))
    for r in range(2):
        c.handle(Message(MODEL_PARA, SERVER_ID, 3, r, {}, None))
    path = os.path.join(str(tmp_path), "job", "client_state", "client_3.pt")
    assert c.personal_state_path() == path
    saved = torch.load(path, weights_only=True)
    assert saved["job_id"] == "a1b2" and torch.equal(saved["state"]["bn"], torch.full((3,), 2.0))

    def restart(job):
        back = Trainer()
        content = {"client_id": 3} if job is None else {"client_id": 3, "job_id": job}
        Client(config=c.cfg, trainer=back, comm=FakeComm()).handle(
            Message(ASSIGN_ID, SERVER_ID, -1, 0, content))
        return back.loaded
    assert torch.equal(restart("a1b2")["bn"], torch.full((3,), 2.0))
    assert f"Client #3: restored its personal state (1 tensors) from {path}" in caplog.text
    caplog.clear()
    # another run into the same outdir (a new job, a server that names none, a forged name):
    # the earlier run's personal layers must not leak into it
    for job in ("ffff", None, "a1b2/../x"):
        assert restart(job) is None
    assert caplog.text.count(f"Client #3: the personal state in {path} was saved by another run "
                             f"(job a1b2, this one ") == 3
    assert "this one ffff); starting afresh" in caplog.text and "this one unnamed)" in caplog.text
    nothing, _ = _client(tmp_path, trainer=Trainer(), cid=5)
    nothing.handle(Message(MODEL_PARA, SERVER_ID, 5, 0, {}, None))
    assert not os.path.exists(nothing.personal_state_path())          # empty state: no file


def test_an_unreadable_or_unwritable_personal_state_is_logged_and_training_goes_on(tmp_path,
                                                                                    caplog,
                                                                                    monkeypatch):
    caplog.set_level(logging.INFO, logger="federatedscope")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the directory should be")
    c, comm = _client(tmp_path, "personalization.state_dir", str(blocker / "d"),
                      trainer=Trainer({"bn": torch.zeros(1)}))
    c.handle(Message(MODEL_PARA, SERVER_ID, 3, 0, {}, None))
    assert [m.msg_type for _, m in comm.sent] == [MODEL_PARA]
    assert (f"Client #3: cannot save its personal state to {blocker / 'd' / 'client_3.pt'} ("
            in caplog.text)
    assert "a restart would start it afresh (free space or set personalization.state_dir)" \
        in caplog.text
    bad = tmp_path / "state"
    bad.mkdir()
    (bad / "client_3.pt").write_bytes(b"not a torch file")
    t = Trainer()
    d, _ = _client(tmp_path, "personalization.state_dir", str(bad), trainer=t)
    d.handle(Message(ASSIGN_ID, SERVER_ID, 3, 0, {"client_id": 3}))
    assert t.loaded is None
    assert f"Client #3: personal state {bad / 'client_3.pt'} is unreadable (" in caplog.text
    assert "starting afresh (remove the file to silence this)" in caplog.text
    # a state that is not plain tensors (here a pickled date) is refused even where the
    # environment tells torch to default to full unpickling: weights_only is explicit
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    torch.save({"bn": torch.zeros(1), "when": datetime.date(2020, 1, 1)}, bad / "client_3.pt")
    d.handle(Message(ASSIGN_ID, SERVER_ID, 3, 0, {"client_id": 3}))
    assert t.loaded is None and caplog.text.count("is unreadable (") == 2


def test_a_changed_shard_is_reloaded_and_redeclared_before_the_round(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="federatedscope")
    loader = Loader(changed=True)
    c, comm = _client(tmp_path, loader=loader)
    c.handle(Message(MODEL_PARA, SERVER_ID, 3, 2, {}, None))
    assert loader.reloads == 1 and c.trainer.data == {"train": "T2"}
    (to, m), _ = comm.sent
    assert (to, m.msg_type, m.sender, m.state) == (SERVER_ID, REDECLARE, 3, 0)
    assert m.content == {"declaration": loader.declaration().to_dict()}
    assert m.content["declaration"]["num_samples"]["train"] == 20
    assert "Client #3: shard changed on disk; re-declaring (20 train samples)" in caplog.text
    same = Loader(changed=False)
    d, comm2 = _client(tmp_path, loader=same)
    d.handle(Message(MODEL_PARA, SERVER_ID, 3, 0, {}, None))
    assert same.reloads == 0 and [m.msg_type for _, m in comm2.sent] == [MODEL_PARA]


def test_a_changed_shard_that_fails_its_checks_keeps_the_old_one(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="federatedscope")
    loader = Loader(changed=True, fails=ShardError("train.pt: size 5 != meta 9; " + "q" * 400))
    c, comm = _client(tmp_path, loader=loader)
    c.handle(Message(MODEL_PARA, SERVER_ID, 3, 0, {}, None))
    assert loader.acks == 1 and c.trainer.data is None and c.rounds_trained == 1
    (to, m), (_, upd) = comm.sent
    assert (to, m.msg_type, m.sender, m.state, upd.msg_type) == (SERVER_ID, REDECLARE, 3, 0,
                                                                  MODEL_PARA)
    assert m.content["declaration"] == loader.declaration().to_dict()
    assert m.content["refresh_error"] == ("train.pt: size 5 != meta 9; " + "q" * 400)[:300] + \
        "...[428 chars]"
    assert ("Client #3: the shard at /data/shards/client_3 changed on disk but the new contents "
            "fail their checks, so this client keeps training on the shard it loaded before (12 "
            "train samples, fingerprint abababababab): train.pt: size 5 != meta 9") in caplog.text


def _refusals(caplog):
    return [r.getMessage() for r in caplog.records if "refused by the server" in r.getMessage()]


def test_a_bad_token_refusal_names_the_fix_from_what_the_client_sent(tmp_path, caplog):
    """The server tells a refused peer only "bad token"; the client knows whether it sent one."""
    caplog.set_level(logging.INFO, logger="federatedscope")
    token_file = tmp_path / "tokens" / "client_2.token"
    for cid, opts, token in [(4, [], ""), (2, ["distribute.token_file", str(token_file)], "x1"),
                             (3, ["distribute.token", "x2"], "x2")]:
        c, _ = _client(tmp_path, *opts, token=token, cid=cid)
        c.handle(Message(REFUSE, SERVER_ID, cid, 0, {"reason": "bad token"}))
        assert c.refused == "bad token" and c.finished
    no_token, wrong_file, wrong_token = _refusals(caplog)
    assert no_token == (
        "Client #4: refused by the server: bad token: this client sent no token "
        "(distribute.token and distribute.token_file are empty), but the server wants one. "
        "Shards cut with tokens (the managed launcher's default) list a token_hash per client in "
        "the manifest: give this client its file, distribute.token_file <manifest dir>/tokens/"
        "client_4.token (the launcher's folder; or the --tokens DIR given to "
        "prepare_femnist_shards.py / make_client_tokens.py). A server with a shared secret and "
        "no token hashes wants it as distribute.token")
    assert wrong_file == (
        f"Client #2: refused by the server: bad token: the token this client sent "
        f"(distribute.token_file {token_file}) does not match the manifest's token_hash for "
        f"client id 2 (or the server's shared distribute.token); give it the file written for "
        f"client 2 (<tokens dir>/client_2.token), or re-issue the tokens with "
        f"scripts/tools/make_client_tokens.py --manifest M --out DIR and give each client its "
        f"new file")
    assert wrong_token.startswith("Client #3: refused by the server: bad token: the token this "
                                  "client sent (distribute.token) does not match the manifest's "
                                  "token_hash for client id 3 ")
    # any other reason is the reason alone: the token has nothing to do with it
    caplog.clear()
    for cid, reason in [(1, "duplicate"), (5, "declaration mismatch"), (6, "unknown id")]:
        _client(tmp_path, cid=cid)[0].handle(Message(REFUSE, SERVER_ID, cid, 0,
                                                     {"reason": reason}))
    assert _refusals(caplog) == ["Client #1: refused by the server: duplicate",
                                 "Client #5: refused by the server: declaration mismatch",
                                 "Client #6: refused by the server: unknown id"]


@pytest.mark.parametrize("job,kept", [
    ("a" * 64, "a" * 64),          # the longest name kept
    ("a" * 65, ""),                # longer: a forged or broken name is no name
    ("ab-12", ""), (1234, ""), (None, ""), ("", "")])
def test_a_job_id_is_kept_only_when_short_and_alphanumeric(tmp_path, job, kept):
    c, _ = _client(tmp_path)
    assert c.job_id == ""                                 # before any id is assigned
    c.handle(Message(ASSIGN_ID, SERVER_ID, 3, 0, {"client_id": 3, "job_id": job}))
    assert c.job_id == kept


def test_a_client_refused_before_it_has_an_id_names_its_token_file_generically(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="federatedscope")
    c, _ = _client(tmp_path, cid=-1)                      # data_idx: the id comes from the server
    c.handle(Message(REFUSE, SERVER_ID, -1, 0, {"reason": "bad token"}))
    (line,) = _refusals(caplog)
    assert "distribute.token_file <manifest dir>/tokens/client_<id>.token" in line


@pytest.mark.parametrize("cid,named", [(1, "client_1.token"), (0, "client_<id>.token")])
def test_the_token_file_named_is_the_clients_own_from_id_1(tmp_path, caplog, cid, named):
    caplog.set_level(logging.INFO, logger="federatedscope")
    c, _ = _client(tmp_path, cid=cid)
    c.handle(Message(REFUSE, SERVER_ID, cid, 0, {"reason": "bad token"}))
    (line,) = _refusals(caplog)
    assert f"distribute.token_file <manifest dir>/tokens/{named} (the launcher's" in line


def test_a_personal_state_of_another_shape_or_a_long_job_name_is_named_and_skipped(tmp_path,
                                                                                   caplog):
    caplog.set_level(logging.INFO, logger="federatedscope")
    c, _ = _client(tmp_path, trainer=Trainer({"bn": torch.zeros(3)}))
    path = c.personal_state_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save([1, 2, 3], path)                           # not a dict: no job named
    back = Trainer()
    Client(config=c.cfg, trainer=back, comm=FakeComm()).handle(
        Message(ASSIGN_ID, SERVER_ID, -1, 0, {"client_id": 3, "job_id": "a1b2"}))
    assert back.loaded is None
    assert (f"Client #3: the personal state in {path} was saved by another run (job None, this "
            f"one a1b2); starting afresh") in caplog.text
    caplog.clear()
    torch.save({"job_id": "j" * 70, "state": {"bn": torch.ones(3)}}, path)
    Client(config=c.cfg, trainer=Trainer(), comm=FakeComm()).handle(
        Message(ASSIGN_ID, SERVER_ID, -1, 0, {"client_id": 3, "job_id": "a1b2"}))
    assert (f"was saved by another run (job {'j' * 64}...[70 chars], this one a1b2); "
            f"starting afresh") in caplog.text


def test_without_a_trainer_the_client_builds_fs_trainer_from_its_arguments(tmp_path):
    """FS's Client builds its trainer from (model, data, device, config): the real one here,
    on the model and the splits it is given, on the CPU by default."""
    from federatedscope.core.auxiliaries.model_builder import get_model
    from federatedscope.core.data.datasets import TensorSplit
    from federatedscope.core.trainers.trainer import GeneralTorchTrainer
    cfg = make_cfg(tmp_path)
    model = get_model(cfg)
    x = torch.zeros(6, 1, 28, 28)
    splits = {"train": TensorSplit(x, torch.arange(6) % 3, lambda b: b),
              "test": TensorSplit(x[:2], torch.tensor([0, 1]), lambda b: b)}
    c = Client(ID=4, server_id=0, config=cfg, data=splits, model=model, comm=FakeComm())
    assert isinstance(c.trainer, GeneralTorchTrainer)
    assert c.trainer.model is model and c.trainer.cfg is cfg
    assert c.trainer.data == splits and c.trainer.device == "cpu"
    assert (c.ID, c.server_id, c.state, c.data, c.model) == (4, 0, -1, splits, model)
    assert c.trainer.num_samples("train") == 6 and c.trainer.num_samples("test") == 2
