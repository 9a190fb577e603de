"""What an FL workload started by ``secfl run`` holds, and how it keeps it fresh.

``secfl run`` attests the workload and leaves it an identity (certificate, key,
the policy's CA, an SPM session) in ``$SECFL_IDENTITY``, secrets in injected files
under ``$SECFL_FILES``, and what it needs to attest again: the pinned SPM, the
TEE, and in simulation the measurement. :class:`WorkloadIdentity` reads them; it renews
the certificate (and the session) by attesting again once two thirds of its
lifetime have passed, so certificates can be short-lived; it fetches the policy
from the SPM and checks that it is the one attested against.

The policy's ``federation`` section configures the run; the well-known injected
files (see :data:`SIGNING_KEY` and friends) carry the model-signing key, the
checkpoint key and the output key that the policy releases to each service.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypeVar, overload

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from secfl._internal.files import write_private
from secfl.errors import FlError, LaunchError, SpmError
from secfl.fl._envelope import PrivateKey, PublicKey
from secfl.fl._injected import CHECKPOINT_KEY, OUTPUT_KEY, SIGNING_KEY, VERIFY_KEY
from secfl.fl._transport import Credentials
from secfl.policy._canonical import digest
from secfl.policy._model import Policy
from secfl.spm.client import SpmClient

__all__ = [
    "CHECKPOINT_KEY",
    "OUTPUT_KEY",
    "SIGNING_KEY",
    "VERIFY_KEY",
    "WorkloadIdentity",
    "load_hex_key",
    "load_private_key",
    "load_public_key",
]

log = logging.getLogger("secfl.fl._workload_identity")

T = TypeVar("T")


def _env(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise LaunchError(
            f"identity: ${name} is not set: start this workload with `secfl run` "
            "(or pass --insecure to measure without security)"
        )
    return value


@functools.lru_cache(maxsize=8)
def _expiry(cert_pem: bytes) -> tuple[datetime, datetime]:
    """A certificate's validity (cached: a pure function of its bytes, asked each round)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.not_valid_before_utc, cert.not_valid_after_utc


