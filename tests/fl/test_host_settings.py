"""The host's operational settings (`SECFL_*`): unmeasured, so checked like any input
from the host: bounded, well-formed, and never a path into the workload's private folder."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from secfl.errors import FlError
from secfl.fl._host_settings import HostSettings, check_address
from tests.clirun import failed


def test_settings_are_read_and_checked(tmp_path: Path) -> None:
    got = HostSettings.from_env({
        "SECFL_LISTEN": "0.0.0.0:0", "SECFL_AGGREGATOR": "[::1]:7443",
        "SECFL_METRICS": str(tmp_path / "m.jsonl"), "SECFL_LOG_LEVEL": "debug",
    })  # fmt: skip
    assert (got.listen, got.aggregator, got.metrics) == ("0.0.0.0:0", "[::1]:7443",
                                                         tmp_path / "m.jsonl")  # fmt: skip
    assert got.log_level == logging.DEBUG and got.output is None
    assert HostSettings.from_env({}) == HostSettings()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SECFL_LISTEN": "7443"}, "SECFL_LISTEN: '7443' is not HOST:PORT (port 0 to 65535)"),
        ({"SECFL_AGGREGATOR": "agg:0"}, "SECFL_AGGREGATOR: 'agg:0' is not HOST:PORT (port 1 to"),
        ({"SECFL_AGGREGATOR": "a b:1"}, "SECFL_AGGREGATOR: 'a b:1' is not HOST:PORT"),
        ({"SECFL_AGGREGATOR": "h:99999"}, "SECFL_AGGREGATOR: 'h:99999' is not HOST:PORT"),
        ({"SECFL_AGGREGATOR": "x" * 5000 + ":1"}, "SECFL_AGGREGATOR: 'xxxxxxxx"),
        ({"SECFL_METRICS": "a\nb"}, "SECFL_METRICS: not a path (control characters"),
        ({"SECFL_OUTPUT": "/" + "a" * 5000}, "SECFL_OUTPUT: not a path (control characters, or"),
        ({"SECFL_LOG_LEVEL": "TRACE"}, "SECFL_LOG_LEVEL: 'TRACE' is not one of DEBUG, INFO,"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(env: dict[str, str], expected: str) -> None:
    with pytest.raises(FlError) as info:
        HostSettings.from_env(env)
    message = str(info.value)
    assert message.startswith(expected) and "\n" not in message and len(message) < 300


def test_no_path_may_point_into_the_private_folder(tmp_path: Path) -> None:
    """The host may not make the workload write its metrics over its own keys."""
    private = tmp_path / "files"
    (private / "fl").mkdir(parents=True)
    (tmp_path / "link").symlink_to(private / "fl")
    for value in (str(private / "fl" / "signing-key.pem"), str(tmp_path / "link" / "x"),
                  str(private)):  # fmt: skip
        with pytest.raises(FlError, match=r"^SECFL_METRICS: .* is inside the workload's private"):
            HostSettings.from_env({"SECFL_FILES": str(private), "SECFL_METRICS": value})
    fine = HostSettings.from_env({"SECFL_FILES": str(private), "SECFL_METRICS": "m.jsonl"})
    assert fine.metrics == Path("m.jsonl")


def test_check_address_allows_port_zero_only_to_listen() -> None:
    assert check_address("127.0.0.1:0", "--listen", listen=True) == "127.0.0.1:0"
    with pytest.raises(FlError, match="port 1 to 65535"):
        check_address("127.0.0.1:0", "--aggregator")


def test_a_collaborator_without_an_address_says_where_to_give_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SECFL_AGGREGATOR", raising=False)
    err = failed(capsys, "collaborator", "--insecure", "--name", "s", "--task", "digits")
    assert err == (
        "error: collaborator: where is the aggregator? set SECFL_AGGREGATOR=HOST:PORT (not "
        "measured: the host may change it) or give --aggregator HOST:PORT\n"
    )
    # under secfl run (found following the README: the option the line offered there
    # changed the measured command, and the SPM then refused the site's measurement)
    err = failed(capsys, "collaborator", "--task", "volume:task")
    assert err == (
        "error: collaborator: where is the aggregator? set SECFL_AGGREGATOR=HOST:PORT in the "
        "environment of `secfl run` (not measured: the host may change it; an --aggregator "
        "option would change the command line the policy measured)\n"
    )
    monkeypatch.setenv("SECFL_LOG_LEVEL", "loud")
    err = failed(capsys, "aggregator", "--insecure", "--task", "digits")
    assert err.startswith("error: SECFL_LOG_LEVEL: 'loud' is not one of DEBUG, INFO")
