"""FS's ``update_logger``: checks the config, picks this run's output directory, logs into it.

A run never appends to another run's results. The run directory is ``<outdir>/<expname>`` when
that is new or empty; otherwise, as FS does, a fresh ``<outdir>/<expname>/sub_exp_<YYYYmmddHHMMSS>``
(``_1``, ``_2``, ... when two runs start in the same second). A directory is claimed by creating
its ``exp_print.log`` exclusively, so two processes started together never share one.

The exception is a run that continues another: ``federate.restore_from`` names a checkpoint that
exists. It writes into the run directory the checkpoint was written from, appending to that
run's ``eval_results.log`` (the rounds it restores are not repeated, so no round is reported
twice): ``<outdir>/<expname>`` or one of its ``sub_exp_*`` directories. A checkpoint that names
no directory (written before it recorded one), or one outside ``<outdir>/<expname>`` (the
config's outdir changed), continues in ``<outdir>/<expname>``.

After the call ``cfg.outdir`` is the run directory (FS's convention), so call it once per config.
(FS keeps this function in ``core/auxiliaries/logging.py``; a module named ``logging`` would
shadow the standard library for any script run from that directory, hence this name.)
"""
import logging
import os
import time

from federatedscope.core.auxiliaries.checkpoint import recorded_run_dir
from federatedscope.core.auxiliaries.utils import setup_logger

logger = logging.getLogger("federatedscope")
LOG_NAME = "exp_print.log"


def update_logger(cfg, clear_before_add: bool = True) -> str:
    """Validate ``cfg`` (choices, ranges, env vars, default ``expname``), set ``cfg.outdir`` to
    this run's directory and log there as well as to stderr. ``cfg`` is left unfrozen."""
    del clear_before_add  # setup_logger always replaces our handlers (FS's flag, kept for calls)
    from federatedscope.core.configs.config import finalize
    cfg.defrost()
    finalize(cfg)
    cfg.defrost()
    run_dir = resolve_outdir(cfg.outdir, cfg.expname, cfg.federate.restore_from)
    cfg.outdir = run_dir
    # FS: verbose > 0 logs INFO and above, verbose <= 0 only warnings and errors
    setup_logger(level=logging.INFO if cfg.verbose > 0 else logging.WARNING,
                 logfile=os.path.join(run_dir, LOG_NAME))
    logger.info(f"Output directory of this run: {run_dir}")
    return run_dir


def resolve_outdir(outdir: str, expname: str, restore_from: str = "") -> str:
    base = os.path.join(outdir, expname)
    if restore_from and os.path.isfile(restore_from):
        recorded = _continued_dir(base, recorded_run_dir(restore_from))
        if recorded:
            return recorded
        os.makedirs(base, exist_ok=True)
        return base
    if _claim(base):
        return base
    stamp = time.strftime("%Y%m%d%H%M%S")
    for k in range(10_000):
        sub = os.path.join(base, f"sub_exp_{stamp}" + (f"_{k}" if k else ""))
        try:
            os.mkdir(sub)
        except FileExistsError:
            continue
        if _claim(sub):
            return sub
    raise OSError(f"{base}: could not create a fresh sub_exp_* directory; set outdir elsewhere")


def _continued_dir(base: str, recorded: str) -> str:
    """``recorded`` when it is ``base`` or a ``sub_exp_*`` directory in it that still exists."""
    if not recorded or not os.path.isdir(recorded):
        return ""
    here, there = os.path.realpath(base), os.path.realpath(recorded)
    inside = os.path.dirname(there) == here and os.path.basename(there).startswith("sub_exp_")
    return recorded if there == here or inside else ""


def _claim(directory: str) -> bool:
    """True when ``directory`` was missing or empty and this process now owns it."""
    os.makedirs(directory, exist_ok=True)
    if os.listdir(directory):
        return False
    try:
        fd = os.open(os.path.join(directory, LOG_NAME), os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                     0o644)
    except FileExistsError:
        return False
    os.close(fd)
    return True
