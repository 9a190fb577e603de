"""What the federation needs of a policy, checked before the board signs it.

:func:`secfl.policy.load_policy` checks a policy as a document (schema, bounds,
references); its ``federation`` section is free-form there, since the policy layer
knows nothing of federated learning. This module applies the aggregator's own
reading of the section (:meth:`FederationConfig.parse`, the strategy registry) and
the federation's cross-checks, so that ``secfl policy validate`` and ``secfl policy
sign`` refuse what would otherwise be signed and fail only when the aggregator
starts (``round: 8`` for ``rounds``, ``strategy: fedavgg``, a counter the
aggregator may not increment, fewer collaborator services than ``min_clients``).

:func:`check_federation` raises :class:`~secfl.errors.FlError` (one line) for what
stops a federation, and returns warnings for what works but is probably not meant:
a key file the FL commands look for is not injected, or no output key, so the final
model would be sealed to nobody.
"""

from __future__ import annotations

import posixpath

from secfl.errors import FlError
from secfl.fl._config import FederationConfig
from secfl.fl._injected import CHECKPOINT_KEY, OUTPUT_KEY, SIGNING_KEY, VERIFY_KEY
from secfl.policy._model import Policy, Service
from secfl.policy._platforms import platform_warnings
from secfl.policy._sealed import check_sealed
from secfl.policy._todo import check_no_todos

__all__ = [
    "OUTPUT_KEY_WARNING",
    "check_federation",
    "check_ready",
    "injects",
    "is_federation",
]

#: What is said, at validation and when the aggregator starts, about a policy that
#: gives the aggregator no output key (``{service}``: the aggregator's name).
OUTPUT_KEY_WARNING = (
    "output: no output key: the final model will be sealed to nobody (it stays only in "
    "the aggregator's sealed checkpoints); to let the model owner open it, seal their key "
    "(`secfl shield keygen -o model.key`, `secfl policy seal-secret --key-file model.key "
    "--secret output-key ...`), add it as an imported secret and inject it into service "
    "'{service}' as /{file}: $$SECFL::output-key:hex$$ (`secfl policy init` does this)"
)


def _roles(policy: Policy, *roles: str) -> list[Service]:
    return [s for s in policy.services if s.role in roles]


def is_federation(policy: Policy) -> bool:
    """Whether ``policy`` runs a federation: it has an aggregator service or settings."""
    return bool(policy.federation) or bool(_roles(policy, "aggregator"))


def injects(service: Service, relative: str) -> bool:
    """Whether ``service`` gets the injected file ``$SECFL_FILES/relative``."""
    want = posixpath.normpath(relative)
    return any(posixpath.normpath(path.lstrip("/")) == want for path in service.inject.files)


def check_federation(policy: Policy) -> list[str]:
    """Refuse (:class:`FlError`, one line) what would stop this policy's federation
    at start; return warnings (one line each) for what is probably not meant.

    A policy without an aggregator service and without federation settings runs no
    federation (``secfl run`` of other programs): nothing is checked."""
    if not is_federation(policy):
        return []
    config = FederationConfig.parse(policy.federation)
    try:
        strategy = config.strategy_object()
    except FlError as exc:
        raise FlError(f"federation: strategy: {str(exc).removeprefix('strategy: ')}") from None
    if config.needed < strategy.fewest_updates():
        which = "quorum" if config.quorum is not None else "min_clients"
        raise FlError(
            f"federation: strategy {strategy.name} needs {strategy.fewest_updates()} updates "
            f"a round, but a round may close with {config.needed} (federation.{which}): "
            f"raise {which}, or change the strategy's settings"
        )
    aggregators = _roles(policy, "aggregator")
    collaborators = _roles(policy, "collaborator", "any")
    if not aggregators:  # (role any commits no round: the SPM refuses it, found by a review)
        raise FlError(
            "federation: the policy has federation settings but no service with role "
            "'aggregator': add one (`secfl policy init` writes a whole federation)"
        )
    if config.counter not in policy.counter_names():
        raise FlError(
            f"federation: counter '{config.counter}' (federation.counter) is not a counter of "
            f"the policy: add {{name: {config.counter}}} to counters and to the aggregator's "
            "counters, or set federation.counter to one that is"
        )
    for service in aggregators:
        if config.counter not in service.counters:
            raise FlError(
                f"federation: service '{service.name}' may not increment counter "
                f"'{config.counter}': add it to the service's counters"
            )
    if len(collaborators) < config.min_clients:
        raise FlError(
            f"federation: min_clients is {config.min_clients} but the policy has "
            f"{len(collaborators)} collaborator service(s): no round could ever start; "
            "add sites or lower federation.min_clients"
        )
    warnings: list[str] = []
    for service in aggregators:
        for relative in (SIGNING_KEY, CHECKPOINT_KEY):
            if not injects(service, relative):
                warnings.append(_missing(service, relative))
        if not injects(service, OUTPUT_KEY):
            warnings.append(OUTPUT_KEY_WARNING.format(service=service.name, file=OUTPUT_KEY))
    for service in _roles(policy, "collaborator"):
        if not injects(service, VERIFY_KEY):
            warnings.append(_missing(service, VERIFY_KEY))
    return warnings


def check_ready(policy: Policy) -> list[str]:
    """Whether ``policy`` is ready to be signed and submitted: no placeholder left by
    ``secfl policy init`` (:mod:`secfl.policy._todo`), sealed values of the shape
    ``secfl policy seal-secret`` writes (:mod:`secfl.policy._sealed`), and a federation
    that can start (:func:`check_federation`). Refusals raise; the warnings are
    returned."""
    check_no_todos(policy)
    check_sealed(policy)
    return [*platform_warnings(policy.platforms), *check_federation(policy)]


def _missing(service: Service, relative: str) -> str:
    option = {
        SIGNING_KEY: "--signing-key",
        CHECKPOINT_KEY: "--checkpoint-key",
        VERIFY_KEY: "--verify-key",
    }[relative]
    return (
        f"inject: service '{service.name}' gets no /{relative}: `secfl {service.role}` "
        f"needs it (inject it, or name the injected file with {option} on its command line)"
    )
