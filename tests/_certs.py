"""Test TLS material: a trustme CA, a server certificate for 127.0.0.1/localhost,
and matching server and client ``ssl.SSLContext`` objects.

Generated once per process (key generation is the slow part); the contexts are
fresh objects on every call so a test may tweak its own.
"""

from __future__ import annotations

import functools
import ssl

import trustme

__all__ = ["TLSContexts", "tls_contexts"]


class TLSContexts:
    """A server context presenting the test certificate, and a client context
    that trusts the test CA (and nothing else)."""

    def __init__(self, ca: trustme.CA, server_cert: trustme.LeafCert) -> None:
        self.ca = ca
        self.server_cert = server_cert
        self.server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_cert.configure_cert(self.server)
        self.client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ca.configure_trust(self.client)


@functools.cache
def _material() -> tuple[trustme.CA, trustme.LeafCert]:
    ca = trustme.CA()
    return ca, ca.issue_cert("127.0.0.1", "localhost", "::1")


def tls_contexts() -> TLSContexts:
    """Fresh server and client contexts over the process-wide test CA."""
    ca, cert = _material()
    return TLSContexts(ca, cert)
