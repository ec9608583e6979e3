"""Two rounds of standalone FedAvg on each new dataset, in-process: reader -> clients (LEAF:
one per writer; CIFAR-10: FS's LDA split of the train files) -> trainer -> FedAvg. Proves the
readers, models, criterion-compatible labels and splitter compose; the runner's own wiring of
these datasets (get_data) is DATAHOUSE's."""
import numpy as np
import torch

from dataset_tools import tool
from federatedscope.core.aggregators.fedavg import weighted_mean
from federatedscope.core.auxiliaries.splitter_builder import build_splitter
from federatedscope.core.configs.config import get_default_cfg
from federatedscope.core.data.datasets import TensorSplit
from federatedscope.core.trainers.trainer import GeneralTorchTrainer
from federatedscope.cv.dataset.celeba import CELEBA
from federatedscope.cv.dataset.cifar10 import CIFAR10, MEAN, STD
from federatedscope.cv.dataset.leaf_json import write_leaf_json
from federatedscope.cv.model.cnn import ConvNet2
from federatedscope.nlp.dataset.shakespeare import SHAKESPEARE
from federatedscope.nlp.model.rnn import LSTM
from federatedscope.nlp.trainer.trainer import NLPTrainer

_MEAN = torch.tensor(MEAN).reshape(1, 3, 1, 1)
_STD = torch.tensor(STD).reshape(1, 3, 1, 1)


def _images(x):  # uint8 [n, 3, H, W] -> float [0, 1] (what ToTensor must do for 3 channels)
    return x.float() / 255.0


def _cfg(lr, steps, batch):
    cfg = get_default_cfg()
    cfg.train.optimizer.lr = lr
    cfg.train.local_update_steps = steps
    cfg.train.batch_or_epoch = "epoch"
    cfg.dataloader.batch_size = batch
    return cfg


def _run_fedavg(trainer_cls, model, clients, cfg, rounds=2):
    """Returns (sample-weighted train loss of the global model before, after)."""
    trainers = [trainer_cls(model, {"train": split}, "cpu", cfg) for split in clients]
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def global_loss():
        total = loss = 0.0
        for t in trainers:
            t.set_state(state)
            m = t.evaluate("train")
            loss, total = loss + m["train_loss"], total + m["train_total"]
        return loss / total

    before = global_loss()
    for r in range(rounds):
        updates = []
        for cid, t in enumerate(trainers, start=1):
            t.set_state(state)
            n, upload, _ = t.train(seed=1000 * r + cid)
            updates.append((cid, n, upload))
        state = weighted_mean(updates)
        sizes = [n for _, n, _ in updates]
        assert sum(sizes) == sum(len(c) for c in clients)
    return before, global_loss()


def test_fedavg_on_celeba_writers(tmp_path):
    tool("generate_celeba_sample").write_sample(str(tmp_path / "celeba" / "raw"), writers=4,
                                                seed=1, mean_samples=5)
    writers = list(CELEBA.iter_writers(str(tmp_path)))
    clients = [TensorSplit(torch.from_numpy(w.x), torch.from_numpy(w.y), _images)
               for w in writers]
    assert len(clients) == 4
    torch.manual_seed(0)
    model = ConvNet2(in_channels=3, h=84, w=84, hidden=32, class_num=2)
    before, after = _run_fedavg(GeneralTorchTrainer, model, clients, _cfg(0.05, 2, 4))
    assert after < before


def test_fedavg_on_shakespeare_roles(tmp_path):
    users = tool("generate_shakespeare_sample").generate(roles=4, seed=3, mean_samples=12)
    write_leaf_json(str(tmp_path / "shakespeare" / "raw" / "all_data" / "a.json"), users)
    writers = list(SHAKESPEARE.iter_writers(str(tmp_path)))
    clients = [TensorSplit(torch.from_numpy(w.x), torch.from_numpy(w.y), lambda x: x)
               for w in writers]
    torch.manual_seed(0)
    model = LSTM(in_channels=80, hidden=16, out_channels=80, embed_size=8)
    before, after = _run_fedavg(NLPTrainer, model, clients, _cfg(0.8, 1, 8))
    assert after < before


def test_fedavg_on_cifar10_lda_clients(tmp_path):
    tool("generate_cifar10_sample").write_sample(str(tmp_path), per_file=16, seed=2,
                                                 layouts=("bin",))
    train = [b for b in CIFAR10.iter_writers(str(tmp_path)) if b.split == "train"]
    x = np.concatenate([b.x for b in train])
    y = np.concatenate([b.y for b in train])
    parts = build_splitter("lda", 4, [{"alpha": 0.5}]).split_indices(y, seed=12345)
    assert sorted(np.concatenate(parts).tolist()) == list(range(80))
    clients = [TensorSplit(torch.from_numpy(x[p]), torch.from_numpy(y[p]),
                           lambda b: (_images(b) - _MEAN) / _STD) for p in parts]
    torch.manual_seed(0)
    model = ConvNet2(in_channels=3, h=32, w=32, hidden=32, class_num=10)
    before, after = _run_fedavg(GeneralTorchTrainer, model, clients, _cfg(0.05, 1, 8))
    assert after < before
