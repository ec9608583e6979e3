"""Test-only proof of data isolation: record every file a process opens under a root.

Enabled only when ``FS_AUDIT_OPEN_LOG`` (where to append) and ``FS_AUDIT_ROOT`` (which files
matter: one or more data roots separated by ``os.pathsep``) are set. Uses ``sys.addaudithook`` on the ``open`` event, so every
``open()``, ``torch.load`` and ``np.load`` path is seen. The log is written with a raw fd opened
before the hook is installed, so logging cannot recurse into the hook.
"""
import os
import sys


def install_open_audit() -> None:
    log_path = os.environ.get("FS_AUDIT_OPEN_LOG")
    root = os.environ.get("FS_AUDIT_ROOT")
    if not log_path or not root:
        return
    roots = tuple(os.path.realpath(r) for r in root.split(os.pathsep) if r)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def hook(event: str, args: tuple) -> None:
        if event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path = os.fsdecode(args[0])
        full = os.path.realpath(path)
        if any(full == r or full.startswith(r + os.sep) for r in roots):
            os.write(fd, (full + "\n").encode("utf-8", "replace"))

    sys.addaudithook(hook)
