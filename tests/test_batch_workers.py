"""dataloader.{num_workers, drop_last, pin_memory} on both batch sources: the streaming reader
splits its blocks across DataLoader workers (every sample exactly once per epoch, order shuffled
inside blocks, seeded) and in-memory splits honour drop_last; hand-computed batch counts."""
import numpy as np
import pytest
import torch

from federatedscope.core.data.datasets import TensorSplit
from federatedscope.core.data.streaming import StreamingSplit
from federatedscope.core.data.shard_format import split_file

N, BLOCK, BS = 50, 10, 7
# this machine may have fewer cores than the 3 workers a test asks for; correctness is the point
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")


@pytest.fixture
def stream(tmp_path):
    """50 int64 samples [i, 2i, 3i] (the sample names itself), labels i % 5, 10-row blocks."""
    p = str(tmp_path / "train.pt")
    i = torch.arange(N)
    split_file.write_split(p, torch.stack([i, 2 * i, 3 * i], 1), i % 5)
    s = StreamingSplit(split_file.split_layout(p), None, lambda x: x, block_rows=BLOCK)
    yield s
    s.close()


def _ids(batches):
    return [int(v) for x, y in batches for v in x[:, 0]]


def _check_batch(x, y):
    assert torch.equal(x[:, 1], 2 * x[:, 0]) and torch.equal(x[:, 2], 3 * x[:, 0])
    assert torch.equal(y, x[:, 0] % 5)  # labels travel with their samples


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_every_sample_once_per_epoch(stream, workers):
    batches = list(stream.iter_batches(BS, True, 11, num_workers=workers))
    for x, y in batches:
        _check_batch(x, y)
    assert sorted(_ids(batches)) == list(range(N))
    # hand-computed: worker w reads blocks w, w+W, ... of the epoch's block order and carries
    # remainders only inside itself: W=1 or 0 -> ceil(50/7) = 8 batches; W=3 -> blocks 2,2,1 ->
    # (7,7,6) + (7,7,6) + (7,3) = 8 batches as well, with three short ones
    sizes = sorted(len(y) for _, y in batches)
    assert sizes == ([1] + [7] * 7 if workers < 3 else [3, 6, 6] + [7] * 5)
    again = list(stream.iter_batches(BS, True, 11, num_workers=workers))
    assert _ids(again) == _ids(batches)  # seeded: the same epoch twice


@pytest.mark.parametrize("workers", [0, 3])
def test_shuffle_is_inside_blocks_and_seeded(stream, workers):
    seq = _ids(stream.iter_batches(BLOCK, True, 3, num_workers=workers))
    # batch = block size: every batch is one whole block, permuted inside
    chunks = [seq[i:i + BLOCK] for i in range(0, N, BLOCK)]
    assert sorted(sorted(c)[0] // BLOCK for c in chunks) == list(range(N // BLOCK))
    assert all(sorted(c) == list(range(c_min, c_min + BLOCK))
               for c, c_min in ((c, min(c)) for c in chunks))
    assert any(c != sorted(c) for c in chunks)  # shuffled inside its block
    other = _ids(stream.iter_batches(BLOCK, True, 4, num_workers=workers))
    assert other != seq and sorted(other) == list(range(N))
    assert _ids(stream.iter_batches(BLOCK, False, 3, num_workers=0)) == list(range(N))


@pytest.mark.parametrize("workers", [0, 3])
def test_streaming_drop_last_drops_each_readers_remainder(stream, workers):
    batches = list(stream.iter_batches(BS, True, 11, num_workers=workers, drop_last=True))
    assert all(len(y) == BS for _, y in batches)
    # W=0: 50 // 7 = 7 batches; W=3: workers hold 20, 20, 10 samples -> 2 + 2 + 1 = 5 batches
    assert len(batches) == (7 if workers == 0 else 5)
    assert len(set(_ids(batches))) == len(batches) * BS


def test_in_memory_drop_last_workers_and_pinning_give_the_same_batches():
    i = torch.arange(N)
    ts = TensorSplit(torch.stack([i, 2 * i, 3 * i], 1), i % 5, lambda x: x)
    base = list(ts.iter_batches(BS, True, 9))
    assert [len(y) for _, y in base] == [7] * 7 + [1]
    dropped = list(ts.iter_batches(BS, True, 9, drop_last=True))
    assert [len(y) for _, y in dropped] == [7] * 7  # 49 of 50: the last 1 is dropped
    assert _ids(dropped) == _ids(base)[:49]
    for kw in ({"num_workers": 2}, {"pin_memory": True}, {"num_workers": 1, "drop_last": True}):
        got = list(ts.iter_batches(BS, True, 9, **kw))
        want = dropped if kw.get("drop_last") else base
        assert len(got) == len(want) and all(
            torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, want))
        for x, y in got:
            _check_batch(x, y)


