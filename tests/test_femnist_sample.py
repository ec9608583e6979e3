"""Synthetic FEMNIST generator: LEAF format, exact k/255 values, determinism, learnability."""
import importlib.util
import json
import os
import re
import time

import numpy as np
import pytest
import torch

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "scripts", "tools", "generate_femnist_sample.py")
_spec = importlib.util.spec_from_file_location("generate_femnist_sample", _PATH)
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)

K255 = {k / 255 for k in range(256)}


def _run(out, writers=6, seed=3, mean=40, per_file=4):
    gen.main(["--out", str(out), "--writers", str(writers), "--seed", str(seed),
              "--samples-per-writer-mean", str(mean), "--writers-per-file", str(per_file)])
    return sorted(os.listdir(out))


def test_cli_writes_leaf_files(tmp_path, capsys):
    names = _run(tmp_path)
    assert names == ["all_data_0.json", "all_data_1.json"]
    summary = capsys.readouterr().out
    assert "writers=6" in summary and "files=2" in summary
    users_seen, pixels = [], []
    for name in names:
        raw = (tmp_path / name).read_bytes()
        obj = json.loads(raw)
        # The hand-written serialisation is exactly what json.dumps would produce.
        assert json.dumps(obj).encode() == raw
        assert list(obj) == ["users", "num_samples", "user_data"]
        assert len(obj["users"]) == len(obj["num_samples"]) == len(obj["user_data"])
        for uid, n in zip(obj["users"], obj["num_samples"]):
            assert re.fullmatch(r"f\d{4}_\d{2}", uid)
            ud = obj["user_data"][uid]
            assert len(ud["x"]) == len(ud["y"]) == n
            assert all(len(row) == 784 for row in ud["x"])
            assert all(isinstance(v, int) and 0 <= v < 62 for v in ud["y"])
            for row in ud["x"]:
                pixels.extend(row)
        users_seen += obj["users"]
    assert users_seen == sorted(users_seen) and len(set(users_seen)) == 6
    assert set(pixels) <= K255  # exact k/255 Python floats, nothing else
    assert all(isinstance(v, float) for v in pixels[:1000])
    px = np.asarray(pixels)
    assert 0.94 < px.mean() < 0.98  # LEAF convention: white background, dark ink
    assert (px == 1.0).mean() > 0.8 and px.min() < 0.3


def test_deterministic_bytes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _run(a)
    _run(b)
    _run(c, seed=4)
    for name in os.listdir(a):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "all_data_0.json").read_bytes() != (c / "all_data_0.json").read_bytes()


def test_classes_counts_and_non_iid():
    ids, counts, images, labels = gen.generate(40, seed=0, mean=60)
    assert images.dtype == np.uint8 and images.shape == (counts.sum(), 784)
    assert len(ids) == 40 and counts.min() >= 20 and counts.max() <= 450
    assert np.unique(labels).tolist() == list(range(62))
    # Writers have clearly different label mixes (non-IID).
    off = np.r_[0, np.cumsum(counts)]
    hist = np.stack([np.bincount(labels[off[i]:off[i + 1]], minlength=62) / counts[i]
                     for i in range(40)])
    tv = 0.5 * np.abs(hist[:, None] - hist[None]).sum(-1)
    assert tv[np.triu_indices(40, 1)].mean() > 0.3


def test_default_counts_spread_like_femnist():
    rng = np.random.default_rng(0)
    _, counts, _ = gen._writer_plan(rng, 500, 200.0)
    assert 170 < counts.mean() < 230
    assert counts.min() < 80 and counts.max() > 400


def test_templates_distinct():
    t = gen.build_templates()
    assert len(t) == 62 and all(2 <= len(s) <= 4 for s in t)
    flat = [np.concatenate(s).round(6).tobytes() for s in t]
    assert len(set(flat)) == 62


def test_200_writer_render_speed():
    # 25 writers x ~200 samples: 1/8 of the 200-writer sample; must stay well under a minute.
    t0 = time.time()
    gen.generate(25, seed=1)
    assert time.time() - t0 < 15


def test_learnable_but_not_trivial():
    torch.manual_seed(0)
    ids, counts, images, labels = gen.generate(10, seed=5, mean=150)
    x = torch.tensor(images, dtype=torch.float32) / 255
    x = (x - 0.9637) / 0.1592
    y = torch.tensor(labels)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_tr = int(0.8 * len(y))
    tr, te = perm[:n_tr], perm[n_tr:]
    model = torch.nn.Linear(784, 62)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):  # full-batch softmax regression
        loss = torch.nn.functional.cross_entropy(model(x[tr]), y[tr])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (model(x[te]).argmax(1) == y[te]).float().mean().item()
    print("softmax-regression held-out accuracy", acc)
    assert acc > 3 / 62, acc
    assert acc < 0.95, acc


def test_rejects_bad_args(tmp_path):
    with pytest.raises(ValueError):
        gen.write_sample(str(tmp_path), writers=0, seed=0)


def test_leaf_counts_have_leafs_total_mean_and_spread():
    counts = gen.leaf_counts(gen.LEAF_WRITERS, seed=0)
    assert counts.shape == (3550,) and counts.sum() == 805263      # real FEMNIST's total
    assert abs(counts.mean() - 226.83) < 0.01
    assert 0.9 * 88.94 < counts.std() < 1.1 * 88.94 and counts.min() >= 10
    # fewer writers: the same per-writer distribution, total scaled (12 x 805263 / 3550 = 2722)
    assert gen.leaf_counts(12, seed=3).sum() == 2722
    assert not np.array_equal(gen.leaf_counts(12, seed=3), gen.leaf_counts(12, seed=4))


def test_leaf_size_writes_leafs_layout_one_file_of_writers_at_a_time(tmp_path, monkeypatch):
    real, batches = gen.generate, []

    def recording(writers, *a, **kw):
        batches.append(writers)
        return real(writers, *a, **kw)
    monkeypatch.setattr(gen, "generate", recording)
    assert gen.main(["--out", str(tmp_path), "--leaf-size", "--writers", "7",
                     "--writers-per-file", "3", "--seed", "1"]) == 0
    assert batches == [3, 3, 1]   # memory bounded by one file's writers, whatever the total
    names = sorted(os.listdir(tmp_path))
    assert names == ["all_data_0.json", "all_data_1.json", "all_data_2.json"]
    users, counts = [], []
    for name in names:
        raw = (tmp_path / name).read_bytes()
        obj = json.loads(raw)
        assert json.dumps(obj).encode() == raw          # streamed text = json.dumps text
        for uid, n in zip(obj["users"], obj["num_samples"]):
            assert len(obj["user_data"][uid]["x"]) == len(obj["user_data"][uid]["y"]) == n
        users += obj["users"]
        counts += obj["num_samples"]
    assert [u[:5] for u in users] == [f"f{i:04d}" for i in range(7)]
    assert counts == gen.leaf_counts(7, seed=1).tolist()


def test_leaf_size_needs_no_writer_count_but_plain_mode_does(tmp_path):
    with pytest.raises(SystemExit):
        gen.main(["--out", str(tmp_path)])
