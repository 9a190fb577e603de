"""Property-based fuzzing of the SPM's HTTP API from its own OpenAPI schema
(schemathesis): whatever the request, the SPM never answers with a 5xx."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from secfl.spm._app import create_app
from secfl.spm._server import open_spm
from tests.spm.harness import Board, make_sim, policy_document


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    base = tmp_path_factory.mktemp("fuzz")
    root = make_sim(base / "sim")
    spm = open_spm(base / "data", platform="simulated", sim_dir=base / "sim")
    board = Board.create()
    document = policy_document("fuzz", board, root)
    spm.submit_policy(document, [s.model_dump() for s in board.sign(document, "alice", "bob")])
    yield schemathesis.openapi.from_asgi("/openapi.json", create_app(spm))
    spm.store.close()


def test_no_server_errors(api: schemathesis.BaseSchema) -> None:
    """Every operation, fuzzed through schemathesis' strategies (its pytest plugin
    does not support this pytest yet), called on the in-process ASGI app."""
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call()
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
            )

        check()


def test_schema_covers_every_route(api: schemathesis.BaseSchema) -> None:
    paths = set(api.raw_schema["paths"])
    assert {"/v1/attestation", "/v1/policies", "/v1/nonce", "/v1/audit"} <= paths
    assert "/v1/policies/{name}/services/{service}/attest" in paths
