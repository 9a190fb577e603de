"""Environment variables that let whoever starts a process read or redirect its traffic.

A TEE's workload inherits its environment from whoever started it, which may be the
host. Two kinds of variable matter there:

- ``SSLKEYLOGFILE``: Python's ``ssl.create_default_context`` writes every TLS
  session's secrets to that file, so a host that captures its own traffic decrypts
  what the workload sends the SPM (a session token, released secrets);
- proxy variables (``http_proxy``, ``grpc_proxy`` and their kin, in any case: urllib
  lowercases them): gRPC and httpx send connections through them by default, which
  would give a plaintext loopback API (such as Flower's Runtime API) to the host;
  :func:`loopback_direct` keeps loopback out of every proxy;
- ``OPENSSL_CONF`` and its kin name libraries OpenSSL loads (:data:`CODE_LOADERS`);
- ``PYTHONPYCACHEPREFIX`` moves the bytecode Python writes of every module it imports,
  code decrypted from a volume included, out of the private folder to where the host
  reads it (:func:`no_bytecode`);
- variables that make the dynamic linker, Python, a shell or another interpreter run
  code they name (``LD_PRELOAD``, ``PYTHONPATH``, ``BASH_ENV``, ``NODE_OPTIONS``...):
  a measured program started with them runs the host's code with its secrets
  (:func:`for_program`);
- ``PATH``, where a program finds what it starts by name: torch.compile's ``g++``
  (once ``CXX`` is dropped), ``nvcc`` (once ``CUDA_HOME`` is), Triton's ``gcc``, a
  measured shell script's ``python``. The host's had a program of its own (or a venv's
  start-up hook) run in the workload with its secrets (found by a hostile review): a
  measured program gets :func:`program_path`, its own folder then the system's, unless
  the policy's ``inject.env`` sets ``PATH``;
- secfl's own ``SECFL_*`` variables (:func:`from_host`), by this rule. The host may
  choose only :data:`HOST_SETTINGS`, operational settings each reader bounds and
  checks (one line naming a bad one): where an FL service listens, stores its sealed
  checkpoints and metrics, how many threads decrypt a volume. What ``secfl run`` tells
  its program itself (:data:`RUN_SETS`: its private folder, its identity, the SPM it
  verified, the policy, the TEE, the measurement it computed in the simulated TEE) is
  never the host's: the host's value is dropped and the launcher's set, or none where
  the launcher sets none (a host's ``SECFL_MEASUREMENT`` on hardware had every renewal
  present a measurement the SPM refused). Every other ``SECFL_*`` name, those of
  secfl's other tools (:data:`NOT_WORKLOAD`) and any not listed here, is dropped: a new
  variable reaches a workload only once it is listed here.

:func:`scrub` removes variables from this process.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable, Mapping

__all__ = [
    "CODE_LOADERS",
    "CODE_PREFIXES",
    "HOST_SETTINGS",
    "INTERPRETER_HOOKS",
    "KEY_LOGS",
    "LOOPBACK",
    "NOT_WORKLOAD",
    "PYTHON_HARMLESS",
    "RUN_SETS",
    "SYSTEM_PATH",
    "TRUST_STORES",
    "for_program",
    "from_host",
    "loopback_direct",
    "no_bytecode",
    "notable",
    "program_path",
    "scrub",
    "without",
]

#: Variables that make TLS libraries write session secrets to a file.
KEY_LOGS = frozenset({"SSLKEYLOGFILE"})
#: Variables that make OpenSSL or glibc load a library the environment names.
CODE_LOADERS = frozenset({"OPENSSL_CONF", "OPENSSL_MODULES", "OPENSSL_ENGINES", "GCONV_PATH"})
#: Variables that make a shell, an interpreter other than Python or a library run code
#: or load modules they name, trace a program's secrets to the host, or change what it
#: trusts or where its compiled code is cached (prefixes: :data:`CODE_PREFIXES`).
INTERPRETER_HOOKS = frozenset(
    {
        # shells: a startup file, options (xtrace prints every command, secrets
        # included, and runs PS4's command substitutions)
        "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND",
        # other interpreters
        "PERL5OPT", "PERL5LIB", "PERLLIB", "PERL5DB", "NODE_OPTIONS", "NODE_PATH",
        "RUBYOPT", "RUBYLIB", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS",
        "CLASSPATH", "GIT_EXEC_PATH",
        # glibc and libraries loaded by name
        "GLIBC_TUNABLES", "LOCPATH", "NLSPATH", "CUDA_INJECTION64_PATH",
        "NVTX_INJECTION64_PATH", "OMP_TOOL_LIBRARIES",
        # NCCL's plugins (a library path: NCCL_NET_PLUGIN=/x/libnccl-net-x.so), ROCm's tools
        "NCCL_NET_PLUGIN", "NCCL_TUNER_PLUGIN", "NCCL_PROFILER_PLUGIN", "HSA_TOOLS_LIB",
        # trust stores: the policy names the ones a program should trust
        "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        # compiled code cached where the host reads and writes it (the defaults are
        # in the private folder: TMPDIR, XDG_CACHE_HOME)
        "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TORCH_EXTENSIONS_DIR",
        "HF_MODULES_CACHE", "NUMBA_CACHE_DIR", "PYTORCH_KERNEL_CACHE_PATH",
        "CUDA_CACHE_PATH", "CUPY_CACHE_DIR",
        # ...and the folders above them, whose caches hold code or pickled weights a
        # program loads without checking them (torch.hub runs a cached repository's
        # hubconf.py; Hugging Face's modules folder holds remote code): the defaults
        # are under XDG_CACHE_HOME, in the private folder (found by a hostile review)
        "TORCH_HOME", "HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE",
        "TRANSFORMERS_CACHE", "HF_DATASETS_CACHE", "TRITON_HOME",
        # switches that turn a safe loader into one that runs code: torch.load's
        # weights_only default, Hugging Face datasets' loading scripts
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "HF_DATASETS_TRUST_REMOTE_CODE",
        # ...and the server a program takes its models, datasets and their code from: the
        # Hub's address (a host's server, TLS to a name of its own, serves "org/model"),
        # or its staging Hub, where anyone may create that name; a program that loads a
        # model with trust_remote_code ran the host's modelling code (found by a hostile
        # review), and any took the host's weights and data as the named ones
        "HF_ENDPOINT", "HUGGINGFACE_CO_RESOLVE_ENDPOINT", "HUGGINGFACE_CO_STAGING",
        # torch's traces: torch.compile's debug folder (the working folder's by default,
        # on the host's disk) with the real tensors, weights included (found by a
        # hostile review), its structured trace and logs of graphs and generated code,
        # and the minifier's repro scripts
        "TORCH_COMPILE_DEBUG", "TORCH_COMPILE_DEBUG_DIR", "TORCH_COMPILE_DEBUG_SAVE_REAL",
        "TORCH_TRACE", "TORCH_DTRACE", "TORCH_LOGS", "TORCH_LOGS_OUT",
        "TORCHDYNAMO_REPRO_AFTER", "TORCHDYNAMO_REPRO_LEVEL",
        # the compiler a program builds code with and then loads (torch.compile's C++
        # backend runs $CXX, Triton $CC; a JIT-built extension): which compiler, its
        # programs, headers (CPATH: a planted header ran in the program that loaded
        # what it built, found by a hostile review), libraries and flags (-B, -fplugin)
        "CC", "CXX", "CPP", "CUDAHOSTCXX", "CPATH", "C_INCLUDE_PATH", "CPLUS_INCLUDE_PATH",
        "OBJC_INCLUDE_PATH", "LIBRARY_PATH", "COMPILER_PATH", "GCC_EXEC_PREFIX",
        "CFLAGS", "CXXFLAGS", "CPPFLAGS", "LDFLAGS", "LDSHARED", "CCC_OVERRIDE_OPTIONS",
        "NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS", "NVCC_CCBIN",
        # ...and the toolkits a program builds with, or loads libraries from, by these
        # (found by a hostile review of the list): torch's JIT extensions run
        # $CUDA_HOME/bin/nvcc (or $PYTORCH_NVCC) with its headers, numba loads libNVVM
        # from CUDA_HOME, CuPy compiles kernels with CUDA_PATH's NVRTC and headers;
        # inductor builds against CUTLASS's, Composable Kernel's and Halide's headers and
        # libraries, and without a compiler installs one with $CONDA_EXE
        "CUDA_HOME", "CUDA_PATH", "CUDA_INC_PATH", "CUDNN_HOME", "CUDNN_PATH",
        "ROCM_HOME", "ROCM_PATH", "PYTORCH_NVCC", "TORCHINDUCTOR_CUTLASS_DIR",
        "TORCHINDUCTOR_CK_DIR", "HALIDE_INCLUDE", "HALIDE_LIB", "TORCH_INDUCTOR_INSTALL_GXX",
        "CONDA_EXE",
        # torch's remote caches: compiled graphs (their code and libraries) and pickled
        # profiles a program loads from a server these name, the host's
        "TORCHINDUCTOR_FX_GRAPH_REMOTE_CACHE", "TORCHINDUCTOR_AUTOTUNE_REMOTE_CACHE",
        "TORCHINDUCTOR_BUNDLED_AUTOTUNE_REMOTE_CACHE", "TORCHINDUCTOR_AUTOGRAD_REMOTE_CACHE",
        "TORCH_DYNAMO_AUTOMATIC_DYNAMIC_REMOTE_PGO", "TORCHINDUCTOR_REDIS_URL",
        "TORCHINDUCTOR_REDIS_HOST", "TORCHINDUCTOR_REDIS_PORT",
    }
)  # fmt: skip
#: Prefixes of the dynamic linker's variables (``LD_PRELOAD``, ``LD_AUDIT``,
#: ``LD_LIBRARY_PATH``), Python's (``PYTHONPATH``, ``PYTHONHOME``, ``PYTHONSTARTUP``,
#: ``PYTHONWARNINGS``, which imports the module a category names...), OpenSSL's (its
#: configuration and modules, and ``OPENSSL_ia32cap``, which turns AES-NI off), gRPC's
#: (``GRPC_TRACE`` writes decrypted frames to stderr; its proxy variables are lower
#: case), bash's exported functions (``BASH_FUNC_name%%`` replaces a command a script
#: runs), git's configuration (``GIT_CONFIG_KEY_0=core.fsmonitor`` runs a command) and
#: Triton's (``TRITON_PTXAS_PATH`` names the assembler it runs on every kernel,
#: ``TRITON_LIBCUDA_PATH`` the driver it loads, ``TRITON_OVERRIDE_DIR`` kernels that
#: replace the compiled ones; its cache is the private folder's: found by a hostile review).
CODE_PREFIXES = ("LD_", "PYTHON", "OPENSSL_", "GRPC_", "BASH_FUNC_", "GIT_CONFIG", "TRITON_")
#: Python's variables that load nothing and show nothing: passed on (not
#: ``PYTHONFAULTHANDLER``: a signal then dumps every thread's stack, the task's files
#: and functions, to the host's stderr; found by a review).
PYTHON_HARMLESS = frozenset(
    {
        "PYTHONUNBUFFERED", "PYTHONIOENCODING", "PYTHONHASHSEED",
        "PYTHONDONTWRITEBYTECODE", "PYTHONUTF8", "PYTHONNOUSERSITE", "PYTHONSAFEPATH",
    }
)  # fmt: skip
#: Variables that name a trust store (what :func:`notable` checks against the system's).
TRUST_STORES = frozenset(
    {
        "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS", "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
    }
)  # fmt: skip
#: The ``SECFL_*`` settings a workload takes from the host (unmeasured: each reader
#: bounds and checks its value, and refuses a bad one in a line that names it).
HOST_SETTINGS = frozenset(
    {
        # an FL service's operational settings (secfl.fl._host_settings: addresses, the
        # folders of sealed checkpoints and of the sealed output, files the host reads)
        "SECFL_LISTEN", "SECFL_AGGREGATOR", "SECFL_CHECKPOINTS", "SECFL_METRICS",
        "SECFL_OUTPUT", "SECFL_READY_FILE", "SECFL_LOG_LEVEL",
        # threads that decrypt a volume: 1 to 8, never more than the CPUs it may use, a
        # bad value one thread (secfl.shield._threads)
        "SECFL_SHIELD_THREADS",
        # the built-in fashion-mnist task's public IDX files: regular files only, each
        # bounded and checked against its header (secfl.tasks._fashion_mnist)
        "SECFL_FASHION_MNIST_DIR",
        # the file holding the site's private key (the site operator's credential, not
        # the code's: unmeasured), which signs each enrolment; `secfl run` reads it, a
        # regular file of mode 0600 with an Ed25519 or P-256 key (secfl.spm._site_key)
        "SECFL_SITE_KEY",
    }
)  # fmt: skip
#: The ``SECFL_*`` variables ``secfl run`` sets for its program: never the host's
#: (``SECFL_MEASUREMENT`` and ``SECFL_SIM_DIR`` only in the simulated TEE).
RUN_SETS = frozenset(
    {
        "SECFL_FILES", "SECFL_VOLUMES", "SECFL_CODE_VOLUMES", "SECFL_IDENTITY",
        "SECFL_POLICY", "SECFL_SERVICE", "SECFL_SPM_URL", "SECFL_SPM_PIN",
        "SECFL_POLICY_DIGEST", "SECFL_PLATFORM", "SECFL_MEASUREMENT", "SECFL_SIM_DIR",
        "SECFL_HOST_TMPDIR",
    }
)  # fmt: skip
#: ``SECFL_*`` variables that are no workload's business: settings of secfl's other
#: tools (a developer's tracebacks of task code, the Flower interpreter a local run
#: starts, test vectors, the SPM's policy cache, the test suite's own knobs) and the
#: approved FABs that secfl's Flower executor gives the app processes it starts.
#: Dropped like any name not listed.
NOT_WORKLOAD = frozenset(
    {
        "SECFL_DEBUG", "SECFL_FLOWER_PYTHON", "SECFL_TESTVECTORS",
        "SECFL_SPM_POLICY_REFRESH", "SECFL_FLOWER_FAB_SHA256",
        "SECFL_SKIP_POSTGRES", "SECFL_TEST_WORKERS",
    }
)  # fmt: skip
#: The folders a measured program finds what it starts by name in, after its own: the
#: system's (the image a hardware TEE measures), never the host's ``PATH``.
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
#: What connections to loopback are: never through a proxy.
LOOPBACK = "127.0.0.1,localhost,::1"


def without(env: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """``env`` less ``names``."""
    dropped = frozenset(names)
    return {k: v for k, v in env.items() if k not in dropped}


def for_program(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """``env`` for a measured program: without what makes it, or the interpreter,
    linker or library that runs it, load code the environment names, trace its secrets
    or trust another CA (:data:`CODE_LOADERS`, :data:`INTERPRETER_HOOKS`,
    :data:`CODE_PREFIXES` but :data:`PYTHON_HARMLESS`), nor a TLS key log; and the names
    it left out, sorted."""

    def loads_code(name: str) -> bool:
        if name in CODE_LOADERS or name in INTERPRETER_HOOKS or name in KEY_LOGS:
            return True
        return name.startswith(CODE_PREFIXES) and name not in PYTHON_HARMLESS

    dropped = sorted(name for name in env if loads_code(name))
    return without(env, dropped), dropped


def from_host(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """``env``, the host's, for ``secfl run``'s program: of secfl's own variables
    (``SECFL_*``), only :data:`HOST_SETTINGS` (the launcher then sets
    :data:`RUN_SETS`); and the names it left out that secfl does not know, sorted (to
    be named to the user: a misspelt setting, say). Those of :data:`NOT_WORKLOAD` are
    left out quietly: a user sets them for secfl's other tools, for every process."""
    dropped = sorted(k for k in env if k.startswith("SECFL_") and k not in HOST_SETTINGS)
    known = RUN_SETS | NOT_WORKLOAD
    return without(env, dropped), [k for k in dropped if k not in known]


