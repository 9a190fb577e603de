"""Revocation by the board: sign, submit and list (``secfl policy sign-revocation``,
``secfl revoke``, ``secfl revocations``; ``secfl policy revoke`` and ``secfl policy
revocations`` are the same commands).

What is revoked is named by ``--service NAME`` (a whole service: none of its
sessions count and it cannot attest again until readmitted), ``--serial HEX`` (one
certificate; ``--service`` then says whose), or ``--kind KIND --subject ID`` (any
kind, including a measurement or a platform). Every member signs with the same
flags and compares the printed digest; the submitter gives those flags again with
the signatures. ``secfl revocations`` also lists the clone audit's revocation
requests from the audit log, with the commands the board runs to act on one.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from secfl.cli._common import err, out, read_input, replaces_file, write_output
from secfl.cli._expires import (
    SIGNATURE_DAYS,
    Expires,
    expires_after,
    signature_expires,
    with_expires,
)
from secfl.cli._revocation_statement import (
    digest_of,
    revocation_statement,
    statement_from_flags,
    with_lifts,
)
from secfl.cli.audit import printable
from secfl.cli.status import policy_name, when
from secfl.errors import UsageError

if TYPE_CHECKING:
    from secfl.spm.client import SpmClient

__all__ = [
    "next_commands",
    "revocation_statement",
    "revocations_cmd",
    "revoke_cmd",
    "sign_revocation_cmd",
    "statement_from_flags",
    "with_lifts",
]

PolicyName = Annotated[
    str, typer.Option("--policy", metavar="NAME", help="The policy's name at the SPM.")
]
Kind = Annotated[
    str | None,
    typer.Option(metavar="KIND", help="service|certificate|measurement|platform (with --subject)."),
]
Subject = Annotated[
    str | None,
    typer.Option(
        metavar="ID", help="With --kind: a service name, or a serial, measurement or platform ID."
    ),
]
Serial = Annotated[
    str | None,
    typer.Option(metavar="HEX", help="Revoke this certificate (its serial: hex, 0x, colons)."),
]
ServiceOpt = Annotated[
    str | None,
    typer.Option(
        "--service",
        metavar="NAME",
        help="Revoke this service; with --serial or --kind, the service it concerns.",
    ),
]
SpmUrl = Annotated[str, typer.Option("--spm", help="SPM URL, https://HOST:PORT.")]
SpmPin = Annotated[str, typer.Option(help="SHA-256 of the SPM's TLS key (`secfl spm verify`).")]
Reason = Annotated[str, typer.Option(help="Why (one line, signed with the statement).")]
Readmit = Annotated[bool, typer.Option("--readmit", help="Lift the revocation instead.")]
Lifts = Annotated[
    str | None,
    typer.Option(
        metavar="DIGEST",
        help="With --readmit: the digest of the revocation it lifts (`secfl revocations`).",
    ),
]
UnknownService = Annotated[
    bool,
    typer.Option(
        "--unknown-service",
        help="Submit even if the current policy has no service of that name (for later versions).",
    ),
]


def _check_service_name(
    client: SpmClient, policy: str, statement: dict[str, str], *, allow: bool
) -> None:
    """Refuse revoking a service the current policy lacks: a typo there keeps no one
    out while the submitter believes the service revoked. With ``allow`` (a name revoked
    ahead of a version that will have it) it is only said."""
    from secfl.errors import SecflError
    from secfl.policy._document import load_policy

    if statement["kind"] != "service":
        return  # another kind's --service only says whose: the revocation holds anyway
    name = statement["subject"]
    try:
        current = load_policy(str(client.policy(policy).get("document") or ""))
    except SecflError:
        return  # no policy yet at the SPM: nothing to check the names against
    known = sorted(s.name for s in current.services)
    if name in known:
        return
    where = (
        f"version {current.version} of policy {policy} has no service '{name}' "
        f"(its services: {', '.join(known)})"
    )
    if not allow:
        raise UsageError(
            f"revoke: {where}: this revocation would keep no one out; check the name "
            "the members signed, or add --unknown-service to revoke it for later versions"
        )
    err.print(f"warning: {where}; this revocation matches no service of it today", markup=False)


def _what(statement: dict[str, str], policy: str) -> str:
    return f"{statement['kind']} {statement['subject']} of policy {policy}"


def sign_revocation_cmd(
    policy: PolicyName,
    key: Annotated[str, typer.Option(help="Your board signing key (PEM).")],
    member: Annotated[str, typer.Option(help="Your board member name.")],
    output: Annotated[
        str, typer.Option("--output", "-o", help="Your signature file (- for stdout).")
    ],
    service: ServiceOpt = None,
    serial: Serial = None,
    kind: Kind = None,
    subject: Subject = None,
    reason: Reason = "",
    readmit: Readmit = False,
    lifts: Lifts = None,
    expires: Expires = None,
    board: Annotated[
        str | None,
        typer.Option(
            "--board",
            metavar="FILE",
            help="The policy's current version (YAML): refuse a key that is not MEMBER's "
            "on its board before signing.",
        ),
    ] = None,
) -> None:
    """Approve, as a board member, revoking (or with --readmit, readmitting) a service,
    certificate, measurement or platform: write your signature over the statement.

    Every member signs with the same flags; the digest printed lets you compare. With
    --board, a key that is not MEMBER's on that version's board (which the SPM checks
    the signatures against) is refused here, not when the statement is submitted. With
    --expires, the SPM does not apply the statement after that time: one signed and
    abandoned, or held back by a member, cannot be submitted when no one means it;
    without it, your signature counts for 30 days."""
    from datetime import UTC, datetime

    from secfl.policy import _keys as keys
    from secfl.policy._signatures import REVOCATION_DOMAIN, sign_statement

    statement = statement_from_flags(kind, subject, serial, service, reason, readmit)
    statement = with_lifts(statement, lifts)
    now = datetime.now(UTC)
    statement = with_expires(statement, expires, now=now)
    # without a statement's expiry, the signature has its own (the digest is unchanged)
    until = None if expires is not None else signature_expires(f"{SIGNATURE_DAYS}d", now)
    statement_digest = digest_of(policy, statement)
    if output != "-" and replaces_file(output, key):
        raise UsageError(f"--output: '{output}' is your key file; name another file")
    private = keys.load_private(read_input(key, "signing key"))
    if board is not None:
        _check_board(board, policy, member, private)
    signature = sign_statement(REVOCATION_DOMAIN, statement_digest, private, member, until)
    write_output(signature.to_json().encode(), output)
    if output != "-":
        verb = "readmission" if readmit else "revocation"
        out.print(
            f"{output}: {member} signed the {verb} of {_what(statement, policy)}, "
            f"digest {statement_digest}",
            markup=False,
        )
    if until is not None:
        err.print(
            f"note: without --expires the statement does not expire, but your signature "
            f"counts only until {until} ({SIGNATURE_DAYS} days); --expires WHEN (the same "
            "for every member) bounds the statement instead",
            markup=False,
        )


def _check_board(path: str, policy: str, member: str, private: Any) -> None:
    """``--board``: the policy version in ``path`` must be ``policy``'s, and ``private``
    ``member``'s key on its board (a signature by another key is refused by the SPM,
    and with it the whole statement, only when it is submitted)."""
    from secfl.policy._document import load_policy
    from secfl.policy._signatures import check_signer

    current = load_policy(read_input(path, "board policy"))
    if current.name != policy:
        raise UsageError(
            f"--board: '{path}' is policy '{current.name}', not '{policy}': give the "
            f"current version of '{policy}'"
        )
    check_signer(current.board, member, private, previous=False, versions=False)


def revoke_cmd(
    policy: PolicyName,
    sig: Annotated[list[str], typer.Option("--sig", help="A board member's signature file.")],
    spm: SpmUrl,
    spm_pin: SpmPin,
    service: ServiceOpt = None,
    serial: Serial = None,
    kind: Kind = None,
    subject: Subject = None,
    reason: Reason = "",
    readmit: Readmit = False,
    lifts: Lifts = None,
    expires: Expires = None,
    unknown_service: UnknownService = False,
) -> None:
    """Submit a board-signed revocation (or readmission) to a pinned SPM.

    Give the same flags the members signed with (`secfl policy sign-revocation`). A
    service name the current policy lacks is refused (a typo would keep no one out)
    unless --unknown-service says it is meant for a later version."""
    from secfl.errors import PolicyError
    from secfl.policy._signatures import REVOCATION_DOMAIN, Signature
    from secfl.spm.client import SpmClient

    statement = statement_from_flags(kind, subject, serial, service, reason, readmit)
    statement = with_lifts(statement, lifts)
    statement = with_expires(statement, expires)
    statement_digest = digest_of(policy, statement)
    signatures = []
    for path in sig:
        try:
            signature = Signature.from_json(read_input(path, "signature"))
        except PolicyError as exc:
            problem = str(exc).removeprefix("signature: ")
            raise PolicyError(f"signature: '{path}': {problem}") from None
        if signature.domain != REVOCATION_DOMAIN or signature.digest != statement_digest:
            raise PolicyError(
                f"signature: '{path}' is not over this statement (digest "
                f"{signature.digest[:16]}…, these flags give {statement_digest[:16]}…); "
                "every member signs with the same flags"
            )
        signatures.append(signature)
    with SpmClient(spm, pin=spm_pin) as client:
        if not readmit:
            _check_service_name(client, policy, statement, allow=unknown_service)
        client.revoke(policy, statement, signatures)
    verb = "readmitted" if readmit else "revoked"
    out.print(f"{verb}: {_what(statement, policy)}", markup=False)


def revocations_cmd(policy: PolicyName, spm: SpmUrl, spm_pin: SpmPin) -> None:
    """List what the board revoked in a policy (kind, subject, service, reason, when),
    then the clone audit's revocation requests and the commands that act on them."""
    from secfl.spm.client import SpmClient

    name = policy_name(policy)
    with SpmClient(spm, pin=spm_pin) as client:
        rows = client.revocations(name)
        status = client.status(name)
    if not rows:
        out.print(f"no revocations in policy {name}", markup=False)
    else:
        columns = ("kind", "subject", "service", "at", "reason", "digest")
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in columns:
            table.add_column(column.upper(), overflow="fold")
        for row in rows:
            table.add_row(*(Text(printable(row.get(c, "")) or "-") for c in columns))
        out.print(table)
    _requests(name, spm, spm_pin, status)


