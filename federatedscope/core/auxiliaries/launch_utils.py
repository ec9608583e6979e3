"""Python side of the managed launcher (``run_distributed_conv_femnist_managed.sh``).

Sub-commands, each exiting non-zero with a message that names the problem and its fix:

* ``preflight --manifest M [--tokens DIR | --no-tokens]``: every shard the manifest lists exists
  under the manifest's directory (symlinks resolved), has its split files with the sizes its
  meta.json records, and its meta matches the manifest fully (client id, counts, train label
  histogram, fingerprint, sample type; the packed file for --link); no process is started before
  this passes. Tokens are the default: a manifest without token hashes gets new tokens in
  ``DIR`` (default ``<manifest dir>/tokens``, files 0600, the manifest keeps only hashes); one
  with hashes must have a matching file per client. Prints ``<client_id> <shard dir> <token
  file or ->`` per client.
* ``health-timeout --clients N``: the default wait for the server, scaled to N and the load.
* ``data-root --manifest M``: the data root the shards were cut from (for ``--legacy``).
* ``wait-health --address H:P --timeout S``: blocks on the standard gRPC health-checking protocol
  (``grpc.health.v1.Health/Watch``), which pushes status changes, until the server is SERVING.
* ``bound-port --log L --from B --pid P --timeout S``: the port a server started with
  ``--port 0`` (``distribute.server_port 0``) bound, from the "listening on" line it writes to its
  log after byte B; exits 2 as soon as the server exits, 1 after the timeout. The server binds port 0 itself: a port
  picked here and released could be taken by anyone before the server binds it.
* ``summary --manifest M --outdir D``: per-client samples and the final accuracy.
"""
import argparse
import glob
import json
import os
import re
import sys
import time
from typing import List, Optional, Tuple


def check_shard(manifest_path: str, cid: int, entry) -> Tuple[Optional[str], List[str]]:
    """(real shard dir or None, problems) for one entry: ``verify_shard`` without re-hashing
    (sizes, meta.json against the manifest in full, the packed file of a --link shard)."""
    from federatedscope.core.data import shard_format as sf
    from federatedscope.core.data.distributed_loader import verify_shard
    try:
        d = sf.shard_dir(manifest_path, entry)
        verify_shard(d, entry=entry, check_sha=False)
    except (sf.ShardError, OSError) as e:
        return None, [f"client {cid}: {e}"]
    return d, []


def _tokens(manifest_path: str, manifest, tokens_dir: str, no_tokens: bool) -> List[str]:
    """Make tokens for a manifest without hashes, or check the files of one with hashes."""
    from federatedscope.core.auxiliaries import client_tokens
    have = any(e.token_hash for e in manifest.clients.values())
    if no_tokens:
        return [f"{manifest_path} gives its clients tokens (token_hash): drop --no-tokens and "
                f"pass --tokens DIR with their client_<k>.token files"] if have else []
    if not have:
        n = client_tokens.add_to_manifest(manifest_path, tokens_dir)
        print(f"preflight: made {n} client tokens in {tokens_dir} (mode 0600); the manifest "
              f"keeps only their sha256 (run with --no-tokens to skip)", file=sys.stderr)
        return []
    problems = client_tokens.check_files(manifest_path, tokens_dir)
    if problems:
        problems.append(f"fix: give every client a new token: python scripts/tools/"
                        f"make_client_tokens.py --manifest {manifest_path} --out {tokens_dir}")
    return problems


def preflight(manifest_path: str, tokens_dir: str = "", no_tokens: bool = False) -> int:
    from federatedscope.core.data import shard_format as sf
    try:
        manifest = sf.read_manifest(manifest_path)
    except (sf.ManifestError, OSError) as e:
        print(f"preflight: {e}", file=sys.stderr)
        return 1
    problems: List[str] = []
    dirs = {}
    for cid, entry in sorted(manifest.clients.items()):
        d, found = check_shard(manifest_path, cid, entry)
        problems += found
        dirs[cid] = d
    if problems:
        for p in problems:
            print(f"preflight: {p}", file=sys.stderr)
        fix = sf.manifest_fix(manifest_path, manifest.total_clients, manifest.dataset)
        print(f"preflight: fix: {fix.replace('--overwrite', '--resume')}", file=sys.stderr)
        return 1
    tokens_dir = tokens_dir or os.path.join(os.path.dirname(os.path.abspath(manifest_path)),
                                            "tokens")
    problems = _tokens(manifest_path, manifest, tokens_dir, no_tokens)
    if problems:
        for p in problems:
            print(f"preflight: {p}", file=sys.stderr)
        return 1
    for cid in sorted(dirs):
        tok = "-" if no_tokens else os.path.join(os.path.abspath(tokens_dir), f"client_{cid}.token")
        print(f"{cid} {dirs[cid]} {tok}")
    return 0


