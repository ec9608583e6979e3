"""FS's data containers and the one typed value ``get_data`` hands to a runner.

* ``ClientData`` — one client's splits, a dict ``{'train'|'val'|'test': BatchSource}`` with FS's
  ``train_data``/``val_data``/``test_data`` attributes. FS keeps torch ``DataLoader``s under the
  keys; here the values are ``BatchSource``s (``core/data/datasets.py``) because the trainer draws
  its own batches. ``loader`` is the ``DistributedShardLoader`` the splits came from (a standalone
  simulation of shards: the client re-declares and refreshes through it), else None.

What ``get_data`` returns, one record per role (the role is decided once, in ``get_data``):

| record | role | ``.splits()`` |
| --- | --- | --- |
| ``StandaloneDataDict`` | standalone: client id (1..N) -> ``ClientData`` | per client |
| ``ServerManifest(manifest, path, eval_data)`` | distributed server (``manifest`` None: data_idx; ``eval_data``: make_global_eval) | — |
| ``ClientShard(loader)`` | distributed client, shard mode: only its own shard | its shard |
| ``DataIdxClient(data, data_idx)`` | distributed client, FS's data_idx mode | partition |

``.splits() -> (Dict[str, BatchSource], loader or None)`` is what a client's trainer and worker
get; ``.claimed_id(cfg)`` is the id a distributed client joins with (contract: shard mode claims
``distribute.client_id``, else its ``meta.json``'s; data_idx mode ``distribute.client_id``, else
-1, and the server assigns one in join order, as FS does).
"""
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

SPLITS = ("train", "val", "test")

Splits = Tuple[Dict[str, Any], Optional[Any]]


class ClientData(dict):
    """``{'train': src, 'val': src, 'test': src}``; a missing split is absent, never None."""

    def __init__(self, client_cfg=None, train=None, val=None, test=None, loader=None):
        super().__init__()
        self.client_cfg = client_cfg
        self.loader = loader
        for split, src in zip(SPLITS, (train, val, test)):
            if src is not None:
                self[split] = src

    @classmethod
    def from_loader(cls, loader, client_cfg=None) -> "ClientData":
        """A client's splits as its ``DistributedShardLoader`` currently holds them."""
        ds = loader.datasets
        return cls(client_cfg, ds.get("train"), ds.get("val"), ds.get("test"), loader=loader)

    def splits(self) -> Splits:
        return dict(self), self.loader

    @property
    def train_data(self):
        return self.get("train")

    @property
    def val_data(self):
        return self.get("val")

    @property
    def test_data(self):
        return self.get("test")


class StandaloneDataDict(dict):
    """Client id -> ``ClientData`` for a standalone run (ids 1..N). A simulation of shards also
    carries the ``Manifest`` (and its path) the in-process server admits against; FS's path has
    none."""

    def __init__(self, clients: Dict[int, ClientData], manifest=None, manifest_path: str = ""):
        super().__init__(clients)
        self.manifest = manifest              # shard_format.Manifest or None
        self.manifest_path = manifest_path


@dataclass
class ServerManifest:
    """A distributed server's data: the typed manifest in shard mode (read once, no data file
    opened), None in data_idx mode (FS's server loads the dataset; this one keeps it only for
    ``federate.make_global_eval``, as ``eval_data``)."""
    manifest: Optional[Any] = None        # shard_format.Manifest
    path: str = ""                        # re-read by admission if it changes on disk
    eval_data: Optional[StandaloneDataDict] = None   # every partition, for the global evaluation


def _explicit_id(cfg) -> int:
    return int(cfg.distribute.client_id)


@dataclass
class ClientShard:
    """A shard-mode client: the ``DistributedShardLoader`` of its own shard, nothing else."""
    loader: Any

    def splits(self) -> Splits:
        return dict(self.loader.datasets), self.loader

    def claimed_id(self, cfg) -> int:
        cid = _explicit_id(cfg)
        return cid if cid > 0 else int(self.loader.meta.client_id)


@dataclass
class DataIdxClient:
    """FS's data_idx client: partition ``data_idx`` of the dataset it loaded whole."""
    data: ClientData
    data_idx: int

    def splits(self) -> Splits:
        return dict(self.data), None

    def claimed_id(self, cfg) -> int:
        cid = _explicit_id(cfg)
        return cid if cid > 0 else -1
