"""What verified Intel collateral and AMD CRLs must never go back on, kept across restarts.

Once a copy of a platform's collateral has verified, the SPM takes none older
(:class:`~secfl.spm._collateral.CollateralSource`): not a TCB info or QE identity of
a lower ``tcbEvaluationDataNumber``, not a CRL issued earlier. Kept only in memory,
those floors would be gone at every restart, and the host (which serves the PCCS and
the cache) could then roll the SPM back to collateral from before a TCB recovery or a
revocation, for as long as its dates allowed (a TCB info's: 30 days).

So each raise is written to the SPM's audit log (``collateral.verified``), which is
hash-chained, MAC'd and anchored outside the database (:mod:`secfl.spm._integrity`):
at start the floors are rebuilt by replaying it, like the counters' and the policy
versions', and a log rolled back to before a raise is refused as a whole.

AMD's CRLs (``secfl spm serve --amd-crl DIR``, :mod:`secfl.spm._amd_crl`) come from
a folder the host fills, so the same holds for them: once one of a key kind and
product line verified, none issued earlier is taken (:func:`amd_record_of`, the key
``("amd-crl", kind, product)``), else the host could put back a CRL from before a
revocation, still within its dates.
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from secfl.spm._groupcommit import GroupCommit
    from secfl.spm._integrity import Floors
    from secfl.spm._store import Store
    from secfl.spm._tx import Tx

__all__ = [
    "EVENT",
    "AuditedFloors",
    "CollateralFloors",
    "MemoryFloors",
    "amd_record_of",
    "floors_of",
]

#: The audit event that records a raise (written by the SPM itself: an aggregator's
#: events are all ``fl.*``).
EVENT = "collateral.verified"

#: A floor's key: ("tcb", TEE, FMSPC), ("qe", TEE), ("crl", CA), ("crl", "root"), or
#: ("amd-crl", KIND, PRODUCT) (an AMD CRL's thisUpdate, seconds since the epoch).
Key = tuple[str, ...]

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: Above any TCB evaluation number or CRL time (seconds) there will be.
_MAX = 2**53


class CollateralFloors(Protocol):
    """Where a :class:`~secfl.spm._collateral.CollateralSource` keeps its floors."""

    def refresh(self) -> None:
        """Learn what was verified elsewhere (other SPMs sharing the database)."""
        ...

    def get(self, key: Key) -> int:
        """The floor of ``key`` (0 when nothing was verified yet)."""
        ...

    def hold(self, record: dict[str, Any]) -> None:
        """Raise the floors in memory to those of ``record`` (:func:`record_of`) where
        higher, at once (called under the source's lock)."""
        ...

    def persist(self, record: dict[str, Any]) -> None:
        """Keep what :meth:`hold` raised (it may commit: called outside the lock)."""
        ...


def record_of(
    tee: str, fmspc: str, ca: str, tcb: int, qe: int, pck_crl: int, root_crl: int
) -> dict[str, Any]:
    """The audit detail of a platform's verified collateral: its floors, named."""
    return {
        "tee": tee,
        "fmspc": fmspc,
        "ca": ca,
        "tcb_evaluation": tcb,
        "qe_evaluation": qe,
        "pck_crl_issued": pck_crl,
        "root_crl_issued": root_crl,
    }


def amd_record_of(kind: str, product: str, this_update: int) -> dict[str, Any]:
    """The audit detail of a verified AMD CRL of ``kind`` (vcek/vlek) and ``product``."""
    return {"amd_crl": kind, "product": product, "this_update": this_update}


def floors_of(detail: dict[str, Any]) -> list[tuple[Key, int]]:
    """The floors a :func:`record_of` or :func:`amd_record_of` detail sets; none from a
    malformed one (the log is the SPM's own, verified before this reads it: this only
    keeps it from crashing)."""
    if "amd_crl" in detail:
        kind, product, value = (detail.get(k) for k in ("amd_crl", "product", "this_update"))
        if (
            kind in ("vcek", "vlek")
            and isinstance(product, str)
            and _NAME.fullmatch(product)
            and type(value) is int
            and 0 <= value < _MAX
        ):
            return [(("amd-crl", kind, product), value)]
        return []
    names = [detail.get(k) for k in ("tee", "fmspc", "ca")]
    values = [
        detail.get(k) for k in ("tcb_evaluation", "qe_evaluation", "pck_crl_issued",
                                "root_crl_issued")
    ]  # fmt: skip
    tee, fmspc, ca = (n if isinstance(n, str) and _NAME.fullmatch(n) else "" for n in names)
    numbers = [v if type(v) is int and 0 <= v < _MAX else -1 for v in values]
    if not (tee and fmspc and ca) or min(numbers) < 0:
        return []
    keys: list[Key] = [("tcb", tee, fmspc), ("qe", tee), ("crl", ca), ("crl", "root")]
    return list(zip(keys, numbers, strict=True))


class MemoryFloors:
    """Floors in memory only (a client checking an SPM; tests)."""

    def __init__(self) -> None:
        self._values: dict[Key, int] = {}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        pass

    def get(self, key: Key) -> int:
        return self._values.get(key, 0)

    def hold(self, record: dict[str, Any]) -> None:
        with self._lock:
            for key, value in floors_of(record):
                self._values[key] = max(value, self._values.get(key, 0))

    def persist(self, record: dict[str, Any]) -> None:
        pass


class AuditedFloors:
    """The SPM's floors: its :class:`~secfl.spm._integrity.Floors`' (rebuilt from the
    audit log at start, raised by what other SPMs sharing the database log), raised by
    a ``collateral.verified`` entry committed before the quote that raised them is
    answered.

    A raise holds in this SPM's memory from the moment the copy verified, whether or
    not its entry commits: a host that makes that commit fail must not win back the
    older copy. The entry is written again at the next verification until it commits.
    """

    def __init__(self, store: Store, group: GroupCommit) -> None:
        assert store.integrity is not None
        self._store = store
        self._floors: Floors = store.integrity.floors
        self._group = group
        #: Raised here, committed or not (each key a platform of a genuine quote).
        self._seen: dict[Key, int] = {}
        self._seen_lock = threading.Lock()
        #: One raise written at a time: the next one finds it committed, not again.
        self._lock = threading.Lock()

    def refresh(self) -> None:
        self._store.sync()  # one read of the audit head; the log only when it moved

    def get(self, key: Key) -> int:
        return max(self._floors.collateral.get(key, 0), self._seen.get(key, 0))

    def _above(self, marks: list[tuple[Key, int]]) -> list[tuple[Key, int]]:
        return [(k, v) for k, v in marks if v > self._floors.collateral.get(k, 0)]

    def hold(self, record: dict[str, Any]) -> None:
        with self._seen_lock:
            for key, value in floors_of(record):
                self._seen[key] = max(value, self._seen.get(key, 0))

    def persist(self, record: dict[str, Any]) -> None:
        marks = floors_of(record)
        if not self._above(marks):
            return  # the usual case: the copy verified is one the log already holds
        with self._lock:
            if not self._above(marks):
                return  # written meanwhile

            def log(tx: Tx) -> None:
                above = self._above(marks)  # the transaction caught up with other SPMs
                if above:
                    tx.audit.append(EVENT, None, record)
                    for key, value in above:
                        tx.note(("collateral", key, value))

            self._group.run(log)
