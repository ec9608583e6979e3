"""dataloader.{num_workers, drop_last, pin_memory} on both batch sources: the streaming reader
splits its blocks across DataLoader workers (every sample exactly once per epoch, order shuffled
inside blocks, seeded) and in-memory splits honour drop_last; hand-computed batch counts."""
import numpy as np
import pytest
import torch

from federatedscope.core.data.datasets import TensorSplit
from federatedscope.core.data.distributed_loader import StreamingSplit
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
