"""`secfl run` enrols a service whose policy entry names a site key with the site's
key, from the file its host names (``SECFL_SITE_KEY``), and the workload signs its
renewals with it too. Without the key, or with another site's, it refuses before
anything is sent to the SPM, in one line. Real processes: `secfl spm serve`, `secfl
run` in the simulated TEE, the measured program attesting again by itself."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from secfl.policy import _keys as keys
from secfl.spm.client import SpmClient
from tests.launcher.world import World, python

pytestmark = pytest.mark.timeout(240)

#: A measured program that attests again (renews) by itself, as an FL workload does.
RENEWS = (
    "import os\n"
    "from secfl.fl._workload_identity import WorkloadIdentity\n"
    "me = WorkloadIdentity.from_env()\n"
    "print('SITE_KEY', me.site_key is not None, flush=True)\n"
    "print('RENEWED', me.renew(force=True), flush=True)\n"
)
NEEDS = "enrolment: service 'svc' requires its site key's signature"


@pytest.fixture(scope="module")
def site_keys(world: World, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Policy "sited", whose one service names site B's key; B's and A's key files."""
    folder = tmp_path_factory.mktemp("site-keys")
    paths = {}
    for site in ("a", "b"):
        private, public = keys.generate("ed25519")
        paths[site] = keys.write_private(folder / f"site-{site}.key", private)
        paths[f"{site}.pub"] = folder / f"site-{site}.pub"
        paths[f"{site}.pub"].write_bytes(public)
    world._submit({
        "name": "sited", "version": 1,
        "board": {"members": world.board.members(), "threshold": 2},
        "platforms": {"accept": ["simulated"], "simulation_root": world.root.decode()},
        "identity_ca": "ca",
        "services": [{
            "name": "svc", "role": "any",
            "measurements": {"simulated": [world.plain(python(RENEWS))]},
            "site_key": paths["b.pub"].read_text(),
        }],
        "secrets": [{"name": "ca", "kind": "x509-ca", "common_name": "sited CA"}],
    })  # fmt: skip
    return paths


def _run(world: World, key: Path | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SECFL_SITE_KEY"}
    if key is not None:
        env["SECFL_SITE_KEY"] = str(key)
    return subprocess.run(
        world.command("svc", python(RENEWS), policy="sited"),
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip


def test_the_site_enrols_and_renews_with_its_key(world: World, site_keys: dict[str, Path]) -> None:
    done = _run(world, site_keys["b"])
    assert done.returncode == 0, done.stderr
    assert "SITE_KEY True" in done.stdout
    assert "RENEWED True" in done.stdout


#: A measured program that says whether it was handed a site key.
SHOWS = (
    "import os\n"
    "folder = os.environ['SECFL_IDENTITY']\n"
    "print('HANDED', os.path.exists(os.path.join(folder, 'site_key.pem')), flush=True)\n"
)


def test_a_service_without_a_site_key_is_not_handed_the_hosts(
    world: World, site_keys: dict[str, Path]
) -> None:
    """The host exported SECFL_SITE_KEY for everything it runs: a service whose policy
    entry names no site key (another party's code, the aggregator, say) enrols on its
    measurement, and the site's private key is not copied into its folder, where its
    program could read it and sign the site's enrolments."""
    world._submit({
        "name": "unsited", "version": 1,
        "board": {"members": world.board.members(), "threshold": 2},
        "platforms": {"accept": ["simulated"], "simulation_root": world.root.decode()},
        "identity_ca": "ca",
        "services": [{"name": "open", "role": "any",
                      "measurements": {"simulated": [world.plain(python(SHOWS))]}}],
        "secrets": [{"name": "ca", "kind": "x509-ca", "common_name": "unsited CA"}],
    })  # fmt: skip
    env = {**os.environ, "SECFL_SITE_KEY": str(site_keys["b"])}
    done = subprocess.run(
        world.command("open", python(SHOWS), policy="unsited"),
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "HANDED False" in done.stdout, done.stdout


def test_without_the_sites_key_nothing_is_sent(world: World, site_keys: dict[str, Path]) -> None:
    for key, why in ((None, ": set SECFL_SITE_KEY to the file"),
                     (site_keys["a"], ": the key in ")):  # fmt: skip
        done = _run(world, key)
        assert done.returncode != 0
        (line,) = [x for x in done.stderr.splitlines() if NEEDS in x]
        assert NEEDS + why in line, done.stderr
        assert "Traceback" not in done.stderr
        assert "RENEWED" not in done.stdout
    with SpmClient(world.spm.url, pin=world.spm.pin) as client:
        entries = client.audit(0, 10_000)["entries"]
    assert not [
        e for e in entries if e["policy"] == "sited" and e["event"] == "attestation.refused"
    ]
