"""``secfl policy``: board keys, policy validation, digests and detached signatures."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from secfl.cli._common import err, out, read_input, write_output
from secfl.errors import UsageError

__all__ = [
    "KEY_KINDS",
    "Kind",
    "PolicyName",
    "Readmit",
    "Reason",
    "ServiceOpt",
    "SpmPin",
    "SpmUrl",
    "Subject",
    "app",
    "digest_cmd",
    "keygen_cmd",
    "revocation_statement",
    "revocations_cmd",
    "revoke_cmd",
    "seal_secret_cmd",
    "sign_cmd",
    "sign_revocation_cmd",
    "submit_cmd",
    "validate_cmd",
    "verify_cmd",
]

if TYPE_CHECKING:
    from secfl.policy._keys import KeyKind
    from secfl.spm.client import SpmClient

app = typer.Typer(
    help="Policies: validate, digest, sign and verify board approvals; board keys.",
    no_args_is_help=True,
)

KEY_KINDS: tuple[KeyKind, ...] = ("ed25519", "ecdsa-p256")


def _key_kind(value: str) -> KeyKind:
    """``value`` as a board key kind, else a usage error naming ``--kind``."""
    for kind in KEY_KINDS:
        if value == kind:
            return kind
    raise UsageError(f"--kind: '{value}' is not one of {', '.join(KEY_KINDS)}")


@app.command("keygen")
def keygen_cmd(
    out_dir: Annotated[str, typer.Option("--out-dir", help="Folder for the key files.")],
    member: Annotated[str, typer.Option(help="The board member's name (file names too).")],
    kind: Annotated[str, typer.Option(help="ed25519|ecdsa-p256")] = "ed25519",
    recovery: Annotated[bool, typer.Option(help="Also make an X25519 recovery key pair.")] = False,
    force: Annotated[bool, typer.Option(help="Replace existing key files.")] = False,
) -> None:
    """Make a board member's signing key: MEMBER.key (mode 0600) and MEMBER.pub.

    With --recovery, also MEMBER.recovery.key and MEMBER.recovery.pub.
    """
    from secfl.policy import _keys as keys
    from secfl.policy._model import NAME

    key_kind = _key_kind(kind)
    if not re.fullmatch(NAME, member):
        raise UsageError(f"--member: '{member}' is not a valid member name")
    folder = Path(out_dir)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create '{folder}': {exc.strerror or exc}") from None

    pairs = [(f"{member}", keys.generate(key_kind))]
    if recovery:
        pairs.append((f"{member}.recovery", keys.generate_recovery()))
    if not force:
        for stem, _ in pairs:
            for suffix in (".key", ".pub"):
                if (folder / f"{stem}{suffix}").exists():
                    raise UsageError(
                        f"'{folder / (stem + suffix)}' exists; use --force to replace it"
                    )
    for stem, (private_pem, public_pem) in pairs:
        key_path = keys.write_private(folder / f"{stem}.key", private_pem, overwrite=force)
        write_output(public_pem, str(folder / f"{stem}.pub"))
        public = (
            keys.load_public(public_pem)
            if stem == member
            else keys.load_recovery_public(public_pem)
        )
        out.print(f"{key_path}  (private, 0600)", markup=False)
        out.print(f"{folder / (stem + '.pub')}  sha256:{keys.key_id(public)}", markup=False)


@app.command("validate")
def validate_cmd(
    file: Annotated[str, typer.Argument(help="The policy (YAML); - for stdin.")],
) -> None:
    """Check a policy and print a summary with its digest."""
    from secfl.policy import digest, load_policy

    policy = load_policy(read_input(file, "policy"))
    board = policy.board
    out.print(f"policy {policy.name} version {policy.version}: valid", markup=False)
    out.print(f"digest:   {digest(policy)}", markup=False)
    out.print(f"services: {', '.join(s.name for s in policy.services)}", markup=False)
    rule = f"{board.threshold} of {len(board.members)} ({', '.join(m.name for m in board.members)})"
    if board.required:
        rule += f", always including {', '.join(board.required)}"
    out.print(f"board:    {rule}", markup=False)


@app.command("digest")
def digest_cmd(
    file: Annotated[str, typer.Argument(help="The policy (YAML); - for stdin.")],
) -> None:
    """Print the SHA-256 of the policy's canonical form: what the board signs."""
    from secfl.policy import digest, load_policy

    out.print(digest(load_policy(read_input(file, "policy"))), markup=False)


