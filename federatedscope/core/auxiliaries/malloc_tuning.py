"""glibc malloc settings for processes that move model-sized buffers (skipped without glibc).

Two kinds, because glibc reads them at two different times:

* ``tune_malloc(cfg)``, once the role is known (``mallopt``, at run time): at most 2 arenas, and
  a fixed 2 MiB mmap threshold on the distributed server only (see its docstring); the shard
  tool fixes the threshold too (``fixed_mmap_threshold``);
* ``reexec_with_hugepages()``, first thing in ``main.py``: transparent huge pages for the blocks
  malloc maps (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, glibc >= 2.35). Every fresh model-sized
  buffer (an encoded broadcast, a received upload, gRPC's own message buffers, an aggregation
  result) is otherwise faulted in 4 KiB at a time, and on this machine the faults cost 4x the
  copy itself: joining a 25 MB frame took 23 ms, 6 ms with huge pages. The tunable is read only
  when the process starts, so the entry point re-executes itself once with it set (same PID,
  same argv, ~30 ms); it applies only where THP is in ``madvise`` mode (with ``always`` the
  kernel already does it, with ``never`` it cannot). An explicit ``glibc.malloc.hugetlb`` in
  ``GLIBC_TUNABLES`` wins, so ``GLIBC_TUNABLES=glibc.malloc.hugetlb=0`` turns this off.
"""
import os
import sys
from typing import Mapping, Optional, Tuple

HUGETLB = "glibc.malloc.hugetlb"
MIN_GLIBC = (2, 35)            # the first glibc with the hugetlb tunable
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"
SERVER_MMAP_THRESHOLD = 2 << 20   # bytes: one transparent huge page (see tune_malloc)


def glibc_version(text: Optional[str] = None) -> Optional[Tuple[int, int]]:
    """(major, minor) of the running glibc, from ``confstr`` ("glibc 2.36"); None elsewhere."""
    if text is None:
        try:
            text = os.confstr("CS_GNU_LIBC_VERSION") or ""
        except (ValueError, OSError, AttributeError):   # not a glibc system
            return None
    name, _, version = text.partition(" ")
    try:
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except ValueError:
        return None


def thp_on_request(mode_text: Optional[str] = None) -> bool:
    """Whether the kernel gives huge pages to regions that ask (``[madvise]`` selected)."""
    if mode_text is None:
        try:
            with open(THP_MODE) as f:
                mode_text = f.read()
        except OSError:
            return False
    return "[madvise]" in mode_text


def hugepage_env(environ: Mapping[str, str], version: Optional[Tuple[int, int]],
                 thp_madvise: bool) -> Optional[dict]:
    """The environment to re-execute with, or None when there is nothing to gain: the tunable
    already set (by the user, or by the re-execution itself), glibc too old or absent, or THP
    not in ``madvise`` mode."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if HUGETLB in tunables or version is None or version < MIN_GLIBC or not thp_madvise:
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{HUGETLB}=1" if tunables else f"{HUGETLB}=1"
    return env


def reexec_with_hugepages() -> None:
    """Replace this process by itself with huge pages for malloc's mapped blocks (see the module
    docstring); returns only when nothing is to be done or the exec fails (then it runs on as
    it is). Call it before anything starts a thread or writes output."""
    if not sys.platform.startswith("linux"):
        return
    env = hugepage_env(os.environ, glibc_version(), thp_on_request())
    if env is None:
        return
    try:
        os.execve(sys.executable, list(sys.orig_argv), env)
    except OSError:
        return


def _mallopt(param: int, value: int, env_name: str) -> None:
    """glibc's ``mallopt``, unless the user set the same thing in the environment (which wins);
    nothing without glibc."""
    if env_name in os.environ:
        return
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(param, value)
    except (OSError, AttributeError):
        pass


def fixed_mmap_threshold(nbytes: int = SERVER_MMAP_THRESHOLD) -> None:
    """Every block of ``nbytes`` or more gets its own mapping and goes back to the kernel when
    freed (as MALLOC_MMAP_THRESHOLD_; an explicit env var wins). glibc otherwise raises the
    threshold to the size of the first freed mapped block (up to 32 MiB), after which such
    blocks come from the heap, and how much of it stays resident after they are freed depends
    on their order: the shard tool's peak on the same input was 50.6 or 64.7 MB from one run
    to the next (the text of each input file, read and decoded, is freed file by file), and
    50.7 MB every time with the threshold fixed."""
    _mallopt(-3, nbytes, "MALLOC_MMAP_THRESHOLD_")  # M_MMAP_THRESHOLD


def tune_malloc(cfg) -> None:
    """glibc settings for a process that moves model-sized buffers (same effect as
    MALLOC_ARENA_MAX=2 and MALLOC_MMAP_THRESHOLD_=2097152; an explicit env var wins):
    * at most 2 malloc arenas: gRPC's threads otherwise keep freed message buffers in separate
      arenas (measured here: server peak 316 MB -> 294 MB);
    * only where no model is trained (the distributed server): a fixed 2 MiB mmap threshold
      (``fixed_mmap_threshold``): each received upload, encoded broadcast and aggregation
      temporary goes back to the kernel when freed (server peak at hidden 2048, 3 clients,
      538 MB -> 477 MB). 2 MiB, one transparent huge page: a mapped block that large is faulted
      in a huge page at a time (``reexec_with_hugepages``), a smaller one 4 KiB at a time, and a
      few retained smaller blocks cost little. At hidden 128 (1.85 MB buffers: each upload's and
      each client's copy of the broadcast), 1,000 clients: 1 MiB took 2.36 M page faults and
      17.1-20.5 CPU-s per round, 2 MiB 1.12 M and 15.4-16.6 s; same peak RSS.
      A training process must not have it: every gradient and activation buffer over the
      threshold would then be mapped, faulted in page by page and unmapped at every step
      (measured at hidden 2048 with 1 MiB: 11x the page faults, +24 % CPU per step)."""
    _mallopt(-8, 2, "MALLOC_ARENA_MAX")  # M_ARENA_MAX
    if cfg.federate.mode.lower() == "distributed" and cfg.distribute.role == "server":
        fixed_mmap_threshold()
