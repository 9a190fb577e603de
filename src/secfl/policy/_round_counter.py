"""The federation's round counter, and who may move it.

The aggregator commits each round by moving a counter of the policy (named by
``federation.counter``, by default :data:`ROUND_COUNTER`) in the very increment that
logs the round (:mod:`secfl.spm._increment`): the audit log never has a round without
its counter, nor a counter without its round, and the aggregator's compare-and-increment
finds the counter where it left it. Only a service of role ``aggregator`` commits a
round, so only such a service may move that counter: given to a collaborator, or to a
service of role ``any`` (a Flower site), its host moved the counter without a round,
and the aggregator's next commit was refused (409) as if another aggregator ran, until
the board signed a reset (found by a review). A new version giving it to another
service is refused (:func:`check_round_counter`, from
:func:`~secfl.policy._new_version.check_new_version`), and the SPM refuses such a
service's increment under a version it stored before that rule.
"""

from __future__ import annotations

from secfl.errors import PolicyError
from secfl.policy._model import Policy

__all__ = ["ROUND_COUNTER", "check_round_counter", "round_counter"]

#: The round counter of a federation whose settings name none (``federation.counter``).
ROUND_COUNTER = "rounds"


def round_counter(policy: Policy) -> str | None:
    """The counter ``policy``'s aggregator commits its rounds with: ``federation.counter``,
    else :data:`ROUND_COUNTER`; None for a policy without a service of role
    ``aggregator`` (no round is ever committed: ``secfl run`` of another program, or
    federation settings that `secfl policy validate` refuses for want of one) or whose
    ``federation.counter`` is not a name (no aggregator reads such settings)."""
    if not any(s.role == "aggregator" for s in policy.services):
        return None
    federation = policy.federation if isinstance(policy.federation, dict) else {}
    named = federation.get("counter", ROUND_COUNTER)
    return named if isinstance(named, str) else None


def check_round_counter(policy: Policy) -> None:
    """Refuse (:class:`PolicyError`, one line) a ``policy`` that lets a service other than
    an aggregator move the federation's round counter."""
    counter = round_counter(policy)
    if counter is None:
        return
    for i, service in enumerate(policy.services):
        if service.role != "aggregator" and counter in service.counters:
            raise PolicyError(
                f"policy: services[{i}].counters: service '{service.name}' (role "
                f"{service.role}) may move '{counter}', the federation's round counter, "
                "which only the aggregator moves (with the round it commits): remove it from "
                "the service's counters (a counter of its own, if it needs one)"
            )
