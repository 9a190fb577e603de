"""``secfl policy``: board keys, policy validation, digests and detached signatures."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from secfl._internal.values import shown
from secfl.cli import revocation
from secfl.cli._common import err, out, read_input, replaces_file, write_output
from secfl.cli._expires import SIGNATURE_DAYS, signature_expires
from secfl.cli.policy_init import init_cmd
from secfl.cli.policy_next import next_cmd
from secfl.cli.policy_seal import seal_secret_cmd
from secfl.errors import PolicyError, UsageError

__all__ = [
    "KEY_KINDS",
    "app",
    "digest_cmd",
    "keygen_cmd",
    "seal_secret_cmd",
    "sign_cmd",
    "submit_cmd",
    "validate_cmd",
    "verify_cmd",
]

if TYPE_CHECKING:
    from secfl.policy import Policy
    from secfl.policy._keys import KeyKind

app = typer.Typer(
    help="Policies: write, validate, digest, sign and verify board approvals; board keys.",
    no_args_is_help=True,
)
app.command("init")(init_cmd)
app.command("next")(next_cmd)
app.command("seal-secret")(seal_secret_cmd)

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
    from secfl.policy._fields import NAME

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
    """Check a policy and print a summary with its digest.

    Besides the document, its federation is checked as the aggregator reads it, and
    placeholders left by `secfl policy init` are refused; warnings go to stderr."""
    from secfl.policy import digest, load_policy

    raw = read_input(file, "policy")
    policy = load_policy(raw)
    _check_new(policy, raw, warn=True)
    board = policy.board
    out.print(f"policy {policy.name} version {policy.version}: valid", markup=False)
    out.print(f"digest:   {digest(policy)}", markup=False)
    out.print(f"services: {', '.join(s.name for s in policy.services)}", markup=False)
    rule = f"{board.threshold} of {len(board.members)} ({', '.join(m.name for m in board.members)})"
    if board.required:
        rule += f", always including {', '.join(board.required)}"
    out.print(f"board:    {rule}", markup=False)


def _check_new(policy: Policy, raw: bytes | str, *, warn: bool = False) -> None:
    """What `validate`, `sign` and `submit` refuse alike: the rules of a new version
    (the SPM's) and a federation the aggregator could not run; with ``warn``, what
    `validate` warns of, to stderr."""
    from secfl.fl._policy_check import check_ready
    from secfl.policy._new_version import check_new_version

    check_new_version(policy, raw)
    warnings = check_ready(policy)
    for warning in warnings if warn else []:
        err.print(f"warning: {warning}", markup=False)


@app.command("show")
def show_cmd(
    file: Annotated[str, typer.Argument(help="The policy (YAML); - for stdin.")],
    against: Annotated[
        str | None,
        typer.Option(help="The version FILE replaces: print only what changes from it."),
    ] = None,
) -> None:
    """Print what the policy grants, as the SPM reads it: review this, not the YAML.

    The board with each key's fingerprint (recovery keys too), the accepted evidence,
    and per service the code it pins, every secret and part it receives (a volume's
    key included) and the volumes it opens."""
    from secfl.policy import load_policy
    from secfl.policy._review import review, review_diff

    policy = load_policy(read_input(file, "policy"))
    if against is None:
        lines = review(policy)
    else:
        previous = _previous(policy, file, against)
        lines = review_diff(previous, policy) or ["(no change the SPM would see)"]
    # a stored version may hold any text: none a terminal acts on. One print, not one a
    # line: rich looks at the terminal on each (a large policy's diff spent half its
    # time printing)
    out.print("\n".join(shown(line) for line in lines), markup=False)


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
    board: Annotated[
        str | None,
        typer.Option(
            help="The version FILE replaces: the key is checked against its board (the one "
            "that approves FILE) instead of FILE's own, for a version that rotates keys."
        ),
    ] = None,
    recovery_pub: Annotated[
        str | None,
        typer.Option(
            help="Your recovery public key (PEM): refuse to sign unless FILE gives you this "
            "one (a share of every secret goes to it)."
        ),
    ] = None,
    expect_digest: Annotated[
        str | None,
        typer.Option(
            "--digest",
            metavar="HEX",
            help="Refuse to sign unless FILE's digest is this one: the digest `secfl policy "
            "show` printed for what you reviewed (the file may change in between).",
        ),
    ] = None,
    expires: Annotated[
        str,
        typer.Option(
            metavar="WHEN",
            help="Until when your signature counts at the SPM: 30d, 12h, a date (its end, "
            "UTC), a UTC time YYYY-MM-DDTHH:MM[:SS]Z, or never.",
        ),
    ] = f"{SIGNATURE_DAYS}d",
) -> None:
    """Approve a policy: write a detached signature over its digest.

    Refused: a key that is not MEMBER's on the board, a policy that is not ready
    (what `secfl policy validate` refuses), with --recovery-pub a policy that gives
    MEMBER another recovery key, and with --digest a policy other than the one
    reviewed. The signature counts for 30 days (--expires): a version the board
    abandons cannot be submitted with it months later."""
    from secfl.policy import _keys as keys
    from secfl.policy import load_policy, sign_policy
    from secfl.policy._signatures import check_signer

    if output is None:
        if file == "-":
            raise UsageError("give --output when the policy comes from standard input")
        output = f"{file}.{member}.sig"
    if output != "-" and replaces_file(output, key):
        raise UsageError(f"--output '{output}' is the signing key: give another file")
    until = signature_expires(expires, datetime.now(UTC))
    raw = read_input(file, "policy")
    policy = load_policy(raw)
    _check_digest(policy, expect_digest)
    rule = policy.board if board is None else _previous(policy, file, board).board
    private = keys.load_private(read_input(key, "signing key"))
    check_signer(rule, member, private, previous=board is not None)
    _check_new(policy, raw)  # what `validate` refuses is never signed
    _check_recovery(policy, member, recovery_pub)
    signature = sign_policy(policy, private, member, until)
    write_output(signature.to_json().encode(), output)
    if output != "-":
        counts = f", counting until {until}" if until else ""
        out.print(f"{output}: {member} signed {signature.digest}{counts}", markup=False)


def _check_digest(policy: Policy, expected: str | None) -> None:
    """With ``--digest``: the policy read now must be the one the member reviewed."""
    from secfl.policy import digest

    if expected is None:
        return
    if not re.fullmatch(r"[0-9a-fA-F]{64}", expected):
        raise UsageError("--digest: give the 64 hex digits `secfl policy show` printed")
    found = digest(policy)
    if found != expected.lower():
        raise UsageError(
            f"--digest: the policy's digest is {found}, not {expected.lower()}: the file "
            "changed since you reviewed it; review it again (secfl policy show) before signing"
        )


def _previous(policy: Policy, file: str, board: str) -> Policy:
    """The version ``file`` replaces, read from ``board``: its digest must be ``policy``'s
    predecessor (else a file naming look-alike members would "approve" anything)."""
    from secfl.policy import digest, load_policy

    previous = load_policy(read_input(board, "board policy"))
    if digest(previous) != policy.predecessor:
        raise PolicyError(
            f"policy: {board} (version {previous.version}, digest {digest(previous)[:16]}...) "
            f"is not the version {file} replaces (its predecessor is "
            f"{policy.predecessor[:16] or '(none)'}...): give that one"
        )
    return previous


def _check_recovery(policy: Policy, member: str, recovery_pub: str | None) -> None:
    """A member's recovery key, as the policy gives it: checked against theirs, or shown."""
    from secfl.policy import _keys as keys

    found = next((m for m in policy.board.members if m.name == member), None)
    given = found.recovery_key if found is not None else None
    named = keys.key_id(keys.load_recovery_public(given)) if given else None
    if recovery_pub is not None:
        mine = keys.key_id(keys.load_recovery_public(read_input(recovery_pub, "recovery key")))
        if named != mine:
            raise PolicyError(
                f"sign: this policy gives {member} the recovery key {named or '(none)'}, not "
                f"yours ({mine}): a share of every secret goes to whoever holds it; do not sign"
            )
    elif named is not None:
        err.print(
            f"note: this policy gives {member} the recovery key sha256:{named}; check it is "
            "yours (`--recovery-pub`): a share of every secret goes to it",
            markup=False,
        )


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
    """Check that the signatures satisfy the board rule; print the approving members.

    As the SPM would now: a signature past its expiry is refused (so a version
    accepted long ago no longer verifies with signatures that expired since)."""
    from secfl.policy import Signature, check_approval, digest, load_policy

    policy = load_policy(read_input(file, "policy"))
    rule = policy.board
    if board is not None:
        rule = _previous(policy, file, board).board
    elif policy.version > 1:
        err.print(
            f"note: checked against {file}'s own board; the SPM checks version "
            f"{policy.version} against the board of the version it replaces (give --board)",
            markup=False,
        )
    signatures = []
    for path in sig:
        try:
            signatures.append(Signature.from_json(read_input(path, "signature")))
        except PolicyError as exc:
            raise PolicyError(f"{path}: {exc}") from None
    approved = check_approval(rule, digest(policy), signatures, now=datetime.now(UTC))
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
    from secfl.policy import load_policy
    from secfl.policy._document import policy_text
    from secfl.policy._signatures import Signature
    from secfl.spm.client import SpmClient

    document = policy_text(read_input(file, "policy"))  # read as `validate` and `sign` read it
    _check_new(load_policy(document), document)
    signatures = [Signature.from_json(read_input(s, "signature")) for s in sig]
    with SpmClient(spm, pin=spm_pin) as client:
        reply = client.submit_policy(document, signatures)
    out.print(
        f"accepted: policy {reply['name']} version {reply['version']}, digest {reply['digest']}",
        markup=False,
    )


# --- revocation by the board: secfl.cli.revocation (also `secfl revoke`, `secfl revocations`)

app.command("sign-revocation")(revocation.sign_revocation_cmd)
app.command("revoke")(revocation.revoke_cmd)
app.command("revocations")(revocation.revocations_cmd)

# the board's signature on a reset is checked by the aggregator: its code lives with it
from secfl.cli.fl import sign_reset  # noqa: E402

app.command("sign-reset")(sign_reset)
