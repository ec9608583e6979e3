"""Process and job launcher shared by the tests and the benchmarks.

``harness.procs``: start processes by PID, wait with deadlines (fail fast, log tails in the
message), stop only our own. ``harness.jobs``: a real server + N clients job whose server binds
port 0 and reports the port it got. ``harness.swarm``: many virtual clients (real gRPC sessions)
from one process, declaring the shards of ``harness.swarm_manifest``; ``harness.raw_peer``:
``RawPeer``, one hand-driven session for hostile-peer tests. ``harness.proc_stats``: the /proc
readers (peak RSS, CPU, PSS, descendants); ``harness.proc_tree``: a whole process tree's CPU and
peaks (Flower's detached helpers included). ``harness.fs_flow``: a whole job in this process,
driven the way FS's documentation drives FS from Python.
"""
