"""Every file the server writes (results log, checkpoint) goes through one guard.

A failed write (ENOSPC, EMFILE, EACCES, a path that became a directory...) is one bounded error
line naming the file and the errno, never an exception in the middle of the server's state
machine, and never blamed on the client whose message was being handled. The guard remembers
since when a kind of file could not be written; the server stops with exit code 4
(``RESULTS_UNWRITABLE``) once its results could not be written for ``bound`` seconds
(``federate.results_write_timeout``), or when it
finishes with results still unwritten. The log file (``exp_print.log``) is guarded the same way
(``guard_log_files``): one line on stderr when it cannot be written.
"""
import errno as errno_mod
import logging
import sys
import time
from typing import Callable, Dict, Optional

from federatedscope.core.message import clip_text

logger = logging.getLogger("federatedscope")
RESULTS_UNWRITABLE = 4
WRITE_FAILURE_BOUND_S = 60.0     # how long the results may stay unwritable before exit 4


class WriteGuard:
    def __init__(self, bound: float = WRITE_FAILURE_BOUND_S):
        self.bound = bound
        self.failing_since: Dict[str, float] = {}    # path -> first failure of the current streak
        self.failures: Dict[str, int] = {}

    def attempt(self, what: str, path: str, write: Callable[[], None], consequence: str) -> bool:
        """Run ``write``; on OSError log one line (what, path, errno, consequence) and return
        False. A later success ends the streak."""
        try:
            write()
        except (OSError, RuntimeError) as e:   # torch.save reports a failed write as RuntimeError
            n = self.failures[path] = self.failures.get(path, 0) + 1
            self.failing_since.setdefault(path, time.monotonic())
            errno = getattr(e, "errno", None)
            code = errno_mod.errorcode.get(errno, str(errno)) if errno else type(e).__name__
            logger.error(clip_text(f"Server: cannot write the {what} {path} ({code}: "
                                   f"{getattr(e, 'strerror', None) or e}; failure {n}); "
                                   f"{consequence}", 400))
            return False
        if path in self.failing_since:
            logger.info(f"Server: the {what} {path} is writable again")
            del self.failing_since[path]
        return True

    def overdue(self, path: str, now: Optional[float] = None) -> bool:
        since = self.failing_since.get(path)
        now = time.monotonic() if now is None else now
        return since is not None and now - since > self.bound


def guard_log_files(log: logging.Logger) -> None:
    """A log file that cannot be written (full disk, no descriptors) costs one bounded line on
    stderr, not logging's traceback for every record; the other handlers (stderr) go on."""
    for handler in log.handlers:
        if isinstance(handler, logging.FileHandler) and not hasattr(handler, "fs_write_failed"):
            handler.fs_write_failed = False
            handler.handleError = _BoundedError(handler)


class _BoundedError:
    def __init__(self, handler: logging.FileHandler):
        self.handler = handler

    def __call__(self, record: logging.LogRecord) -> None:
        if self.handler.fs_write_failed:
            return
        self.handler.fs_write_failed = True
        err = sys.exc_info()[1]
        try:
            sys.stderr.write(clip_text(f"federatedscope: cannot write the log file "
                                       f"{self.handler.baseFilename} ({err!r}); its further lines "
                                       f"are dropped (they still go to stderr)", 400) + "\n")
        except (OSError, ValueError):
            pass
