"""What a policy grants, as a board member reviews it before signing.

The YAML is what its author wrote; :func:`review` is what the SPM will do with it,
read back from the validated model: who approves the next version (with each key's
fingerprint, recovery keys included: a recovery key is a share of every secret), which
evidence is accepted, and for each service the code it pins, every secret and part
it receives (a volume's key included), where it is injected, and the volumes it opens;
every secret's whole definition; the federation settings. ``secfl policy show`` prints
it; ``--against`` prints what changed from the version a new one replaces.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from typing import Any

from secfl._internal.canonical import canonical_json
from secfl._internal.values import shown
from secfl.policy import _keys as keys
from secfl.policy._canonical import digest
from secfl.policy._model import Policy, Service
from secfl.policy._platforms import platform_warnings

__all__ = ["review", "review_diff"]


def review(policy: Policy) -> list[str]:
    """The policy as lines of text: everything the SPM honours, in a fixed order."""
    lines = [
        f"policy {policy.name} version {policy.version}, digest {digest(policy)}",
        f"replaces: {policy.predecessor or '(nothing: the first version)'}",
    ]
    board = policy.board
    required = f", always including {', '.join(board.required)}" if board.required else ""
    lines.append(f"board: {board.threshold} of {len(board.members)}{required}")
    for member in board.members:
        signing = keys.key_id(keys.load_public(member.public_key))
        recovery = (
            keys.key_id(keys.load_recovery_public(member.recovery_key))
            if member.recovery_key
            else "none"
        )
        lines.append(f"  {member.name}: signing key {signing}, recovery key {recovery}")
    platforms = policy.platforms
    evaluation = platforms.min_tcb_evaluation_data_number
    unknown = platforms.allow_unknown_tcb
    unknown_text = (
        ("accepted" if unknown else "refused")
        if isinstance(unknown, bool)
        else f"accepted for {', '.join(unknown)} only"
    )
    unchecked_crl = "; SEV-SNP unchecked against AMD's CRLs (--no-amd-crl) accepted"
    lines.append(
        f"platforms: {', '.join(platforms.accept)}; minimum TCB {platforms.min_tcb_status}"
        f"{'' if evaluation is None else f' (Intel: TCB evaluation {evaluation} or later)'}; "
        f"unknown TCB {unknown_text}; debug "
        f"{'accepted' if platforms.allow_debug else 'refused'}"
        f"{'; evidence must name its machine' if platforms.require_platform_id else ''}"
        f"{unchecked_crl if platforms.allow_unchecked_amd_crl else ''}"
    )
    for product, floor in (platforms.min_snp_tcb or {}).items():
        levels = ", ".join(f"{k}={v}" for k, v in floor.levels().items())
        lines.append(f"  SEV-SNP {product}: reported TCB at least {levels}")
    lines.extend(f"  warning: {text}" for text in platform_warnings(platforms))
    if platforms.simulation_root:
        root = hashlib.sha256(platforms.simulation_root.encode()).hexdigest()
        lines.append(f"  simulation root (PEM sha256): {root}")
    lines.append(f"identity CA: {policy.identity_ca}")
    for service in policy.services:
        lines.extend(_service(policy, service))
    lines.append("secrets:")
    for secret in policy.secrets:
        lines.append(f"  {secret.name}: {_definition(secret.model_dump(mode='json'))}")
    lines.append("volumes:")
    for volume in policy.volumes:
        pin = f"tag {volume.tag}" if volume.tag else f"newest release, counter {volume.counter}"
        lines.append(f"  {volume.name}: {volume.kind}, key {volume.key}, {pin}")
    lines.append(f"counters: {', '.join(c.name for c in policy.counters) or '(none)'}")
    # one setting a line: on one line, every version's new run number changed the whole
    # line, and a strategy turned from clone-audit to fedavg hid in it (found by a review)
    lines.append("federation:" if policy.federation else "federation: (none)")
    for key, value in sorted(policy.federation.items()):
        lines.append(f"  {shown(canonical_json({key: value}).decode()[1:-1])}")
    return lines


def _quoted(text: str) -> str:
    """``text`` as a JSON string, every invisible character escaped."""
    return shown(canonical_json(text).decode())


def _definition(fields: dict[str, Any]) -> str:
    """A secret's whole definition on one line: its kind, then every field it sets
    (an imported secret's sealed value as its SHA-256). A review that showed only the
    kind let a new version swap the model owner's imported key for one its proposer
    sealed, or add a certificate name, unseen (found by a review)."""
    kind = fields.pop("kind")
    fields.pop("name", None)
    sealed = fields.pop("sealed", None)
    shown_fields = [f"{k}={shown(canonical_json(v).decode())}" for k, v in sorted(fields.items())
                    if v is not None]  # fmt: skip
    if sealed is not None:
        digest_ = hashlib.sha256(str(sealed).encode()).hexdigest()
        shown_fields.insert(0, f"sealed value sha256 {digest_}")
    return ", ".join([kind, *shown_fields])


def _service(policy: Policy, service: Service) -> list[str]:
    lines = [f"service {service.name} (role {service.role})"]
    for kind in sorted(service.measurements):
        for identity in service.identities(kind):
            pins = ", ".join(f"{k}={v}" for k, v in sorted(identity.items()))
            lines.append(f"  accepts {kind}: {pins}")
    parts = service.released_parts()
    for name in service.volumes:  # opening a volume is receiving its key
        volume = policy.volume(name)
        if volume is not None:
            parts.setdefault(volume.key, set()).add("*")
    for name in sorted(parts):
        listed = sorted("whole" if p in ("*", None) else str(p) for p in parts[name])
        lines.append(f"  receives {name}: {', '.join(dict.fromkeys(listed))}")
    lines.append(f"  opens volumes: {', '.join(service.volumes) or '(none)'}")
    lines.append(f"  moves counters: {', '.join(service.counters) or '(none)'}")
    lines.append(f"  certificates last: {service.certificate_ttl} s")
    # who may enrol as it: a site's key swapped for the proposer's must show
    if service.site_key is None:
        lines.append("  site key: (none: any host whose TEE it accepts may enrol as it)")
    else:
        key = keys.load_public(service.site_key)
        lines.append(f"  site key: {keys.key_kind(key)} {keys.key_id(key)}")
    # where each secret lands, as written (a variable or a file the host may read?)
    # (names and texts as JSON strings: "a = b" = "c" and "a" = "b = c" read apart)
    for name, text in sorted(service.inject.env.items()):
        lines.append(f"  injects env {_quoted(name)} = {_quoted(text)}")
    for path, text in sorted(service.inject.files.items()):
        lines.append(f"  injects file {_quoted(path)} = {_quoted(text)}")
    for i, text in enumerate(service.inject.args):
        lines.append(f"  injects argument {i} = {_quoted(text)}")
    return lines


def review_diff(old: Policy, new: Policy) -> list[str]:
    """What changes from ``old`` to ``new`` (unified diff of their reviews). Each hunk
    names, after its ``@@`` line numbers, the section its first lines belong to (``service
    col (role collaborator)``): a service's lines do not name it, and with one line of
    context ``+  receives model-signing: key`` did not say which service got the key
    (found by a review)."""
    before, after = review(old), review(new)
    # each line compared with its section's name: the same line in 200 services (a
    # variable each site gets) made difflib's matching quadratic, minutes for a
    # document of under 1 MiB a proposer wrote (found by a review)
    lines = list(
        difflib.unified_diff(
            _keyed(before), _keyed(after), f"version {old.version}", f"version {new.version}",
            lineterm="", n=1,
        )
    )  # fmt: skip
    for i, line in enumerate(lines):
        found = _HUNK.fullmatch(line)
        if found is None:
            if i > 1:  # past the '---' and '+++' lines: a line of a review, keyed
                size, _, rest = line[1:].partition(" ")
                lines[i] = line[0] + rest[int(size) :]
            continue
        was = _section(before, int(found["old"]) - (found["old_count"] != "0"))
        now = _section(after, int(found["new"]) - (found["new_count"] != "0"))
        named = (
            f"{was} (version {new.version}: {now})" if was and now and was != now else was or now
        )
        if named:
            lines[i] = f"{line} {shown(named)}"
    return lines


#: A unified diff's hunk line, ``@@ -21,3 +21,3 @@`` (a count of 1 left out).
_HUNK = re.compile(
    r"@@ -(?P<old>\d+)(?:,(?P<old_count>\d+))? \+(?P<new>\d+)(?:,(?P<new_count>\d+))? @@"
)


def _keyed(lines: list[str]) -> list[str]:
    """Each line of a review after the line that heads its section, and that line's
    length: ``15 service col (...)  receives tls: crt``."""
    out, head = [], ""
    for line in lines:
        if not line.startswith(" "):
            head = line
        out.append(f"{len(head)} {head}{line}")
    return out


def _section(lines: list[str], first: int) -> str:
    """The section (the line that heads it) that line ``first`` (0-based) belongs to, or
    "" when that line heads one itself (or there is none)."""
    if 0 <= first < len(lines) and not lines[first].startswith(" "):
        return ""
    return next((lines[j] for j in range(min(first, len(lines)) - 1, -1, -1)
                 if not lines[j].startswith(" ")), "")  # fmt: skip
