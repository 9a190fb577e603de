"""`secfl status`, `secfl audit show` and `secfl revocations` after a real federation:
an SPM, an aggregator and four collaborators each under `secfl run`, one site with
poisoned data that the clone audit leaves out and asks the board to revoke. The
aggregator reports every committed round to the SPM; the board reads it back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from secfl.demo.federation import DemoSettings, Federation
from tests.clirun import call, run_to_the_end, secfl

pytestmark = pytest.mark.timeout(300)

ROUNDS = 3


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """Three honest sites and a poisoned one, the clone audit asking for revocations."""
    settings = DemoSettings(
        clients=3, rounds=ROUNDS, epochs=1, poisoned=1, defence="clone-audit",
        overrides={"request_revocation": True},
    )  # fmt: skip
    fed = Federation(tmp_path_factory.mktemp("status"), settings)
    try:
        fed.start_spm()
        fed.prepare_data()
        fed.submit_policy()
        fed.start_aggregator()
        fed.start_collaborators()
        run_to_the_end(fed)
        yield fed
    finally:
        fed.stop()


def remote(fed: Federation) -> tuple[str, ...]:
    return ("--spm", fed.spm_url, "--spm-pin", fed.spm_pin)


def test_status_shows_the_federation_as_it_ran(fed: Federation) -> None:
    done = secfl("status", *remote(fed), "--policy", "demo", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["policy"]["version"] == 1 and doc["policy"]["approvers"] == ["alice", "bob"]
    rounds = fed.rounds()
    last = doc["round"]
    assert (last["round"], last["counter"]) == (ROUNDS, rounds[-1]["counter"])
    assert last["participants"] == len(rounds[-1]["participants"])
    assert last["service"] == "aggregator" and last["policy_version"] == 1
    policy = yaml.safe_load((fed.work / "policy.yaml").read_text())
    objective = {"metric": "loss", "mode": "min", **policy["federation"].get("objective", {})}
    metric = objective["metric"]
    assert last["objective"] == {**objective, "value": pytest.approx(rounds[-1][f"val_{metric}"])}
    assert doc["counters"] == {"rounds": ROUNDS + 1}
    attested = {s["name"]: s for s in doc["services"]}
    assert sorted(attested) == ["aggregator", "site-1", "site-2", "site-3", "site-4"]
    assert all(s["attested_at"] and s["attested_version"] == 1 for s in attested.values())
    assert doc["findings"] and all(f["excluded"] == ["site-4"] for f in doc["findings"])

    text = secfl("status", *remote(fed), "--policy", "demo")
    assert text.returncode == 0, text.stderr
    assert "policy demo: version 1" in text.stdout and "by alice, bob" in text.stdout
    assert f"round: {ROUNDS} committed at counter {ROUNDS + 1}" in text.stdout


def test_audit_show_lists_each_round_the_aggregator_reported(fed: Federation) -> None:
    done = secfl("audit", "show", *remote(fed), "--event", "fl.round", "--json")
    assert done.returncode == 0, done.stderr
    entries = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["detail"]["round"] for e in entries] == list(range(1, ROUNDS + 1))
    assert [e["detail"]["counter"] for e in entries] == [r["counter"] for r in fed.rounds()]


def test_revocations_shows_the_clone_audits_request(fed: Federation) -> None:
    done = secfl("revocations", *remote(fed), "--policy", "demo")
    assert done.returncode == 0, done.stderr
    assert "revocation requests from the clone audit" in done.stdout
    rows = [line.split() for line in done.stdout.splitlines() if line.split()[:1] == ["1"]]
    assert rows and rows[0][1:3] == ["site-4", "site-4"] and rows[0][-1] == "pending"
    commands = [line for line in done.stdout.splitlines() if line.startswith("  secfl ")]
    assert len(commands) == 2 and "--service site-4" in commands[1]


class _Spm:
    """An SPM client whose status document names a service as someone chose to."""

    def __init__(self, url: str, pin: str) -> None:
        del url, pin

    def __enter__(self) -> _Spm:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def status(self, name: str) -> dict[str, Any]:
        policy = {"name": name, "version": 1, "digest": "ab" * 32, "approvers": [":smile:"],
                  "accepted_at": "2026-01-01T00:00:00", "run": None}  # fmt: skip
        service = {"name": "site-1\u2800", "role": "collaborator", "attested_at": None,
                   "live_sessions": 0}  # fmt: skip
        finding = {"round": 2, "excluded": [":smile:", "site-1\u3164"], "at": None,
                   "requested": False, "state": None}  # fmt: skip
        return {"policy": policy, "round": None, "counters": {}, "services": [service],
                "findings": [finding], "revocations": 0, "head_seq": 9}  # fmt: skip


def test_status_shows_the_spms_names_as_they_are(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`:smile:` in a name was shown as an emoji, and `site-1\\u2800` as `site-1`."""
    monkeypatch.setattr("secfl.spm.client.SpmClient", _Spm)
    remote = ("--spm", "https://spm:1", "--spm-pin", "0" * 64, "--policy", "demo")
    code, out, err = call(capsys, "status", *remote, "--json")
    assert (code, err) == (0, ""), err
    assert json.loads(out) == _Spm("", "").status("demo")
    assert '":smile:"' in out
    code, out, err = call(capsys, "status", *remote)
    assert (code, err) == (0, ""), err
    assert "by :smile:" in out
    assert "site-1\\u2800" in out and "site-1\u2800" not in out
    assert ":smile:, site-1\\u3164" in out
