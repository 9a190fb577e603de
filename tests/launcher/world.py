"""The world the launcher's tests run in: a real SPM process over loopback HTTPS, the
simulated TEE, a board, shielded volumes, and one policy whose services cover what
the tests start through `secfl run` as real processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import yaml

from secfl.launcher._measurement import resolve_program, run_measurement
from secfl.shield import encrypt_directory
from secfl.spm.client import SpmClient
from secfl.tee import _simulated as simulated
from tests.spm.harness import Board, SpmProcess, make_sim

WORKLOAD = textwrap.dedent(
    """\
    #!{python}
    import os, signal, sys, time
    files = os.environ["SECFL_FILES"]
    print("PID", os.getpid(), flush=True)
    print("ARG", sys.argv[1:], flush=True)
    print("ENV", os.environ.get("API_TOKEN"), flush=True)
    print("FILE", open(os.path.join(files, "secrets", "token")).read(), flush=True)
    rows = open(os.path.join(os.environ["SECFL_VOLUMES"], "data", "rows.csv")).read()
    print("DATA", rows.strip().replace(chr(10), "|"), flush=True)
    print("FILES_DIR", files, flush=True)
    import tempfile  # a library's scratch file, holding plaintext
    with tempfile.NamedTemporaryFile(delete=False) as scratch:
        scratch.write(rows.encode())
    print("SCRATCH", scratch.name, flush=True)
    print("CACHE", os.environ.get("XDG_CACHE_HOME"), flush=True)
    print("HOST_TMP", os.environ.get("SECFL_HOST_TMPDIR"), flush=True)
    if "--import" in sys.argv:  # code from its code volume
        sys.path.insert(0, os.path.join(os.environ["SECFL_VOLUMES"], "code"))
        import mytask
        print("IMPORTED", mytask.NAME, flush=True)
    if "--wait" in sys.argv:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))
        print("READY", flush=True)
        time.sleep(60)
    if "--die" in sys.argv:
        print("READY", flush=True)
        time.sleep(60)
    sys.exit(7)
    """
)

#: Programs run with this interpreter: ``python -c CODE``.
#: ``python -m mytask fork``: forks a worker that outlives the launcher (its own
#: session, no parent-death signal), as a daemonised helper or a pool's worker may.
FORKS = textwrap.dedent(
    """\
    import os, sys, time
    if sys.argv[1:] == ["fork"]:
        child = os.fork()
        if child == 0:
            os.setsid()
            time.sleep(60)
            os._exit(0)
        print("CHILD", child, flush=True)
        print("FILES_DIR", os.environ["SECFL_FILES"], flush=True)
        print("READY", flush=True)
        time.sleep(60)
    """
)
KILLED = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
SEGFAULT = (
    "import os, resource, signal; print('CORE', resource.getrlimit(resource.RLIMIT_CORE), "
    "flush=True); os.kill(os.getpid(), signal.SIGSEGV)"
)
SHOW_META = (
    "import os; print('ENV', os.environ['META']); "
    "print('FILE', open(os.path.join(os.environ['SECFL_FILES'], 'meta.txt')).read())"
)
STARTED = "print('started')"
#: Programs whose own arguments name a secret: refused before anything is released.
LEAKY = {
    "hex": ("--key", "$$SECFL::api-token:hex$$"),
    "bare": ("$$SECFL::nul$$",),
}
#: An imported secret whose value is a placeholder itself: it must stay literal.
META_VALUE = b"$$SECFL::api-token:hex$$"
META_TEXT = "$$SECFL::meta$$ $$SECFL::api-token:hex$$"

#: Injected files that the launcher could not write: a policy that has them is
#: refused when it is submitted (the launcher checks them again, see file_plan).
BAD_FILES = {
    "own-file": {"/.secfl/key.pem": "mine"},
    "own-volume": {"/volumes/data/rows.csv": "mine"},
    "same-file": {"/a/b": "one", "/a/b/": "two"},
    "file-folder": {"/a": "one", "/a/b": "two"},
}


def python(code: str, *extra: str) -> list[str]:
    return [sys.executable, "-c", code, *extra]


class World:
    """SPM, board, volumes and the policy the tests run against."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.sim_dir = base / "sim"
        self.root = make_sim(self.sim_dir)
        self.spm = SpmProcess(base / "spm-data", self.sim_dir, None).start()
        self.board = Board.create()
        self.keys = {n: os.urandom(32) for n in ("code", "data")}
        (base / "code").mkdir()
        (base / "code" / "mytask").mkdir()
        (base / "code" / "mytask" / "__init__.py").write_text("NAME = 'mytask'\n")
        (base / "code" / "mytask" / "__main__.py").write_text(
            "import sys\nfrom mytask import NAME\nprint('MODULE', NAME, sys.argv[1:])\n"
            "import mytask.forks\n"
            "import os\nprint('CODE', os.environ['SECFL_CODE_VOLUMES'])\n"
            "from secfl.launcher import volumes\n"
            "if 'raise.txt' in volumes['data']:\n"
            "    import threading, warnings\n"
            "    secret = volumes['data'].read_bytes('raise.txt').decode()\n"
            "    warnings.warn(secret)\n"
            "    def leak():\n"
            "        raise KeyError(secret)\n"
            "    thread = threading.Thread(target=leak)\n"
            "    thread.start()\n"
            "    thread.join()\n"
            "    raise KeyError(secret)\n"
            "print('STREAM', volumes['data'].read_bytes('rows.csv').decode().strip())\n"
            "import tempfile\nprint('SCRATCH', tempfile.mkstemp()[1])\n"
        )
        (base / "code" / "mytask" / "forks.py").write_text(FORKS)
        self.code_tag = encrypt_directory(base / "code", base / "code.vol", self.keys["code"])
        self.data_v1 = self.data_volume(1, "a,b\n1,2\n")
        self.latest = self.data_v1  # the newest release recorded so far
        self.program = base / "workload.py"
        self.program.write_text(WORKLOAD.format(python=sys.executable))
        self.program.chmod(0o755)

    def data_volume(self, version: int, rows: str, files: dict[str, str] | None = None) -> Path:
        """A release of the data volume (``rows.csv``, and ``files`` by path)."""
        src = self.base / f"data-src-{version}"
        src.mkdir()
        (src / "rows.csv").write_text(rows)
        for name, text in (files or {}).items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_text(text)
        out = self.base / f"data-v{version}.vol"
        encrypt_directory(src, out, self.keys["data"], version=version)
        return out

    def argv(self, *extra: str) -> list[str]:
        """The worker's command line: a public part may go there, never a secret."""
        return [str(self.program), "--pub", "$$SECFL::signer:pub$$", *extra]

    def measurement(self, argv: list[str], module: str | None = None) -> str:
        program = None if module else resolve_program(argv[0])
        shown = ["-m", module, *argv] if module else argv
        return run_measurement(program, shown, {"code": self.code_tag})

    @staticmethod
    def plain(argv: list[str]) -> str:
        """The measurement of a program run without volumes."""
        return run_measurement(resolve_program(argv[0]), argv, {})

    def submit_program(
        self, name: str, measurement: str, env: dict[str, str] | None = None
    ) -> None:
        """Policy ``name``: one service, ``svc``, that runs the program ``measurement``
        names, without volumes; with ``env`` injected, and a random secret ``tok`` it
        receives (``$$SECFL::tok:hex$$``)."""
        service: dict[str, Any] = {
            "name": "svc", "role": "any", "measurements": {"simulated": [measurement]}
        }  # fmt: skip
        secrets: list[dict[str, Any]] = [
            {"name": "ca", "kind": "x509-ca", "common_name": f"{name} CA"}
        ]
        if env is not None:
            service |= {"inject": {"env": env}, "secrets": ["tok"]}
            secrets.append({"name": "tok", "kind": "random", "size": 16})
        self._submit({
            "name": name, "version": 1,
            "board": {"members": self.board.members(), "threshold": 2},
            "platforms": {"accept": ["simulated"], "simulation_root": self.root.decode()},
            "identity_ca": "ca", "services": [service], "secrets": secrets,
        })  # fmt: skip

    def submit(self) -> None:
        run_argv = [self.argv(), self.argv("--wait"), self.argv("--die"), self.argv("--import")]
        openssl = shutil.which("openssl") or "/usr/bin/openssl"
        # An unmodified program that reads its secret from the environment.
        tool_argv = [openssl, "enc", "-aes-256-cbc", "-pbkdf2", "-a", "-pass", "env:TOOL_TOKEN",
                     "-in", str(self.base / "message.txt")]  # fmt: skip
        self.tool_argv = tool_argv
        (self.base / "message.txt").write_text("hello from the TEE\n")
        started = self.plain(python(STARTED))
        services: list[dict[str, Any]] = [
            {
                "name": "worker",
                "role": "any",
                "measurements": {"simulated": [self.measurement(a) for a in run_argv]},
                "volumes": ["code", "data"],
                "inject": {
                    "env": {"API_TOKEN": "$$SECFL::api-token:base64$$"},
                    "files": {
                        "/secrets/token": "$$SECFL::api-token:hex$$",
                        "/signer.pub": "$$SECFL::signer:pub$$",  # released: its public part
                    },
                },
            },
            {
                "name": "tool",
                "role": "any",
                "measurements": {"simulated": [self.plain(tool_argv)]},
                "inject": {"env": {"TOOL_TOKEN": "$$SECFL::api-token:hex$$"}},
                "secrets": ["api-token", "signer"],
            },
            {
                "name": "mod",
                "role": "any",
                "measurements": {
                    "simulated": [
                        self.measurement(["x"], module="mytask"),
                        self.measurement(["fork"], module="mytask"),
                    ]
                },
                "volumes": ["code", "data"],
            },
            {
                "name": "crash",
                "role": "any",
                "measurements": {
                    "simulated": [self.plain(python(KILLED)), self.plain(python(SEGFAULT))]
                },
                "secrets": ["api-token"],
            },
            {
                "name": "meta",
                "role": "any",
                "measurements": {"simulated": [self.plain(python(SHOW_META))]},
                "inject": {"env": {"META": META_TEXT}, "files": {"/meta.txt": META_TEXT}},
            },
            {
                "name": "nul-env",
                "role": "any",
                "measurements": {"simulated": [started]},
                "inject": {"env": {"NUL": "$$SECFL::nul$$"}},
            },
            {
                "name": "leaky",
                "role": "any",
                "measurements": {
                    "simulated": [self.plain(python(STARTED, *a)) for a in LEAKY.values()]
                },
                "secrets": ["api-token", "nul"],
            },
        ]
        doc = {
            "name": "run",
            "version": 1,
            "board": {"members": self.board.members(), "threshold": 2},
            "platforms": {"accept": ["simulated"], "simulation_root": self.root.decode()},
            "identity_ca": "ca",
            "services": services,
            "secrets": [
                {"name": "ca", "kind": "x509-ca", "common_name": "run CA"},
                {"name": "api-token", "kind": "random", "size": 16},
                {"name": "signer", "kind": "ed25519"},
                {"name": "code-key", "kind": "imported", "sealed": self.seal("code-key")},
                {"name": "data-key", "kind": "imported", "sealed": self.seal("data-key")},
                {"name": "meta", "kind": "imported", "sealed": self.seal("meta", META_VALUE)},
                {"name": "nul", "kind": "imported", "sealed": self.seal("nul", b"a\0b")},
            ],
            "volumes": [
                {"name": "code", "key": "code-key", "kind": "code", "tag": self.code_tag},
                {"name": "data", "key": "data-key", "counter": "data-version"},
            ],
            "counters": [{"name": "data-version"}],
        }
        self._submit(doc)

    def submit_hostile(self, files: dict[str, str]) -> None:
        """Submit the policy "hostile": one service, injected with ``files``. Unsigned:
        the board's own tools refuse to sign it, and the SPM checks the document first."""
        document = yaml.safe_dump(
            {
                "name": "hostile",
                "version": 1,
                "board": {"members": self.board.members(), "threshold": 2},
                "platforms": {"accept": ["simulated"], "simulation_root": self.root.decode()},
                "identity_ca": "ca",
                "services": [
                    {
                        "name": "victim",
                        "role": "any",
                        "measurements": {"simulated": [self.plain(python(STARTED))]},
                        "inject": {"files": files},
                    }
                ],
                "secrets": [{"name": "ca", "kind": "x509-ca", "common_name": "hostile CA"}],
            },
            sort_keys=False,
        )
        with SpmClient(self.spm.url, pin=self.spm.pin) as client:
            client.submit_policy(document, [])

    def _submit(self, doc: dict[str, Any]) -> None:
        document = yaml.safe_dump(doc, sort_keys=False)
        with SpmClient(self.spm.url, pin=self.spm.pin) as client:
            client.submit_policy(document, self.board.sign(document, "alice", "bob"))

    def seal(self, secret: str, value: bytes | None = None) -> str:
        """An imported secret sealed to the SPM for this policy and board."""
        from cryptography import x509

        from secfl.spm._sealing import board_binding, seal_imported

        if value is None:
            value = self.keys[secret.removesuffix("-key")]
        pem = subprocess.run(
            [sys.executable, "-c", "import ssl,sys; h,p=sys.argv[1].rsplit(':',1); "
             "print(ssl.get_server_certificate((h,int(p))))",
             self.spm.url.removeprefix("https://")],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        key = x509.load_pem_x509_certificate(pem.encode()).public_key()
        board = board_binding([m["public_key"] for m in self.board.members()], 2)
        return seal_imported(value, key, "run", secret, board)  # type: ignore[arg-type]

    def token(self) -> bytes:
        """The released api-token, as another attested 'tool' workload receives it."""
        return bytes.fromhex(self.released("api-token", "hex"))

    def released(self, name: str, selector: str | None = None) -> str:
        """``$$SECFL::name[:selector]$$`` as another attested 'tool' workload renders it."""
        from secfl.spm.enroll import enroll

        with SpmClient(self.spm.url, pin=self.spm.pin) as client:
            platform = simulated.SimulatedPlatform(self.sim_dir)
            got = enroll(client, platform, "run", "tool", measurement=self.plain(self.tool_argv))
        return got.render(name, selector)

    def command(
        self,
        service: str,
        argv: list[str],
        *,
        data: Path | None = None,
        module: str | None = None,
        attest_spm: bool = False,
        policy: str = "run",
    ) -> list[str]:
        """The `secfl run` command line for ``service`` running ``argv``."""
        trust = (
            ["--spm-measurement", self.spm.measurement,
             "--sim-root", str(self.sim_dir / simulated.ROOT_CERT)]
            if attest_spm
            else ["--spm-pin", self.spm.pin]
        )  # fmt: skip
        args = [sys.executable, "-m", "secfl.cli.main", "run", "--spm", self.spm.url, *trust,
                "--policy", policy, "--service", service,
                "--platform", "simulated", "--sim-dir", str(self.sim_dir)]  # fmt: skip
        if service in ("worker", "mod"):
            args += ["--volume", f"code={self.base / 'code.vol'}",
                     "--volume", f"data={data or self.latest}"]  # fmt: skip
        if module:
            args += ["--module", module]
        return [*args, "--", *argv]

    def run(self, service: str, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run `secfl run` to its end."""
        return subprocess.run(
            self.command(service, argv, **kwargs),
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    def start(
        self,
        service: str,
        argv: list[str],
        *,
        prefix: tuple[str, ...] = (),
        cwd: Path | None = None,
        new_group: bool = False,
        **kwargs: Any,
    ) -> subprocess.Popen[str]:
        """Start `secfl run` (after ``prefix``, e.g. a capability-dropping wrapper)."""
        return subprocess.Popen(
            [*prefix, *self.command(service, argv, **kwargs)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=cwd, start_new_session=new_group,
        )  # fmt: skip


def wait_ready(proc: subprocess.Popen[str]) -> dict[str, str]:
    """Read the workload's lines up to READY; return them by their first word."""
    assert proc.stdout is not None
    lines: dict[str, str] = {}
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        word, _, rest = line.rstrip("\n").partition(" ")
        if word == "READY":
            return lines
        lines[word] = rest
        assert time.monotonic() < deadline
    err = proc.stderr.read() if proc.stderr else ""
    raise AssertionError(f"the workload did not start: {err}")