@app.command("sign")
def sign_cmd(
    file: Annotated[str, typer.Argument(help="The policy (YAML); - for stdin.")],
    key: Annotated[str, typer.Option(help="The member's private signing key (PEM).")],
    member: Annotated[str, typer.Option(help="The board member signing.")],
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Signature file (default FILE.MEMBER.sig; - stdout)."),
    ] = None,
) -> None:
    """Approve a policy: write a detached signature over its digest."""
    from secfl.policy import _keys as keys
    from secfl.policy import load_policy, sign_policy

    if output is None:
        if file == "-":
            raise UsageError("give --output when the policy comes from standard input")
        output = f"{file}.{member}.sig"
    policy = load_policy(read_input(file, "policy"))
    private = keys.load_private(read_input(key, "signing key"))
    signature = sign_policy(policy, private, member)
    # Signatures are checked against the board of the version being replaced,
    # which may differ from this one (key rotation): a mismatch here is a
    # warning, not a refusal.
    listed = next((m for m in policy.board.members if m.name == member), None)
    mine = keys.public_pem(private.public_key()).decode()
    if listed is None:
        err.print(f"warning: '{member}' is not a member of this policy's board", markup=False)
    elif listed.public_key != mine:
        err.print(
            f"warning: this key is not the key of '{member}' on this policy's board",
            markup=False,
        )
    write_output(signature.to_json().encode(), output)
    if output != "-":
        out.print(f"{output}: {member} signed {signature.digest}", markup=False)


@app.command("verify")
def verify_cmd(
    file: Annotated[str, typer.Argument(help="The policy (YAML); - for stdin.")],
    sig: Annotated[list[str], typer.Option("--sig", help="A signature file (repeat).")],
    board: Annotated[
        str | None,
        typer.Option(
            help="Check against the board of this policy (the version FILE replaces) "
            "instead of FILE's own board."
        ),
    ] = None,
) -> None:
    """Check that the signatures satisfy the board rule; print the approving members."""
    from secfl.errors import PolicyError
    from secfl.policy import Signature, check_approval, digest, load_policy

    policy = load_policy(read_input(file, "policy"))
    rule = policy.board if board is None else load_policy(read_input(board, "board policy")).board
    signatures = []
    for path in sig:
        try:
            signatures.append(Signature.from_json(read_input(path, "signature")))
        except PolicyError as exc:
            raise PolicyError(f"{path}: {exc}") from None
    approved = check_approval(rule, digest(policy), signatures)
    out.print(
        f"approved by {', '.join(approved)} ({len(approved)} of {len(rule.members)}, "
        f"{rule.threshold} required)",
        markup=False,
    )


@app.command("submit")
def submit_cmd(
    file: Annotated[str, typer.Argument(help="The policy (YAML).")],
    sig: Annotated[list[str], typer.Option("--sig", help="A board member's signature file.")],
    spm: Annotated[str, typer.Option(help="SPM URL, https://HOST:PORT.")],
    spm_pin: Annotated[
        str, typer.Option(help="SHA-256 of the SPM's TLS key (`secfl spm verify`).")
    ],
) -> None:
    """Submit a policy version with its board signatures to a pinned SPM."""
    from secfl.policy._signatures import Signature
    from secfl.spm.client import SpmClient

    document = read_input(file, "policy").decode("utf-8", errors="replace")
    signatures = [Signature.from_json(read_input(s, "signature")) for s in sig]
    with SpmClient(spm, pin=spm_pin) as client:
        reply = client.submit_policy(document, signatures)
    out.print(
        f"accepted: policy {reply['name']} version {reply['version']}, digest {reply['digest']}",
        markup=False,
    )


