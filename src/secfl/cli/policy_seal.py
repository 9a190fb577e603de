"""``secfl policy seal-secret``: a data owner's key sealed to the SPM for one board.

The sealed value goes into the policy as the secret's ``sealed:``; the SPM opens it
only under a version of that policy approved by exactly that board (its members' keys,
threshold and required members: :func:`secfl.spm._sealing.board_binding`). What no
policy could name (a policy or secret name outside the policy's name rule, a board key
of a kind a board cannot have) is refused here, not once the board's policy is in.
"""

from __future__ import annotations

import re
from typing import Annotated

import typer

from secfl._internal.values import shown
from secfl.cli._common import out, read_input
from secfl.errors import PolicyError, UsageError

__all__ = ["seal_secret_cmd"]


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
    required_key: Annotated[
        list[str] | None,
        typer.Option(
            "--required-key",
            metavar="KEY.pub",
            help="A member whose signature every approval needs (repeat): as board.required.",
        ),
    ] = None,
) -> None:
    """Seal your key to the pinned SPM for one board; print the policy's ``sealed:`` value.

    The SPM opens it only under a version of this policy approved by exactly this
    board: these members' keys with this threshold, and with --required-key the members
    every approval needs (the policy's board.required): whoever registers the name
    first with another board gets nothing, nor do members who drop a required one."""
    from secfl.errors import SpmError
    from secfl.policy._fields import NAME
    from secfl.policy._keys import load_public
    from secfl.shield import key_from_file
    from secfl.spm._sealing import board_binding, member_key_digest, seal_imported
    from secfl.spm.client import SpmClient

    # a name or key no policy can have: the SPM would refuse the value only once the
    # board's policy named it (sealed for nothing)
    for option, name in (("--policy", policy), ("--secret", secret)):
        if not re.fullmatch(NAME, name):
            raise UsageError(
                f"{option} '{shown(name[:64])}': not a name a policy can have (letters, "
                "digits, '.', '_', '-'; starting with a letter or digit; at most 128)"
            )
    value = key_from_file(key_file)
    keys = [read_input(path, "board member key").decode("utf-8", "replace") for path in board_key]
    for path, pem in zip(board_key, keys, strict=True):
        if "-----BEGIN PUBLIC KEY-----" not in pem:  # a private key given by mistake, say
            raise UsageError(
                f"--board-key: '{path}' is not a PEM public key (give each member's .pub file)"
            )
        try:
            load_public(pem)
        except PolicyError as exc:
            raise UsageError(f"--board-key: '{path}': {exc}") from None
    seen: dict[str, str] = {}
    for path, pem in zip(board_key, keys, strict=True):
        digest = member_key_digest(pem)
        if digest in seen:  # one member counted twice: a board no policy can have
            raise UsageError(
                f"--board-key: '{path}' is the same key as '{seen[digest]}': give each "
                "member's once"
            )
        seen[digest] = path
    if threshold > len(keys):
        raise SpmError(
            f"seal: the threshold {threshold} is more than the {len(keys)} board keys given"
        )
    required = [read_input(path, "required member key").decode("utf-8", "replace")
                for path in required_key or []]  # fmt: skip
    if any(pem not in keys for pem in required):
        raise UsageError("--required-key: give the same .pub file as that member's --board-key")
    board = board_binding(keys, threshold, required)
    with SpmClient(spm, pin=spm_pin) as client:
        sealed = seal_imported(value, client.public_key(), policy, secret, board)
    out.print(sealed, markup=False)
