#!/usr/bin/env python
"""Give every client of a manifest a secret token; the manifest keeps only its sha256.

    python scripts/tools/make_client_tokens.py --manifest data/femnist/shards/manifest.json \
        --out data/femnist/tokens

Writes ``<out>/client_<k>.token`` (mode 0600; hand each one to its client, which reads it with
``distribute.token_file``) and rewrites the manifest atomically with ``token_hash`` per client.
The server then refuses a client whose token does not hash to its entry, including a client that
presents a valid token under another client's id.
"""
import argparse
import dataclasses
import hashlib
import os
import secrets
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from federatedscope.core.auxiliaries.manifest_utils import (  # noqa: E402
    ManifestError, read_manifest, write_manifest)


def make_tokens(manifest_path: str, out_dir: str) -> int:
    manifest = read_manifest(manifest_path)
    os.makedirs(out_dir, mode=0o700, exist_ok=True)
    clients = {}
    for cid, entry in sorted(manifest.clients.items()):
        token = secrets.token_urlsafe(32)
        path = os.path.join(out_dir, f"client_{cid}.token")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        clients[cid] = dataclasses.replace(
            entry, token_hash=hashlib.sha256(token.encode("utf-8")).hexdigest())
    write_manifest(manifest_path, dataclasses.replace(manifest, clients=clients))
    return len(clients)


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
