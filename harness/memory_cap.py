"""A pytest plugin: a test that lets its process's memory run away fails by its own name.

On a shared machine the kernel's OOM killer otherwise picks a victim itself, after the whole box
has slowed to a crawl, and pytest-xdist reports only that a worker died. A watchdog thread reads
the process's RSS every 0.2 s. Past ``FS_TEST_RSS_CAP_MB`` (default 4,000; no worker of this
suite passes 1.5 GB) the running test fails where its main thread is (SIGUSR2 -> ``pytest.fail``,
the way pytest-timeout interrupts a test). If the memory still grows to 1.5 x the cap (a runaway
thread the failure does not stop), every thread's stack goes to ``RSS_DUMP`` and the process
exits, and pytest-xdist names the test it crashed in. Loaded by tests/conftest.py
(``pytest_plugins``); tests/test_memory_cap.py runs it on a test that allocates past a small cap.
"""
import faulthandler
import os
import signal
import threading
import time

import pytest

from harness.proc_stats import status_kb

RSS_CAP_MB = int(os.environ.get("FS_TEST_RSS_CAP_MB", "4000"))
RSS_DUMP = os.environ.get("FS_TEST_RSS_DUMP", ".pytest-rss-watchdog.txt")
_CURRENT = {"test": "(between tests)", "signalled": None}


def rss_mb() -> int:
    return status_kb("self", "VmRSS") // 1024


def _over_cap(*_) -> None:
    pytest.fail(f"this test's worker holds {rss_mb()} MB, over FS_TEST_RSS_CAP_MB={RSS_CAP_MB}")


def _watch(main_thread: int, period: float = 0.2) -> None:
    while True:
        rss, test = rss_mb(), _CURRENT["test"]
        if rss > RSS_CAP_MB * 3 // 2:     # past what failing a test could stop: end it here
            with open(RSS_DUMP, "w") as f:
                f.write(f"{test}: the worker held {rss} MB; every thread's stack:\n")
                f.flush()
                faulthandler.dump_traceback(f, all_threads=True)
            os._exit(70)
        if rss > RSS_CAP_MB and _CURRENT["signalled"] != test:
            _CURRENT["signalled"] = test
            signal.pthread_kill(main_thread, signal.SIGUSR2)
        time.sleep(period)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):  # noqa: ARG001 - pytest's hook signature
    _CURRENT["test"] = item.nodeid


def pytest_configure(config):
    signal.signal(signal.SIGUSR2, _over_cap)
    threading.Thread(target=_watch, args=(threading.get_ident(),), daemon=True,
                     name="rss-watchdog").start()
