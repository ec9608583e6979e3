"""FS's ``get_runner``: the runner for ``federate.mode``.

``get_runner(server_class, client_class, config, client_configs=None, data=None)`` returns a
``StandaloneRunner`` (all workers in this process, one in-process queue) or a
``DistributedRunner`` (this process's one role over gRPC); ``.run()`` returns the exit code
documented in ``federatedscope/main.py``.
"""
from federatedscope.core.fed_runner import DistributedRunner, StandaloneRunner


def get_runner(server_class, client_class, config, client_configs=None, data=None):
    mode = config.federate.mode.lower()
    runner_cls = {"standalone": StandaloneRunner, "distributed": DistributedRunner}.get(mode)
    if runner_cls is None:
        from federatedscope.core.configs.config import ConfigError
        raise ConfigError(f"federate.mode={config.federate.mode!r} has no runner; choose "
                          f"'standalone' or 'distributed'")
    return runner_cls(data=data, server_class=server_class, client_class=client_class,
                      config=config, client_configs=client_configs)