def health_timeout(clients: int) -> int:
    """Seconds to wait for SERVING: a base, plus per client (the server reads the manifest and
    sizes its pools by N), times the load per core (a loaded machine starts Python slowly)."""
    try:
        load = os.getloadavg()[0] / max(os.cpu_count() or 1, 1)
    except OSError:
        load = 1.0
    return int((120 + 0.05 * max(clients, 0)) * max(1.0, load))


def data_root(manifest_path: str) -> int:
    from federatedscope.core.data import shard_format as sf
    try:
        source = sf.read_manifest(manifest_path).source
    except (sf.ManifestError, OSError) as e:
        print(f"data-root: {e}", file=sys.stderr)
        return 1
    root, src = source.get("root"), source.get("path")
    if isinstance(root, str) and root:
        print(root)
    elif isinstance(src, str) and src:
        # recorded before 'root' was: <root>/<dataset>/{raw,data,processed}, two levels below
        print(os.path.dirname(os.path.dirname(os.path.abspath(src))))
    else:
        print(f"data-root: {manifest_path} does not record its input; pass data.root ROOT",
              file=sys.stderr)
        return 1
    return 0


def wait_health(address: str, timeout: float, ca: str = "") -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    # gRPC's reconnect backoff grows to 2 minutes by default: a server that comes up late would
    # be noticed minutes after it is SERVING. Retry at most every second instead.
    opts = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000)]
    if ca:
        with open(ca, "rb") as f:
            channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(f.read()), opts)
    else:
        channel = grpc.insecure_channel(address, opts)
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        # Watch streams status changes; wait_for_ready rides out "server not started yet".
        for resp in stub.Watch(health_pb2.HealthCheckRequest(service="federatedscope.FLService"),
                               timeout=timeout, wait_for_ready=True):
            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                return 0
    except grpc.RpcError as e:
        print(f"wait-health: server at {address} not SERVING within {timeout:.0f}s "
              f"({e.code().name}); if it is only slow, raise --health-timeout", file=sys.stderr)
        return 1
    finally:
        channel.close()
    return 1


_LISTENING = re.compile(rb"Server: listening on \S+:(\d+);")


def _running(pid: int) -> bool:
    """Alive and not a zombie (the launcher reaps its children only when it waits on them)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def bound_port(log_path: str, start: int, pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(log_path, "rb") as f:
                f.seek(start)
                found = _LISTENING.search(f.read())
        except FileNotFoundError:
            found = None
        if found:
            print(int(found.group(1)))
            return 0
        exited = not _running(pid)
        if exited or time.monotonic() > deadline:
            print(f"bound-port: the server (pid {pid}) "
                  f"{'exited' if exited else f'wrote no port within {timeout:.0f}s'} "
                  f"before it logged 'listening on' in {log_path}; see that log", file=sys.stderr)
            return 2 if exited else 1   # the launcher words its message by this
        time.sleep(0.1)   # a log line has no change notification that works on every filesystem


def summary(manifest_path: str, outdir: str) -> int:
    from federatedscope.core.data.shard_format import read_manifest
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
    p.add_argument("--tokens", default="", help="token folder (default <manifest dir>/tokens)")  # pragma: no mutate
    p.add_argument("--no-tokens", action="store_true")
    p = sub.add_parser("health-timeout")
    p.add_argument("--clients", type=int, required=True)
    p = sub.add_parser("data-root")
    p.add_argument("--manifest", required=True)
    p = sub.add_parser("wait-health")
    p.add_argument("--address", required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--ca", default="")
    p = sub.add_parser("bound-port")
    p.add_argument("--log", required=True)
    p.add_argument("--from", dest="start", type=int, default=0)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    p = sub.add_parser("summary")
    p.add_argument("--manifest", default="")
    p.add_argument("--outdir", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "preflight":
        return preflight(args.manifest, args.tokens, args.no_tokens)
    if args.cmd == "health-timeout":
        print(health_timeout(args.clients))
        return 0
    if args.cmd == "data-root":
        return data_root(args.manifest)
    if args.cmd == "wait-health":
        return wait_health(args.address, args.timeout, args.ca)
    if args.cmd == "bound-port":
        return bound_port(args.log, args.start, args.pid, args.timeout)
    return summary(args.manifest, args.outdir)


if __name__ == "__main__":
    sys.exit(main())
