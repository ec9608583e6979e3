"""Python side of the managed launcher (``run_distributed_conv_femnist_managed.sh``).

Sub-commands, each exiting non-zero with a message that names the problem and its fix:

* ``preflight --manifest M``: every shard the manifest lists exists, has its split files with the
  sizes its meta.json records, and its meta matches the manifest (no process is started before
  this passes). Prints one ``<client_id> <absolute shard dir>`` line per client.
* ``wait-health --address H:P --timeout S``: blocks on the standard gRPC health-checking protocol
  (``grpc.health.v1.Health/Watch``), which pushes status changes, until the server is SERVING.
* ``summary --manifest M --outdir D``: per-client samples and the final accuracy.
"""
import argparse
import glob
import json
import os
import sys
from typing import List


def preflight(manifest_path: str) -> int:
    from federatedscope.core.auxiliaries.manifest_utils import (ManifestError, read_manifest,
                                                                read_meta, shard_dir)
    try:
        manifest = read_manifest(manifest_path)
    except (ManifestError, OSError) as e:
        print(f"preflight: {e}", file=sys.stderr)
        return 1
    problems: List[str] = []
    lines: List[str] = []
    for cid, entry in sorted(manifest.clients.items()):
        d = shard_dir(manifest_path, entry)
        meta_path = os.path.join(d, "meta.json")
        if not os.path.isdir(d):
            problems.append(f"client {cid}: shard directory {d} does not exist")
            continue
        try:
            meta = read_meta(meta_path)
        except (ManifestError, OSError) as e:
            problems.append(f"client {cid}: {e}")
            continue
        for name, fe in meta.files.items():
            p = os.path.join(d, name)
            if not os.path.isfile(p):
                problems.append(f"client {cid}: missing {p}")
            elif os.path.getsize(p) != fe.bytes:
                problems.append(f"client {cid}: {p} has {os.path.getsize(p)} bytes, "
                                f"meta.json says {fe.bytes} (truncated or replaced)")
        if meta.fingerprint != entry.fingerprint or meta.client_id != cid:
            problems.append(f"client {cid}: {meta_path} does not match the manifest "
                            f"(fingerprint/client_id); the shard was re-made after the manifest")
        lines.append(f"{cid} {os.path.abspath(d)}")
    if problems:
        for p in problems:
            print(f"preflight: {p}", file=sys.stderr)
        out = os.path.dirname(os.path.abspath(manifest_path))
        print(f"preflight: fix: python scripts/tools/prepare_femnist_shards.py --root data "
              f"--clients {len(manifest.clients)} --out {out} --resume", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def wait_health(address: str, timeout: float, ca: str = "") -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    if ca:
        with open(ca, "rb") as f:
            channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(f.read()))
    else:
        channel = grpc.insecure_channel(address)
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        # Watch streams status changes; wait_for_ready rides out "server not started yet".
        for resp in stub.Watch(health_pb2.HealthCheckRequest(service="federatedscope.FLService"),
                               timeout=timeout, wait_for_ready=True):
            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                return 0
    except grpc.RpcError as e:
        print(f"wait-health: server at {address} not SERVING within {timeout:.0f}s "
              f"({e.code().name}); see its log", file=sys.stderr)
        return 1
    finally:
        channel.close()
    return 1


def summary(manifest_path: str, outdir: str) -> int:
    from federatedscope.core.auxiliaries.manifest_utils import read_manifest
    if manifest_path and os.path.exists(manifest_path):
        manifest = read_manifest(manifest_path)
        for cid, e in sorted(manifest.clients.items()):
            print(f"  client {cid}: {e.num_samples['train']} train / {e.num_samples['val']} val / "
                  f"{e.num_samples['test']} test samples")
    logs = sorted(glob.glob(os.path.join(outdir, "**", "eval_results.log"), recursive=True))
    for path in logs:
        with open(path) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        final = [line for line in lines if line.get("Final")]
        if final:
            res = final[-1].get("Results_weighted_avg", {})
            print(f"  final (round {final[-1].get('Round')}): weighted-avg test_acc="
                  f"{res.get('test_acc')}, test_avg_loss={res.get('test_avg_loss')}  [{path}]")
            return 0
    print("  no final evaluation found", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="launch_utils")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("preflight")
    p.add_argument("--manifest", required=True)
    p = sub.add_parser("wait-health")
    p.add_argument("--address", required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--ca", default="")
    p = sub.add_parser("summary")
    p.add_argument("--manifest", default="")
    p.add_argument("--outdir", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "preflight":
        return preflight(args.manifest)
    if args.cmd == "wait-health":
        return wait_health(args.address, args.timeout, args.ca)
    return summary(args.manifest, args.outdir)


if __name__ == "__main__":
    sys.exit(main())