@dataclass
class WorkloadIdentity:
    """An attested workload's identity; :meth:`renew` attests again when it is due."""

    policy: str
    service: str
    spm_url: str
    spm_pin: str
    policy_digest: str
    platform: str
    sim_dir: Path | None
    measurement: str | None
    creds: Credentials
    session_token: str = field(repr=False)
    files: Path | None = None
    #: ``$SECFL_IDENTITY``: where ``secfl run`` left the session token, which other
    #: processes of the workload (a Flower ServerApp) read; a renewal rewrites it.
    folder: Path | None = None
    #: The site's key (``secfl run`` copied the host's ``SECFL_SITE_KEY`` file into
    #: ``$SECFL_IDENTITY/site_key.pem``): each renewal is signed with it, as a service
    #: whose policy entry names a ``site_key`` requires (:mod:`secfl.spm._site_key`).
    site_key: PrivateKey | None = field(default=None, repr=False)
    _spm: SpmClient | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: Why the session is over for good: a renewal attested under a new policy version,
    #: which ended it (it replaced it) and whose own session this workload may not take.
    _superseded: str | None = field(default=None, repr=False)
    #: The highest sequence number of a list :meth:`revoked` returned.
    _newest: int = field(default=-1, repr=False)
    _newest_list: set[str] = field(default_factory=set, repr=False)
    _list_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkloadIdentity:
        env = os.environ if env is None else env
        folder = Path(_env(env, "SECFL_IDENTITY"))
        try:
            creds = Credentials(
                key_pem=(folder / "key.pem").read_bytes(),
                cert_pem=(folder / "cert.pem").read_bytes(),
                ca_pem=(folder / "ca.pem").read_bytes(),
            )
            token = (folder / "session.token").read_text().strip()
        except OSError as exc:
            raise LaunchError(f"identity: cannot read {folder}: {exc.strerror}") from None
        site_key = None
        if (folder / "site_key.pem").exists():
            from secfl.spm._site_key import load_site_key

            site_key = load_site_key(folder / "site_key.pem")
        sim = env.get("SECFL_SIM_DIR")
        return cls(
            policy=_env(env, "SECFL_POLICY"),
            service=_env(env, "SECFL_SERVICE"),
            spm_url=_env(env, "SECFL_SPM_URL"),
            spm_pin=_env(env, "SECFL_SPM_PIN"),
            policy_digest=_env(env, "SECFL_POLICY_DIGEST"),
            platform=env.get("SECFL_PLATFORM", "auto"),
            sim_dir=Path(sim) if sim else None,
            measurement=env.get("SECFL_MEASUREMENT") or None,
            creds=creds,
            session_token=token,
            files=Path(env["SECFL_FILES"]) if env.get("SECFL_FILES") else None,
            folder=folder,
            site_key=site_key,
        )

    # --- the SPM -------------------------------------------------------------------------

    def spm(self) -> SpmClient:
        if self._spm is None:
            self._spm = SpmClient(self.spm_url, pin=self.spm_pin)
        return self._spm

    def policy_document(self) -> Policy:
        """The policy from the SPM; it must be the version this workload attested to."""
        policy = Policy.model_validate_json(self.spm().policy(self.policy)["document"])
        if digest(policy) != self.policy_digest:
            raise FlError(
                f"policy: '{self.policy}' changed since this workload attested "
                "(a new version was approved): restart it under the new version"
            )
        return policy

    def revoked(self) -> set[str]:
        """Serials the board revoked, and ``service:NAME`` for a revoked service
        (refreshed from the SPM by the caller, per round), for a caller that reads the
        list in turn (a Flower workload's gate, a collaborator's pin): an answer read
        from older data than one returned before (a lower sequence number: another SPM's
        cached answer, or one cached before a revocation and sent after it) is an
        SpmError, a failed read: the newer list stays in force, and this read does not
        count as a fresh one (if none but such come, the list goes stale: fail closed).
        Two answers of the same number: their union (see
        :meth:`~secfl.fl._peers.PeerPolicy.apply_list`)."""
        sequence, found = self.revocation_list()
        with self._list_lock:
            if sequence < self._newest:
                raise SpmError(
                    f"spm: the SPM answered with an older revocation list (sequence "
                    f"{sequence}, after {self._newest}): the newer one stays in force"
                )
            if sequence == self._newest:
                found = found | self._newest_list
            self._newest, self._newest_list = sequence, found
        return found

    def revocation_list(self) -> tuple[int, set[str]]:
        """The SPM's revocation list (as :meth:`revoked`) and its sequence number, as
        the SPM answered: the caller orders lists by it
        (:meth:`~secfl.fl._peers.PeerPolicy.apply_list`)."""
        sequence, rows = self.spm().revocation_list(self.policy)
        found: set[str] = set()
        for r in rows:
            if r.get("serial"):
                found.add(str(r["serial"]).lower())
            if r.get("kind") == "service" and r.get("subject"):
                found.add(f"service:{r['subject']}")
        return sequence, found

    def token(self) -> str:
        """The session's token, once a renewal under way is over: a refusal of the old
        one may come back before the enrollment's answer (found by a hostile review)."""
        with self._lock:
            if self._superseded is not None:
                raise FlError(self._superseded)
            return self.session_token

    def with_session(self, call: Callable[[str], T]) -> T:
        """``call(token)``, sent again with the new token if this workload attested again
        while it was under way (the SPM refused the old one before applying anything)."""
        from secfl.fl._ledger import renewed_meanwhile
        from secfl.spm.client import SpmRefused

        token = self.token()
        try:
            return call(token)
        except SpmRefused as exc:
            if not renewed_meanwhile(exc, token, self.token()):
                raise
        return call(self.token())

    # --- renewal -------------------------------------------------------------------------

    def due(self, now: datetime | None = None) -> bool:
        """Whether two thirds of the certificate's lifetime have passed (counted from
        its issue, not from its validity start, which is back-dated for clock skew)."""
        from secfl.spm._sealing import CLOCK_SKEW

        start, end = _expiry(self.creds.cert_pem)
        issued = min(start + CLOCK_SKEW, end)
        now = now or datetime.now(UTC)
        return now >= issued + (end - issued) * 2 / 3

    def renew(self, *, force: bool = False) -> bool:
        """Attest again for a new certificate and session when due; True if renewed."""
        from secfl.spm.enroll import enroll
        from secfl.tee._platforms import platform_by_name

        with self._lock:
            if self._superseded is not None:  # no new attestation under the new version:
                raise FlError(self._superseded)  # each issued a session nobody took
            if not force and not self.due():
                return False
            tee = platform_by_name(self.platform, sim_dir=self.sim_dir)
            enrollment = enroll(
                self.spm(), tee, self.policy, self.service, measurement=self.measurement,
                replaces=self.session_token,  # the old session ends: one token at a time
                site_key=self.site_key,
            )  # fmt: skip
            if enrollment.policy_digest != self.policy_digest:
                # the SPM ended the replaced session in the same commit: each later use of
                # its token says why, not "session ended" (found by a hostile review)
                self._superseded = (
                    f"policy: the board approved a new version of '{self.policy}' (version "
                    f"{enrollment.policy_version}) and this workload's session ended when it "
                    "attested again under it: this run stops here; start it again with "
                    "`secfl run` to run under the new version"
                )
                raise FlError(self._superseded)
            self.creds = Credentials(
                key_pem=enrollment.key_pem,
                cert_pem=enrollment.certificate.encode(),
                ca_pem=enrollment.ca_certificate.encode(),
            )
            self.session_token = enrollment.session_token
            if self.folder is not None:
                # the old token's session is over: the workload's other processes read
                # the file at each use (found by a hostile review: a Flower ServerApp's
                # audit findings were refused, and lost, after the first renewal)
                try:
                    write_private(self.folder / "session.token", self.session_token.encode())
                except OSError as exc:
                    log.warning("identity: cannot update %s/session.token: %s (the workload's "
                                "other processes keep the ended session)", self.folder,
                                exc.strerror or exc)  # fmt: skip
        _, end = _expiry(self.creds.cert_pem)
        log.info("attested again: new certificate valid until %s", end.isoformat())
        return True

    # --- injected secrets ----------------------------------------------------------------

    @overload
    def secret_file(
        self, relative: str, given: str | None, *, required: Literal[True] = True
    ) -> Path: ...

    @overload
    def secret_file(self, relative: str, given: str | None, *, required: bool) -> Path | None: ...

    def secret_file(
        self, relative: str, given: str | None, *, required: bool = True
    ) -> Path | None:
        """``$SECFL_FILES/given`` (an injected file the policy names otherwise) or
        ``$SECFL_FILES/relative``; refuses a missing required one. Never a file
        outside ``$SECFL_FILES``: attestation covers the command line, not what a
        path on it names, and the host could put its own key there."""
        name = given or relative
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or not parts:
            raise LaunchError(
                f"secret: {name[:120]!r} is not an injected file: name one relative to "
                "$SECFL_FILES (a file the policy injects into this service)"
            )
        path = self.files / name if self.files else None
        if path is None or not path.is_file():
            if required:
                raise LaunchError(
                    f"secret: {path or name} does not exist: the policy must inject "
                    f"'{name}' into service '{self.service}'"
                )
            return None
        return path


def load_private_key(path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise FlError(f"secret: {path} is not a PEM private key ({type(exc).__name__})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise FlError(f"secret: {path} is a {_kind(key)}: use an Ed25519 or P-256 key")
    return key


def load_public_key(path: Path) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise FlError(f"secret: {path} is not a PEM public key ({type(exc).__name__})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise FlError(f"secret: {path} is a {_kind(key)}: use an Ed25519 or P-256 key")
    return key


def _kind(key: object) -> str:
    """``RSA key``, ``X25519 key``...: what a refused key is, for messages."""
    name = type(key).__name__.lstrip("_")
    for suffix in ("PrivateKey", "PublicKey"):
        name = name.removesuffix(suffix)
    return f"{name} key"


def load_hex_key(path: Path) -> bytes:
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError):
        raise FlError(f"secret: {path} does not hold a hex key") from None
    if len(key) != 32:
        raise FlError(f"secret: {path} holds {len(key)} bytes, a 32-byte key is needed")
    return key
