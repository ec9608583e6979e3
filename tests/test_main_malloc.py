"""main.py's glibc tuning by role: the mmap threshold that returns model-sized buffers to the
kernel is for the distributed server only; a training process would pay a page fault per 4 KiB of
every gradient at every step (see ``_tune_malloc``)."""
import ctypes

import pytest

from federatedscope import main as fs_main
from federatedscope.core.configs.config import load_cfg
from harness.jobs import CLIENT_YAML, SERVER_YAML

M_ARENA_MAX, M_MMAP_THRESHOLD = -8, -3


class FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1


@pytest.fixture
def libc(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: fake)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    return fake


@pytest.mark.parametrize("yaml_path,opts,expected", [
    (SERVER_YAML, [], [(M_ARENA_MAX, 2), (M_MMAP_THRESHOLD, 1 << 20)]),
    (CLIENT_YAML, [], [(M_ARENA_MAX, 2)]),
    (SERVER_YAML, ["federate.mode", "standalone"], [(M_ARENA_MAX, 2)]),
    (SERVER_YAML, ["federate.mode", "Distributed"],
     [(M_ARENA_MAX, 2), (M_MMAP_THRESHOLD, 1 << 20)]),
], ids=["distributed-server", "distributed-client", "standalone", "mode-case"])
def test_only_the_distributed_server_fixes_the_mmap_threshold(libc, yaml_path, opts, expected):
    fs_main._tune_malloc(load_cfg(yaml_path, opts))
    assert libc.calls == expected


def test_an_explicit_environment_setting_wins(libc, monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    fs_main._tune_malloc(load_cfg(SERVER_YAML, []))
    assert libc.calls == []
