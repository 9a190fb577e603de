"""secfl's own variables (``SECFL_*``): the workload takes only the host's operational
settings from the host, never what ``secfl run`` tells it, nor other tools' settings."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from secfl._internal import environ
from tests.launcher.world import World, python

#: A measured program that shows its SECFL_* variables and what it would renew with.
SHOWS = (
    "import json, os\n"
    "from secfl.fl._workload_identity import WorkloadIdentity\n"
    "me = WorkloadIdentity.from_env()\n"
    "mine = {k: v for k, v in os.environ.items() if k.startswith('SECFL_')}\n"
    "print('ENV', json.dumps(mine), flush=True)\n"
    "print('RENEWS', json.dumps([me.platform, me.measurement, str(me.sim_dir)]), flush=True)\n"
)


@pytest.fixture(scope="module")
def measured(world: World) -> str:
    """Policy "secflenv", whose service runs :data:`SHOWS`; its measurement."""
    measurement = world.plain(python(SHOWS))
    world.submit_program("secflenv", measurement)
    return measurement


def _run(world: World, env: dict[str, str], *, sim_dir_option: bool = True) -> dict[str, str]:
    command = world.command("svc", python(SHOWS), policy="secflenv")
    if not sim_dir_option:  # the simulated TEE found through the launcher's $SECFL_SIM_DIR
        at = command.index("--sim-dir")
        del command[at : at + 2]
    host = {k: v for k, v in os.environ.items() if not k.startswith("SECFL_")}
    done = subprocess.run(command, env={**host, **env}, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    return {**lines, "stderr": done.stderr}


def test_a_hosts_secfl_variables_do_not_reach_the_workload(
    world: World, measured: str, tmp_path: Path
) -> None:
    """Found by a review: ``secfl run`` passed every host ``SECFL_*`` variable on; only
    those it sets itself were replaced, and only where it set them. On hardware a host's
    ``SECFL_MEASUREMENT`` had every renewal present that value, which the SPM refused;
    here the host's approved-FAB list, a developer's traceback switch, the interpreter
    a local Flower run starts and a name secfl does not know all reached the program.
    Now the program gets the host's settings (bounded by their readers) and what the
    launcher sets, nothing else, and the launcher names a name it does not know."""
    hostile = {
        "SECFL_MEASUREMENT": "00" * 48,
        "SECFL_SIM_DIR": str(tmp_path / "host-sim"),
        "SECFL_PLATFORM": "tdx",
        "SECFL_FILES": str(tmp_path / "host-files"),
        "SECFL_FLOWER_FAB_SHA256": "ab" * 32,
        "SECFL_DEBUG": "1",
        "SECFL_FLOWER_PYTHON": str(tmp_path / "host-python"),
        "SECFL_FROM_THE_HOST": "x",
    }
    settings = {"SECFL_SHIELD_THREADS": "2", "SECFL_LOG_LEVEL": "WARNING"}
    got = _run(world, {**hostile, **settings})
    env = json.loads(got["ENV"])
    for name, value in hostile.items():
        assert env.get(name) != value, name
    for name, value in settings.items():
        assert env[name] == value
    assert set(env) <= environ.HOST_SETTINGS | environ.RUN_SETS, env
    assert json.loads(got["RENEWS"]) == ["simulated", measured, str(world.sim_dir)]
    (said,) = [line for line in got["stderr"].splitlines() if "secfl run: ignored" in line]
    assert said == (  # (other tools' settings, set for every process, are not named)
        "secfl run: ignored SECFL_FROM_THE_HOST (the program takes only the host's SECFL_* "
        "settings that secfl._internal.environ.HOST_SETTINGS lists)"
    ), said


def test_the_simulation_the_launcher_found_is_the_workloads(world: World, measured: str) -> None:
    """The simulated TEE named by the launcher's ``$SECFL_SIM_DIR`` (no ``--sim-dir``)
    is the one the workload renews in: the launcher sets it, not the host's copy."""
    got = _run(world, {"SECFL_SIM_DIR": str(world.sim_dir)}, sim_dir_option=False)
    assert json.loads(got["RENEWS"]) == ["simulated", measured, str(world.sim_dir)]
    assert "ignored" not in got["stderr"]
