"""Caches that hold code or weights a program loads: in the private folder, never where
the host's environment names."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.launcher.world import World, python

#: A measured program that takes a model from torch.hub as many do: from its cache, if
#: it is there (``trust_repo="check"``: a repository already in the cache counts as
#: trusted), else from the network (here: none).
HUB = (
    "import os, torch.hub\n"
    "hub = torch.hub.get_dir()\n"
    "if os.path.isdir(os.path.join(hub, 'acme_models_v1')):\n"
    "    net = torch.hub.load('acme/models:v1', 'net', trust_repo='check')\n"
    "    print('LOADED', net)\n"
    "else:\n"
    "    print('NOT-CACHED', hub.startswith(os.environ['SECFL_FILES']))\n"
)


def _policy(world: World, name: str, argv: list[str]) -> None:
    world.submit_program(name, world.plain(argv), env={"API_TOKEN": "$$SECFL::tok:hex$$"})


def test_the_hosts_torch_home_does_not_bring_code_to_the_program(
    world: World, tmp_path: Path
) -> None:
    """Found by a hostile review: the launcher kept the program's caches in its private
    folder (``XDG_CACHE_HOME``) and dropped some variables that move compiled code's
    caches, but passed ``TORCH_HOME`` on (and ``HF_HOME``, whose ``modules`` folder holds
    the code ``trust_remote_code`` runs): a host that planted a repository in a hub
    folder of its own had its ``hubconf.py`` run in the measured program, secrets and
    all, when it loaded a model from torch.hub."""
    argv = python(HUB)
    _policy(world, "hubrun", argv)
    stolen = tmp_path / "stolen.txt"
    repo = tmp_path / "torch-home" / "hub" / "acme_models_v1"
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text(
        "import os\n"
        f"open({str(stolen)!r}, 'w').write(os.environ.get('API_TOKEN', ''))\n"
        "def net():\n"
        "    return 'host-model'\n"
    )
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch-home")}
    done = subprocess.run(
        world.command("svc", argv, policy="hubrun"),
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not stolen.exists(), f"the host's hubconf.py ran in the workload: {done.stdout}"
    assert "NOT-CACHED True" in done.stdout, done.stdout


#: A measured program that takes a scikit-learn dataset as many do: from its cache (a
#: joblib pickle), if it is there, else from the network (here: none).
SKLEARN = (
    "import os\n"
    "from sklearn.datasets import fetch_california_housing, get_data_home\n"
    "try:\n"
    "    fetch_california_housing(download_if_missing=False)\n"
    "    print('LOADED')\n"
    "except OSError:\n"
    "    print('NOT-CACHED', get_data_home().startswith(os.environ['SECFL_FILES']))\n"
)


def test_the_hosts_scikit_learn_data_does_not_bring_code_to_the_program(
    world: World, tmp_path: Path
) -> None:
    """Found by a hostile review: scikit-learn keeps the datasets it fetches as joblib
    pickles in ``$SCIKIT_LEARN_DATA``, else ``~/scikit_learn_data``, and loads them from
    there: the host's variable, or its HOME, which the program keeps. A host that
    planted a pickle where a measured program's dataset is cached had it run in the
    workload, secrets and all. Now the cache is in the private folder."""
    argv = python(SKLEARN)
    _policy(world, "skrun", argv)
    stolen = tmp_path / "stolen.txt"
    code = f"import os; open({str(stolen)!r}, 'w').write(os.environ.get('API_TOKEN', ''))"
    planted = f"cbuiltins\nexec\n(V{code}\ntR.".encode()  # (a pickle that runs code)
    for name, folder in (("HOME", "home"), ("SCIKIT_LEARN_DATA", "sk")):
        data = tmp_path / folder / ("scikit_learn_data" if name == "HOME" else "")
        data.mkdir(parents=True, exist_ok=True)
        (data / "cal_housing_py3.pkz").write_bytes(planted)
        env = {**os.environ, name: str(tmp_path / folder)}
        done = subprocess.run(
            world.command("svc", argv, policy="skrun"),
            env=env, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert not stolen.exists(), f"the host's pickle ran in the workload ({name})"
        assert done.returncode == 0, done.stderr
        assert "NOT-CACHED True" in done.stdout, done.stdout


#: A measured program that starts Ray (a local cluster, as a training loop that spreads
#: its work does): the folder Ray's session goes to, objects it spills to disk included.
RAY = (
    "import os\n"
    "from ray._common.utils import get_default_system_temp_dir\n"
    "print('RAY', get_default_system_temp_dir().startswith(os.environ['SECFL_FILES']))\n"
)


def test_the_hosts_ray_tmpdir_does_not_take_the_programs_spilled_objects(
    world: World, tmp_path: Path
) -> None:
    """Found by a hostile review: the launcher put the program's temporary files in its
    private folder (``TMPDIR``), but Ray reads ``RAY_TMPDIR`` first: a host that set it
    had the session of a Ray the program started, the objects it spills to disk (model
    tensors, batches of data) and its workers' logs, written to its own disk, where they
    outlived the workload."""
    argv = python(RAY)
    _policy(world, "rayrun", argv)
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "host-disk")}
    done = subprocess.run(
        world.command("svc", argv, policy="rayrun"),
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "RAY True" in done.stdout, done.stdout