def _requests(policy: str, spm: str, pin: str, status: dict[str, Any]) -> None:
    """The clone audit's revocation requests, newest first, and what to run next."""
    requests = [f for f in status["findings"] if f["requested"]]
    if not requests:
        out.print("no revocation requests from the clone audit", markup=False)
        return
    out.print("revocation requests from the clone audit, newest first:", markup=False)
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ROUND", "SERVICES", "SERIALS", "REQUESTED (UTC)", "BY", "STATE"):
        table.add_column(column, overflow="fold")
    for f in requests:
        serials = ", ".join(f"{k} {v}" for k, v in sorted(f["serials"].items())) or "-"
        table.add_row(
            "-" if f["round"] is None else str(f["round"]),
            Text(printable(", ".join(f["excluded"]) or "-")),
            Text(printable(serials)), when(f["at"]), Text(printable(f["service"] or "-")),
            f["state"] or "-",
        )  # fmt: skip
    out.print(table)
    pending = [f for f in requests if f["state"] == "pending"]
    if not pending:
        return
    members = [printable(m, 128) for m in status["policy"]["approvers"]] or ["MEMBER"]
    out.print(
        "to act on a pending request, enough board members (as for the policy: "
        f"{', '.join(members)}) each sign as MEMBER, then one submits:",
        markup=False,
    )
    seen: set[str] = set()
    for finding in pending:
        for service in finding["excluded"]:
            if service in seen:  # the newest request for a service is the one to act on
                continue
            seen.add(service)
            for line in next_commands(policy, service, finding, spm, pin, members):
                out.print(f"  {printable(line, 4096)}", markup=False, soft_wrap=True)


def next_commands(
    policy: str, service: str, finding: dict[str, Any], spm: str, pin: str, members: list[str]
) -> list[str]:
    """The two commands that revoke ``service`` as a request asked: each member signs
    (as ``MEMBER``), then one submits the ``members``' signatures. The reason names the
    request, so each decision is a statement of its own (the SPM applies one once);
    it expires :data:`~secfl.cli._expires.REQUEST_DAYS` days after the request."""
    round_text = f"round {finding['round']}, " if finding["round"] is not None else ""
    reason = f"clone audit: {round_text}audit entry {finding['seq']}"
    what = ["--policy", policy, "--service", service, "--reason", reason]
    until = expires_after(finding.get("at"))
    if until is not None:  # every member gets the same date from the request
        what += ["--expires", until]
    sigs = [arg for m in members for arg in ("--sig", f"{m}.{service}.rev.sig")]
    return [
        shlex.join(["secfl", "policy", "sign-revocation", *what, "--key", "MEMBER.key",
                    "--member", "MEMBER", "-o", f"MEMBER.{service}.rev.sig"]),
        shlex.join(["secfl", "revoke", *what, *sigs, "--spm", spm, "--spm-pin", pin]),
    ]  # fmt: skip
