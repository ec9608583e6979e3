"""The shard format: one package for the records, their files, the split files and the checks.

Laid out like MosaicML Streaming's format package (records, reader and writer side by side):
``checks`` (version, split names, errors, field checker, fix text, token hash), ``records`` (typed
records, one ``to_dict``/``from_dict`` each, the one reader of meta.json and manifest.json, the
declaration-vs-manifest comparison), ``files`` (writing them; where a manifest's shards are),
``split_file`` (``train.pt`` ... and packed files). Spec: README.md in this folder. The client's
reader of a whole shard, with ``verify_shard`` (the one shard check), is
``core/data/distributed_loader.py``; it is re-exported here.
"""
from federatedscope.core.data.shard_format.checks import (FORMAT_VERSION, SAMPLE_DTYPES,
                                                          SPLIT_FILES, SPLITS, Checker,
                                                          ManifestError, ShardError, manifest_fix,
                                                          now_iso, recreate_command,
                                                          recreate_message, sample_type_of,
                                                          shard_fix, token_digest)
from federatedscope.core.data.shard_format.files import (manifest_base, read_writer_ids, shard_dir,
                                                         write_manifest, write_meta)
from federatedscope.core.data.shard_format.records import (FileEntry, Manifest, ManifestEntry,
                                                           ShardDeclaration, ShardMeta,
                                                           check_declaration, compute_fingerprint,
                                                           load_manifest, read_manifest, read_meta)

_FROM_LOADER = ("DistributedShardLoader", "file_problem", "shard_files", "verify_shard")
__all__ = ["FORMAT_VERSION", "SAMPLE_DTYPES", "SPLIT_FILES", "SPLITS", "Checker", "ManifestError",
           "ShardError", "now_iso", "recreate_command", "recreate_message", "sample_type_of",
           "shard_fix", "token_digest", "load_manifest", "manifest_base", "manifest_fix",
           "read_manifest", "read_meta", "read_writer_ids", "shard_dir", "write_manifest",
           "write_meta", "FileEntry", "Manifest", "ManifestEntry", "ShardDeclaration", "ShardMeta",
           "compute_fingerprint", "check_declaration", *_FROM_LOADER]


def __getattr__(name: str):
    # the loader imports this package (and torch), so its names are re-exported lazily: no
    # import cycle, and the launcher's small helpers that read a manifest stay free of torch
    if name in _FROM_LOADER:
        from federatedscope.core.data import distributed_loader
        return getattr(distributed_loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
