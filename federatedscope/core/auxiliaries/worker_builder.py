"""FS's ``get_client_cls`` / ``get_server_cls``: which worker classes a run uses.

As in FS, ``register.worker_dict`` is asked first: a registered ``func(method)`` returning
``{'client': cls, 'server': cls}`` for ``federate.method`` supplies them. Otherwise the built-in
pair serves every method this tree implements (FedAvg; FedOpt's server optimizer and the
personalized methods live in the aggregator and the trainer, not in other worker classes). A
script that needs other behaviour subclasses them, overriding a ``callback_funcs_*`` method or
calling ``register_handlers`` in ``__init__``, and passes its class to ``get_runner``.
"""
from federatedscope.core.workers.client import Client
from federatedscope.core.workers.server import Server


def _registered(cfg, role: str):
    from federatedscope import register
    for func in register.worker_dict.values():
        pair = func(cfg.federate.method)
        if pair is not None and pair.get(role) is not None:
            return pair[role]
    return None


def get_client_cls(cfg):
    return _registered(cfg, "client") or Client


def get_server_cls(cfg):
    return _registered(cfg, "server") or Server
