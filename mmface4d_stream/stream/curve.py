"""CURVE keys for the mesh stream, and the rule that a stream leaving this machine is encrypted.

A loopback endpoint has no authentication: any local process (any user of this machine) can
subscribe and read the face meshes. Beyond loopback the stream must be encrypted with ZeroMQ's
CURVE: the publisher loads its keypair from a ZeroMQ certificate file (`write_server_certificate`,
or `zmq.auth.create_certificates`) and subscribers need its public key (the `.key` file, or the
40-character Z85 text). `is_loopback_endpoint` / `is_loopback_host` decide what counts as local;
`ClientKeyAllowList` admits only listed subscriber keys (the publisher's `curve_client_keys`).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from mmface4d_stream.errors import InputError

logger = logging.getLogger(__name__)


def is_loopback_endpoint(url: str) -> bool:
    """Whether a ZeroMQ endpoint is reachable only from this machine.

    ``ipc://`` and ``inproc://`` are local; ``tcp://`` is local for 127.0.0.0/8, ::1 and
    ``localhost``; wildcards (``*``, ``0.0.0.0``) and interface names are not.
    """
    scheme, _, rest = url.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    return is_loopback_host(urlsplit(f"//{rest}").hostname or "")


def is_loopback_host(host: str) -> bool:
    """Whether `host` (an address or ``localhost``) is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class CurveKeys(NamedTuple):
    """A Z85 keypair (40 ASCII bytes each); `secret` is None for a public-only certificate."""

    public: bytes
    secret: bytes | None


def load_certificate(path: str | os.PathLike) -> CurveKeys:
    """Read a ZeroMQ certificate (`.key_secret` holds both keys, `.key` the public one only)."""
    import zmq.auth

    path = Path(path)
    if not path.is_file():
        raise InputError("CURVE certificate not found", path)
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        raise InputError(f"not a ZeroMQ certificate ({exc})", path) from None
    if public is None or len(public) != 40 or (secret is not None and len(secret) != 40):
        raise InputError("not a ZeroMQ certificate (no 40-character Z85 public-key)", path)
    return CurveKeys(public, secret)


def server_keys(url: str, certificate: str | os.PathLike | None, option: str) -> CurveKeys | None:
    """The publisher's keypair for `url`, or None for a plain loopback stream.

    A non-loopback `url` without a certificate is an `InputError` that names `option` (the config
    key or command-line flag that supplies it), raised before anything starts.
    """
    if certificate is None:
        if is_loopback_endpoint(url):
            return None
        raise InputError(f"{url} is reachable from other machines and would send face meshes unencrypted: "
                         f"give a CURVE server certificate with {option} (create one with "
                         "`python -c \"import zmq.auth; zmq.auth.create_certificates('.', 'server')\"`, "
                         "use server.key_secret) or publish on tcp://127.0.0.1")
    keys = load_certificate(certificate)
    if keys.secret is None:
        raise InputError("holds only a public key; the publisher needs the secret one (.key_secret)", certificate)
    return keys


class ClientKeyAllowList:
    """pyzmq ZAP credentials provider: admits the listed client public keys (Z85)."""

    def __init__(self, keys: Sequence[bytes | str]):
        self._keys = {key_bytes(k) for k in keys}

    def callback(self, domain: str, client_key: bytes) -> bool:
        allowed = bytes(client_key) in self._keys
        if not allowed:
            logger.warning("refused a subscriber with unknown CURVE key %s", bytes(client_key).decode("ascii", "replace"))
        return allowed


def key_bytes(key: bytes | str) -> bytes:
    """A Z85 key as bytes (ASCII str or bytes in)."""
    return key.encode("ascii") if isinstance(key, str) else bytes(key)
