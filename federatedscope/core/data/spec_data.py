"""FS's data path (standalone without shards, data_idx clients) for any registered dataset.

A domain package registers a loader with ``register_data`` that calls ``load_spec_partitions``
with its ``DatasetSpec``; nothing here names a dataset. The partition rules are the shard tool's
own (``sharding_plan``), so both paths give a client the same samples for the same seed:

* writer datasets (LEAF CelebA, Shakespeare): one partition per writer (sorted ids), the subset
  ``subsample_writers`` keeps, each writer cut by ``writer_split``;
* ``data.splitter`` set (required for datasets without writers, e.g. CIFAR-10): the samples of
  each input split are pooled in writer order and dealt to ``federate.client_num`` clients by
  ``sample_partition`` (the splitter's ``split_indices``, seeded); client ``k`` is then the
  writer ``client_<k>`` and is cut by ``writer_split`` like any writer.
"""
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from federatedscope.core.data.base_data import SPLITS, ClientData, StandaloneDataDict
from federatedscope.core.data.dataset_spec import DatasetSpec, WriterSamples
from federatedscope.core.data.sharding_plan import subsample_writers, writer_order, writer_split

Split = Tuple[torch.Tensor, torch.Tensor]
Writers = Dict[str, Dict[Optional[str], WriterSamples]]


def gather_writers(writers: Iterable[WriterSamples], where: str) -> Writers:
    """A reader's writers as {writer id: {input split: samples}}; a repeat is an error, and so
    is no writer at all (``where`` names the input in that error)."""
    by_writer: Writers = {}
    for ws in writers:
        parts = by_writer.setdefault(ws.writer_id, {})
        if ws.split in parts:
            raise ValueError(f"writer {ws.writer_id} appears twice in the "
                             f"{ws.split or 'unsplit'} data: {parts[ws.split].source} and "
                             f"{ws.source}")
        parts[ws.split] = ws
    if not by_writer:
        raise ValueError(where)
    return by_writer


def pool_members(keys: Dict[str, Sequence[Optional[str]]]) -> Dict[Optional[str], List[str]]:
    """Input split -> the writers holding it, in writer order: the order samples are pooled."""
    out: Dict[Optional[str], List[str]] = {}
    for w in writer_order(list(keys)):
        for split in sorted(keys[w], key=lambda s: SPLITS.index(s) if s in SPLITS else -1):
            out.setdefault(split, []).append(w)
    return out


def sample_partition(labels: Dict[Optional[str], np.ndarray], splitter, seed: int,
                     consistent: bool) -> Dict[int, Dict[Optional[str], np.ndarray]]:
    """THE sample-level split (FS's ``data.splitter``), shared by the shard tool and FS's path:
    client id (1..N) -> {input split: indices into that split's pool}. The train pool (or the
    unsplit one) is split first; with ``consistent`` (FS's consistent_label_distribution) the
    other pools follow each client's train label shares (the splitter's ``prior``)."""
    order = sorted(labels, key=lambda s: ("train", None, "val", "test").index(s))
    first = labels[order[0]]
    parts = splitter.split_indices(first, seed)
    out = {k + 1: {order[0]: np.asarray(idx, np.int64)} for k, idx in enumerate(parts)}
    prior = [first[idx] for idx in parts] if consistent else None
    for key in order[1:]:
        for k, idx in enumerate(splitter.split_indices(labels[key], seed, prior=prior)):
            out[k + 1][key] = np.asarray(idx, np.int64)
    return out


def split_writer(parts: Dict[Optional[str], WriterSamples], splits: Sequence[float], seed: int,
                 writer_id: str) -> Dict[str, Split]:
    """The per-writer rule (``sharding_plan.writer_split``) applied to the samples."""
    any_part = next(iter(parts.values()))
    out = {}
    for s, (key, idx) in writer_split({k: len(p.y) for k, p in parts.items()}, splits, seed,
                                      writer_id).items():
        p = parts.get(key, any_part)
        idx = idx if key in parts else idx[:0]
        out[s] = (torch.from_numpy(np.ascontiguousarray(p.x[idx])),
                  torch.from_numpy(np.ascontiguousarray(p.y[idx])))
    return out


