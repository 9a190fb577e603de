"""A Flower ServerApp's audit events reach the SPM after its SuperLink attested again.

Found by a hostile review: attesting again for a new certificate ends the old SPM
session, and the new token stayed in the wrapper's memory. The ServerApp, a process of
its own, reads ``$SECFL_IDENTITY/session.token`` for each report and sent the ended
token: from the first renewal on (two thirds into the certificate's lifetime) every
clone-audit exclusion it reported was refused, logged as one error and lost."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from secfl.fl._peers import PeerPolicy
from secfl.fl._workload_identity import WorkloadIdentity
from secfl.flower._attested import AttestedTls
from secfl.flower._audit import SpmAudit
from secfl.spm.client import SpmClient
from tests.spm.harness import AGGREGATOR_MR, Board, spm_with_policy

pytestmark = pytest.mark.timeout(180)


def test_a_renewal_hands_the_new_session_to_the_workloads_other_processes(
    tmp_path: Path, sim: tuple[Path, bytes], board: Board, caplog: pytest.LogCaptureFixture
) -> None:
    with spm_with_policy(tmp_path / "data", sim, board, "aggregator", "collaborator") as (
        proc,
        enrolled,
    ):
        agg = enrolled["aggregator"]
        folder = tmp_path / "identity"  # what `secfl run` leaves the workload
        folder.mkdir(mode=0o700)
        (folder / "key.pem").write_bytes(agg.key_pem)
        (folder / "cert.pem").write_text(agg.certificate)
        (folder / "ca.pem").write_text(agg.ca_certificate)
        (folder / "session.token").write_text(agg.session_token)
        env = {
            "SECFL_IDENTITY": str(folder), "SECFL_POLICY": "fed", "SECFL_SERVICE": "aggregator",
            "SECFL_SPM_URL": proc.url, "SECFL_SPM_PIN": proc.pin,
            "SECFL_POLICY_DIGEST": agg.policy_digest, "SECFL_PLATFORM": "simulated",
            "SECFL_SIM_DIR": str(sim[0]), "SECFL_MEASUREMENT": AGGREGATOR_MR,
        }  # fmt: skip
        tls = AttestedTls(WorkloadIdentity.from_env(env), PeerPolicy("fed", {"collaborator"}))
        assert tls.renew(force=True)  # as at two thirds of the certificate's lifetime
        assert (folder / "session.token").read_text() == tls.ident.session_token
        assert tls.ident.session_token != agg.session_token
        assert (folder / "session.token").stat().st_mode & 0o777 == 0o600

        caplog.set_level(logging.ERROR, logger="secfl.flower")
        audit = SpmAudit(env)  # what the ServerApp's strategy builds for each report
        audit.report("audit-excluded", {"round": 2, "excluded": ["1"]})
        audit.close()
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
        with SpmClient(proc.url, pin=proc.pin) as client:
            events = [e["event"] for e in client.audit(0, 10000)["entries"]]
        assert events[-1] == "fl.flower.audit-excluded"
