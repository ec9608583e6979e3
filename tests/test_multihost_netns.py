"""Multi-host run: the server and 3 clients each on their own "host".

Each host is a network namespace made by this test (``ip netns``), wired to a bridge in a fifth
"switch" namespace by a veth pair; its only addresses come from the loopback range (server
127.77.0.1, clients 127.77.0.11-13; ``route_localnet`` is set inside these namespaces only, never
in the host's own). Every process also runs under ``unshare --mount`` with pytest's whole temp
tree (and the repo's ``data/``) hidden under a tmpfs: a client sees only its own shard directory
(read-only) and its own output directory, the server only the manifest file and its output
directory. The ``FS_AUDIT_*`` open() audit records what each process actually opened.

The test proves: all 4 processes exit 0; the final evaluation is for round 2 with 3 clients; each
client opened only its own shard, the server only the manifest; the server's connections came
from the three client addresses; ``127.0.0.1:<port>`` on a client host is not the server.

Skipped with a reason when not root, without ``ip``/``unshare``/``sysctl``, or where namespaces,
veth/bridge links or mounts are not permitted (e.g. an unprivileged CI sandbox).
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from harness.procs import MAIN, ROOT, free_port, stop_all, wait_for

CFG = os.path.join(ROOT, "scripts", "distributed_scripts", "distributed_configs")
ROUNDS = 2
NET = "127.77.0"                      # loopback range only: nothing leaves the namespaces we make
SERVER_IP = f"{NET}.1"
CLIENTS = (1, 2, 3)
CLIENT_IPS = {k: f"{NET}.{10 + k}" for k in CLIENTS}
PREFIX = "fsmh"                       # fsmh-<pytest pid>-<role>: unique per run, easy to audit
HOST_LOCALNET = "/proc/sys/net/ipv4/conf/all/route_localnet"


def _run(cmd, check=True, timeout=30):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _netns_names():
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


class Hosts:
    """The namespaces of one run: ``switch`` (bridge only), ``server``, ``client_1..3``."""

    def __init__(self):
        pid = os.getpid()
        self.roles = ["switch", "server"] + [f"client_{k}" for k in CLIENTS]
        self.ns = {"switch": f"{PREFIX}-{pid}-sw", "server": f"{PREFIX}-{pid}-srv"}
        self.ns.update({f"client_{k}": f"{PREFIX}-{pid}-c{k}" for k in CLIENTS})
        self.addr = {"server": SERVER_IP}
        self.addr.update({f"client_{k}": CLIENT_IPS[k] for k in CLIENTS})
        self.created = []

    # ------------------------------------------------------------- set up
    @staticmethod
    def reap_stale():
        """Delete namespaces left by an earlier run of this test that was killed (its pid is gone)."""
        for name in _netns_names():
            m = re.fullmatch(rf"{PREFIX}-(\d+)-(sw|srv|c\d)", name)
            if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
                _run(["ip", "netns", "del", name], check=False)

    def add_namespaces(self):
        for role in self.roles:
            _run(["ip", "netns", "add", self.ns[role]])
            self.created.append(self.ns[role])

    def sysctl(self, role, *settings, check=True):
        return _run(["ip", "netns", "exec", self.ns[role], "sysctl", "-qw", *settings], check=check)

    def wire(self):
        sw = self.ns["switch"]
        for role in self.roles:
            # IPv6 off inside our namespaces, so not even link-local chatter goes on the bridge.
            self.sysctl(role, "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1", check=False)
        _run(["ip", "-n", sw, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", sw, "link", "set", "br0", "up"])
        for role, addr in self.addr.items():
            ns = self.ns[role]
            # 127/8 on a non-loopback device: allowed only with route_localnet (this namespace only).
            self.sysctl(role, "net.ipv4.conf.all.route_localnet=1",
                        "net.ipv4.conf.default.route_localnet=1")
            port = f"p-{role}"[:15]
            # Both ends are created directly inside our namespaces: nothing appears on the host.
            _run(["ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                  "netns", ns])
            _run(["ip", "-n", sw, "link", "set", port, "master", "br0"])
            _run(["ip", "-n", sw, "link", "set", port, "up"])
            self.sysctl(role, "net.ipv4.conf.eth0.route_localnet=1")
            _run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])

    # --------------------------------------------------------------- use
    def net_argv(self, role, argv):
        """``argv`` in the role's network namespace (host filesystem view)."""
        return ["ip", "netns", "exec", self.ns[role]] + list(argv)

    def host_argv(self, role, hide, keep, argv):
        """``argv`` on the role's host: its network namespace plus a private mount namespace in
        which every directory in ``hide`` is covered by an empty tmpfs and only the paths in
        ``keep`` (``(path, writable)``) are bound back at their own paths."""
        assert len(keep) <= 6
        q = shlex.quote
        lines = ["set -e"]
        # Hold the kept paths open first: once the tmpfs covers them they are reachable only via
        # these fds (``mount -c`` stops mount(8) from canonicalising /proc/self/fd/N to the path).
        lines.append("exec " + " ".join(f"{fd}<{q(p)}" for fd, (p, _) in enumerate(keep, 3)))
        for h in hide:
            lines.append(f"mount -t tmpfs -o mode=0755,size=4m fs-hidden {q(h)}")
        for fd, (p, writable) in enumerate(keep, 3):
            if os.path.isdir(p):
                lines.append(f"mkdir -p {q(p)}")
            else:
                lines.append(f"mkdir -p {q(os.path.dirname(p))}; : > {q(p)}")
            lines.append(f"mount -c --bind /proc/self/fd/{fd} {q(p)}")
            if not writable:
                lines.append(f"mount -c -o remount,bind,ro {q(p)}")
        lines.append("exec " + " ".join(f"{fd}<&-" for fd in range(3, 3 + len(keep))))
        lines.append(f"cd {q(ROOT)}")
        lines.append('exec "$@"')
        return self.net_argv(role, ["unshare", "--mount", "--propagation", "private",
                                    "sh", "-c", "\n".join(lines), "fs-host"] + list(argv))

    # ----------------------------------------------------------- tear down
    def teardown(self):
        """Delete our namespaces; the veths and the bridge inside them go with them."""
        for name in reversed(self.created):
            _run(["ip", "netns", "del", name], check=False)
        left = [n for n in _netns_names() if n in self.created]
        self.created = []
        return left


