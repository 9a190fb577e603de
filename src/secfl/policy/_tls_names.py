"""The names TLS checks: no service can answer to another's, and the identity CA
issues the services' own certificates alone.

A collaborator reaches the aggregator by a DNS name: the service's name, then the
name only its current certificate carries, ``s<serial>.<service>``
(:func:`~secfl._internal.x509util.session_name`, pinned by :mod:`secfl.fl._pin`).
TLS compares names ignoring case (and a final dot), and honours wildcards. So a new
version of a policy may not hold:

- two services whose names differ only so (``Aggregator`` and ``aggregator``);
- a service named like a session of another (``sab.aggregator``): its certificate
  would answer to the name that pins the aggregator's certificate of serial ``ab``;
- an ``x509`` secret issued by the identity CA: its names are the board's to write
  (a wildcard ``*.aggregator``, or a service's name), and peers trust that CA for
  the services' identities.
"""

from __future__ import annotations

import re

from secfl._internal.values import quoted
from secfl.errors import PolicyError
from secfl.policy._model import Policy

__all__ = ["check_tls_names"]

#: A session's DNS name: ``s``, a serial in hex, a dot, then a service's name.
_SESSION = re.compile(r"s[0-9a-f]+\.(.+)", re.IGNORECASE)


def _folded(name: str) -> str:
    """A name as TLS compares it."""
    return name.rstrip(".").casefold()


def check_tls_names(policy: Policy) -> None:
    """:class:`PolicyError` naming the first name that could stand for another."""
    seen: dict[str, str] = {}
    for service in policy.services:
        other = seen.setdefault(_folded(service.name), service.name)
        if other != service.name:
            raise PolicyError(
                f"policy: services: {quoted(service.name)} and {quoted(other)} differ only in "
                "case or a final dot, which TLS ignores: rename one"
            )
    for service in policy.services:
        session = _SESSION.fullmatch(service.name.rstrip("."))
        if session and _folded(session.group(1)) in seen:
            raise PolicyError(
                f"policy: services: {quoted(service.name)} has the form s<serial>.<service> "
                "that names one certificate of a service: rename it"
            )
    for i, secret in enumerate(policy.secrets):
        if secret.kind == "x509" and secret.issuer == policy.identity_ca:
            raise PolicyError(
                f"policy: secrets[{i}] ({quoted(secret.name)}): issued by the identity CA "
                f"{quoted(policy.identity_ca)}, which peers trust for the services' own "
                "certificates only: issue it from another x509-ca secret"
            )
