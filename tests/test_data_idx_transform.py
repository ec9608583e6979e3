"""FS's data_idx path (a distributed client that loads the whole dataset and keeps one task)
applies ``data.transform`` exactly as configured: Normalize included, not only ToTensor."""
import pytest
import torch

from federatedscope.core.auxiliaries.data_builder import get_data
from federatedscope.core.configs.config import finalize, global_cfg

MEAN, STD = 0.9637, 0.1592


def _client_train(root, transform):
    cfg = global_cfg.clone()
    cfg.merge_from_list(["federate.mode", "distributed", "distribute.role", "client",
                         "distribute.data_idx", 3, "data.root", root, "data.subsample", 1.0,
                         "distributed_data.enabled", False])
    cfg.data.transform = transform
    data, _ = get_data(finalize(cfg))
    if hasattr(data, "splits"):            # the typed per-role record (DataIdxClient)
        return data.splits()[0]["train"]
    return data.train_data


def test_data_idx_client_applies_normalize(femnist_root):
    plain = _client_train(femnist_root, [["ToTensor"]])
    norm = _client_train(femnist_root,
                         [["ToTensor"], ["Normalize", {"mean": [MEAN], "std": [STD]}]])
    assert len(plain) == len(norm) > 16
    (xp, yp), (xn, yn) = (next(iter(s.iter_batches(16, False, 0))) for s in (plain, norm))
    assert torch.equal(yp, yn) and xp.shape == xn.shape == (16, 1, 28, 28)
    assert float(xp.min()) >= 0.0 and float(xp.max()) <= 1.0            # ToTensor: [0, 1]
    assert torch.allclose(xn, (xp - MEAN) / STD, atol=1e-5)
    assert float(xn.min()) == pytest.approx((float(xp.min()) - MEAN) / STD, abs=1e-5)