def _dealt(by_writer: Writers, splitter, seed: int, consistent: bool) -> Writers:
    """The pooled samples dealt to clients: writer ``client_<k>`` per client."""
    members = pool_members({w: list(p) for w, p in by_writer.items()})
    pools = {s: (np.concatenate([by_writer[w][s].x for w in ws]),
                 np.concatenate([by_writer[w][s].y for w in ws]).astype(np.int64))
             for s, ws in members.items()}
    dealt = sample_partition({s: y for s, (_, y) in pools.items()}, splitter, seed, consistent)
    return {f"client_{k}": {s: WriterSamples(f"client_{k}", pools[s][0][idx], pools[s][1][idx],
                                             "pooled " + str(s), s) for s, idx in got.items()}
            for k, got in dealt.items()}


def kept_writers(by_writer: dict, subsample: float, seed: int) -> dict:
    """The writers ``data.subsample`` keeps (``--subsample`` in the shard tool), in their input
    order: a splitter pools them in that order, so the tool and FS's path deal the same."""
    keep = set(subsample_writers(writer_order(list(by_writer)), subsample, seed, "sequential"))
    return {w: got for w, got in by_writer.items() if w in keep}


def load_spec_partitions(config, spec: DatasetSpec, client_cfgs=None):
    """FS's loader for ``spec``: (``StandaloneDataDict`` of every partition, config)."""
    from federatedscope.core.auxiliaries.splitter_builder import get_splitter
    from federatedscope.core.configs.config import ConfigError
    from federatedscope.core.data.datasets import TensorSplit
    from federatedscope.core.data.transforms import split_transforms
    data, seed = config.data, int(config.data.seed)
    if not data.splitter and not spec.has_writers:
        raise ConfigError(f"data.type={data.type!r} has no writers to make clients of: set "
                          f"data.splitter ('lda' with data.splitter_args [{{'alpha': 0.5}}], or "
                          f"'iid') and federate.client_num")
    by_writer = gather_writers(spec.iter_writers(data.root),
                               f"{spec.name}: no samples under data.root={data.root!r}")
    # data.subsample picks the writers (FS's LEAF s_frac) before any splitter pools them, so
    # both keys act; a dataset without writers has one pseudo-writer per input split
    order = writer_order(list(by_writer))     # of all writers, as the shard tool orders them
    if spec.has_writers:
        by_writer = kept_writers(by_writer, float(data.subsample), seed)
    if data.splitter:
        by_writer = _dealt(by_writer, get_splitter(config), seed,
                           bool(data.consistent_label_distribution))
        order = writer_order(list(by_writer))
    chosen = [w for w in order if w in by_writer]
    transform = split_transforms(data, spec)   # data.transform / val_transform / test_transform

    def own_cfg(cid: int):
        return client_cfgs.get(f"client_{cid}") if client_cfgs is not None else None
    clients = {}
    for i, w in enumerate(chosen):
        task = split_writer(by_writer[w], list(data.splits), seed, w)
        clients[i + 1] = ClientData(own_cfg(i + 1), *(TensorSplit(*task[s], transform[s])
                                                      for s in SPLITS))
    return StandaloneDataDict(clients), config


def registered_loader(names: Sequence[str], spec_of: Any):
    """FS's registry convention for ``register_data``: the loader of ``spec_of(type)`` for a
    ``data.type`` in ``names``, None for any other type."""
    wanted = {n.lower() for n in names}

    def call(config, client_cfgs=None):
        if str(config.data.type).lower() not in wanted:
            return None
        return load_spec_partitions(config, spec_of(config.data.type), client_cfgs)
    return call
