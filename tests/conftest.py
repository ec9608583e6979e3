import logging
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)



import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402
from harness.procs import run_script  # noqa: E402

# Property tests: 150 examples in the suite; the mutation run (--hypothesis-profile=mutation)
# reruns them once per mutant, where a few dozen examples already hit every dtype.
settings.register_profile("suite", max_examples=150, deadline=None)
settings.register_profile("mutation", max_examples=30, deadline=None)
settings.load_profile("suite")

# In-process training uses one intra-op thread, as main.py does for every server and client:
# the suite runs two workers on two cores, where a second thread per op only contends.
torch.set_num_threads(1)

# The process tier: modules whose tests start server/client processes or tools, or train for real
# (seconds to minutes each); everything else is the fast tier (in-process, milliseconds to
# seconds). `make test` runs both tiers in one xdist session, the process tier first and its
# longest modules first (order below: measured, longest first; the launcher's tests start their
# processes by exec, not through the fork server, and hold the two longest tests), so no long
# test starts last on an otherwise idle worker; `make test-fast` runs the fast tier alone.
PROCESS_MODULES = [
    "test_launcher", "test_faults", "test_chaos", "test_datasets_e2e", "test_transport_ceilings",
    "test_algorithms_e2e", "test_shard_refresh", "test_trainer", "test_transport_process",
    "test_write_failures", "test_fs_user_script", "test_swarm", "test_shard_mode",
    "test_femnist_sample", "test_fs_distributed_configs", "test_multihost_netns", "test_auth",
    "test_fuzz", "test_exit_codes", "test_bench_smoke", "test_insiders", "test_distributed_e2e",
    "test_transport_hostile", "test_sharding", "test_sharding_safety", "test_shard_tool_guarantees",
    "test_robust_rules_bench", "test_swarm_real_manifest", "test_main_malloc", "test_memory_cap",
]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(PROCESS_MODULES)}
    for item in items:
        if item.module.__name__ in rank:
            item.add_marker(pytest.mark.process)
    # stable: the order inside a module (and its module-scoped fixtures) is kept
    items.sort(key=lambda it: rank.get(it.module.__name__, len(rank)))


# A test that runs its worker's memory away fails by its own name (harness/memory_cap.py).
pytest_plugins = ["harness.memory_cap"]


@pytest.fixture(scope="session", autouse=True)
def _fork_server():
    """Servers, clients and other Python scripts start as forks of a process that imported
    torch once (harness/forkserver.py): separate processes all the same, without paying the
    imports for each. FS_TEST_EXEC=1 starts every one by fork+exec instead."""
    from harness import forkserver, procs
    if os.environ.get("FS_TEST_EXEC") == "1":
        yield
        return
    procs.FORK_SERVER = forkserver.ForkServer()
    yield
    procs.FORK_SERVER.close()
    procs.FORK_SERVER = None


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
    run_script([os.path.join(ROOT, "scripts", "tools", "generate_femnist_sample.py"),
                    "--out", str(root / "femnist" / "raw"), "--writers", "12", "--seed", "3",
                    "--samples-per-writer-mean", "60", "--writers-per-file", "5"],
                   check=True)
    return str(root)


@pytest.fixture(scope="session")
def femnist_shards(femnist_root, tmp_path_factory):
    """3 client shards cut from ``femnist_root``; returns the manifest path."""
    out = tmp_path_factory.mktemp("shards") / "femnist_shards"
    run_script([os.path.join(ROOT, "scripts", "tools", "prepare_femnist_shards.py"),
                    "--root", femnist_root, "--clients", "3", "--out", str(out), "--seed", "0"],
                   check=True)
    return str(out / "manifest.json")


class _Keep(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append((record.levelname, record.getMessage()))


@pytest.fixture
def logs():
    """The 'federatedscope' logger's records during the test, INFO and up, as (level name, text).
    Hooked on that logger itself: setup_logger may have stopped it propagating to the root."""
    handler, lg = _Keep(), logging.getLogger("federatedscope")
    old = lg.level
    lg.addHandler(handler)
    lg.setLevel(logging.INFO)
    yield handler.lines
    lg.removeHandler(handler)
    lg.setLevel(old)


@pytest.fixture
def fs_logger():
    """The 'federatedscope' logger, its handlers, level and propagation put back afterwards
    (setup_logger and main() replace them); handlers the test added are closed."""
    lg = logging.getLogger("federatedscope")
    handlers, level, propagate = list(lg.handlers), lg.level, lg.propagate
    yield lg
    for h in list(lg.handlers):
        lg.removeHandler(h)
        if h not in handlers:
            h.close()
    for h in handlers:
        lg.addHandler(h)
    lg.setLevel(level)
    lg.propagate = propagate
