"""FS's ``get_client_cls`` / ``get_server_cls``: which worker classes a run uses.

FS picks a class per ``federate.method`` and trainer; this tree implements FedAvg workers only
(``federate.method`` is validated to ``fedavg``), so both return the one pair. A script that
needs other behaviour subclasses them (``register_handlers`` in ``__init__``) and passes its
class to ``get_runner``.
"""
from federatedscope.core.workers.client import Client
from federatedscope.core.workers.server import Server


def get_client_cls(cfg):
    del cfg  # one client class for every supported configuration (see module docstring)
    return Client


def get_server_cls(cfg):
    del cfg
    return Server
