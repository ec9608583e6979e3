"""TLS credentials and client tokens, from config keys.

``distribute.tls_cert``/``tls_key`` on the server (and ``tls_ca`` on clients) switch the transport
to TLS; ``distribute.token``/``token_file`` hold a client's secret (the manifest stores only its
sha256). Files are read here and nowhere else.
"""
import os
from typing import Optional

import grpc

from federatedscope.core.configs.config import ConfigError


def _read(path: str, key: str) -> bytes:
    if not os.path.isfile(path):
        raise ConfigError(f"{key}: file not found: {path} (make one with "
                          f"scripts/distributed_scripts/make_local_certs.sh)")
    with open(path, "rb") as f:
        return f.read()


def server_credentials(cfg) -> Optional[grpc.ServerCredentials]:
    d = cfg.distribute
    if not (d.tls_cert or d.tls_key):
        return None
    if not (d.tls_cert and d.tls_key):
        raise ConfigError("TLS needs both distribute.tls_cert and distribute.tls_key on the server")
    return grpc.ssl_server_credentials([(_read(d.tls_key, "distribute.tls_key"),
                                         _read(d.tls_cert, "distribute.tls_cert"))])


def channel_credentials(cfg) -> Optional[grpc.ChannelCredentials]:
    if not cfg.distribute.tls_ca:
        return None
    return grpc.ssl_channel_credentials(root_certificates=_read(cfg.distribute.tls_ca,
                                                                "distribute.tls_ca"))


def client_token(cfg) -> str:
    d = cfg.distribute
    if d.token_file:
        return _read(d.token_file, "distribute.token_file").decode("utf-8").strip()
    return d.token