@app.command("seal-secret")
def seal_secret_cmd(
    key_file: Annotated[str, typer.Option(help="The secret: a key file (`secfl shield keygen`).")],
    policy: Annotated[str, typer.Option(help="The policy name the secret belongs to.")],
    secret: Annotated[str, typer.Option(help="The secret's name in the policy.")],
    spm: Annotated[str, typer.Option(help="SPM URL, https://HOST:PORT.")],
    spm_pin: Annotated[
        str, typer.Option(help="SHA-256 of the SPM's TLS key (`secfl spm verify`).")
    ],
    board_key: Annotated[
        list[str],
        typer.Option(
            "--board-key",
            help="A board member's public key (PEM file); give every member's.",
        ),
    ],
    threshold: Annotated[
        int, typer.Option(min=1, max=64, help="How many members must approve (the board's m).")
    ],
) -> None:
    """Seal your key to the pinned SPM for one board; print the policy's ``sealed:`` value.

    The SPM opens it only under a policy of this name whose board is exactly these
    members' keys with this threshold: whoever registers the name first with another
    board gets nothing."""
    from secfl.errors import SpmError
    from secfl.shield import key_from_file
    from secfl.spm._sealing import board_binding, seal_imported
    from secfl.spm.client import SpmClient

    value = key_from_file(key_file)
    keys = [read_input(path, "board member key").decode("utf-8", "replace") for path in board_key]
    if threshold > len(keys):
        raise SpmError(
            f"seal: the threshold {threshold} is more than the {len(keys)} board keys given"
        )
    board = board_binding(keys, threshold)
    with SpmClient(spm, pin=spm_pin) as client:
        sealed = seal_imported(value, client.public_key(), policy, secret, board)
    out.print(sealed, markup=False)


# --- revocation by the board ----------------------------------------------------------------

PolicyName = Annotated[str, typer.Option("--policy", help="The policy's name at the SPM.")]
Kind = Annotated[str, typer.Option(help="service|certificate|measurement|platform")]
Subject = Annotated[
    str, typer.Option(help="A service name, or a serial, measurement or platform ID in hex.")
]
SpmUrl = Annotated[str, typer.Option("--spm", help="SPM URL, https://HOST:PORT.")]
SpmPin = Annotated[str, typer.Option(help="SHA-256 of the SPM's TLS key (`secfl spm verify`).")]
ServiceOpt = Annotated[str, typer.Option("--service", help="The service it concerns, if any.")]
Reason = Annotated[str, typer.Option(help="Why (one line, signed with the statement).")]
Readmit = Annotated[bool, typer.Option("--readmit", help="Lift the revocation instead.")]


def revocation_statement(
    kind: str, subject: str, service: str, reason: str, readmit: bool
) -> dict[str, str]:
    """The statement every signer rebuilds from the same flags, in one canonical form
    (a serial as lowercase hex without leading zeros, hex lowercased), so that the
    signatures agree and the subject matches what the SPM compares it with."""
    from secfl.policy._model import NAME
    from secfl.spm._records import REVOCATION_KINDS, normalise_serial

    if kind not in REVOCATION_KINDS:
        raise UsageError(f"--kind: '{kind[:40]}' is not one of {', '.join(REVOCATION_KINDS)}")
    text = subject.strip()
    if kind == "service":
        if not re.fullmatch(NAME, text):
            raise UsageError(f"--subject: '{text[:40]}' is not a service name")
    elif kind == "certificate":
        digits = text.lower().removeprefix("0x").replace(":", "")
        if not re.fullmatch(r"[0-9a-f]{1,64}", digits):
            raise UsageError(
                "--subject: a certificate serial is at most 64 hex digits (0x and colons allowed)"
            )
        text = normalise_serial(digits)
    else:
        text = text.lower()
        if not re.fullmatch(r"[0-9a-f]{1,256}", text):
            raise UsageError(f"--subject: a {kind} is given in hex (at most 256 digits)")
    if service and not re.fullmatch(NAME, service):
        raise UsageError(f"--service: '{service[:40]}' is not a service name")
    if not re.fullmatch(r"[^\x00-\x1f\x7f]{0,1024}", reason):
        raise UsageError("--reason: one line of at most 1024 characters")
    statement = {"kind": kind, "subject": text, "service": service, "reason": reason}
    if readmit:
        statement["action"] = "readmit"
    return statement


def _policy_name(policy: str) -> str:
    from secfl.policy._model import NAME

    if not re.fullmatch(NAME, policy):
        raise UsageError(f"--policy: '{policy[:40]}' is not a policy name")
    return policy


