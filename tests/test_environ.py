"""What a measured program gets of the host's environment (secfl._internal.environ)."""

from __future__ import annotations

from secfl._internal import environ


def test_a_program_gets_no_variable_that_loads_code() -> None:
    host = {
        "PATH": "/usr/bin", "HOME": "/home/site", "LANG": "C.UTF-8", "SECFL_LISTEN": "0:1",
        "PYTHONUNBUFFERED": "1", "PYTHONHASHSEED": "0", "NODE_EXTRA_CA_CERTS": "/ca.pem",
        "PYTHONPATH": "/evil", "PYTHONHOME": "/evil", "PYTHONSTARTUP": "/evil.py",
        "PYTHONWARNINGS": "ignore::evil.Warning", "PYTHONBREAKPOINT": "evil.hook",
        "LD_PRELOAD": "/evil.so", "LD_AUDIT": "/evil.so", "LD_LIBRARY_PATH": "/evil",
        "OPENSSL_CONF": "/evil.cnf", "GCONV_PATH": "/evil", "BASH_ENV": "/evil.sh",
        "ENV": "/evil.sh", "PERL5OPT": "-Mevil", "NODE_OPTIONS": "--require /evil.js",
        "JAVA_TOOL_OPTIONS": "-javaagent:/evil.jar", "GLIBC_TUNABLES": "x", "SSLKEYLOGFILE": "/k",
        # a review of the first version: bash's own hooks, libraries loaded by name,
        # trust stores, caches of compiled code, gRPC's tracing, OpenSSL's CPU caps, git
        "BASH_FUNC_python3%%": "() { cat key.pem; }", "SHELLOPTS": "xtrace", "PS4": "$(id)",
        "BASHOPTS": "x", "CUDA_INJECTION64_PATH": "/e.so", "OMP_TOOL_LIBRARIES": "/e.so",
        "SSL_CERT_FILE": "/evil-ca.pem", "TRITON_CACHE_DIR": "/host", "GRPC_TRACE": "all",
        "GRPC_VERBOSITY": "debug", "OPENSSL_ia32cap": "~0x200000200000000",
        "OPENSSL_CONF_INCLUDE": "/evil", "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "core.fsmonitor", "grpc_proxy": "http://proxy:3128",
    }  # fmt: skip
    env, dropped = environ.for_program(host)
    assert env == {
        "PATH": "/usr/bin", "HOME": "/home/site", "LANG": "C.UTF-8", "SECFL_LISTEN": "0:1",
        "PYTHONUNBUFFERED": "1", "PYTHONHASHSEED": "0", "grpc_proxy": "http://proxy:3128",
    }  # fmt: skip
    assert dropped == sorted(set(host) - set(env))


def test_a_program_gets_no_plugin_a_gpu_library_loads_by_its_path() -> None:
    """Found by a hostile review: NCCL loads the network, tuner and profiler plugins its
    variables name (a path to a library: NCCL_NET_PLUGIN=/x/libnccl-net-x.so) into a
    program that trains on several GPUs, ROCm the tools HSA_TOOLS_LIB names, as the
    dynamic linker does LD_PRELOAD's, and Triton (torch.compile on a GPU) runs the
    ptxas TRITON_PTXAS_PATH names and loads TRITON_LIBCUDA_PATH's driver; the host's
    reached the measured program."""
    host = {
        "NCCL_NET_PLUGIN": "/evil/libnccl-net-x.so", "NCCL_TUNER_PLUGIN": "/evil.so",
        "NCCL_PROFILER_PLUGIN": "/evil.so", "HSA_TOOLS_LIB": "/evil.so",
        # Triton's: the assembler it runs, the driver it loads, kernels it runs instead
        "TRITON_PTXAS_PATH": "/evil", "TRITON_LIBCUDA_PATH": "/evil",
        "TRITON_KERNEL_OVERRIDE": "1", "TRITON_OVERRIDE_DIR": "/evil",
        "NCCL_DEBUG": "WARN",
    }  # fmt: skip
    env, _ = environ.for_program(host)
    assert env == {"NCCL_DEBUG": "WARN"}


