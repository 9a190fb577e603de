"""`secfl run` end to end: a real SPM process over loopback HTTPS, the simulated TEE,
real programs started through the launcher as processes."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from secfl.spm.client import SpmClient
from secfl.tee import _simulated as simulated
from tests.launcher.world import KILLED, World, python, wait_ready


def test_workload_gets_its_secrets_and_exit_code(world: World) -> None:
    done = world.run("worker", world.argv())
    assert done.returncode == 7, done.stderr
    token = world.token()
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert lines["PID"].isdigit()
    assert lines["ARG"] == str(["--pub", world.released("signer", "pub")])
    assert "BEGIN PUBLIC KEY" in lines["ARG"]
    import base64

    assert lines["ENV"] == base64.b64encode(token).decode()
    assert lines["FILE"] == token.hex()
    assert lines["DATA"] == "a,b|1,2"
    assert not Path(lines["FILES_DIR"]).exists(), "injected files must be gone after exit"


def test_code_from_a_volume_leaves_no_bytecode_where_the_host_reads(
    world: World, tmp_path: Path
) -> None:
    """Found by a hostile review: a host that started `secfl run` with
    PYTHONPYCACHEPREFIX got the bytecode of every module the workload imported from its
    decrypted code volume (the FL task's too) written under that folder, on disk, where
    it outlived the workload."""
    cache = tmp_path / "host-cache"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    done = subprocess.run(world.command("worker", world.argv("--import")), env=env,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 7, done.stderr
    assert "IMPORTED mytask" in done.stdout
    written = [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    # (secfl's own modules may compile there: they are installed, not decrypted)
    leaked = [p for p in written if "mytask" in str(p) or "secfl-run-" in str(p)]
    assert written and not leaked, leaked


def test_the_hosts_code_loading_variables_do_not_reach_the_program(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a hostile review: `secfl run` passed its whole environment on, so a host
    that put a ``sitecustomize.py`` on ``PYTHONPATH`` (or named a library in
    ``OPENSSL_CONF``, a script in ``BASH_ENV``...) ran its code inside the measured,
    unchanged program, which wrote the secrets it had just been given to the disk."""
    evil = tmp_path / "evil"
    evil.mkdir()
    stolen = tmp_path / "stolen.txt"
    (evil / "sitecustomize.py").write_text(
        "import os\n"
        "if 'SECFL_FILES' in os.environ:  # in the workload, not in the launcher\n"
        f"    open({str(stolen)!r}, 'w').write(os.environ.get('API_TOKEN', ''))\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(evil))
    monkeypatch.setenv("BASH_ENV", str(evil / "hook.sh"))
    # a trust store is named only where it is not the system's own (hosts that set that
    # one for every process would see the note on every start)
    monkeypatch.setenv("SSL_CERT_FILE", ssl.get_default_verify_paths().openssl_cafile)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(evil / "ca.pem"))
    done = world.run("worker", world.argv())
    assert done.returncode == 7, done.stderr
    assert not stolen.exists(), "the host's sitecustomize ran in the workload"
    (said,) = [line for line in done.stderr.splitlines() if "does not get" in line]
    assert said.startswith("secfl run: the program does not get ") and said.endswith(
        " (they load code, trace or trust what the policy did not approve; its inject.env "
        "may set them)"
    )
    named = set(said.split(" get ")[1].split(" (")[0].split(", "))
    assert {"BASH_ENV", "PYTHONPATH", "REQUESTS_CA_BUNDLE"} <= named
    assert "SSL_CERT_FILE" not in named


def test_a_module_planted_in_the_working_folder_is_not_imported(
    world: World, tmp_path: Path
) -> None:
    """Found by a hostile review: Python put the working folder first on ``sys.path`` of
    a program run as ``python -m`` or ``python -c``, so a file the host planted there
    (here ``signal.py``; there an ``argparse.py`` beside `python -m secfl.flower`) ran
    inside the measured program, whose measurement does not cover that folder."""
    marker = tmp_path / "planted-ran"
    (tmp_path / "signal.py").write_text(
        "import os\n"
        "if 'SECFL_FILES' in os.environ:  # in the workload (the test starts the launcher\n"
        f"    open({str(marker)!r}, 'w').write('ran')  # with `python -m` from here too)\n"
        "from _signal import *  # noqa\n"
    )
    proc = world.start("crash", python(KILLED), cwd=tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGKILL, err
    assert not marker.exists(), "a module planted in the working folder ran in the workload"


@pytest.mark.parametrize("how", ["program", "module"])
def test_temporary_files_stay_in_the_private_folder(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Found by a review: the workload's temporary files (``tempfile``, a library's
    spooled upload or compiled kernel) went to the host's ``TMPDIR``, on disk, where they
    outlived it. They go into the private folder now, which is gone after the run (and
    after a SIGKILL: tests/launcher/test_kill.py), and so do caches (XDG_CACHE_HOME)."""
    host_tmp = tmp_path / "host-tmp"
    host_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(host_tmp))
    if how == "program":
        done = world.run("worker", world.argv())
        assert done.returncode == 7, done.stderr
    else:
        done = world.run("mod", ["x"], module="mytask")
        assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    scratch = Path(lines["SCRATCH"])
    assert "/secfl-run-" in str(scratch) and "/.secfl/tmp/" in str(scratch), scratch
    assert not scratch.exists(), "the scratch file must be gone with the private folder"
    assert list(host_tmp.iterdir()) == [], "nothing of the workload's in the host's TMPDIR"
    if how == "program":
        assert lines["CACHE"].startswith(lines["FILES_DIR"] + "/"), lines["CACHE"]
        # (the review of the fix) an aggregator's sealed spill stays on the host's disk
        assert lines["HOST_TMP"] == str(host_tmp)
        from secfl.fl._spill import SpillFile

        monkeypatch.setenv("TMPDIR", lines["FILES_DIR"])
        monkeypatch.setenv("SECFL_HOST_TMPDIR", lines["HOST_TMP"])
        assert SpillFile(None).directory == host_tmp


def test_changed_program_is_refused_and_not_started(world: World, tmp_path: Path) -> None:
    changed = tmp_path / "workload.py"
    changed.write_text(world.program.read_text() + "# one more line\n")
    changed.chmod(0o755)
    done = world.run("worker", [str(changed), *world.argv()[1:]])
    assert done.returncode == 1
    assert done.stdout == ""
    *shown, last = done.stderr.strip().splitlines()
    assert last.startswith("error: measurement:"), done.stderr
    # what it measured, so the changed program shows at once
    assert f"secfl run:   program:      {changed} (sha256 " in "\n".join(shown), done.stderr


def test_an_unmodified_third_party_program_gets_a_secret(world: World) -> None:
    """openssl encrypts with the token it reads from its environment (never argv)."""
    if not Path(world.tool_argv[0]).exists():
        pytest.skip("openssl is not installed")
    done = world.run("tool", world.tool_argv, attest_spm=True)  # SPM checked by attestation
    assert done.returncode == 0, done.stderr
    assert "hello" not in done.stdout
    decrypt = [world.tool_argv[0], "enc", "-d", "-aes-256-cbc", "-pbkdf2", "-a",
               "-pass", "env:TOKEN"]  # fmt: skip
    plain = subprocess.run(
        decrypt, input=done.stdout, capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, "TOKEN": world.token().hex()},
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == "hello from the TEE\n"


@pytest.mark.parametrize("damage", ["flip", "truncate", "swap"])
def test_damaged_volumes_are_refused(world: World, tmp_path: Path, damage: str) -> None:
    data = bytearray(world.data_v1.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        del data[-20:]
    else:  # two bytes blocks far apart exchanged
        a, b = len(data) // 3, 2 * len(data) // 3
        data[a : a + 16], data[b : b + 16] = data[b : b + 16], data[a : a + 16]
    bad = tmp_path / f"{damage}.vol"
    bad.write_bytes(bytes(data))
    done = world.run("worker", world.argv(), data=bad)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip().startswith("error: shield:"), done.stderr


def test_rollback_of_a_data_volume_is_refused(world: World) -> None:
    assert world.run("worker", world.argv()).returncode == 7
    v2 = world.data_volume(2, "a,b\n3,4\n")
    newer = world.run("worker", world.argv(), data=v2)
    assert newer.returncode == 7, newer.stderr
    world.latest = v2
    assert "DATA a,b|3,4" in newer.stdout
    older = world.run("worker", world.argv(), data=world.data_v1)  # v1 again
    assert older.returncode == 1
    assert older.stderr.strip().startswith("error: rollback:"), older.stderr
    with SpmClient(world.spm.url, pin=world.spm.pin) as client:
        state = client.volume_state("run", "data")
    assert state["version"] == 2


def test_a_data_volume_cannot_bring_the_module_it_is_run_with(world: World) -> None:
    """Whoever holds the data key (a data owner, not the code's) releases data that
    holds a `mytask` package of its own: `--module mytask` still runs the code
    volume's, which the measurement covers (the data volume's ran, with the
    workload's key and the code volume in reach)."""
    with SpmClient(world.spm.url, pin=world.spm.pin) as client:
        version = max(2, client.volume_state("run", "data")["version"] + 1)  # v1: the first
    hostile = (
        "print('HIJACKED', open(__import__('os').environ['SECFL_IDENTITY'] + '/key.pem').read())"
    )
    planted = world.data_volume(
        version,
        "a,b\n5,6\n",
        {"mytask/__init__.py": "NAME = 'planted'\n", "mytask/__main__.py": hostile},
    )
    done = world.run("mod", ["x"], module="mytask", data=planted)
    world.latest = planted  # recorded as the newest release: it is one
    assert done.returncode == 0, done.stderr
    assert "HIJACKED" not in done.stdout
    assert "MODULE mytask ['x']" in done.stdout
    assert "STREAM a,b\n5,6" in done.stdout


def test_a_tampered_chunk_does_not_show_the_host_the_files_names(
    world: World, tmp_path: Path
) -> None:
    """Found by a hostile review: the host flipped one byte of a data volume's
    ciphertext (no key needed; the header says where the manifest starts) and `secfl
    run`'s refusal named the file whose chunk failed, from the sealed manifest. One
    byte at a time, the host read every name and where each file begins and ends."""
    from secfl.shield import _format as fmt

    with SpmClient(world.spm.url, pin=world.spm.pin) as client:
        version = max(2, client.volume_state("run", "data")["version"] + 1)  # v1: the first
    secret = "zz/patient-alice-smith-HIV-positive.csv"
    release = world.data_volume(version, "a,b\n7,8\n", {secret: "x\n"})
    raw = bytearray(release.read_bytes())
    header = fmt.unpack_header(bytes(raw[: fmt.HEADER_SIZE]), "test")
    raw[header.manifest_offset - 1] ^= 1  # the last chunk of the last file
    tampered = tmp_path / "tampered.vol"
    tampered.write_bytes(bytes(raw))
    done = world.run("worker", world.argv(), data=tampered)
    world.latest = release  # its version is recorded: the untampered file is that release
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: shield:"), done.stderr
    assert "file #2 of 2" in lines[0] and "chunk 0 failed authentication" in lines[0]
    assert "patient" not in done.stderr + done.stdout and "zz" not in done.stderr
    # the untampered release runs, and the owner's own tools still name the file
    assert world.run("worker", world.argv(), data=release).returncode == 7


def test_a_program_name_too_long_or_a_link_loop_is_one_line(world: World, tmp_path: Path) -> None:
    """Found by a review: `Path.is_file` raised on a program name too long (Python
    3.11), a traceback from `secfl run`."""
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    for program in (str(tmp_path / ("a" * 300)), str(loop)):
        done = world.run("worker", [program])
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: measure: program"), done.stderr


def test_a_modules_exception_shows_the_host_neither_its_message_nor_its_traceback(
    world: World,
) -> None:
    """Found by a review: an exception the ``--module`` program did not catch went up
    to Python's handler: its traceback named the code volume's files and functions and
    its message quoted the data, on the host's stderr."""
    with SpmClient(world.spm.url, pin=world.spm.pin) as client:
        version = max(2, client.volume_state("run", "data")["version"] + 1)  # v1: the first
    release = world.data_volume(version, "a,b\n9,9\n", {"raise.txt": "patient-alice-smith"})
    done = world.run("mod", ["x"], module="mytask", data=release)
    world.latest = world.data_volume(version + 1, "a,b\n1,2\n")  # for the tests after
    assert world.run("worker", world.argv(), data=world.latest).returncode == 7
    assert done.returncode == 1
    # its warning, a thread's exception and its own: one line each, no text, no name
    assert "Traceback" not in done.stderr and "Exception in thread" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if "secfl run: the program" not in line]
    assert len(lines) == 3, done.stderr
    assert lines[0] == "a code volume's file, line 11: UserWarning (its text is not shown)"
    assert lines[1].startswith("error: Thread-1 (leak): KeyError at a code volume's file, ")
    assert lines[2].startswith("error: module: 'mytask' raised KeyError"), done.stderr
    assert "patient" not in done.stderr + done.stdout and "__main__" not in done.stderr


def test_signals_are_forwarded(world: World) -> None:
    proc = world.start("worker", world.argv("--wait"))
    wait_ready(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 42  # the workload's own SIGTERM handler's code


def test_death_by_signal_passes_through_as_128_plus_n(world: World) -> None:
    proc = world.start("worker", world.argv("--die"))
    wait_ready(proc)
    proc.send_signal(signal.SIGUSR1)  # the workload does not handle it: it dies of it
    assert proc.wait(timeout=30) == 128 + signal.SIGUSR1  # as a shell reports it
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()


def test_python_module_runs_from_memory(world: World) -> None:
    done = world.run("mod", ["x"], module="mytask")
    assert done.returncode == 0, done.stderr
    assert "MODULE mytask ['x']" in done.stdout
    assert "STREAM a,b" in done.stdout
    assert "CODE code\n" in done.stdout  # the code volumes, for the FL commands' --task


def test_measure_for_run_matches(world: World) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "secfl.cli.main", "measure", "--for-run",
         "--code-volume", f"code={world.base / 'code.vol'}", "--", *world.argv()],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == world.measurement(world.argv())


def test_an_unverified_spm_is_refused(world: World) -> None:
    args = [sys.executable, "-m", "secfl.cli.main", "run", "--spm", world.spm.url,
            "--policy", "run", "--service", "tool", "--", *world.tool_argv]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: spm: give --spm-pin or --spm-measurement")
    wrong = [*args[:6], "--spm-measurement", "00" * 48, "--sim-root",
             str(world.sim_dir / simulated.ROOT_CERT), *args[6:]]  # fmt: skip
    done = subprocess.run(wrong, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: measurement:"), done.stderr
