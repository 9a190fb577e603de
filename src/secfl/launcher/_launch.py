"""Prepare and run a workload: the steps of ``secfl run``, each refusing in one line.

1. Verify the SPM (pinned key, or attestation against expected measurements).
2. Attest on this machine's TEE with fresh HPKE and TLS keys; receive the
   service's certificate, secrets and session (in memory).
3. Open the volumes the policy gives the service and check each against the
   policy's tag, or for a rollback-protected volume against the SPM's record
   (recording a newer release, refusing an older one).
4. Substitute placeholders in the arguments (public parts only, checked before
   step 1: every local user reads a command line), the environment and injected
   files.
5. Run the program (or a Python module from a code volume, in this interpreter),
   forwarding signals; remove injected files when it exits.

No core dump is ever written and the program dies with the launcher
(:mod:`secfl.launcher._process`); the plaintext folder leaves nothing behind even
when the launcher is killed (:mod:`secfl.launcher._private`).

An external program reads its volumes (opened and checked by
:mod:`secfl.launcher._volumes`) as verified plaintext copies in the private RAM
folder (``$SECFL_VOLUMES/NAME``): every chunk is authenticated before it starts. A
Python workload run with ``--module`` imports its code from memory and streams its
data from :data:`secfl.launcher.volumes` instead, in bounded memory
(:mod:`secfl.launcher._in_process`).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from secfl._internal import environ
from secfl._internal.values import quoted
from secfl._internal.x509util import private_pem
from secfl.errors import LaunchError, SecflError
from secfl.launcher._in_process import run_module
from secfl.launcher._inject import (
    check_env_name,
    check_public_args,
    file_plan,
    no_nul,
    substitute,
    write_private,
)
from secfl.launcher._measurement import (
    commands_from,
    describe_measured,
    locate_program,
    private_script,
    run_measurement,
    script_interpreter,
)
from secfl.launcher._private import PrivateDir
from secfl.launcher._process import (
    accept_interrupts,
    default_signals,
    exit_status,
    harden,
    run_program,
)
from secfl.launcher._scratch import scratch
from secfl.launcher._volumes import close_volumes, open_volume, other_release, volume_spec
from secfl.policy._model import Policy, Service
from secfl.shield import Volume, peek_tag
from secfl.spm._site_key import workload_site_key
from secfl.spm.client import SpmClient, SpmRefused
from secfl.spm.enroll import Enrollment, enroll
from secfl.tee import Platform
from secfl.tee._platforms import platform_by_name
from secfl.tee._simulated import SimulatedPlatform


@dataclass
class RunRequest:
    """Everything ``secfl run`` is told."""

    spm_url: str
    policy: str
    service: str
    argv: list[str]
    spm_pin: str | None = None
    spm_measurements: list[str] = field(default_factory=list)
    sim_root: bytes | None = None
    volumes: dict[str, Path] = field(default_factory=dict)
    module: str | None = None
    platform: str = "auto"
    sim_dir: Path | None = None
    #: The file holding the site's private key (the host's ``SECFL_SITE_KEY``): it
    #: signs each enrolment, as a service whose policy entry names a ``site_key``
    #: requires (:mod:`secfl.spm._site_key`).
    site_key: Path | None = None


@dataclass
class Launch:
    """A prepared workload: the command, its environment, its open volumes."""

    argv: list[str]
    env: dict[str, str]
    private: PrivateDir
    volumes: dict[str, Volume]
    enrollment: Enrollment
    module: str | None = None
    #: The code volumes (the policy's order): the only ones ``--module`` imports from.
    code: tuple[str, ...] = ()
    #: The file the simulated TEE measured as the program: the one started (None: the
    #: program is found by name, on the program's PATH, in a TEE that measured itself).
    executable: Path | None = None

    @property
    def files(self) -> Path:
        """The private folder (``SECFL_FILES``)."""
        return self.private.path

    def cleanup(self) -> None:
        close_volumes(self.volumes)
        self.private.remove()


def connect(req: RunRequest) -> SpmClient:
    """A client for an SPM that is pinned or that proves an expected measurement."""
    if req.spm_pin:
        return SpmClient(req.spm_url, pin=req.spm_pin)
    if req.spm_measurements:
        client, _ = SpmClient.verify(
            req.spm_url, expect_measurement=req.spm_measurements, sim_root=req.sim_root
        )
        return client
    raise LaunchError(
        "spm: give --spm-pin or --spm-measurement: secfl run trusts no unverified SPM"
    )


def prepare(req: RunRequest) -> Launch:
    """Steps 1 to 4; nothing is started, and on any refusal nothing is left behind.

    Core dumps are off and the private folder (with its guards against a killed
    launcher) exists before any secret arrives."""
    if not req.argv and not req.module:
        raise LaunchError("run: no program given (secfl run ... -- PROGRAM ARGS)")
    check_public_args(req.argv, "argument")  # before the SPM is even asked
    dropped = environ.scrub()  # no TLS session's secrets written where the host reads
    if dropped:
        sys.stderr.write(f"secfl run: ignored {', '.join(dropped)} (it logs TLS secrets)\n")
    harden()
    accept_interrupts()
    default_signals()
    private = PrivateDir.create()
    volumes: dict[str, Volume] = {}
    try:
        return _prepare(req, private, volumes)
    except BaseException:
        close_volumes(volumes)
        private.remove()
        raise


def _prepare(req: RunRequest, private: PrivateDir, volumes: dict[str, Volume]) -> Launch:
    files = private.path
    with connect(req) as client:
        policy = Policy.model_validate_json(client.policy(req.policy)["document"])
        service = policy.service(req.service)
        if service is None:
            raise LaunchError(
                f"policy: '{req.policy}' has no service '{req.service}' "
                f"(its services: {policy.service_list()})"
            )
        missing = [v for v in service.volumes if v not in req.volumes]
        if missing:
            raise LaunchError(
                f"volume: the policy gives '{req.service}' volume '{missing[0]}': "
                f"pass --volume {missing[0]}=PATH"
            )
        extra = sorted(set(req.volumes) - set(service.volumes))
        if extra:
            raise LaunchError(
                f"volume: '{extra[0]}' is not a volume of service '{req.service}' "
                f"(its volumes: {', '.join(service.volumes) or 'none'})"
            )
        for name in service.inject.env:
            check_env_name(name)
        check_public_args(service.inject.args, "policy argument")
        plan = file_plan(service.inject.files)  # refused before any secret is released
        code_tags = {
            name: peek_tag(req.volumes[name])
            for name in service.volumes
            if volume_spec(policy, name).kind == "code"
        }

        tee = platform_by_name(req.platform, sim_dir=req.sim_dir)
        measurement = program = original = found = interpreter = None
        shown = ["-m", req.module, *req.argv] if req.module else req.argv
        if tee.name == "simulated":
            if not req.module:  # (a bare name: where PATH found it is measured too)
                original, found = locate_program(req.argv[0])
                program = private_script(original, files / ".secfl" / "program")
                interpreter = script_interpreter(program)  # (#!/usr/bin/env NAME: too)
            measurement = run_measurement(
                program, shown, code_tags, found=found, interpreter=interpreter
            )
        site_key = workload_site_key(service.name, service.site_key, req.site_key)
        try:
            enrollment = enroll(
                client, tee, req.policy, req.service, measurement=measurement, site_key=site_key
            )
        except SpmRefused as exc:
            if not str(exc).startswith("measurement:"):
                raise
            _show_measured(service, tee.name, program, shown, code_tags, measurement,
                           found, interpreter, original)  # fmt: skip
            other = other_release(policy, code_tags, req.volumes)
            raise LaunchError(
                f"{exc}; "
                + (
                    other
                    or "what secfl run measured is shown above: compare it with what the "
                    "policy's measurement was computed from (the comments `secfl policy init` "
                    "writes next to it, or `secfl measure --for-run`)"
                )
            ) from None

        for name in service.volumes:
            volumes[name] = open_volume(
                client, policy, name, req.volumes[name], enrollment, code_tags
            )
        if not req.module:  # an external program reads verified copies, in RAM
            for name, volume in volumes.items():
                volume.extract(files / "volumes" / name)
        env = _environment(service, enrollment, files, req, list(code_tags))
        if site_key is not None:  # the workload attests again by itself: it signs again
            write_private(files, ".secfl/site_key.pem", private_pem(site_key))
        env.update(_attestation_env(client, tee, measurement))
        args: list[str] = []
        for what, given in (("argument", req.argv), ("policy argument", service.inject.args)):
            for i, text in enumerate(given):
                where = f"{what} {i + 1}"
                args.append(no_nul(substitute(text, enrollment, where, public=True), where))
        own_path = "PATH" not in service.inject.env
        if found is not None:  # started under the name measured: not looked up again
            args[0] = found
        elif program is None and not req.module and own_path and "/" not in args[0]:
            args[0] = _on_path(args[0])  # (a TEE that measured itself: as it found it before)
        started = program
        if interpreter is not None and program is not None:
            # the interpreter measured, by the path measured, with the script measured:
            # env would look it up on the program's PATH, the host's
            args = [interpreter, str(program), *args[1:]]
            started = Path(interpreter)
        if own_path:  # what it starts by name: not from the host's folders
            env["PATH"] = environ.program_path(
                sys.executable if req.module else commands_from(started, args[0])
            )
        for path, content in service.inject.files.items():
            text = substitute(content, enrollment, f"file {path}")
            write_private(files, plan[path], text.encode())
    return Launch(args, env, private, volumes, enrollment, req.module, tuple(code_tags), started)


def _on_path(name: str) -> str:
    """Where the launcher's PATH finds the program ``name`` (a TEE that measured itself:
    the image's PATH), absolute: the program's own PATH is another
    (:func:`secfl._internal.environ.program_path`)."""
    found = shutil.which(name)
    if found is None:
        raise LaunchError(f"run: program {quoted(name[:100])} is not on PATH")
    return os.path.abspath(found)


def _show_measured(
    service: Service,
    kind: str,
    program: Path | None,
    argv: Sequence[str],
    code_tags: Mapping[str, str],
    measurement: str | None,
    found: str | None,
    interpreter: str | None,
    original: Path | None,
) -> None:
    """When the SPM refuses the measurement: what this launcher measured, in the form
    ``secfl policy init`` writes next to the measurements it pins, and what the policy
    accepts, so that a changed address, path or install shows at once (the program
    by the path it was found at, not its private copy's)."""
    lines = [f"the SPM refused the measurement of service '{service.name}'; secfl run measured:"]
    if measurement is None:
        lines.append(f"  the {kind} TEE measured this machine's image, started with")
        lines.append(f"  command:      {shlex.join(argv)}")
    else:
        described = describe_measured(
            program, argv, code_tags, found=found, interpreter=interpreter, shown=original
        )
        lines += [f"  {line}" for line in described]
        lines.append(f"  measurement:  {measurement}")
    accepted = [e for k, entries in service.measurements.items() if k == kind for e in entries]
    shown = ", ".join(str(a) for a in accepted[:8]) + (" ..." if len(accepted) > 8 else "")
    lines.append(f"  the policy accepts ({kind}): {shown or 'nothing'}")
    sys.stderr.write("".join(f"secfl run: {line}\n" for line in lines))
    sys.stderr.flush()


def _environment(
    service: Service, enrollment: Enrollment, files: Path, req: RunRequest, code: list[str]
) -> dict[str, str]:
    """The program's environment: ours without what makes a program load code the
    environment names (:func:`secfl._internal.environ.for_program`), the policy's
    injected variables, where its identity (certificate, key, CA, session) and injected
    files are, and which of its volumes hold code (``SECFL_CODE_VOLUMES``: the policy's
    ``kind: code``, measured)."""
    identity = files / ".secfl"
    write_private(files, ".secfl/cert.pem", enrollment.certificate.encode())
    write_private(files, ".secfl/key.pem", enrollment.key_pem)
    write_private(files, ".secfl/ca.pem", enrollment.ca_certificate.encode())
    write_private(files, ".secfl/session.token", enrollment.session_token.encode())
    env, dropped = environ.for_program(os.environ)
    env, ignored = environ.from_host(env)  # the host's SECFL_* settings only, not ours
    env.update(scratch(files))
    env.update(
        {
            "SECFL_FILES": str(files),
            "SECFL_VOLUMES": str(files / "volumes"),
            "SECFL_CODE_VOLUMES": ",".join(code),
            "SECFL_IDENTITY": str(identity),
            "SECFL_POLICY": req.policy,
            "SECFL_SERVICE": req.service,
            "SECFL_SPM_URL": req.spm_url,
            "SECFL_POLICY_DIGEST": enrollment.policy_digest,
        }
    )
    # Python puts the working folder (``-m``, ``-c``) or the script's own folder first on
    # ``sys.path``: files the host can plant there, unmeasured, were imported before the
    # program's own (hostile review: an ``argparse.py`` beside `python -m secfl.flower`
    # ran in the wrapper with its keys). Nor does a user's site folder, which HOME names
    # (a host's .pth file there runs at start-up of any Python that is not a venv's).
    # The policy's inject.env may set either to "".
    env["PYTHONSAFEPATH"] = env["PYTHONNOUSERSITE"] = "1"
    for key, text in service.inject.env.items():
        where = f"environment variable {key}"
        env[key] = no_nul(substitute(text, enrollment, where), where)
    left_out = [n for n in environ.notable(os.environ, dropped) if n not in service.inject.env]
    if left_out:  # (said once the environment is whole: a refusal stays one line)
        sys.stderr.write(
            f"secfl run: the program does not get {', '.join(left_out)} (they load code, "
            "trace or trust what the policy did not approve; its inject.env may set them)\n"
        )
    ignored = [n for n in ignored if n not in service.inject.env]
    if ignored:
        sys.stderr.write(
            f"secfl run: ignored {', '.join(ignored)} (the program takes only the host's "
            "SECFL_* settings that secfl._internal.environ.HOST_SETTINGS lists)\n"
        )
    # a Python program compiles the code it imports from a volume: never to disk
    return environ.no_bytecode(env)


def _attestation_env(client: SpmClient, tee: Platform, measurement: str | None) -> dict[str, str]:
    """What the workload needs to attest again by itself (renewing a short-lived
    certificate): the pinned SPM and this TEE; in simulation, the measurement that
    ``secfl run`` computed, since simulated hardware cannot measure anything, and the
    simulation's folder it used (``--sim-dir`` or the launcher's ``$SECFL_SIM_DIR``).
    Off the simulated TEE neither is set, nor left as the host's
    (:func:`secfl._internal.environ.from_host`)."""
    env = {"SECFL_SPM_PIN": client.pin, "SECFL_PLATFORM": tee.name}
    if measurement is not None:
        env["SECFL_MEASUREMENT"] = measurement
    if isinstance(tee, SimulatedPlatform):
        env["SECFL_SIM_DIR"] = str(tee.sim_dir)
    return env


def execute(launch: Launch) -> int:
    """Run the prepared workload; return the launcher's exit code: the program's, or
    128+N when signal N killed it (never raised again on the launcher itself)."""
    try:
        if launch.module:
            return run_module(launch.module, launch.argv, launch.env, launch.volumes, launch.code)
        return exit_status(run_program(launch.argv, launch.env, launch.executable))
    finally:
        launch.cleanup()


__all__ = [
    "Launch",
    "LaunchError",
    "RunRequest",
    "SecflError",
    "execute",
    "exit_status",
    "prepare",
]