def test_a_program_gets_no_toolkit_or_remote_cache_that_brings_code() -> None:
    """Found by a hostile review of the list: CPATH, CC and NVCC_CCBIN were dropped, but
    not the variables that name the toolkit a program builds code with and loads
    (torch's JIT extensions run $CUDA_HOME/bin/nvcc with its headers, or $PYTORCH_NVCC;
    numba loads libNVVM from CUDA_HOME; CuPy compiles with CUDA_PATH's NVRTC; inductor's
    CUTLASS, Composable Kernel and Halide folders, the compiler it installs with
    $CONDA_EXE), nor torch's remote caches, from which a program loads compiled graphs
    and unpickles profiles from a server the host names."""
    host = {
        "CUDA_HOME": "/evil", "CUDA_PATH": "/evil", "CUDA_INC_PATH": "/evil",
        "CUDNN_HOME": "/evil", "CUDNN_PATH": "/evil", "ROCM_HOME": "/evil",
        "ROCM_PATH": "/evil", "PYTORCH_NVCC": "/evil/nvcc",
        "TORCHINDUCTOR_CUTLASS_DIR": "/evil", "TORCHINDUCTOR_CK_DIR": "/evil",
        "HALIDE_INCLUDE": "/evil", "HALIDE_LIB": "/evil", "TORCH_INDUCTOR_INSTALL_GXX": "1",
        "CONDA_EXE": "/evil/conda", "TORCHINDUCTOR_FX_GRAPH_REMOTE_CACHE": "1",
        "TORCHINDUCTOR_AUTOTUNE_REMOTE_CACHE": "1",
        "TORCHINDUCTOR_BUNDLED_AUTOTUNE_REMOTE_CACHE": "1",
        "TORCHINDUCTOR_AUTOGRAD_REMOTE_CACHE": "1",
        "TORCH_DYNAMO_AUTOMATIC_DYNAMIC_REMOTE_PGO": "1",
        "TORCHINDUCTOR_REDIS_URL": "redis://host:6379", "TORCHINDUCTOR_REDIS_HOST": "host",
        "TORCHINDUCTOR_REDIS_PORT": "6379",
        "CUDA_VISIBLE_DEVICES": "0", "TORCHINDUCTOR_MAX_AUTOTUNE": "1",
    }  # fmt: skip
    env, dropped = environ.for_program(host)
    assert env == {"CUDA_VISIBLE_DEVICES": "0", "TORCHINDUCTOR_MAX_AUTOTUNE": "1"}
    assert dropped == sorted(set(host) - set(env))


def test_a_program_gets_no_model_hub_of_the_hosts() -> None:
    """Found by a hostile review: the host's HF_ENDPOINT (or the staging Hub, where
    anyone may create any repository's name) reached the program, which then took
    "org/model" from the host's server: its weights and data, and with
    trust_remote_code (a program's own, common choice) its modelling code, run in the
    workload. The Hub's token and offline switch change nothing of what is served."""
    host = {
        "HF_ENDPOINT": "https://hub.host.example", "HUGGINGFACE_CO_STAGING": "1",
        "HUGGINGFACE_CO_RESOLVE_ENDPOINT": "https://hub.host.example",
        "HF_TOKEN": "hf_x", "HF_HUB_OFFLINE": "1",
    }  # fmt: skip
    env, dropped = environ.for_program(host)
    assert env == {"HF_TOKEN": "hf_x", "HF_HUB_OFFLINE": "1"}
    assert dropped == sorted(set(host) - set(env))


def test_only_trust_stores_other_than_the_systems_are_notable(tmp_path) -> None:
    import ssl

    system = ssl.get_default_verify_paths()
    env = {
        "SSL_CERT_FILE": system.openssl_cafile,
        "SSL_CERT_DIR": system.openssl_capath + "/",
        "CURL_CA_BUNDLE": str(tmp_path / "corporate.pem"),
        "NODE_EXTRA_CA_CERTS": "",
        "PYTHONPATH": system.openssl_capath,  # not a trust store: always named
    }
    _, dropped = environ.for_program(env)
    assert dropped == sorted(env)
    assert environ.notable(env, dropped) == ["CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "PYTHONPATH"]


def test_every_secfl_variable_secfl_reads_is_classified() -> None:
    """Each ``SECFL_*`` name in secfl's source is one the host may set for a workload,
    one ``secfl run`` sets itself, or one no workload takes: a new one reaches a workload
    only once it is listed (it is dropped until then), and this test names it."""
    import re
    from pathlib import Path

    import secfl

    named = {
        m.group(0)
        for path in Path(secfl.__file__).parent.rglob("*.py")
        for m in re.finditer(r"\bSECFL_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())
    }
    classes = (environ.HOST_SETTINGS, environ.RUN_SETS, environ.NOT_WORKLOAD)
    assert not (classes[0] & classes[1] or classes[0] & classes[2] or classes[1] & classes[2])
    assert named - set().union(*classes) == set()
    assert named >= environ.HOST_SETTINGS | environ.RUN_SETS


def test_the_host_sets_only_its_own_secfl_settings() -> None:
    """A host's ``SECFL_MEASUREMENT`` reached the workload on hardware (where ``secfl
    run`` sets none), which then presented it at every renewal and was refused; the
    others secfl run sets, other tools' settings and unknown names are dropped too."""
    host = {"PATH": "/usr/bin", "SECFL_LISTEN": "0:1", "SECFL_SHIELD_THREADS": "2",
            "SECFL_MEASUREMENT": "00" * 48, "SECFL_SIM_DIR": "/host-sim",
            "SECFL_FILES": "/host", "SECFL_DEBUG": "1", "SECFL_LATER": "x"}  # fmt: skip
    env, named = environ.from_host(host)
    assert env == {"PATH": "/usr/bin", "SECFL_LISTEN": "0:1", "SECFL_SHIELD_THREADS": "2"}
    assert named == ["SECFL_LATER"]  # those secfl run sets, other tools': dropped quietly


def test_a_programs_path_is_its_own_folder_then_the_systems() -> None:
    """What a measured program starts by name is found in the folder it was started
    from (a venv's commands), then the system's: never a host's folder, nor the
    working folder (a relative name, or none, adds nothing)."""
    system = ":".join(environ.SYSTEM_PATH)
    assert environ.program_path("/opt/venv/bin/python") == f"/opt/venv/bin:{system}"
    assert environ.program_path("/usr/bin/sh") == "/usr/bin:" + system.replace(":/usr/bin", "")
    assert environ.program_path("./train.py") == system
    assert environ.program_path(None) == system