# ------------------------------------------------------------------ datasets.py, in process
def test_shuffled_order_is_the_seeded_randperm_with_the_seed_folded_to_63_bits():
    from federatedscope.core.data.datasets import shuffled_order
    assert shuffled_order(6, False, 123).tolist() == [0, 1, 2, 3, 4, 5]
    want = torch.randperm(12, generator=torch.Generator().manual_seed(5))
    assert torch.equal(shuffled_order(12, True, 5), want)
    assert torch.equal(shuffled_order(12, True, 2 ** 63 + 5), want)      # folded, not refused
    assert torch.equal(shuffled_order(12, True, -1),
                       torch.randperm(12, generator=torch.Generator().manual_seed(2 ** 63 - 1)))
    assert not torch.equal(shuffled_order(12, True, 6), want)


def test_tensor_split_items_lengths_and_drop_last_on_an_exact_multiple():
    i = torch.arange(12)
    with pytest.raises(ValueError) as ei:
        TensorSplit(i[:3], i[:2], lambda x: x)
    assert str(ei.value) == "samples (3) and labels (2) differ in length"
    ts = TensorSplit(torch.stack([i, 2 * i, 3 * i], 1), i % 5, lambda x: x * 10)
    assert len(ts) == 12
    x, y = ts[4]
    assert x.tolist() == [40, 80, 120] and int(y) == 4
    # 12 = 3 x 4: drop_last drops nothing; unshuffled batches are in order
    for drop in (False, True):
        got = list(ts.iter_batches(4, False, 0, drop_last=drop))
        assert [(b[0][:, 0] // 10).tolist() for b in got] == [[0, 1, 2, 3], [4, 5, 6, 7],
                                                              [8, 9, 10, 11]]
    five = list(ts.iter_batches(5, False, 0, drop_last=True))
    assert [(b[0][:, 0] // 10).tolist() for b in five] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    shuffled = list(ts.iter_batches(5, True, 8))
    order = torch.randperm(12, generator=torch.Generator().manual_seed(8)).tolist()
    assert [v for b in shuffled for v in (b[0][:, 0] // 10).tolist()] == order
    assert [len(b[1]) for b in shuffled] == [5, 5, 2]


def test_pinning_is_asked_only_where_it_can_happen():
    import warnings
    i = torch.arange(N)
    ts = TensorSplit(torch.stack([i, 2 * i, 3 * i], 1), i % 5, lambda x: x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # torch warns when pinning has no accelerator
        got = list(ts.iter_batches(BS, True, 9, pin_memory=True))
    assert len(got) == 8 and sorted(_ids(got)) == list(range(N))


def test_workers_fork_with_the_collector_frozen_and_unfreeze_after(monkeypatch):
    """A finalizer of this process's garbage must not run in a worker: the garbage is collected
    and frozen around the fork (only when workers are forked), then unfrozen."""
    import gc
    from federatedscope.core.data import datasets
    calls = []
    fake = type("GC", (), {"collect": staticmethod(lambda: calls.append("collect")),
                           "freeze": staticmethod(lambda: calls.append("freeze")),
                           "unfreeze": staticmethod(lambda: calls.append("unfreeze"))})
    monkeypatch.setattr(datasets, "gc", fake)
    i = torch.arange(8)
    ts = TensorSplit(i, i % 5, lambda x: x)
    it = datasets.batch_loader(ts, [i[:4], i[4:]], 0, True)
    assert calls == [] and [b[0].tolist() for b in it] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    it = datasets.batch_loader(ts, [i[:4], i[4:]], 1, False)
    assert calls == ["collect", "freeze", "unfreeze"]
    assert [b[0].tolist() for b in it] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert gc.get_freeze_count() == 0


def test_streaming_epoch_order_is_block_order_then_seeded_order_inside_each_block(stream):
    """The documented order, rebuilt by hand: blocks in shuffled_order(5 blocks, seed), block b
    permuted by shuffled_order(10, seed * 1_000_003 + b); the same in every process."""
    from federatedscope.core.data.datasets import shuffled_order
    seed = 11
    want = []
    for b in shuffled_order(N // BLOCK, True, seed).tolist():
        inside = shuffled_order(BLOCK, True, seed * 1_000_003 + b).tolist()
        want += [b * BLOCK + j for j in inside]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")       # e.g. torch resizing a staging view: none per block
        assert _ids(stream.iter_batches(BS, True, seed)) == want
    # a short last block (n = 50, 8-row blocks: 7 blocks, the last of 2 rows)
    stream.block_rows = 8
    want = []
    for b in shuffled_order(7, True, seed).tolist():
        k = min(8, N - 8 * b)
        want += [b * 8 + j for j in shuffled_order(k, True, seed * 1_000_003 + b).tolist()]
    assert _ids(stream.iter_batches(BS, True, seed)) == want
    assert _ids(stream.iter_batches(BS, False, seed)) == list(range(N))


def test_each_worker_takes_every_wth_block_of_the_epoch_order(stream, monkeypatch):
    """In process: get_worker_info() as worker w of 3 sees; the shares are disjoint, cover every
    block, and follow the shuffled block order (the bug class: every worker from block 0)."""
    from types import SimpleNamespace
    from federatedscope.core.data import streaming
    from federatedscope.core.data.datasets import shuffled_order
    order = shuffled_order(N // BLOCK, True, 11).tolist()
    assert stream._my_blocks(True, 11) == order and stream._my_blocks(False, 11) == [0, 1, 2, 3, 4]
    shares = []
    for w in range(3):
        monkeypatch.setattr(streaming, "get_worker_info",
                            lambda w=w: SimpleNamespace(id=w, num_workers=3))
        shares.append(stream._my_blocks(True, 11))
        assert shares[-1] == order[w::3]
        got = _ids(stream.iter_batches(BS, True, 11))       # what worker w yields
        assert sorted(got) == sorted(b * BLOCK + j for b in order[w::3] for j in range(BLOCK))
    assert sorted(b for s in shares for b in s) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("kind", ["memory", "stream"])
def test_worker_and_pin_keys_reach_the_dataloader_only_when_set(stream, monkeypatch, kind):
    """dataloader.num_workers / pin_memory go to torch's DataLoader (batch_loader); without them
    batches are drawn in process. Checked by a spy, in process."""
    from federatedscope.core.data import datasets, streaming
    calls = []
    mod = datasets if kind == "memory" else streaming
    real = mod.batch_loader
    monkeypatch.setattr(mod, "batch_loader",
                        lambda ds, sampler, w, pin: calls.append((w, pin)) or real(ds, sampler, 0,
                                                                                     pin))
    i = torch.arange(N)
    src = TensorSplit(torch.stack([i, 2 * i, 3 * i], 1), i % 5, lambda x: x) \
        if kind == "memory" else stream
    plain = _ids(src.iter_batches(BS, True, 9))
    assert calls == []
    for kw, want in (({"num_workers": 2}, (2, False)), ({"pin_memory": True}, (0, True)),
                     ({"num_workers": 1, "pin_memory": True}, (1, True))):
        del calls[:]
        assert _ids(src.iter_batches(BS, True, 9, **kw)) == plain
        assert calls == [want]


def test_default_block_holds_4_mib_of_rows_and_at_least_one(stream):
    """block_rows = max(1, 4 MiB // row bytes): one row per block once a row exceeds 4 MiB, and
    4 Mi rows of one byte each."""
    from dataclasses import replace
    lay = stream.layout
    for shape, dtype, want in (((3 << 20,), "uint8", 1), ((5, 1 << 20), "int64", 1),
                               ((1,), "uint8", 4 << 20), ((3,), "int64", (4 << 20) // 24)):
        s = StreamingSplit(replace(lay, sample_shape=shape, dtype=dtype), None, lambda x: x)
        try:
            assert s.block_rows == want, (shape, dtype)
        finally:
            s.close()
