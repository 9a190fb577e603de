"""Cross-references of a policy: every name it uses is defined, once, of the right kind.

Run by :class:`secfl.policy._model.Policy` after pydantic has checked each field;
each problem is a ``ValueError`` whose message starts with the field path.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from secfl.policy import _placeholders as placeholders
from secfl.policy._model import MEASUREMENT_FIELDS, RESERVED_FOLDERS
from secfl.policy._platforms import check_platforms
from secfl.policy._secrets import PUBLIC_SELECTORS, SELECTOR_KINDS
from secfl.tee._claims import TCB_ORDER, Kind

if TYPE_CHECKING:
    from secfl.policy._model import Injection, Policy, Service

__all__ = [
    "JSON_INT_MAX",
    "JSON_INT_MIN",
    "JSON_MAX_ITEMS",
    "JSON_MAX_KEY",
    "JSON_MAX_TEXT",
    "key_path",
]


def key_path(key: str) -> str:
    """A mapping key as a path segment: ``.KEY``, or ``["/etc/app.conf"]`` when needed.

    A key longer than 80 characters is shortened: an error names it, never echoes it.
    """
    if len(key) > 80:
        key = key[:64] + "…"
    if re.fullmatch(r"[A-Za-z0-9_-]+", key):
        return f".{key}"
    quoted = json.dumps(key, ensure_ascii=False)
    try:
        quoted.encode()
    except UnicodeError:  # a lone surrogate: escape everything outside ASCII
        quoted = json.dumps(key)
    return f"[{quoted}]"


def _unique(items: list[Any], where: str) -> dict[str, int]:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.name in seen:
            raise ValueError(f"{where}[{i}].name: duplicate name '{item.name}'")
        seen[item.name] = i
    return seen


def _distinct(values: list[str], where: str, what: str) -> None:
    seen: set[str] = set()
    for i, value in enumerate(values):
        if value in seen:
            raise ValueError(f"{where}[{i}]: duplicate {what} '{value}'")
        seen.add(value)


def _check_kind(secrets: dict[str, Any], name: str, kind: str, where: str) -> None:
    """``kind`` may list alternatives separated by ``|``."""
    secret = secrets.get(name)
    if secret is None:
        raise ValueError(f"{where}: unknown secret '{name}'")
    if secret.kind not in kind.split("|"):
        raise ValueError(
            f"{where}: secret '{name}' is {secret.kind}, not {kind.replace('|', ' or ')}"
        )


def _check_text(value: Any, where: str) -> None:
    texts = [(where, value)] if isinstance(value, str) else []
    if isinstance(value, dict):
        for k, v in value.items():
            texts.append((where + key_path(str(k)), k))
            _check_text(v, where + key_path(str(k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_text(v, f"{where}[{i}]")
    for path, text in texts:
        if isinstance(text, str):
            try:
                text.encode()
            except UnicodeError:
                raise ValueError(
                    f"{path.removeprefix('.')}: text that is not valid Unicode"
                ) from None


#: Bounds of free-form JSON values (``federation``): 64-bit integers, texts, keys, items.
JSON_INT_MIN, JSON_INT_MAX = -(2**63), 2**63 - 1
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
JSON_MAX_TEXT = 65536
JSON_MAX_KEY = 256
JSON_MAX_ITEMS = 4096


def _check_json(value: JsonValue, where: str) -> None:
    """Free-form settings hold finite floats, 64-bit integers and bounded texts only,
    so that every consumer (and every other language) reads them as written."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: {value} is not a finite number")
    if isinstance(value, int) and not isinstance(value, bool):
        if not JSON_INT_MIN <= value <= JSON_INT_MAX:
            raise ValueError(f"{where}: an integer out of range (-2^63 to 2^63-1)")
    elif isinstance(value, str) and len(value) > JSON_MAX_TEXT:
        raise ValueError(f"{where}: text longer than {JSON_MAX_TEXT} characters")
    elif isinstance(value, dict | list) and len(value) > JSON_MAX_ITEMS:
        raise ValueError(f"{where}: more than {JSON_MAX_ITEMS} items")
    if isinstance(value, dict):
        for k, v in value.items():
            if len(k) > JSON_MAX_KEY:
                raise ValueError(f"{where}: a key longer than {JSON_MAX_KEY} characters")
            _check_json(v, where + key_path(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_json(v, f"{where}[{i}]")


def _check_references(p: Policy) -> None:
    """Every cross-reference of ``p``, section by section in document order."""
    _check_version(p)
    members = _unique(p.board.members, "board.members")
    secrets = {s.name: s for s in p.secrets}
    _unique(p.secrets, "secrets")
    volumes = _unique(p.volumes, "volumes")
    counters = _unique(p.counters, "counters")
    _unique(p.services, "services")
    _check_board(p, members)
    _check_platforms(p)
    _check_secrets(p, secrets)
    _check_volumes(p, secrets, counters)
    for i, service in enumerate(p.services):
        _check_service(p, service, f"services[{i}]", secrets, volumes, counters)
    _check_site_keys(p)


def _check_site_keys(p: Policy) -> None:
    """Each site key names one service: a key two services name lets its holder enrol
    as either (a second seat, the very thing site keys stop), and the review shows each
    service's key ID, not which others share it. (Keys are compared as their canonical
    PEM, which the field's validator made them: two spellings of one key match.)"""
    named: dict[str, str] = {}
    for i, service in enumerate(p.services):
        if service.site_key is None:
            continue
        first = named.setdefault(service.site_key, service.name)
        if first != service.name:
            raise ValueError(
                f"services[{i}].site_key: service '{first}' names the same key: its holder "
                "could enrol as either (each service names its own site key)"
            )


def _check_version(p: Policy) -> None:
    """Version 1 has no predecessor; every later version names one."""
    if p.version == 1 and p.predecessor:
        raise ValueError("predecessor: must be empty for version 1")
    if p.version > 1 and not p.predecessor:
        raise ValueError(
            f"predecessor: required for version {p.version} (the digest of version {p.version - 1})"
        )


def _check_board(p: Policy, members: dict[str, int]) -> None:
    """The m-of-n rule can be met, required members exist, and keys are distinct."""
    if p.board.threshold > len(p.board.members):
        raise ValueError(
            f"board.threshold: {p.board.threshold} exceeds the {len(p.board.members)} members"
        )
    for i, name in enumerate(p.board.required):
        if name not in members:
            raise ValueError(f"board.required[{i}]: '{name}' is not a board member")
    _distinct(p.board.required, "board.required", "member")
    if len(set(p.board.required)) > p.board.threshold:
        raise ValueError("board.required: more required members than the threshold")
    _check_board_keys(p)


def _check_platforms(p: Policy) -> None:
    """Each platform accepted once; a simulation has its root; TCB floor is a status."""
    _distinct(list(p.platforms.accept), "platforms.accept", "platform")
    if "simulated" in p.platforms.accept and not p.platforms.simulation_root:
        raise ValueError("platforms.simulation_root: required when 'simulated' is accepted")
    if TCB_ORDER.index(p.platforms.min_tcb_status) >= TCB_ORDER.index("unknown"):
        raise ValueError("platforms.min_tcb_status: use allow_unknown_tcb for 'unknown'")
    check_platforms(p.platforms)


def _check_secrets(p: Policy, secrets: dict[str, Any]) -> None:
    """The identity CA is a CA; each certificate names a CA and renews before it expires."""
    _check_kind(secrets, p.identity_ca, "x509-ca", "identity_ca")
    for i, secret in enumerate(p.secrets):
        if secret.kind == "x509":
            _check_kind(secrets, secret.issuer, "x509-ca", f"secrets[{i}].issuer")
            if secret.renew_before_days >= secret.validity_days:
                raise ValueError(
                    f"secrets[{i}].renew_before_days: must be less than validity_days "
                    f"({secret.validity_days})"
                )


def _check_volumes(p: Policy, secrets: dict[str, Any], counters: dict[str, int]) -> None:
    """Each volume's key is a 32-byte key (the SPM's own aes-256, or the data owner's,
    imported) and its counter exists."""
    for i, volume in enumerate(p.volumes):
        _check_kind(secrets, volume.key, "aes-256|imported", f"volumes[{i}].key")
        if volume.counter is not None and volume.counter not in counters:
            raise ValueError(f"volumes[{i}].counter: unknown counter '{volume.counter}'")
    _check_volume_keys(p)


def _check_service(
    p: Policy,
    service: Service,
    where: str,
    secrets: dict[str, Any],
    volumes: dict[str, int],
    counters: dict[str, int],
) -> None:
    """A service's measurements are for accepted platforms, it names existing volumes,
    counters and secrets once each (never the identity CA), and its injection is sound."""
    for kind in service.measurements:
        if kind not in p.platforms.accept:
            raise ValueError(
                f"{where}.measurements.{kind}: platform '{kind}' is not in platforms.accept"
            )
        for j, entry in enumerate(service.measurements[kind]):
            _check_identity(kind, entry, f"{where}.measurements.{kind}[{j}]")
    for field, names, known, what in (
        ("volumes", service.volumes, volumes, "volume"),
        ("counters", service.counters, counters, "counter"),
        ("secrets", service.secrets, secrets, "secret"),
    ):
        for j, name in enumerate(names):
            if name not in known:
                raise ValueError(f"{where}.{field}[{j}]: unknown {what} '{name}'")
            if field == "secrets" and name == p.identity_ca:
                raise ValueError(
                    f"{where}.secrets[{j}]: '{name}' is the identity CA: listing it releases its "
                    f"private key, which would let the workload issue any service's "
                    f"certificate; inject $$SECFL::{name}:crt$$ instead"
                )
        _distinct(names, f"{where}.{field}", what)
    _check_injection(p, secrets, service.inject, f"{where}.inject")


def _check_injection(p: Policy, secrets: dict[str, Any], inject: Injection, where: str) -> None:
    """What a service is injected with: file paths the launcher can write, texts that
    an argument, a variable or a file can carry, placeholders that may go there."""
    for name in inject.env:
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"{where}.env{key_path(name)}: not a valid environment variable name")
    _check_file_paths(list(inject.files), f"{where}.files")
    fields = [
        *((f"{where}.args[{j}]", t, True) for j, t in enumerate(inject.args)),
        *((f"{where}.env{key_path(k)}", t, False) for k, t in inject.env.items()),
        *((f"{where}.files{key_path(k)}", t, False) for k, t in inject.files.items()),
    ]
    for path, text, on_command_line in fields:
        if "\0" in text:
            raise ValueError(
                f"{path}: a NUL character, which an injected argument, variable or file "
                "may not hold: remove it (inject binary data as a secret, with :hex or :base64)"
            )
        try:
            found = list(placeholders.find(text))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        for ph in found:
            _check_placeholder(p, secrets, ph, path, on_command_line)


def _check_file_paths(paths: list[str], where: str) -> None:
    """Injected files go into ``SECFL_FILES`` (see :mod:`secfl.launcher._inject`): each
    path names a file (absolute, clean, no trailing ``/``) outside the launcher's own
    folders, and no injected file is a folder of another."""
    seen: dict[PurePosixPath, str] = {}
    for path in paths:
        at = f"{where}{key_path(path)}"
        if (
            not path.startswith("/")
            or "/../" in f"{path}/"
            or "/./" in f"{path}/"
            or "//" in path
            or "\0" in path
        ):
            raise ValueError(f"{at}: must be an absolute clean path")
        if path.endswith("/"):
            raise ValueError(f"{at}: a file path cannot end with '/': name the file")
        rel = PurePosixPath(path.lstrip("/"))
        if rel.parts[0] in RESERVED_FOLDERS:
            raise ValueError(
                f"{at}: '{rel.parts[0]}' is the launcher's own folder in SECFL_FILES: "
                "choose another path"
            )
        for other, other_path in seen.items():
            if other in rel.parents or rel in other.parents:
                inner, outer = (path, other_path) if other in rel.parents else (other_path, path)
                raise ValueError(
                    f"{where}{key_path(inner)}: needs {_quoted(outer)} to be a folder, but that "
                    "is an injected file too: give each injected file its own path"
                )
        seen[rel] = path


def _quoted(path: str) -> str:
    """A path quoted (and bounded) as :func:`key_path` does: ``"/a/b"``."""
    return key_path(path)[1:-1]  # a path holds '/': always the ``["..."]`` form


def _check_volume_keys(p: Policy) -> None:
    """A counter-protected volume has a key of its own: a volume's records (its
    version at the SPM) are looked up by name, so a file of another volume under the
    same key would open as this one and have its version recorded for it."""
    for i, volume in enumerate(p.volumes):
        if volume.counter is None:
            continue
        other = next((v for v in p.volumes if v.key == volume.key and v is not volume), None)
        if other is not None:
            raise ValueError(
                f"volumes[{i}].key: volume '{volume.name}' is rollback-protected by a counter "
                f"but shares key '{volume.key}' with volume '{other.name}', whose file would "
                "open as this one: give it a key of its own"
            )


def _check_placeholder(
    p: Policy,
    secrets: dict[str, Any],
    ph: placeholders.Placeholder,
    path: str,
    on_command_line: bool,
) -> None:
    """A placeholder names a secret it can render, never the identity CA's key, and
    nothing secret on a command line."""
    secret = secrets.get(ph.name)
    if secret is None:
        raise ValueError(f"{path}: placeholder names unknown secret '{ph.name}'")
    allowed = SELECTOR_KINDS.get(ph.selector or "")
    if allowed is not None and secret.kind not in allowed:
        raise ValueError(
            f"{path}: selector ':{ph.selector}' does not apply to secret "
            f"'{ph.name}' ({secret.kind})"
        )
    public = ph.selector in PUBLIC_SELECTORS.get(secret.kind, frozenset())
    if ph.name == p.identity_ca and not public:
        raise ValueError(
            f"{path}: '{ph.text}' releases the private key of the identity CA '{ph.name}', "
            f"which would let the workload issue any service's certificate; use "
            f"$$SECFL::{ph.name}:crt$$"
        )
    # On a command line, only a part named explicitly public (as the launcher checks).
    if on_command_line and (ph.selector is None or not public):
        raise ValueError(
            f"{path}: '{ph.text}' is not a public part (:crt, :chain or :pub) and a command "
            "line is readable by every local user (ps); inject secrets through inject.env "
            "or inject.files"
        )


def _check_board_keys(p: Policy) -> None:
    """One key, one member; recovery keys (if any) for at least ``threshold`` members.

    A key listed twice would count twice toward the m-of-n rule, and shares of the
    policy's data key sealed to one recovery key twice would let its holder recover
    with fewer members than the board's threshold. With fewer recovery keys than the
    threshold the SPM could only lower the threshold to split the key at all.
    """
    for field in ("public_key", "recovery_key"):
        seen: dict[str, int] = {}
        for i, member in enumerate(p.board.members):
            key = getattr(member, field)
            if key is None:
                continue
            if key in seen:
                raise ValueError(
                    f"board.members[{i}].{field}: the same key as board.members[{seen[key]}]; "
                    "each member needs a key of their own"
                )
            seen[key] = i
    holders = sum(1 for m in p.board.members if m.recovery_key is not None)
    if 0 < holders < p.board.threshold:
        raise ValueError(
            f"board.members: {holders} member(s) have a recovery_key, fewer than the threshold "
            f"({p.board.threshold}): give at least {p.board.threshold} members a recovery_key, "
            "or none"
        )


def _check_identity(kind: Kind, entry: str | dict[str, str | int], where: str) -> None:
    if isinstance(entry, str):
        if not re.fullmatch(r"[0-9a-fA-F]{64,96}", entry):
            raise ValueError(f"{where}: '{entry}' is not a hex measurement")
        return
    if not entry:
        raise ValueError(f"{where}: an identity needs at least one claim field")
    for field in entry:
        if field not in MEASUREMENT_FIELDS[kind]:
            raise ValueError(
                f"{where}{key_path(field)}: '{field}' is not a {kind} claim field "
                f"(one of {', '.join(sorted(MEASUREMENT_FIELDS[kind]))})"
            )
