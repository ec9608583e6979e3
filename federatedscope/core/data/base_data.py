"""FS's data containers: what ``get_data`` hands to a runner.

* ``ClientData`` — one client's splits, a dict ``{'train'|'val'|'test': BatchSource}`` with FS's
  ``train_data``/``val_data``/``test_data`` attributes. FS keeps torch ``DataLoader``s under the
  keys; here the values are ``BatchSource``s (``core/data/datasets.py``) because the trainer draws
  its own batches. ``loader`` is the ``DistributedShardLoader`` the splits came from (shard mode:
  the client re-declares and refreshes through it), else None.
* ``StandaloneDataDict`` — client id (1..N) -> ``ClientData``, as FS names it. In a standalone
  simulation of shards it also carries the manifest (``manifest``) the server admits against.
  FS's id 0 (the server's own data) is not stored: ``make_global_eval`` merges the clients'
  evaluation splits in the runner instead.
* ``ServerData`` — what a distributed server gets. FS gives it the whole dataset; here a
  shard-mode server gets only the manifest's entries (it opens no data file) and a data_idx-mode
  server nothing (its dataset was read, as FS does, and dropped).
"""
from dataclasses import dataclass
from typing import Dict, Optional

SPLITS = ("train", "val", "test")


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
    """Client id -> ``ClientData`` for a standalone run (ids 1..N)."""

    def __init__(self, clients: Dict[int, ClientData], manifest: Optional[dict] = None):
        super().__init__(clients)
        self.manifest = manifest   # client id -> ManifestEntry when simulating shards, else None


@dataclass
class ServerData:
    """A distributed server's data: the manifest entries in shard mode (read once), else None."""
    manifest: Optional[dict] = None
    sample_type: Optional[str] = None     # what every shard's samples must be (the manifest's)
    manifest_path: str = ""               # re-read by admission if it changes on disk
