"""The flags of ``secfl policy init``, read: what each names, as a plan's parts.

Each reader takes the flag's raw values (``NAME=KEY.pub``, ``KIND:ROLE=HEX``,
``SECRET=@FILE``...), reads the files they name and refuses a malformed value with a
:class:`~secfl.errors.UsageError` that names the flag. Kept apart from the command
(:mod:`secfl.cli.policy_init`), which puts the parts together and reports;
:func:`federation_settings` is shared with ``secfl policy next``.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from secfl.cli._common import read_value
from secfl.errors import PolicyError, UsageError

if TYPE_CHECKING:
    from secfl.fl._policy_template import BoardMember, FederationPlan

__all__ = ["federation_settings"]

_TAG = re.compile(r"[0-9a-fA-F]{64}")
#: The longest value accepted for --set and --train (a policy bounds them again).
_MAX_SETTING = 4096


def _pair(value: str, flag: str, what: str) -> tuple[str, str]:
    name, sep, rest = value.partition("=")
    if not sep or not name or not rest:
        raise UsageError(f"{flag}: '{value[:80]}' is not {what}")
    return name, rest


def _members(values: list[str]) -> list[BoardMember]:
    from secfl.fl._policy_template import BoardMember

    members = []
    for value in values:
        name, files = _pair(value, "--member", "NAME=KEY.pub[,RECOVERY.pub]")
        signing, _, recovery = files.partition(",")
        members.append(
            BoardMember(
                name=name,
                public_key=read_value(signing, f"{name}'s public key").decode("utf-8", "replace"),
                recovery_key=read_value(recovery, f"{name}'s recovery key").decode(
                    "utf-8", "replace"
                )
                if recovery
                else None,
            )
        )
    return members


def _volume(value: str, flag: str, default_file: str) -> tuple[str, str]:
    """(tag, file) of a shielded volume file, or of a tag given as 64 hex digits."""
    from secfl.shield import peek_tag

    if Path(value).is_file():
        return peek_tag(value), value
    if _TAG.fullmatch(value):
        return value.lower(), default_file
    raise UsageError(f"{flag}: '{value[:80]}' is neither a shielded volume file nor a tag")


def _program(given: str | None) -> tuple[str, Path]:
    """argv[0] of the measured commands, and the file it names here: `secfl` on PATH
    (what a user types after `secfl run --`), else the one beside this Python."""
    from secfl.launcher._measurement import resolve_program

    if given:
        return given, resolve_program(given)
    if shutil.which("secfl"):
        return "secfl", resolve_program("secfl")
    beside = Path(sys.executable).parent / "secfl"
    return str(beside), resolve_program(str(beside))


def _setting(value: str, flag: str) -> tuple[str, Any]:
    """KEY and its value, read as a new version's policy file reads it (JSON first:
    ``lr=1e-3`` is a number, where YAML 1.1 made it the text "1e-3")."""
    from secfl.policy._document import read_setting

    key, text = _pair(value, flag, "KEY=VALUE")
    if len(text) > _MAX_SETTING:
        raise UsageError(f"{flag}: the value of '{key[:40]}' is longer than {_MAX_SETTING}")
    try:
        return key, read_setting(text)
    except PolicyError as exc:
        raise UsageError(f"{flag} {key[:40]}: {exc}; quote it for text") from None


def federation_settings(
    base: dict[str, Any],
    set_: list[str] | None,
    train: list[str] | None,
    *,
    rounds: int | None = None,
    min_clients: int | None = None,
    strategy: str | None = None,
    objective: str | None = None,
) -> dict[str, Any]:
    """``base`` with the federation flags applied: ``--set`` replaces a setting,
    ``--train`` adds to (or replaces one key of) ``federation.train``."""
    settings = dict(base)
    settings.update(_setting(v, "--set") for v in set_ or [])
    if train:
        given = settings.get("train")
        settings["train"] = (dict(given) if isinstance(given, dict) else {}) | dict(
            _setting(v, "--train") for v in train
        )
    for key, value in (("rounds", rounds), ("min_clients", min_clients), ("strategy", strategy)):
        if value is not None:
            settings[key] = value
    if objective:
        metric, _, mode = objective.partition(":")
        settings["objective"] = {"metric": metric, "mode": mode or "min"}
    return settings


def _settings_file(path: str | None) -> dict[str, Any]:
    """The settings of a federation.yaml (or a policy), read as `secfl simulate` reads
    them, so the board signs what the scientist tried; {} without one."""
    if path is None:
        return {}
    from secfl.fl._untrusted import read_settings

    return dict(read_settings(Path(path)))


def _sealed(values: list[str]) -> dict[str, str]:
    found = {}
    for value in values:
        secret, sealed = _pair(value, "--sealed", "SECRET=VALUE (or SECRET=@FILE)")
        if sealed.startswith("@"):
            raw = read_value(sealed[1:], f"sealed value of {secret}")
            try:
                sealed = raw.decode("ascii").strip()  # (base64, as `seal-secret` writes it)
            except UnicodeDecodeError:
                raise UsageError(
                    f"--sealed {secret}: '{sealed[1:]}' is not a sealed value "
                    "(the output of `secfl policy seal-secret`)"
                ) from None
        found[secret] = sealed
    return found


def _seal(plan: FederationPlan, values: list[str], spm: str | None, pin: str | None) -> None:
    """Seal the given key files to the SPM for this policy and board (what `secfl policy
    seal-secret` does), for owners who run `init` themselves."""
    if not values:
        return
    if not spm or not pin:
        raise UsageError("--seal: give --spm and --spm-pin: keys are sealed to that SPM")
    from secfl.shield import key_from_file
    from secfl.spm._sealing import board_binding, seal_imported
    from secfl.spm.client import SpmClient

    board = board_binding([m.public_key for m in plan.members], plan.threshold)
    with SpmClient(spm, pin=pin) as client:
        spm_key = client.public_key()
        for value in values:
            secret, key_file = _pair(value, "--seal", "SECRET=KEY_FILE")
            plan.sealed[secret] = seal_imported(
                key_from_file(key_file), spm_key, plan.name, secret, board
            )


def _identity(name: str, text: str) -> str | dict[str, str]:
    """A hardware identity as given: HEX (the kind's measurement), or FIELD=HEX,...
    (TDX needs mrtd, rtmr1 and rtmr2: the firmware, the kernel, its command line)."""
    from typing import cast

    from secfl.policy._model import (
        CODE_ALL,
        CODE_FIELDS,
        MEASUREMENT_FIELDS,
        Kind,
        code_fields_text,
    )

    kind = cast(Kind, name)
    needs = (
        f"--measurement {kind}: give {code_fields_text(kind)} as FIELD=HEX,...: {kind}'s "
        "first measurement covers only the firmware"
    )
    if "=" not in text:
        if kind in CODE_ALL:
            raise UsageError(needs)
        return text.lower()
    fields: dict[str, str] = {}
    for part in text.split(","):
        field, sep, value = part.partition("=")
        if not sep or field not in MEASUREMENT_FIELDS[kind] or field in fields:
            raise UsageError(
                f"--measurement {kind}: '{part[:60]}' is not FIELD=HEX with FIELD one of "
                f"{', '.join(sorted(MEASUREMENT_FIELDS[kind]))}"
            )
        fields[field] = value.lower()
    if kind in CODE_ALL and set(CODE_FIELDS[kind]) - set(fields):
        raise UsageError(needs)
    return fields


def _hardware(
    platforms: list[str], values: list[str]
) -> dict[str, dict[str, str | dict[str, str]]]:
    from secfl.fl._policy_template import HARDWARE

    found: dict[str, dict[str, str | dict[str, str]]] = {}
    for kind in platforms:
        if kind not in HARDWARE:
            raise UsageError(f"--platform: '{kind[:20]}' is not one of {', '.join(HARDWARE)}")
        found[kind] = {}
    for value in values:
        where, hex_value = _pair(value, "--measurement", "KIND:ROLE=HEX")
        kind, _, role = where.partition(":")
        if kind not in found or role not in ("aggregator", "collaborator"):
            raise UsageError(
                f"--measurement: '{where[:40]}' is not KIND:ROLE with KIND a --platform and "
                "ROLE aggregator or collaborator"
            )
        found[kind][role] = _identity(kind, hex_value)
    for kind, roles in found.items():
        for role in ("aggregator", "collaborator"):
            if role not in roles:
                what = "mrtd=HEX,rtmr1=HEX,rtmr2=HEX" if kind == "tdx" else "HEX"
                raise UsageError(
                    f"--platform {kind}: give --measurement {kind}:{role}={what} (the "
                    "measurements of its TEE image, as `secfl attest verify` of its evidence "
                    "prints them)"
                )
    return found


def _site_keys(
    sites: list[str], given: list[str], make: str | None
) -> tuple[dict[str, str], dict[str, bytes]]:
    """Each site's key (``sites``: the aggregator too, whose command anyone can run): a
    site operator's own public key (``--site-key SITE=KEY.pub``, the better way: nobody
    else ever holds the private half), or for the others a new Ed25519 pair made here
    when ``--site-keys DIR`` is given. Returns the public
    keys (PEM) by site and the private keys to write (``DIR/SITE.key``), written only once
    the policy is made (:func:`_write_site_keys`)."""
    from secfl.policy import _keys as keys

    public: dict[str, str] = {}
    for value in given:
        site, path = _pair(value, "--site-key", "SITE=KEY.pub")
        if site in public:
            raise UsageError(f"--site-key: '{site[:60]}' is given twice")
        pem = read_value(path, f"{site}'s site key")
        try:
            public[site] = keys.public_pem(keys.load_public(pem)).decode()
        except PolicyError as exc:
            text = str(exc).removeprefix("board public key: ")
            raise UsageError(f"--site-key {site[:60]}: {text}") from None
    private: dict[str, bytes] = {}
    if make is not None:
        for site in sites:
            if site not in public:
                private[site], pem = keys.generate("ed25519")
                public[site] = pem.decode()
    return public, private


def _write_site_keys(folder: str, private: dict[str, bytes], *, force: bool) -> None:
    """``folder/SITE.key`` (0600) and ``folder/SITE.pub`` for each key made here: each
    goes to its site's operator (the key file is what its host's SECFL_SITE_KEY names)."""
    from secfl.policy import _keys as keys

    target = Path(folder)
    try:
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--site-keys: cannot make '{folder}': {exc.strerror or exc}") from None
    for site, pem in private.items():
        key = keys.load_private(pem)
        try:
            keys.write_private(target / f"{site}.key", pem, overwrite=force)
        except PolicyError as exc:
            raise UsageError(f"--site-keys: {exc} (or use --force)") from None
        (target / f"{site}.pub").write_bytes(keys.public_pem(key.public_key()))
