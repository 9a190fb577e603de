"""Which floor change each audit entry makes (:class:`secfl.spm._integrity.Floors`).

The floors are rebuilt at start by replaying the verified audit log, and raised by
what other SPMs sharing the database committed: both read an entry's event and detail
here, once. An entry whose detail does not have the expected shape changes nothing
(it was verified as part of the chain, so it is the SPM's own writing, of an older
release perhaps).
"""

from __future__ import annotations

from typing import Any

from secfl.errors import SpmError
from secfl.spm._collateral_floors import EVENT as COLLATERAL_EVENT
from secfl.spm._collateral_floors import floors_of
from secfl.spm._issued import EVENT as ISSUED_EVENT
from secfl.spm._issued import issued_change
from secfl.spm._renewal import EVENT as ENDED_EVENT
from secfl.spm._renewal import ended_changes

__all__ = ["change_of", "replayed"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def replayed(event: str, policy: str | None, detail: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The floor changes replaying one audit entry makes (:meth:`Floors.replay`); only
    ever applied once the entry is verified as part of the chain."""
    if event == COLLATERAL_EVENT and policy is None:
        return [("collateral", key, value) for key, value in floors_of(detail)]
    if event == ISSUED_EVENT:
        found = issued_change(policy, detail)
        return [] if found is None else [found]
    if event == ENDED_EVENT:
        return ended_changes(policy, detail)
    changes = []
    change = change_of(event, policy, detail)
    if change is not None:
        changes.append(change)
    statements = ("revocation.added", "revocation.lifted", "revocation.spent")
    if event in statements and isinstance(detail.get("digest"), str):
        changes.append(("statement", detail["digest"]))
        if event == "revocation.added" and change is not None:  # what a readmission names
            changes.append(("revoked-by", *change[1:], detail["digest"]))
    if event == "volume.recorded" and policy is not None:
        name, value = detail.get("counter_name"), detail.get("counter")
        if isinstance(name, str) and _is_int(value):
            changes.append(("counter", policy, name, value))
    if event == "counter.incremented" and policy is not None:
        fields = [detail.get(k) for k in ("counter", "value", "request", "by")]
        if _is_int(fields[1]) and all(isinstance(fields[i], str) for i in (0, 2, 3)):
            changes.append(("request", policy, *fields))
    return changes


def change_of(event: str, policy: str | None, detail: dict[str, Any]) -> tuple[Any, ...] | None:
    """The floor change an audit entry records, if any."""
    if policy is None:
        return None
    if event == "policy.accepted" and _is_int(detail.get("version")):
        return ("policy", policy, detail["version"])
    if event == "policy.data-key" and isinstance(detail.get("sha256"), str):
        return ("datakey", policy, detail["sha256"])
    if event == "secret.stored":
        name, digest = detail.get("secret"), detail.get("sha256")
        if isinstance(name, str) and isinstance(digest, str):
            return ("secret", policy, name, digest)
        return None
    if event == "counter.incremented" and _is_int(detail.get("value")):
        name = detail.get("counter")
        return ("counter", policy, name, detail["value"]) if isinstance(name, str) else None
    if event == "volume.recorded" and _is_int(detail.get("version")):
        name = detail.get("volume")
        return ("volume", policy, name, detail["version"]) if isinstance(name, str) else None
    if event in ("revocation.added", "revocation.lifted"):
        kind, subject = detail.get("kind"), detail.get("subject")
        if isinstance(kind, str) and isinstance(subject, str):
            verb = "revoke" if event == "revocation.added" else "readmit"
            if kind == "certificate":
                subject = _serial(subject)
            return (verb, policy, kind, subject)
    if event == "certificate.revoked":  # entries written before revocations had kinds
        serial = detail.get("serial")
        return (
            ("revoke", policy, "certificate", _serial(serial)) if isinstance(serial, str) else None
        )
    return None


def _serial(serial: str) -> str:
    """A certificate serial as the list stores it: entries written before the SPM
    refused other spellings name some as they were signed (``0ab`` for ``ab``)."""
    from secfl.spm._records import normalise_serial

    try:
        return normalise_serial(serial)
    except SpmError:
        return serial
