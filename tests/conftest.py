import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


import subprocess  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _stop_leftover_processes():
    """After each test, kill (by PID) every process the test itself started that is still
    running: a test that fails half-way must not leave a server eating CPU beside the next test.
    Processes of wider-scoped fixtures (set up before this one) are left to their fixture."""
    from harness import procs
    first = len(procs.STARTED)
    yield
    procs.stop_all(procs.STARTED[first:])
    del procs.STARTED[first:]


@pytest.fixture(scope="session")
def femnist_root(tmp_path_factory):
    """A small generated FEMNIST sample (LEAF JSON) shared by the whole session."""
    root = tmp_path_factory.mktemp("data")
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "tools", "generate_femnist_sample.py"),
                    "--out", str(root / "femnist" / "raw"), "--writers", "12", "--seed", "3",
                    "--samples-per-writer-mean", "60", "--writers-per-file", "5"],
                   check=True, capture_output=True)
    return str(root)


@pytest.fixture(scope="session")
def femnist_shards(femnist_root, tmp_path_factory):
    """3 client shards cut from ``femnist_root``; returns the manifest path."""
    out = tmp_path_factory.mktemp("shards") / "femnist_shards"
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "tools", "prepare_femnist_shards.py"),
                    "--root", femnist_root, "--clients", "3", "--out", str(out), "--seed", "0"],
                   check=True, capture_output=True)
    return str(out / "manifest.json")
