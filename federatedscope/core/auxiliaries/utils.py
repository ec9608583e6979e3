"""Small helpers shared by every module: seeding, logging, atomic file writes.

Everything that writes a file a user relies on (results, checkpoints, shards, manifests)
goes through the ``atomic_*`` helpers, so a crash leaves either the old file or the new
one, never half of one.
"""
import logging
import os
import random
import tempfile
from typing import Any, Callable

import numpy as np

logger = logging.getLogger("federatedscope")


def setup_seed(seed: int) -> None:
    import torch
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def setup_logger(level: int = logging.INFO, logfile: str = "") -> None:
    """FS-style log lines: time (file:line) LEVEL: message."""
    fmt = logging.Formatter(
        "%(asctime)s (%(filename)s:%(lineno)d) %(levelname)s: %(message)s")
    root = logging.getLogger("federatedscope")
    root.setLevel(level)
    root.propagate = False
    for h in list(root.handlers):
        root.removeHandler(h)
    stream = logging.StreamHandler()
    stream.setFormatter(fmt)
    root.addHandler(stream)
    if logfile:
        os.makedirs(os.path.dirname(os.path.abspath(logfile)), exist_ok=True)
        fh = logging.FileHandler(logfile)
        fh.setFormatter(fmt)
        root.addHandler(fh)


def atomic_write(path: str, writer: Callable[[str], None]) -> None:
    """Write to a temp file in the same directory, fsync, then rename over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp", dir=directory)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        writer(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(directory)   # the rename itself must survive a power cut
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def fsync_dir(directory: str) -> None:
    """Make a rename/creation in ``directory`` durable (the one fsync of a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows: directories cannot be opened; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_write(path, write)


def atomic_torch_save(path: str, obj: Any) -> None:
    import torch

    def write(tmp: str) -> None:
        torch.save(obj, tmp)
    atomic_write(path, write)


def append_line(path: str, line: str) -> None:
    """Append one line and flush it to disk (eval_results.log is append-only JSON lines)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())
