"""One job run the way FederatedScope's documentation drives FS from Python, in this process:
``global_cfg`` + a YAML + ``key value`` pairs, ``setup_seed``, ``update_logger``, ``get_data`` ->
(data, modified config), freeze, ``get_runner(...).run()``. For the tests and benchmarks that
need a whole job without processes (its exit code and config are returned)."""
from typing import Callable, Optional, Sequence, Tuple

from federatedscope.core.auxiliaries.data_builder import get_data
from federatedscope.core.auxiliaries.outdir import update_logger
from federatedscope.core.auxiliaries.runner_builder import get_runner
from federatedscope.core.auxiliaries.utils import setup_seed
from federatedscope.core.auxiliaries.worker_builder import get_client_cls, get_server_cls
from federatedscope.core.configs.config import global_cfg
from harness.jobs import SERVER_YAML

Wrap = Optional[Callable[[type], type]]


def fs_run(opts: Sequence, server: Wrap = None, client: Wrap = None,
           yaml: str = SERVER_YAML) -> Tuple[object, int]:
    """(the frozen config, the job's exit code). ``server``/``client``: given the class the
    config selects, the class to run instead (an FS-style subclass of it, say)."""
    cfg = global_cfg.clone()
    cfg.merge_from_file(yaml)
    cfg.merge_from_list([str(o) for o in opts])
    setup_seed(cfg.seed)
    update_logger(cfg)
    data, modified = get_data(config=cfg.clone())
    cfg.merge_from_other_cfg(modified)
    cfg.freeze()
    server_cls, client_cls = get_server_cls(cfg), get_client_cls(cfg)
    runner = get_runner(data=data, config=cfg.clone(),
                        server_class=server(server_cls) if server else server_cls,
                        client_class=client(client_cls) if client else client_cls)
    return cfg, runner.run()