def _revocation_digest(policy: str, statement: dict[str, str]) -> str:
    from secfl.spm._revocation import revocation_digest, revocation_doc

    return revocation_digest(revocation_doc(_policy_name(policy), statement))


def _warn_unknown_service(client: SpmClient, policy: str, service: str) -> None:
    """A revoked service name that the current policy lacks keeps no one out: say so."""
    from secfl.errors import SecflError
    from secfl.policy._document import load_policy

    try:
        current = load_policy(str(client.policy(policy).get("document") or ""))
    except SecflError:
        return
    if all(s.name != service for s in current.services):
        err.print(
            f"warning: version {current.version} of policy {policy} has no service "
            f"'{service}'; this revocation matches no service of it today",
            markup=False,
        )


def _what(statement: dict[str, str], policy: str) -> str:
    return f"{statement['kind']} {statement['subject']} of policy {policy}"


@app.command("sign-revocation")
def sign_revocation_cmd(
    policy: PolicyName,
    kind: Kind,
    subject: Subject,
    key: Annotated[str, typer.Option(help="Your board signing key (PEM).")],
    member: Annotated[str, typer.Option(help="Your board member name.")],
    output: Annotated[
        str, typer.Option("--output", "-o", help="Your signature file (- for stdout).")
    ],
    service: ServiceOpt = "",
    reason: Reason = "",
    readmit: Readmit = False,
) -> None:
    """Approve, as a board member, revoking (or with --readmit, readmitting) a service,
    certificate, measurement or platform: write your signature over the statement.

    Every member signs with the same flags; the digest printed lets you compare."""
    from secfl.policy._signatures import REVOCATION_DOMAIN, sign_statement

    statement = revocation_statement(kind, subject, service, reason, readmit)
    statement_digest = _revocation_digest(policy, statement)
    if output != "-" and Path(output).resolve() == Path(key).resolve():
        raise UsageError(f"--output: '{output}' is your key file; name another file")
    signature = sign_statement(
        REVOCATION_DOMAIN, statement_digest, read_input(key, "signing key"), member
    )
    write_output(signature.to_json().encode(), output)
    if output != "-":
        verb = "readmission" if readmit else "revocation"
        out.print(
            f"{output}: {member} signed the {verb} of {_what(statement, policy)}, "
            f"digest {statement_digest}",
            markup=False,
        )


@app.command("revoke")
def revoke_cmd(
    policy: PolicyName,
    kind: Kind,
    subject: Subject,
    sig: Annotated[list[str], typer.Option("--sig", help="A board member's signature file.")],
    spm: SpmUrl,
    spm_pin: SpmPin,
    service: ServiceOpt = "",
    reason: Reason = "",
    readmit: Readmit = False,
) -> None:
    """Submit a board-signed revocation (or readmission) to a pinned SPM.

    Give the same flags the members signed with (`secfl policy sign-revocation`)."""
    from secfl.errors import PolicyError
    from secfl.policy._signatures import REVOCATION_DOMAIN, Signature
    from secfl.spm.client import SpmClient

    statement = revocation_statement(kind, subject, service, reason, readmit)
    statement_digest = _revocation_digest(policy, statement)
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
        if kind == "service" and not readmit:
            _warn_unknown_service(client, policy, statement["subject"])
        client.revoke(policy, statement, signatures)
    verb = "readmitted" if readmit else "revoked"
    out.print(f"{verb}: {_what(statement, policy)}", markup=False)


@app.command("revocations")
def revocations_cmd(policy: PolicyName, spm: SpmUrl, spm_pin: SpmPin) -> None:
    """List what the board revoked in a policy: kind, subject, service, reason, when."""
    from secfl.spm.client import SpmClient

    with SpmClient(spm, pin=spm_pin) as client:
        rows = client.revocations(_policy_name(policy))
    if not rows:
        out.print(f"no revocations in policy {policy}", markup=False)
        return
    columns = ("kind", "subject", "service", "at", "reason")
    table = [[_printable(row.get(c, "")) or "-" for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    for line in [[c.upper() for c in columns], *table]:
        out.print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip(),
                  markup=False)  # fmt: skip


def _printable(value: object) -> str:
    """A field from the SPM, safe for a terminal: control characters escaped, bounded."""
    text = str(value)[:1024]
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
