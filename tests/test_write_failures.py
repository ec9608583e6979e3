"""Real processes whose server cannot write its results: eval_results.log is a link to /dev/full
(every append fails with ENOSPC), or the server runs with a low RLIMIT_NOFILE (EMFILE). The job
never hangs: the server ends with exit 4 naming the file (or 0 when every write got through), the
clients are told to finish, and no client is blamed for the server's disk."""
import os
import resource
import subprocess
import sys

import pytest

from harness import procs as proc_utils
from harness.jobs import Job
from harness.procs import MAIN, ROOT, wait_all, wait_for

ROUNDS = 2


def _server_run_dir(job) -> str:
    for dp, _, files in os.walk(job.out):
        if "exp_print.log" in files and not os.path.basename(dp).startswith("client"):
            return dp
    return ""


def _start_limited(job, nofile: int):
    """The server as Job.server() would start it, with RLIMIT_NOFILE lowered in the child."""
    args = job.server_args()   # port 0: the clients learn the port from the server's log

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    with open(job.log("server"), "wb") as log:
        proc = subprocess.Popen([sys.executable, MAIN] + args, stdout=log, stderr=subprocess.STDOUT,
                                cwd=ROOT, preexec_fn=limit)
    proc.log_path, proc.name = job.log("server"), "server"
    proc_utils.STARTED.append(proc)
    job.port = proc_utils.wait_port(proc)
    return proc


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_results_log_on_a_full_disk_exits_4_and_names_the_file(femnist_root, tmp_path):
    job = Job(tmp_path, femnist_root, rounds=ROUNDS)
    server = job.server()
    wait_for(lambda: bool(_server_run_dir(job)), 120, "the server's run directory", watch=[server])
    results = os.path.join(_server_run_dir(job), "eval_results.log")
    os.symlink("/dev/full", results)            # before any client joins: every append fails
    clients = [job.client(k) for k in (1, 2, 3)]
    codes = wait_all([server] + clients, 240, expect=[4, 0, 0, 0])
    assert codes == [4, 0, 0, 0]
    log = job.server_log()
    assert "ENOSPC" in log and f"cannot write the results log {results}" in log
    assert f"stopping with exit code 4: the results could not be written to {results}" in log
    assert "closing that connection" not in log and "marking it lost" not in log
    assert f"finished after {ROUNDS} rounds" in log


def test_server_out_of_file_descriptors_finishes_or_exits_4(femnist_root, tmp_path):
    """15 descriptors (measured here: 12 cannot start the server, 20 never runs out) leave room
    to start and to serve 3 clients, not to open the results log as well: which writes fail
    depends on the moment, so the outcome is either a complete run or exit 4, never a hang."""
    job = Job(tmp_path, femnist_root, rounds=ROUNDS,
              common=["federate.join_timeout", "8", "federate.graceful_termination_timeout", "30",
                      "federate.results_write_timeout", "5",
                      # a client the server has no descriptor to accept gives up after this
                      "distribute.connect_timeout", "15"])
    server = _start_within_fewest_descriptors(job, int(os.environ.get("FS_TEST_NOFILE", "15")))
    clients = [job.client(k) for k in (1, 2, 3)]
    codes = _codes([server] + clients)
    assert codes[0] in (0, 4), proc_utils.describe([server])
    log = job.server_log()
    assert "closing that connection" not in log
    if codes[0] == 4:
        assert "EMFILE" in log and "exit code 4" in log


def _start_within_fewest_descriptors(job, nofile: int):
    """The server under the lowest limit it can start with, from ``nofile`` up: how many
    descriptors gRPC's start-up takes varies by one or two with its threads (under load, 15 can
    abort in epoll before the port is bound). What is tested starts after that: the job."""
    for limit in range(nofile, nofile + 3):
        try:
            return _start_limited(job, limit)
        except proc_utils.ProcessFailed:
            if limit == nofile + 2:
                raise
    raise AssertionError("unreachable")


def _codes(procs, timeout=240):
    """Every exit code, whatever it is (only a hang fails here)."""
    import time
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                raise proc_utils.ProcessFailed(f"hang: still running after {timeout}s\n"
                                               f"{proc_utils.describe(procs)}")
            time.sleep(0.2)
        return [p.returncode for p in procs]
    finally:
        proc_utils.stop_all(procs)
