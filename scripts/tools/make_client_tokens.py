#!/usr/bin/env python
"""Give every client of a manifest a secret token; the manifest keeps only its sha256.

    python scripts/tools/make_client_tokens.py --manifest data/femnist/shards/manifest.json \
        --out data/femnist/shards/tokens

Writes ``<out>/client_<k>.token`` (mode 0600; hand each one to its client, which reads it with
``distribute.token_file``) and rewrites the manifest atomically with ``token_hash`` per client
(writer ids and every other field kept). The server then refuses a client whose token does not
hash to its entry, including a client that presents a valid token under another client's id.
``prepare_femnist_shards.py --tokens DIR`` does the same while cutting the shards.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from federatedscope.core.auxiliaries import client_tokens  # noqa: E402
from federatedscope.core.data.shard_format import ManifestError  # noqa: E402


def make_tokens(manifest_path: str, out_dir: str) -> int:
    return client_tokens.add_to_manifest(manifest_path, out_dir)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--out", required=True, help="folder for the client_<k>.token files")
    args = ap.parse_args(argv)
    try:
        n = make_tokens(args.manifest, args.out)
    except (ManifestError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {n} client tokens to {args.out}; token hashes added to {args.manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
