"""The rules for a policy version about to be signed or submitted, beyond what every
version must satisfy (:func:`secfl.policy._document.load_policy`): rules added after
versions were accepted go here, so that an SPM never finds a version it stored
unreadable (it reads them with :class:`~secfl.policy._model.Policy` alone)."""

from __future__ import annotations

import json

import yaml

from secfl.errors import PolicyError
from secfl.policy._document import _NewVersionLoader, _yaml_message, policy_text
from secfl.policy._model import Policy, no_code_text, pins_code
from secfl.policy._round_counter import check_round_counter
from secfl.policy._secrets import CaSecret, CertSecret
from secfl.policy._tls_names import check_tls_names
from secfl.policy._validation_text import squeezed as _one_line
from secfl.policy._visible import check_strings_visible

__all__ = ["check_new_version", "code_pinned_by_counter"]


def check_new_version(policy: Policy, document: str | bytes | None = None) -> None:
    """Rules for a version about to be signed or submitted, not for one already
    accepted (an SPM reads the versions it stored with :class:`Policy` alone, so a
    rule added here never makes one of them unreadable).

    A code volume is pinned by its tag: on hardware the TEE measures the image, not
    the volumes it opens, and a counter lets the key holder release other code
    without the board. Every identity a service accepts pins code
    (:func:`~secfl.policy._model.pins_code`): ``{vmpl: 0}`` alone accepted any guest.

    When members give recovery keys, every required member gives one: recovery needs
    each required member's part of the data key (:mod:`secfl.spm._recovery`), as
    approval needs their signature.

    No name may stand for another's in TLS (:mod:`secfl.policy._tls_names`).

    Only an aggregator may move the federation's round counter
    (:mod:`secfl.policy._round_counter`).

    With its ``document``, a YAML one may not hold a plain value that YAML 1.1 reads
    as text and people as a number (``lr: 1e-3``): every collaborator refused the
    version its board had signed."""
    if document is not None:
        _check_yaml_reading(document)
    check_strings_visible(policy.model_dump(mode="json"))
    check_tls_names(policy)
    _check_certificate_names(policy)
    holders = {m.name for m in policy.board.members if m.recovery_key is not None}
    lacking = [m for m in policy.board.required if m not in holders]
    if holders and lacking:
        raise PolicyError(
            f"policy: board.required: '{lacking[0]}' has no recovery_key, so the other "
            "members could recover the policy's secrets without them; give every required "
            "member a recovery_key, or no member"
        )
    for service in policy.services:
        for kind in service.measurements:
            for j, identity in enumerate(service.identities(kind)):
                if not pins_code(kind, identity):
                    where = f"services.{service.name}.measurements.{kind}[{j}]"
                    raise PolicyError(f"policy: {no_code_text(kind, identity, where)}")
    for i, volume in enumerate(policy.volumes):
        if volume.name in code_pinned_by_counter(policy):
            raise PolicyError(
                f"policy: volumes[{i}]: code volume '{volume.name}' is pinned by a counter; "
                "pin it by its tag (`secfl shield encrypt` prints it): the board approves "
                "code by its tag"
            )
    _check_volume_counters(policy)
    check_round_counter(policy)


def _check_certificate_names(policy: Policy) -> None:
    """The names the SPM writes into the certificates it makes, as X.509 takes them: a
    common name of at most 64 bytes of UTF-8 (the schema counts 64 characters, and 40 of
    another script than Latin are 80 bytes) and DNS names in ASCII (an internationalised
    one in its ``xn--`` form). The SPM failed on either after the board's signatures,
    with an error of 500 and no refusal in its log, on a version every command had let the
    board sign (found by a review)."""
    for i, secret in enumerate(policy.secrets):
        if not isinstance(secret, CaSecret | CertSecret):
            continue
        size = len(secret.common_name.encode())
        if size > _MAX_COMMON_NAME:
            raise PolicyError(
                f"policy: secrets[{i}].common_name: {size} bytes of UTF-8, more than the "
                f"{_MAX_COMMON_NAME} a certificate's common name holds: shorten it"
            )
        for j, name in enumerate(secret.sans if isinstance(secret, CertSecret) else []):
            if not name.isascii():
                raise PolicyError(
                    f"policy: secrets[{i}].sans[{j}]: not ASCII, which a certificate's DNS "
                    "name must be: write an internationalised name in its xn-- form (IDNA)"
                )


#: The most bytes (UTF-8) of a certificate's common name (X.509's ub-common-name).
_MAX_COMMON_NAME = 64


def _check_yaml_reading(document: str | bytes) -> None:
    """Refuse what :class:`_NewVersionLoader` refuses in a YAML ``document`` (one that
    :func:`load_policy` has read already)."""
    if isinstance(document, bytes):
        document = policy_text(document)
    if document.lstrip()[:1] == "{":
        try:
            json.loads(document)
            return  # JSON: no such reading
        except (ValueError, RecursionError):
            pass
    try:
        yaml.load(document, Loader=_NewVersionLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        raise PolicyError(f"policy: {_yaml_message(exc)}") from None
    except yaml.YAMLError as exc:  # (load_policy read it: not expected)
        raise PolicyError(f"policy: YAML: {_one_line(str(exc))}") from None


def code_pinned_by_counter(policy: Policy, service: str | None = None) -> list[str]:
    """The code volumes of ``policy`` (those ``service`` opens, if named) pinned by a
    counter rather than a tag: :func:`check_new_version` refuses them in a new version,
    and the SPM releases no key to a service that opens one in a version it stored
    before that rule."""
    opened = None
    if service is not None:
        found = policy.service(service)
        opened = set(found.volumes) if found is not None else set()
    return [
        v.name
        for v in policy.volumes
        if v.kind == "code" and v.tag is None and (opened is None or v.name in opened)
    ]


def _check_volume_counters(policy: Policy) -> None:
    """A rollback-protected volume's counter is its own: recording a release of the
    volume moves it, and whoever holds the volume's key may record releases. Shared
    with the federation's counter (or any service's, or another volume's), a site
    holding its own data volume's key moved the aggregator's round counter at will: its
    next commit was refused, and its restart found its checkpoint behind the counter (a
    rollback), until the board signed a reset (found by a review)."""
    federation = policy.federation.get("counter") if isinstance(policy.federation, dict) else None
    used: dict[str, str] = {}
    if isinstance(federation, str):
        used[federation] = "the federation's counter"
    for service in policy.services:
        for name in service.counters:
            used.setdefault(name, f"a counter of service '{service.name}'")
    for i, volume in enumerate(policy.volumes):
        if volume.counter is None:
            continue
        if volume.counter in used:
            raise PolicyError(
                f"policy: volumes[{i}].counter: '{volume.counter}' is {used[volume.counter]}; "
                f"give volume '{volume.name}' a counter of its own (recording a release of "
                "the volume moves it)"
            )
        used[volume.counter] = f"volume '{volume.name}''s counter"
