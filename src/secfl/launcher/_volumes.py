"""The volumes a policy gives a service: opened with their released keys and checked.

A volume with a tag in the policy must have exactly that tag; a rollback-protected
one (a counter instead of a tag) must be the newest release the SPM has recorded,
and a newer one is recorded (:func:`open_volume`). A code volume must still be what
was measured. :func:`other_release` says in plain words when the SPM refused a
measurement because a code volume is another release than the policy pins.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Mapping
from pathlib import Path

from secfl.errors import LaunchError
from secfl.policy._model import Policy, VolumeSpec
from secfl.shield import Volume, load_key
from secfl.spm.client import SpmClient
from secfl.spm.enroll import Enrollment

__all__ = ["close_volumes", "open_volume", "other_release", "volume_spec"]


def volume_spec(policy: Policy, name: str) -> VolumeSpec:
    """The policy's declaration of volume *name* (its references are checked when the
    policy is loaded, so a missing one is a broken policy)."""
    spec = policy.volume(name)
    if spec is None:
        raise LaunchError(f"policy: '{policy.name}' gives volume '{name}' but does not declare it")
    return spec


def open_volume(
    client: SpmClient,
    policy: Policy,
    name: str,
    path: Path,
    enrollment: Enrollment,
    code_tags: Mapping[str, str],
) -> Volume:
    """Volume ``name`` at ``path``, opened with the key the SPM released and checked
    (see the module docstring); closed again on any refusal."""
    spec = volume_spec(policy, name)
    value = enrollment.secrets.get(spec.key)
    if value is None or "raw" not in value:
        raise LaunchError(f"volume: the SPM did not release the key of volume '{name}'")
    key = load_key(base64.b64decode(value["raw"]))
    volume = Volume.open(path, key, reveal_names=False)  # the host reads our errors
    try:
        if name in code_tags and volume.tag != code_tags[name]:
            raise LaunchError(f"volume: '{name}' changed while it was being measured")
        if spec.tag is not None:
            if volume.tag != spec.tag:
                raise LaunchError(
                    f"volume: '{name}' has tag {volume.tag}, the policy expects {spec.tag}"
                )
        else:
            raw_key = base64.b64decode(value["raw"])
            _check_fresh(client, policy.name, name, volume, enrollment, raw_key)
    except BaseException:
        volume.close()
        raise
    return volume


def _check_fresh(
    client: SpmClient,
    policy: str,
    name: str,
    volume: Volume,
    enrollment: Enrollment,
    volume_key: bytes,
) -> None:
    """A rollback-protected volume must be the newest release the SPM has seen."""
    version, tag = volume.version, volume.tag
    state = client.volume_state(policy, name)
    if version == state["version"] and tag == state["tag"]:
        return
    if version == 0:  # the SPM's "nothing recorded yet": it records from version 1
        raise LaunchError(
            f"volume: '{name}' is version 0, but the SPM keeps this volume fresh and records "
            "versions from 1: encrypt it again with `secfl shield encrypt --version 1` (or "
            "later)"
        )
    if version > state["version"]:
        client.record_volume(
            policy,
            name,
            version=version,
            tag=tag,
            token=enrollment.session_token,
            volume_key=volume_key,
        )
        return
    raise LaunchError(
        f"rollback: volume '{name}' is version {version}, but version {state['version']} "
        "was already recorded: refusing an older (or altered) release; give its newest "
        f"release (version {state['version']} or later)"
    )


def other_release(policy: Policy, tags: Mapping[str, str], files: Mapping[str, Path]) -> str | None:
    """Why the SPM refused, in plain words, when a code volume is not the release the
    policy pins. Said only after the SPM refused: the refusal itself is the SPM's (and
    in its audit log), never a check the host's own launcher could skip."""
    for name, tag in tags.items():
        pinned = volume_spec(policy, name).tag
        if pinned is not None and tag != pinned:
            return (
                f"code volume '{name}' ({files[name]}) has tag {tag[:16]}..., the policy pins "
                f"{pinned[:16]}...: this is another release of the code than the board approved"
            )
    return None


def close_volumes(volumes: Mapping[str, Volume]) -> None:
    """Close every volume, whatever happens to one of them (for cleaning up)."""
    for volume in volumes.values():
        with contextlib.suppress(Exception):
            volume.close()
