"""FS's ``federatedscope.core.workers``: ``from federatedscope.core.workers import Server, Client``.

The names are resolved on first use (PEP 562): importing one module of the package (a test
peer reads ``admission.token_digest``) does not import every worker with it.
"""
import importlib

_EXPORTS = {"Server": "server", "Client": "client", "BaseWorker": "base_worker"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
    return getattr(module, "Worker" if name == "BaseWorker" else name)
