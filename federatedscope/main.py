"""Entry point: ``python federatedscope/main.py --cfg X.yaml [key value ...]``.

FS's main flow: ``global_cfg.clone()``, merge the YAML and the command line (``client_<id>.*``
pairs apart), load the per-client configs (``--client_cfg``, ``core/configs/client_cfg.py``),
``setup_seed``, ``update_logger`` (validates, picks a fresh run directory), ``get_data`` ->
``(data, modified_cfg)``, merge and freeze, ``get_runner(..., client_configs=...).run()``. A script can do the same
(tests/test_fs_user_script.py does). Around it, what FS lacks: malloc tuning (arena cap, fixed mmap
threshold, huge pages: ``malloc_tuning.py``), one torch thread, a stack dump on SIGUSR1 (Unix),
the peak RSS in the log and an exit without interpreter teardown.

Exit codes: 0 success; 1 configuration/data error (message names the key or file and the fix);
2 client refused by the server; 3 server gave up waiting for clients (checkpoint written); 4 the
server cannot write its results (the path is named); 5 a round diverged (every update refused).
"""
import logging
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from federatedscope.core.auxiliaries.malloc_tuning import (  # noqa: E402
    reexec_with_hugepages, tune_malloc)

if __name__ == "__main__":  # before any import starts a thread: glibc reads this only at start
    reexec_with_hugepages()

from federatedscope.core.auditing import install_open_audit  # noqa: E402

install_open_audit()

from federatedscope.core.auxiliaries.data_builder import get_data  # noqa: E402
from federatedscope.core.auxiliaries.outdir import update_logger  # noqa: E402
from federatedscope.core.auxiliaries.runner_builder import get_runner  # noqa: E402
from federatedscope.core.auxiliaries.utils import setup_logger, setup_seed  # noqa: E402
from federatedscope.core.auxiliaries.worker_builder import get_client_cls, get_server_cls  # noqa: E402
from federatedscope.core.cmd_args import override_pairs, parse_args  # noqa: E402
from federatedscope.core.configs.client_cfg import (  # noqa: E402
    check_client_cfgs, check_client_ids, load_client_cfgs, source_of, split_client_opts)
from federatedscope.core.configs.config import ConfigError, global_cfg  # noqa: E402

logger = logging.getLogger("federatedscope")


def _peak_rss_mb() -> str:
    """VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork+exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return f"{int(line.split()[1]) / 1024:.0f} MB"
    except OSError:
        pass
    return "unknown"


def _install_stack_dump() -> None:
    """``kill -USR1 <pid>`` prints every thread's stack; Unix only (Windows has no SIGUSR1 and
    no faulthandler.register), where it is skipped."""
    import faulthandler
    import signal
    if hasattr(faulthandler, "register") and hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1)


def _limit_torch_threads() -> None:
    if "OMP_NUM_THREADS" not in os.environ:
        # FEMNIST batches are tiny (10 x 28 x 28): intra-op threads cost more than they gain
        # (measured here: 21 ms/step on 1 thread vs 78 ms/step on 2 while another process runs).
        import torch
        torch.set_num_threads(1)


def main(argv=None) -> int:
    _install_stack_dump()
    setup_logger()
    # FS's main flow, step for step.
    try:
        init_cfg = global_cfg.clone()
        args = parse_args(argv)
        if args.cfg_file:
            init_cfg.merge_from_file(args.cfg_file)
        # FS's parse_client_cfg: client_<id>.* pairs belong to the per-client configs
        opts, client_opts = split_client_opts(args.opts + override_pairs(args.override))
        init_cfg.merge_from_list(opts)
        client_cfgs = load_client_cfgs(args.client_cfg_file, client_opts)
        source = source_of(args.client_cfg_file, client_opts)
        check_client_cfgs(client_cfgs, init_cfg, source)   # before the run directory is made
        setup_seed(init_cfg.seed)
        update_logger(init_cfg)  # validates; cfg.outdir := this run's fresh directory
    except ConfigError as e:
        logger.error(f"Configuration error: {e}")
        return 1
    except OSError as e:  # the output directory cannot be made (permissions, a file in the way)
        logger.error(f"{type(e).__name__}: {e}; set outdir to a writable directory")
        return 1
    tune_malloc(init_cfg)
    _limit_torch_threads()
    try:
        data, modified_cfg = get_data(config=init_cfg.clone(), client_cfgs=client_cfgs)
        init_cfg.merge_from_other_cfg(modified_cfg)
        init_cfg.freeze()
        check_client_ids(client_cfgs, init_cfg.federate.client_num, source)
        runner = get_runner(data=data, server_class=get_server_cls(init_cfg),
                            client_class=get_client_cls(init_cfg), config=init_cfg.clone(),
                            client_configs=client_cfgs)
        code = runner.run()
        logger.info(f"Peak RSS of this process: {_peak_rss_mb()}")
        return code
    except (ConfigError, ValueError, FileNotFoundError, ConnectionError, OSError) as e:
        logger.error(f"{type(e).__name__}: {e}")
        return 1
    except KeyboardInterrupt:
        logger.warning("Interrupted")
        return 130


if __name__ == "__main__":
    exit_code = main()
    # Flush logs, then leave without interpreter teardown: gRPC's C++ threads can race with
    # Python finalization and abort an otherwise successful process (seen here: SIGABRT after
    # "training finished"). Every file we write is already closed or fsynced at this point.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