def notable(env: Mapping[str, str], dropped: Iterable[str]) -> list[str]:
    """Of the names :func:`for_program` ``dropped``, those a user would want named: all
    but trust stores that name the system's own (OpenSSL's default file or folder),
    which many hosts set for every process; naming them on every start is noise."""
    defaults = ssl.get_default_verify_paths()
    named = (defaults.openssl_cafile, defaults.openssl_capath)
    system = {os.path.realpath(p) for p in named if p}  # ("": no such default)

    def is_system(name: str) -> bool:
        value = env.get(name, "")
        return name in TRUST_STORES and value != "" and os.path.realpath(value) in system

    return [name for name in dropped if not is_system(name)]


def program_path(started: str | None) -> str:
    """The ``PATH`` of a program started under the absolute name ``started`` (a venv's
    ``python``, found where the measurement says): that name's folder (where a venv
    keeps its commands, ``ninja`` say), then :data:`SYSTEM_PATH`; a relative or no name
    adds no folder (the working folder is the host's). Not the host's ``PATH``, which
    names folders of its own choosing for every command the program starts by name."""
    folders = list(SYSTEM_PATH)
    if started and started.startswith("/"):
        own = os.path.dirname(started)
        folders = [own, *(f for f in folders if f != own)]
    return os.pathsep.join(folders)


