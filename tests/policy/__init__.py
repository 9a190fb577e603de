"""Shared helpers for the policy tests: board keys, a simulation root, a valid policy.

Keys are generated once per test session (module-level cache): tests need real
keys, not the same keys as anyone else.
"""

from __future__ import annotations

import copy
import functools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from secfl.policy import _keys as keys

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"

#: The board of the test policy: one ECDSA member among Ed25519 ones.
MEMBERS: dict[str, keys.KeyKind] = {"alice": "ed25519", "bob": "ecdsa-p256", "carol": "ed25519"}


@functools.cache
def member_keys() -> dict[str, tuple[bytes, bytes]]:
    """``name -> (private_pem, public_pem)`` for every member of :data:`MEMBERS`."""
    return {name: keys.generate(kind) for name, kind in MEMBERS.items()}


@functools.cache
def sim_root_pem() -> str:
    """A self-signed P-384 certificate standing in for a simulation root."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test simulation root")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA384())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


MR_AGG = "ab" * 48
MR_COL = "cd" * 48


@functools.cache
def _base() -> dict[str, Any]:
    pubs = {name: pair[1].decode() for name, pair in member_keys().items()}
    return {
        "name": "test-policy",
        "version": 1,
        "board": {
            "members": [{"name": n, "public_key": pubs[n]} for n in MEMBERS],
            "threshold": 2,
        },
        "platforms": {"accept": ["simulated", "tdx"], "simulation_root": sim_root_pem()},
        "identity_ca": "ca",
        "services": [
            {
                "name": "agg",
                "role": "aggregator",
                "measurements": {
                    "simulated": [MR_AGG],
                    # a TD's firmware, kernel and command line (mrtd alone is the firmware)
                    "tdx": [{"mrtd": MR_AGG, "rtmr1": MR_AGG, "rtmr2": MR_AGG}],
                },
                "volumes": ["data"],
                "counters": ["round"],
                "inject": {"env": {"MODEL_KEY": "$$SECFL::model-key:hex$$"}},
            },
            {
                "name": "col",
                "role": "collaborator",
                "measurements": {"simulated": [MR_COL]},
                "inject": {
                    "args": ["--tls-cert", "$$SECFL::tls:crt$$"],
                    "env": {"KEY": "$$SECFL::model-key$$"},
                    "files": {"/run/tls.crt": "$$SECFL::tls:crt$$"},
                },
            },
        ],
        "secrets": [
            {"name": "ca", "kind": "x509-ca", "common_name": "Test CA"},
            {"name": "model-key", "kind": "aes-256"},
            {"name": "tls", "kind": "x509", "issuer": "tls-ca", "common_name": "col"},
            {"name": "tls-ca", "kind": "x509-ca", "common_name": "TLS CA"},
        ],
        "volumes": [{"name": "data", "key": "model-key", "counter": "data-version"}],
        "counters": [{"name": "round"}, {"name": "data-version"}],
        "federation": {"rounds": 3, "strategy": {"name": "fedavg"}},
    }


def policy_dict() -> dict[str, Any]:
    """A fresh, valid policy as plain data (mutate it freely)."""
    return copy.deepcopy(_base())


def to_yaml(data: Any, **kwargs: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, **kwargs)
