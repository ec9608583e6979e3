"""The shard format: one package for the records, their files, the split files and the checks.

Laid out like MosaicML Streaming's format package (writer, reader and file records side by
side): ``checks`` (version, split names, errors, field checker, fix text, token hash),
``records`` (typed records, one ``to_dict``/``from_dict`` each), ``files`` (meta.json and
manifest.json), ``split_file`` (``train.pt`` ... and packed files), ``verify`` (the one shard
check). Spec: README.md in this folder. ``DistributedShardLoader`` (the client's reader) lives in
``core/data/distributed_loader.py`` and is re-exported here.
"""
from federatedscope.core.data.shard_format.checks import (FORMAT_VERSION, SAMPLE_DTYPES,
                                                          SPLIT_FILES, SPLITS, Checker,
                                                          ManifestError, ShardError, now_iso,
                                                          recreate_command, recreate_message,
                                                          sample_type_of,
                                                          shard_fix, token_digest)
from federatedscope.core.data.shard_format.files import (load_manifest, manifest_base, manifest_fix,
                                                         read_manifest, read_meta, read_writer_ids,
                                                         shard_dir, write_manifest, write_meta)
from federatedscope.core.data.shard_format.records import (FileEntry, Manifest, ManifestEntry,
                                                           ShardDeclaration, ShardMeta,
                                                           compute_fingerprint)
from federatedscope.core.data.shard_format.verify import (check_declaration, file_problem,
                                                          shard_files, verify_shard)

__all__ = ["FORMAT_VERSION", "SAMPLE_DTYPES", "SPLIT_FILES", "SPLITS", "Checker", "ManifestError",
           "ShardError", "now_iso", "recreate_command", "recreate_message", "sample_type_of", "shard_fix",
           "token_digest", "load_manifest", "manifest_base", "manifest_fix", "read_manifest",
           "read_meta", "read_writer_ids", "shard_dir", "write_manifest", "write_meta", "FileEntry",
           "Manifest", "ManifestEntry", "ShardDeclaration", "ShardMeta", "compute_fingerprint",
           "check_declaration", "file_problem", "shard_files", "verify_shard",
           "DistributedShardLoader"]


def __getattr__(name: str):
    # the loader imports this package, so it is re-exported lazily (no import cycle)
    if name == "DistributedShardLoader":
        from federatedscope.core.data.distributed_loader import DistributedShardLoader
        return DistributedShardLoader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
