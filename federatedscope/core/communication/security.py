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
        raw = _read(d.token_file, "distribute.token_file")
        try:
            return raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError(f"distribute.token_file: {d.token_file} is not UTF-8 text; it "
                              f"must hold the token the shard tool's --tokens wrote for this "
                              f"client") from None
    return d.token


def tls_problem(host: str, port: int, ca_path: str, timeout: float = 3.0) -> str:
    """Why a channel to ``host:port`` cannot become ready for TLS reasons, or "" if it is not
    TLS's fault (gRPC itself only says "unavailable"). One handshake with Python's ssl module,
    the same CA and the same name gRPC checks; with no CA configured, whether the server speaks
    TLS at all (a plaintext client against a TLS server)."""
    import socket
    import ssl
    where = f"{host}:{port}"
    if ca_path:
        ctx = ssl.create_default_context(cafile=ca_path)
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=host.strip("[]")):
                pass
    except ssl.SSLCertVerificationError as e:
        why = e.verify_message or str(e)
        if "hostname" in why.lower() or "not valid for" in why.lower():
            return (f"TLS: the server at {where} presents a certificate that does not name "
                    f"{host!r} ({why}); connect with distribute.server_host set to a name in "
                    f"the certificate, or re-make the server's distribute.tls_cert for this name")
        return (f"TLS: the server at {where} presents a certificate not signed by the CA in "
                f"distribute.tls_ca={ca_path} ({why}); use the CA that signed the server's "
                f"distribute.tls_cert (scripts/distributed_scripts/make_local_certs.sh)")
    except ssl.SSLError as e:
        if ca_path:
            return (f"TLS: the server at {where} does not complete a TLS handshake ({e.reason or e});"
                    f" is it started with distribute.tls_cert/tls_key? This client has "
                    f"distribute.tls_ca={ca_path}")
        return ""          # a plaintext server: not a TLS problem
    except OSError:
        return ""          # not reachable at all: the caller's message covers it
    if not ca_path:
        return (f"TLS: the server at {where} speaks TLS but this client has no distribute.tls_ca; "
                f"set it to the CA that signed the server's certificate")
    return ""