@pytest.fixture
def netns_hosts(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("network namespaces need Linux")
    if os.geteuid() != 0:
        pytest.skip("multi-host netns test needs root (ip netns, veth, mount)")
    for tool in ("ip", "unshare", "sysctl", "ss"):
        if shutil.which(tool) is None:
            pytest.skip(f"multi-host netns test needs `{tool}` on PATH")
    host_localnet = open(HOST_LOCALNET).read() if os.path.exists(HOST_LOCALNET) else None
    Hosts.reap_stale()
    hosts = Hosts()
    try:
        try:
            hosts.add_namespaces()
        except subprocess.CalledProcessError as e:
            pytest.skip(f"`ip netns add` not permitted here: {e.stderr.strip()}")
        try:
            hosts.wire()
        except subprocess.CalledProcessError as e:
            pytest.skip(f"cannot build the veth/bridge network ({' '.join(e.cmd)}): "
                        f"{e.stderr.strip()}")
        probe_dir = tmp_path / "mount_probe"
        probe_dir.mkdir()
        probe = _run(hosts.net_argv("server", ["unshare", "--mount", "--propagation", "private",
                                               "mount", "-t", "tmpfs", "fs-probe", str(probe_dir)]),
                     check=False)
        if probe.returncode != 0:
            pytest.skip(f"`unshare --mount` + tmpfs not permitted here: {probe.stderr.strip()}")
        yield hosts
    finally:
        left = hosts.teardown()
        assert not left, f"namespaces not deleted: {left}"
        if host_localnet is not None:   # we never touch the host's own namespace
            assert open(HOST_LOCALNET).read() == host_localnet


# ------------------------------------------------------------------ probes
_CONNECT = """
import socket, sys
for a in sys.argv[1:]:
    h, p = a.rsplit(":", 1)
    try:
        socket.create_connection((h, int(p)), timeout=3).close()
        print(a, "open")
    except OSError as e:
        print(a, type(e).__name__)
"""

_VIEW = """
import json, os, sys
print(json.dumps({p: sorted(os.listdir(p)) if os.path.isdir(p) else os.path.exists(p)
                  for p in sys.argv[1:]}))
"""


def _connect(hosts, role, *addrs):
    out = _run(hosts.net_argv(role, [sys.executable, "-c", _CONNECT, *addrs])).stdout
    return dict(line.split() for line in out.splitlines())


def _established_peers(hosts, port):
    out = _run(hosts.net_argv("server", ["ss", "-Htn", "state", "established",
                                         f"( sport = :{port} )"]), check=False).stdout
    peers = set()
    for line in out.splitlines():
        for ip, p in re.findall(r"(\d+\.\d+\.\d+\.\d+):(\d+)", line):
            if int(p) != port:
                peers.add(ip)
    return peers


def _listening(hosts, port):
    out = _run(hosts.net_argv("server", ["ss", "-Htln", f"( sport = :{port} )"]), check=False).stdout
    return f"{SERVER_IP}:{port}" in out


def _tail(path, n=3000):
    try:
        return open(path, errors="replace").read()[-n:]
    except FileNotFoundError:
        return f"<no {path}>"


# -------------------------------------------------------------------- test
def test_server_and_clients_on_separate_hosts(netns_hosts, request, tmp_path, tmp_path_factory):
    hosts = netns_hosts
    t0 = time.monotonic()
    # Requested only now, so a skip (no netns here) costs nothing: no sample is generated.
    femnist_root = request.getfixturevalue("femnist_root")
    femnist_shards = request.getfixturevalue("femnist_shards")
    basetemp = os.path.realpath(str(tmp_path_factory.getbasetemp()))
    shard_root = os.path.realpath(os.path.dirname(femnist_shards))
    manifest = os.path.join(shard_root, "manifest.json")
    data_root = os.path.realpath(femnist_root)
    for p in (shard_root, data_root, os.path.realpath(str(tmp_path))):
        assert p.startswith(basetemp + os.sep), (p, basetemp)
    # What a host must not see: all of pytest's temp tree (raw FEMNIST, every shard, the manifest,
    # other hosts' outputs) and the repo's default data directory.
    hide = [basetemp] + [d for d in [os.path.join(ROOT, "data")] if os.path.isdir(d)]
    audit_root = os.pathsep.join([data_root, shard_root] + hide[1:])

    logs = tmp_path / "logs"
    logs.mkdir()
    home = {}
    for role in ["server"] + [f"client_{k}" for k in CLIENTS]:
        home[role] = str(tmp_path / f"host_{role}")
        os.makedirs(os.path.join(home[role], "exp"))
    keep = {"server": [(manifest, False), (home["server"], True)]}
    keep.update({f"client_{k}": [(os.path.join(shard_root, f"client_{k}"), False),
                                 (home[f"client_{k}"], True)] for k in CLIENTS})

    # Each host's view of the file system, seen from inside its own mount namespace.
    for role in keep:
        out = _run(hosts.host_argv(role, hide, keep[role],
                                   [sys.executable, "-c", _VIEW, shard_root, data_root,
                                    os.path.dirname(home[role])])).stdout
        view = json.loads(out)
        assert view[data_root] is False, (role, view)            # no raw FEMNIST on any host
        expect = ["manifest.json"] if role == "server" else [role]
        assert view[shard_root] == expect, (role, view)
        assert view[os.path.dirname(home[role])] == [os.path.basename(home[role])], (role, view)

    port = free_port()
    common = ["data.root", femnist_root, "data.subsample", "1.0",
              "distribute.server_host", SERVER_IP, "distribute.server_port", str(port),
              "federate.total_round_num", str(ROUNDS)]

    def start(role, args):
        env = dict(os.environ)
        env.update({"FS_AUDIT_OPEN_LOG": os.path.join(home[role], "opened.txt"),
                    "FS_AUDIT_ROOT": audit_root})
        log = open(logs / f"{role}.log", "wb")
        argv = hosts.host_argv(role, hide, keep[role], [sys.executable, MAIN] + args)
        # ip netns exec, unshare and sh all exec: the Popen pid is the Python process itself.
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)

    procs = []
    try:
        server = start("server", ["--cfg", os.path.join(CFG, "distributed_femnist_server.yaml")]
                       + common + ["distributed_data.manifest", manifest,
                                   "outdir", os.path.join(home["server"], "exp")])
        procs.append(server)

        def server_listening():
            assert server.poll() is None, f"server exited {server.returncode}:\n" \
                                          f"{_tail(logs / 'server.log')}"
            return _listening(hosts, port)
        wait_for(server_listening, 120, f"server listening on {SERVER_IP}:{port}", poll=0.2)

        # No shared loopback: on every client host the server is at 127.77.0.1 only; that host's
        # own 127.0.0.1 has nothing on the port. The server bound only its host address.
        for k in CLIENTS:
            seen = _connect(hosts, f"client_{k}", f"{SERVER_IP}:{port}", f"127.0.0.1:{port}")
            assert seen == {f"{SERVER_IP}:{port}": "open",
                            f"127.0.0.1:{port}": "ConnectionRefusedError"}, (k, seen)
        assert _connect(hosts, "server", f"127.0.0.1:{port}") == {
            f"127.0.0.1:{port}": "ConnectionRefusedError"}

        for k in CLIENTS:
            procs.append(start(f"client_{k}",
                               ["--cfg", os.path.join(CFG, "distributed_femnist_client_1.yaml")]
                               + common + ["distribute.client_id", str(k), "expname", f"client_{k}",
                                           "distributed_data.shard_path",
                                           os.path.join(shard_root, f"client_{k}"),
                                           "outdir", os.path.join(home[f"client_{k}"], "exp")]))

        # Wait for all four, recording which addresses the server's sessions come from.
        peers = set()
        deadline = time.monotonic() + 240
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break        # fail fast: one process failed, the job's result is moot
            peers |= _established_peers(hosts, port)
            time.sleep(0.5)
        codes = [p.poll() for p in procs]
    finally:
        stop_all(procs)     # only ours, by pid (SIGKILL if still running)

    names = ["server"] + [f"client_{k}" for k in CLIENTS]
    assert codes == [0, 0, 0, 0], "\n".join(
        f"--- {n} (exit {c}):\n{_tail(logs / f'{n}.log')}" for n, c in zip(names, codes))

    assert peers == set(CLIENT_IPS.values()), peers

    evals = [os.path.join(dp, "eval_results.log")
             for dp, _, fs in os.walk(os.path.join(home["server"], "exp")) if "eval_results.log" in fs]
    assert len(evals) == 1, evals
    lines = [json.loads(line) for line in open(evals[0]) if line.strip()]
    final = [line for line in lines if line.get("Final")]
    assert final and final[-1]["Round"] == ROUNDS, lines[-2:]
    raw = [line["Results_raw"] for line in lines if "Results_raw" in line]
    assert raw and sorted(raw[-1]) == [f"client #{k}" for k in CLIENTS], raw[-1:]

    def opened(role):
        with open(os.path.join(home[role], "opened.txt")) as f:
            return {line.strip() for line in f if line.strip()}

    assert opened("server") == {manifest}
    for k in CLIENTS:
        own = os.path.join(shard_root, f"client_{k}") + os.sep
        got = opened(f"client_{k}")
        assert got and all(p.startswith(own) for p in got), (k, sorted(got))
        assert {os.path.basename(p) for p in got} >= {"meta.json", "train.pt", "val.pt", "test.pt"}
        assert f"Client {k} loaded" in _tail(logs / f"client_{k}.log", 10 ** 7)

    print(f"multi-host netns run: {time.monotonic() - t0:.1f}s (job + probes), peers {sorted(peers)}")
