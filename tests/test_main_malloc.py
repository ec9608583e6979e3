"""main.py's glibc tuning (``malloc_tuning.py``). By role: the mmap threshold that returns
model-sized buffers to the kernel is for the distributed server only; a training process would pay
a page fault per 4 KiB of every gradient at every step. For every process: huge pages for malloc's
mapped blocks, which glibc reads only at start, so ``main.py`` re-executes itself once with them."""
import ctypes
import logging
import os
import sys

import pytest

from federatedscope.core.auxiliaries import malloc_tuning
from federatedscope.core.configs.config import load_cfg
from harness.jobs import CLIENT_YAML, SERVER_YAML, Job
from harness.procs import MAIN, ROOT, start_main, stop_all, wait_port
from harness.proc_stats import smaps_kb

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
    (SERVER_YAML, [], [(M_ARENA_MAX, 2), (M_MMAP_THRESHOLD, 2 << 20)]),
    (CLIENT_YAML, [], [(M_ARENA_MAX, 2)]),
    (SERVER_YAML, ["federate.mode", "standalone"], [(M_ARENA_MAX, 2)]),
    (SERVER_YAML, ["federate.mode", "Distributed"],
     [(M_ARENA_MAX, 2), (M_MMAP_THRESHOLD, 2 << 20)]),
], ids=["distributed-server", "distributed-client", "standalone", "mode-case"])
def test_only_the_distributed_server_fixes_the_mmap_threshold(libc, yaml_path, opts, expected):
    malloc_tuning.tune_malloc(load_cfg(yaml_path, opts))
    assert libc.calls == expected


def test_an_explicit_environment_setting_wins(libc, monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    malloc_tuning.tune_malloc(load_cfg(SERVER_YAML, []))
    assert libc.calls == []


# ------------------------------------------------------------------------ huge pages
HUGE_ON = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


@pytest.mark.parametrize("environ,version,thp,expected", [
    ({}, (2, 36), True, HUGE_ON),
    ({"PATH": "/bin"}, (2, 35), True, dict(HUGE_ON, PATH="/bin")),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, (3, 0), True,
     {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, (2, 36), True, None),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, (2, 36), True, None),
    ({}, (2, 34), True, None),
    ({}, (1, 99), True, None),
    ({}, None, True, None),
    ({}, (2, 36), False, None),
], ids=["fresh", "keeps-env", "appends", "user-off", "already-on", "glibc-2.34", "glibc-1",
        "not-glibc", "thp-not-madvise"])
def test_the_reexec_environment(environ, version, thp, expected):
    before = dict(environ)
    assert malloc_tuning.hugepage_env(environ, version, thp) == expected
    assert environ == before          # a copy, never the caller's mapping


@pytest.mark.parametrize("text,expected", [
    ("glibc 2.36", (2, 36)), ("glibc 2.35.1", (2, 35)), ("glibc 10.2", (10, 2)),
    ("musl 1.2", None), ("", None), ("glibc", None), ("glibc x.y", None), ("glibc 2", None),
])
def test_glibc_version_parsing(text, expected):
    assert malloc_tuning.glibc_version(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("always [madvise] never\n", True), ("[always] madvise never\n", False),
    ("always madvise [never]\n", False), ("", False),
])
def test_thp_mode_parsing(text, expected):
    assert malloc_tuning.thp_on_request(text) is expected


def test_the_running_systems_glibc_and_thp_mode_are_read(monkeypatch, tmp_path):
    import os
    assert malloc_tuning.glibc_version() == malloc_tuning.glibc_version(
        os.confstr("CS_GNU_LIBC_VERSION"))
    monkeypatch.setattr(os, "confstr", lambda name: "glibc 2.38" if name == "CS_GNU_LIBC_VERSION"
                        else "")
    assert malloc_tuning.glibc_version() == (2, 38)
    monkeypatch.setattr(os, "confstr", lambda name: None)         # confstr knows no answer
    assert malloc_tuning.glibc_version() is None
    mode = tmp_path / "enabled"
    mode.write_text("always [madvise] never\n")
    monkeypatch.setattr(malloc_tuning, "THP_MODE", str(mode))
    assert malloc_tuning.thp_on_request() is True
    monkeypatch.setattr(malloc_tuning, "THP_MODE", str(tmp_path / "absent"))   # no THP: none
    assert malloc_tuning.thp_on_request() is False


def test_tune_malloc_loads_the_c_library_by_its_soname(monkeypatch):
    names = []
    monkeypatch.setattr(ctypes, "CDLL", lambda name: names.append(name) or FakeLibc())
    malloc_tuning.tune_malloc(load_cfg(SERVER_YAML, []))
    assert names and set(names) == {"libc.so.6"}