def no_bytecode(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` in which Python writes no bytecode anywhere: decrypted code compiled to
    ``.pyc`` under a host's ``PYTHONPYCACHEPREFIX`` outlived the workload on disk."""
    return {**without(env, {"PYTHONPYCACHEPREFIX"}), "PYTHONDONTWRITEBYTECODE": "1"}


def _no_proxy(name: str) -> bool:
    """Whether ``name`` lists hosts that bypass a proxy, in any spelling a library reads
    (urllib lowercases every ``*_proxy`` name: ``No_Proxy`` counts)."""
    return name.lower() in ("no_proxy", "no_grpc_proxy")


def loopback_direct(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` where connections to loopback never go through a proxy: every spelling
    of ``no_proxy`` replaced by loopback's addresses. Proxies for other hosts stay (a
    site behind an egress proxy still reaches its SuperLink: that connection is TLS
    pinned to the policy's CA end to end)."""
    direct = {k: v for k, v in env.items() if not _no_proxy(k)}
    direct.update(dict.fromkeys(("no_proxy", "NO_PROXY", "no_grpc_proxy"), LOOPBACK))
    return direct


def scrub(names: Iterable[str] = KEY_LOGS) -> list[str]:
    """Remove ``names`` from this process's environment (and so its children's);
    return those that were set."""
    found = sorted(name for name in names if name in os.environ)
    for name in found:
        del os.environ[name]
    return found
