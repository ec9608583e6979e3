"""harness/memory_cap.py on a real pytest run: a test that allocates past the cap fails by its
name, the tests beside it pass; a thread that keeps allocating after that failure is stopped
with every thread's stack written down. A cap of 300 MB."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TESTS = '''
import threading, time
def test_before(): pass
def test_hungry():           # 200 MB/s: the watchdog sees it pass the cap, not 1.5 x the cap
    held = []
    for _ in range(200):
        held.append(bytearray(10 << 20)); time.sleep(0.05)
def test_after(): pass
'''
RUNAWAY = '''
import threading, time
held, done = [], threading.Event()
def grow():
    for _ in range(24):
        held.append(bytearray(50 << 20)); time.sleep(0.05)
    done.set()
def test_runaway_thread():
    threading.Thread(target=grow, daemon=True).start()
    try:
        done.wait(30)
    finally:
        done.wait(30)     # its clean-up waits for the thread, which failing the test cannot stop
'''


def _run(tmp_path, body):
    (tmp_path / "test_inner.py").write_text(body)
    env = dict(os.environ, PYTHONPATH=ROOT, FS_TEST_RSS_CAP_MB="300",
               FS_TEST_RSS_DUMP=str(tmp_path / "dump.txt"))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "harness.memory_cap", "test_inner.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_test_past_the_cap_fails_by_its_name_and_the_others_pass(tmp_path):
    r = _run(tmp_path, TESTS)
    assert r.returncode == 1, r.stdout[-2000:]
    assert "1 failed, 2 passed" in r.stdout, r.stdout[-2000:]
    assert "FAILED test_inner.py::test_hungry - Failed: this test's worker holds " in r.stdout
    assert "over FS_TEST_RSS_CAP_MB=300" in r.stdout


def test_a_runaway_thread_is_stopped_and_its_stack_written(tmp_path):
    r = _run(tmp_path, RUNAWAY)
    assert r.returncode == 70, (r.returncode, r.stdout[-2000:])
    dump = (tmp_path / "dump.txt").read_text()
    assert dump.startswith("test_inner.py::test_runaway_thread: the worker held ")
    assert 'test_inner.py", line 6 in grow' in dump


def test_the_suite_runs_with_a_per_test_timeout_and_the_memory_cap(request):
    # pytest-timeout is installed and reads setup.cfg: a hung test fails after 480 s by its name;
    # tests/conftest.py loads the memory cap into every worker
    assert request.config.pluginmanager.hasplugin("harness.memory_cap")
    assert request.config.pluginmanager.hasplugin("timeout")
    assert float(request.config.getini("timeout")) == 480.0