def test_the_shard_tool_fixes_the_mmap_threshold_unless_the_environment_says(libc, monkeypatch):
    malloc_tuning.fixed_mmap_threshold()
    malloc_tuning.fixed_mmap_threshold(3 << 20)
    assert libc.calls == [(M_MMAP_THRESHOLD, 2 << 20), (M_MMAP_THRESHOLD, 3 << 20)]
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    malloc_tuning.fixed_mmap_threshold()
    assert len(libc.calls) == 2


def test_the_shard_tool_cli_sets_the_threshold_before_it_reads(femnist_root, tmp_path):
    """prepare_shards.py's main (what the command runs): the threshold is fixed before the
    first input file is read, so no file's text is freed under glibc's sliding threshold."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "prepare_shards_cli", os.path.join(ROOT, "scripts", "tools", "prepare_shards.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    from federatedscope.cv.dataset import leaf_femnist
    fixed, seen = [], []
    real = leaf_femnist._load_json
    monkey = pytest.MonkeyPatch()
    monkey.setattr(tool, "fixed_mmap_threshold", lambda *a: fixed.append(a))
    monkey.setattr(leaf_femnist, "_load_json",
                   lambda *a, **k: seen.append(len(fixed)) or real(*a, **k))
    fs_log = logging.getLogger("federatedscope")   # the CLI sets up its own logging
    monkey.setattr(fs_log, "handlers", list(fs_log.handlers))
    monkey.setattr(fs_log, "propagate", fs_log.propagate)
    monkey.setattr(fs_log, "level", fs_log.level)
    try:
        assert tool.main(["--dataset", "femnist", "--root", femnist_root, "--clients", "4",
                          "--out", str(tmp_path / "out"), "--workers", "1", "--no-progress"]) == 0
    finally:
        monkey.undo()
    assert fixed == [()] and seen and set(seen) == {1}   # once, with its default, before any read


class Exec:
    def __init__(self, fails=False):
        self.calls, self.fails = [], fails

    def __call__(self, path, argv, env):
        self.calls.append((path, argv, env))
        if self.fails:
            raise OSError("exec refused")


@pytest.mark.parametrize("platform,thp,glibc,fails,runs", [
    ("linux", True, (2, 36), False, True), ("linux", True, (2, 36), True, True),
    ("darwin", True, (2, 36), False, False), ("linux", False, (2, 36), False, False),
    ("linux", True, (2, 34), False, False)],
    ids=["re-executes", "exec-fails-runs-on", "not-linux", "thp-off", "old-glibc"])
def test_main_re_executes_itself_only_when_huge_pages_can_be_had(monkeypatch, platform, thp,
                                                                  glibc, fails, runs):
    import os
    execve = Exec(fails)
    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(malloc_tuning, "thp_on_request", lambda: thp)
    monkeypatch.setattr(malloc_tuning, "glibc_version", lambda: glibc)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert malloc_tuning.reexec_with_hugepages() is None     # returns when it does not exec
    if runs:
        (path, argv, env), = execve.calls
        assert (path, argv) == (sys.executable, list(sys.orig_argv))
        assert env == dict(os.environ, GLIBC_TUNABLES="glibc.malloc.hugetlb=1")
    else:
        assert execve.calls == []


def _proc_strings(pid: int, name: str) -> list:
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return [s.decode() for s in f.read().split(b"\0") if s]


needs_thp = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not malloc_tuning.thp_on_request()
    or (malloc_tuning.glibc_version() or (0, 0)) < malloc_tuning.MIN_GLIBC,
    reason="needs Linux, glibc >= 2.35 and THP in madvise mode")


@needs_thp
@pytest.mark.parametrize("given,huge", [
    (None, True), ("glibc.malloc.hugetlb=0", False), ("glibc.malloc.arena_max=4", True),
], ids=["set", "user-off-wins", "appended"])
def test_main_reexecutes_itself_once_with_huge_pages(femnist_root, tmp_path, given, huge):
    """The real entry point, exec'd (a GLIBC_ change never goes through the fork server): the
    same PID and argv after the re-execution, and the model-sized buffers of a server that has
    built its model on huge pages, unless the user's own setting says no. (Not read from
    /proc/PID/environ: glibc 2.36 cuts the tunables string there at its first ':'.)"""
    args = Job(tmp_path, femnist_root).server_args()
    server = start_main(args, str(tmp_path / "s.log"), env={"GLIBC_TUNABLES": given})
    try:
        wait_port(server)
        assert _proc_strings(server.pid, "cmdline")[1:] == [MAIN] + args
        assert (smaps_kb(server.pid, "AnonHugePages") > 0) is huge
    finally:
        stop_all([server])
