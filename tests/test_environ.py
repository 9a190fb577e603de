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
    }  # fmt: skip
    env, dropped = environ.for_program(host)
    assert env == {
        "PATH": "/usr/bin", "HOME": "/home/site", "LANG": "C.UTF-8", "SECFL_LISTEN": "0:1",
        "PYTHONUNBUFFERED": "1", "PYTHONHASHSEED": "0", "NODE_EXTRA_CA_CERTS": "/ca.pem",
    }  # fmt: skip
    assert dropped == sorted(set(host) - set(env))
