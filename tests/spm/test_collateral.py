"""The SPM appraises Intel TCB levels with collateral from a PCCS (`--pccs`).

Before, the SPM verified SGX and TDX quotes without collateral: their TCB status was
``unknown``, so a policy had to set ``allow_unknown_tcb`` to attest Intel workloads at
all, and then an out-of-date TCB or a revoked PCK passed too. Here the real Intel
vectors are appraised against their real collateral, served by a real HTTP server on
loopback playing the PCCS; at the vectors' verification times through
:func:`check_evidence`, and through a real `secfl spm serve` at today's date (when
the vectors' collateral has expired, which the SPM must say rather than pass).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote as urlquote

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from secfl.errors import FetchError, Refused, SpmError, SpmRefused
from secfl.policy._document import load_policy
from secfl.policy._model import Policy
from secfl.spm._collateral import CollateralSource, pccs_url
from secfl.spm._evidence_checks import check_evidence
from secfl.spm.client import SpmClient
from secfl.spm.enroll import make_csr
from tests.conftest import utc
from tests.localhttp import LocalServer, local_server
from tests.spm.harness import Board, SpmProcess, make_sim, policy_document
from tests.tee.test_pccs import pcs_routes, vector

# name, tee, fmspc, ca, verification time, measurement
SGX = ("sgx_v3_quote", "sgx", "00A067110000", "processor", "2025-07-01",
       "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb")  # fmt: skip
TDX = ("tdx_v4_quote", "tdx", "B0C06F000000", "platform", "2025-07-01",
       "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407"
       "de03ae6dc5f87f27428b2538873118b7")  # fmt: skip
TDX_OUTDATED = ("tdx_v5_quote_outdated", "tdx", "90C06F000000", "platform", "2026-03-01",
                "273828c46252fcbdd8ad2dd907130222b03466d52a2911d70c1a5950895d6bd1"
                "ae451d382d5a9b1b4c0ed0e5ae9a3dbd")  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pccs() -> Iterator[LocalServer]:
    with local_server() as state:
        yield state


def serve(server: LocalServer, vectors: Path, case: tuple[str, ...]) -> bytes:
    """Serve ``case``'s collateral as a PCCS would; return its quote."""
    name, tee, fmspc, ca = case[:4]
    quote, doc = vector(vectors, name)
    server.routes.update(pcs_routes(doc, tee, fmspc, ca, spaced=False))
    return quote


def intel_policy(
    board: Board,
    case: tuple[str, ...],
    *,
    min_tcb: str = "UpToDate",
    allow_unknown: bool = False,
    evaluation: int | None = None,
) -> str:
    kind, measurement = case[1], case[5]
    doc: dict[str, Any] = yaml.safe_load(policy_document("intel", board, b"", accept=(kind,)))
    doc["platforms"] = {
        "accept": [kind],
        "min_tcb_status": min_tcb,
        "allow_unknown_tcb": allow_unknown,
        **({} if evaluation is None else {"min_tcb_evaluation_data_number": evaluation}),
    }
    pin = {"mrenclave": measurement} if kind == "sgx" else {"mrtd": measurement}
    for service in doc["services"]:
        service["measurements"] = {kind: [dict(pin)]}
    return yaml.safe_dump(doc, sort_keys=False)


def policy(board: Board, case: tuple[str, ...], **kw: Any) -> Policy:
    return load_policy(intel_policy(board, case, **kw))


@pytest.fixture(scope="module")
def board() -> Board:
    return Board.create()


def source(server: LocalServer, tmp_path: Path, clock: Clock | None = None) -> CollateralSource:
    return CollateralSource(server.url, tmp_path / "cache", clock=clock or Clock())


# --- the appraisal, at the vectors' own dates -------------------------------------------------


def test_sgx_tcb_below_the_policy_minimum_is_refused(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path
) -> None:
    """Intel's collateral rates this SGX platform ConfigurationAndSWHardeningNeeded
    (advisories INTEL-SA-00289, -00615): below UpToDate. Without a PCCS the same quote
    is `unknown`, and a policy that allows that lets it through."""
    quote = serve(pccs, vectors, SGX)
    at = utc(SGX[4])
    with source(pccs, tmp_path) as coll:
        with pytest.raises(Refused, match="^tcb: status ConfigurationAndSWHardeningNeeded is "
                           "below the policy's minimum UpToDate$"):  # fmt: skip
            check_evidence(policy(board, SGX), quote, at, coll)
        with pytest.raises(Refused, match="^tcb: status ConfigurationAndSWHardeningNeeded"):
            check_evidence(policy(board, SGX, allow_unknown=True), quote, at, coll)
        lenient = policy(board, SGX, min_tcb="ConfigurationAndSWHardeningNeeded")
        claims = check_evidence(lenient, quote, at, coll)
    assert claims.tcb_status == "ConfigurationAndSWHardeningNeeded"
    assert {"INTEL-SA-00289", "INTEL-SA-00615"} <= set(claims.advisory_ids)
    assert any("/sgx/certification/v4/tcb?fmspc=00A067110000" in r for r in pccs.requests)
    # the old behaviour, still what an SPM without --pccs does
    unknown = check_evidence(policy(board, SGX, allow_unknown=True), quote, at)
    assert unknown.tcb_status == "unknown"


def test_tdx_up_to_date_is_accepted_and_an_unmatched_tcb_refused(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path
) -> None:
    quote = serve(pccs, vectors, TDX)
    with source(pccs, tmp_path) as coll:
        claims = check_evidence(policy(board, TDX), quote, utc(TDX[4]), coll)
    assert claims.tcb_status == "UpToDate"

    outdated = serve(pccs, vectors, TDX_OUTDATED)
    lenient = policy(board, TDX_OUTDATED, min_tcb="OutOfDate", allow_unknown=True)
    assert check_evidence(lenient, outdated, utc(TDX_OUTDATED[4])).tcb_status == "unknown"
    with (
        source(pccs, tmp_path / "2") as coll,
        pytest.raises(Refused, match="^evidence: tcb: ") as info,
    ):
        check_evidence(lenient, outdated, utc(TDX_OUTDATED[4]), coll)
    assert "\n" not in str(info.value)


def test_the_board_can_require_a_tcb_evaluation(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path
) -> None:
    """`min_tcb_evaluation_data_number`: after an Intel TCB recovery the board refuses
    collateral from before it, which stays within its dates for up to 30 more days and
    which a PCCS (or a restarted SPM's) could otherwise still serve. The vectors' SGX
    collateral is of evaluation 17."""
    quote = serve(pccs, vectors, SGX)
    lenient = {"min_tcb": "ConfigurationAndSWHardeningNeeded"}
    with source(pccs, tmp_path) as coll:
        with pytest.raises(Refused, match="^tcb: the collateral is of TCB evaluation 17, "
                           "older than the policy's minimum 18 "):  # fmt: skip
            check_evidence(policy(board, SGX, evaluation=18, **lenient), quote, utc(SGX[4]), coll)
        claims = check_evidence(policy(board, SGX, evaluation=17, **lenient), quote,
                                utc(SGX[4]), coll)  # fmt: skip
    assert claims.tcb_status == "ConfigurationAndSWHardeningNeeded"


def test_the_evaluation_floor_leaves_older_digests_alone(board: Board) -> None:
    """The field is in the canonical form only when set: every policy digest computed
    before it (and every predecessor chain) stands."""
    from secfl.policy._canonical import canonical_bytes
    from secfl.policy._review import review

    unset, set_ = policy(board, SGX), policy(board, SGX, evaluation=18)
    assert b"min_tcb_evaluation_data_number" not in canonical_bytes(unset)
    assert b'"min_tcb_evaluation_data_number":18' in canonical_bytes(set_)
    assert "(Intel: TCB evaluation 18 or later)" in "\n".join(review(set_))


def test_forged_collateral_is_refused(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path
) -> None:
    """A PCCS (or the host, in the cache) that edits the TCB info to rate the platform
    better: the signature no longer covers it."""
    quote = serve(pccs, vectors, SGX)
    path = "/sgx/certification/v4/tcb?fmspc=00A067110000"
    status, headers, body = pccs.routes[path]
    forged = body.replace(b'"ConfigurationAndSWHardeningNeeded"', b'"UpToDate"', 1)
    assert forged != body
    pccs.routes[path] = (status, headers, forged)
    lenient = policy(board, SGX, min_tcb="ConfigurationAndSWHardeningNeeded", allow_unknown=True)
    with source(pccs, tmp_path) as coll, pytest.raises(Refused, match="^evidence: ") as info:
        check_evidence(lenient, quote, utc(SGX[4]), coll)
    assert "the tcb info signature does not verify" in str(info.value).lower()


def test_without_collateral_the_policy_decides(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path
) -> None:
    """A PCCS that does not answer: refused, unless the policy allows an unknown TCB
    (which a host that controls the SPM's network could always force anyway)."""
    quote, _ = vector(vectors, SGX[0])
    at = utc(SGX[4])
    with source(pccs, tmp_path) as coll:
        with pytest.raises(Refused, match="^collateral: the SPM has no collateral to appraise "
                           "this sgx TCB .*HTTP 404.*; the SPM's PCCS must answer$"):  # fmt: skip
            check_evidence(policy(board, SGX), quote, at, coll)
        claims = check_evidence(policy(board, SGX, allow_unknown=True), quote, at, coll)
    assert claims.tcb_status == "unknown"


# --- freshness and bounds --------------------------------------------------------------------


def test_collateral_is_refetched_when_old_and_cached_while_the_pccs_is_down(
    vectors: Path, pccs: LocalServer, tmp_path: Path
) -> None:
    quote = serve(pccs, vectors, SGX)
    clock = Clock()
    with CollateralSource(
        pccs.url, tmp_path / "cache", max_age=3600, retry_after=60, clock=clock
    ) as coll:

        def get() -> Any:
            # and the fetch behind it settled: a done fetch is forgotten in a callback run
            # after the result is handed over, and one not forgotten yet when the clock is
            # moved on answers the next call again (seen on a loaded CI host)
            got = coll.get(quote)
            deadline = time.monotonic() + 10
            while coll._inflight and time.monotonic() < deadline:
                time.sleep(0.01)
            return got

        first = get()
        asked = len(pccs.requests)
        assert asked == 4  # TCB info, QE identity, PCK CRL, root CA CRL
        clock.now += 3599
        assert get() == first
        assert len(pccs.requests) == asked  # fresh enough: from the cache
        clock.now += 1
        get()
        assert len(pccs.requests) == 2 * asked  # an hour old: fetched again
        saved = dict(pccs.routes)
        pccs.routes.clear()  # the PCCS goes down
        clock.now += 3600
        assert get() == first  # the copy last fetched serves
        failed = len(pccs.requests)
        assert failed > 2 * asked
        clock.now += 59
        get()
        assert len(pccs.requests) == failed  # not asked again before retry_after
        clock.now += 1
        pccs.routes.update(saved)
        get()
        assert len(pccs.requests) == failed + asked  # back: fetched again
        clock.now += 30
        get()
        assert len(pccs.requests) == failed + asked


def test_a_pccs_cannot_roll_the_evaluation_back(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path
) -> None:
    """Once the SPM has verified TDX collateral of evaluation 18 (Intel raises the number
    at each TCB recovery), a PCCS that serves the QE identity of evaluation 17 is refused:
    it would appraise quotes by the levels before the recovery. Its dates are valid (the
    vectors are verified at their own times), so without the floor it was accepted."""
    newer = serve(pccs, vectors, TDX_OUTDATED)
    with source(pccs, tmp_path) as coll:
        with pytest.raises(Refused, match="^evidence: tcb: "):  # the collateral held
            check_evidence(policy(board, TDX_OUTDATED), newer, utc(TDX_OUTDATED[4]), coll)
        older = serve(pccs, vectors, TDX)  # the same QE identity URL, now evaluation 17
        with pytest.raises(Refused, match="^collateral: .* served a tdx QE identity of an "
                           "older TCB evaluation than the one this SPM verified"):  # fmt: skip
            check_evidence(policy(board, TDX), older, utc(TDX[4]), coll)
    with source(pccs, tmp_path / "restarted") as coll:  # a new SPM has seen nothing
        assert check_evidence(policy(board, TDX), older, utc(TDX[4]), coll).tcb_status == (
            "UpToDate"
        )


def test_a_bad_answer_leaves_the_verified_copy_serving(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path
) -> None:
    """A PCCS answer that does not verify costs one refusal: the copy verified before
    serves, and the PCCS is asked again after retry_after, not after an hour."""
    quote = serve(pccs, vectors, TDX)
    clock = Clock()
    at, rules = utc(TDX[4]), policy(board, TDX)
    with CollateralSource(pccs.url, tmp_path / "c", max_age=3600, retry_after=60,
                          clock=clock) as coll:  # fmt: skip
        assert check_evidence(rules, quote, at, coll).tcb_status == "UpToDate"
        path = "/tdx/certification/v4/tcb?fmspc=B0C06F000000"
        status, headers, body = pccs.routes[path]
        at_sig = body.index(b'"signature":"') + len(b'"signature":"')
        flipped = b"1" if body[at_sig : at_sig + 1] == b"0" else b"0"
        pccs.routes[path] = (status, headers, body[:at_sig] + flipped + body[at_sig + 1 :])
        clock.now += 3600
        with pytest.raises(Refused, match="^evidence: collateral: the TCB info signature does not"):
            check_evidence(rules, quote, at, coll)
        asked = len(pccs.requests)
        clock.now += 1
        assert check_evidence(rules, quote, at, coll).tcb_status == "UpToDate"  # kept copy
        assert len(pccs.requests) == asked
        pccs.routes[path] = (status, headers, body)
        clock.now += 60
        assert check_evidence(rules, quote, at, coll).tcb_status == "UpToDate"
        assert len(pccs.requests) == asked + 4  # asked again


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"body": b"x" * (5 << 20)}, "the answer exceeds 4194304 bytes"),
        ({"headers": {"Content-Encoding": "gzip"}}, "answered in encoding 'gzip'"),
    ],
    ids=["huge", "compressed"],
)
def test_a_pccs_answer_is_bounded(
    vectors: Path, pccs: LocalServer, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    quote = serve(pccs, vectors, SGX)
    path = "/sgx/certification/v4/tcb?fmspc=00A067110000"
    status, headers, body = pccs.routes[path]
    pccs.routes[path] = (status, change.get("headers", headers), change.get("body", body))
    with source(pccs, tmp_path) as coll, pytest.raises(FetchError, match=message):
        coll.get(quote)


def test_an_oversized_cache_file_is_refused_not_read(
    vectors: Path, pccs: LocalServer, tmp_path: Path
) -> None:
    """The cache is in the data folder, which the host can write."""
    quote = serve(pccs, vectors, SGX)
    with source(pccs, tmp_path) as coll:
        coll.get(quote)
        for body in (tmp_path / "cache").glob("*.body"):
            body.write_bytes(b"\0" * (5 << 20))
        with pytest.raises(FetchError, match="the cached answer for .* exceeds"):
            coll.get(quote)


@pytest.mark.parametrize(
    "url", ["ftp://pccs.example", "pccs.example:8081", "https://[::1", "https://h:99999",
            "https://h/?x=1", "https://user:pw@h"],
)  # fmt: skip
def test_a_bad_pccs_url_is_one_line(url: str, tmp_path: Path) -> None:
    with pytest.raises(SpmError, match="^pccs: "):
        pccs_url(url)
    done = subprocess.run(
        [sys.executable, "-m", "secfl.cli.main", "spm", "serve", "--data", str(tmp_path / "d"),
         "--platform", "simulated", "--pccs", url],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("error: pccs: ") and done.stderr.count("\n") == 1
    assert not (tmp_path / "d").exists()  # refused before the data folder is made


# --- a real SPM ------------------------------------------------------------------------------


def _attest_quote(client: SpmClient, quote: bytes) -> None:
    hpke = x25519.X25519PrivateKey.generate().public_key()
    client.attest(
        "intel",
        "aggregator",
        nonce=client.nonce(),
        evidence=quote,
        hpke_public_key=hpke.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        ),
        csr_pem=make_csr(ec.generate_private_key(ec.SECP256R1()), "aggregator"),
    )


def test_the_spm_appraises_with_its_pccs(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path
) -> None:
    """`secfl spm serve --pccs URL` fetches the quote's collateral and appraises it.
    Today the vectors' collateral has expired (its TCB info was valid to 2025-07-19),
    so the SPM refuses, saying so; without --pccs it refuses the unknown TCB. On the
    old code the option did not exist, and the TCB was never appraised."""
    quote = serve(pccs, vectors, SGX)
    sim = make_sim(tmp_path / "sim")
    document = intel_policy(board, SGX)

    def refusal(args: list[str]) -> str:
        proc = SpmProcess(tmp_path / f"spm{len(args)}", tmp_path / "sim", None, args=args)
        proc.env["NO_PROXY"] = "127.0.0.1"
        proc.start()
        try:
            with SpmClient(proc.url, pin=proc.pin) as client:
                client.submit_policy(document, board.sign(document, "alice", "bob"))
                with pytest.raises(SpmRefused) as info:
                    _attest_quote(client, quote)
                entries = client.audit(0, 10000)["entries"]
                audit = [e for e in entries if e["event"] == "spm.started"]
            return f"{info.value}|{json.dumps(audit[-1]['detail'])}"
        finally:
            proc.stop()

    assert sim
    with_pccs = refusal(["--pccs", pccs.url])
    reason, started = with_pccs.split("|", 1)
    assert reason.startswith("evidence: expired: the PCK CRL was due for update on 2025-07-19")
    assert "2025-07-19" in reason and "\n" not in reason
    assert json.loads(started)["pccs"] == pccs.url
    assert "/sgx/certification/v4/tcb?fmspc=00A067110000" in pccs.requests
    asked = len(pccs.requests)

    reason, started = refusal([]).split("|", 1)
    assert reason.startswith("tcb: the TCB status is unknown (no collateral: start the SPM "
                             "with --pccs URL)")  # fmt: skip
    assert "pccs" not in json.loads(started)
    assert len(pccs.requests) == asked


# --- a client appraising the SPM itself ----------------------------------------------------


def test_a_client_appraises_an_intel_spm(vectors: Path, pccs: LocalServer) -> None:
    """`secfl spm verify --pccs URL`: the SPM's own TCB, appraised like a workload's."""
    from secfl.errors import VerificationError
    from secfl.spm.client import appraise
    from secfl.tee._evidence import Evidence
    from secfl.tee._pccs import PccsClient
    from secfl.tee._verify import verify

    serve(pccs, vectors, SGX)
    evidence = Evidence.parse(vector(vectors, SGX[0])[0])
    at = utc(SGX[4])
    claims = verify(evidence, at=at)
    assert claims.tcb_status == "unknown"
    with PccsClient(pccs.url) as client:
        with pytest.raises(VerificationError, match="^tcb: the SPM's TCB status is "
                           "ConfigurationAndSWHardeningNeeded, below UpToDate$"):  # fmt: skip
            appraise(evidence, claims, client.get_collateral, "UpToDate", at)
        lenient = appraise(
            evidence, claims, client.get_collateral, "ConfigurationAndSWHardeningNeeded", at
        )
    assert lenient.tcb_status == "ConfigurationAndSWHardeningNeeded"


def test_spm_verify_with_a_pccs_refuses_a_simulated_spm(
    pccs: LocalServer, board: Board, tmp_path: Path
) -> None:
    """A real SPM (simulated) and the real CLI: --pccs asks for an Intel TCB, which a
    simulated SPM has not; one line, and nothing pinned. Without --pccs it verifies."""
    sim = make_sim(tmp_path / "sim")
    proc = SpmProcess(tmp_path / "spm", tmp_path / "sim", None).start()
    root = tmp_path / "root.pem"
    root.write_bytes(sim)
    base = [sys.executable, "-m", "secfl.cli.main", "spm", "verify", proc.url,
            "--expect-measurement", proc.measurement, "--sim-root", str(root)]  # fmt: skip
    try:
        done = subprocess.run([*base, "--pccs", pccs.url], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        plain = subprocess.run(base, capture_output=True, text=True, timeout=60, check=False)
        wrong = subprocess.run([*base, "--pccs", pccs.url, "--min-tcb", "Fine"],
                               capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    finally:
        proc.stop()
    assert done.returncode == 1 and not done.stdout
    assert done.stderr == (
        "error: pccs: the SPM's evidence is simulated; a PCCS appraises SGX and TDX only\n"
    )
    assert plain.returncode == 0 and proc.pin in plain.stdout
    assert wrong.returncode != 0 and "--min-tcb: 'Fine' is not one of UpToDate" in wrong.stderr
    alone = subprocess.run([*base, "--min-tcb", "OutOfDate"], capture_output=True, text=True,
                           timeout=60, check=False)  # fmt: skip
    assert alone.returncode != 0 and alone.stderr == (
        "error: --min-tcb: applies with --pccs (without it the TCB is not appraised)\n"
    )


# --- what a hostile PCCS or host tried (review of the first version) ---------------------------


@contextmanager
def trickling_pccs() -> Iterator[str]:
    """An HTTP server that answers `200 OK` and then one header byte every 0.2 s, for
    ever: httpx's read timeout never fires (each byte comes in time)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    stop = threading.Event()

    def trickle(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not stop.wait(0.2):
                conn.sendall(b"a")

    def accept() -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set():
                conn, _ = listener.accept()
                threading.Thread(target=trickle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def test_a_trickling_pccs_costs_one_timeout_not_a_hang(vectors: Path, tmp_path: Path) -> None:
    """On the first version one fetch held the source's lock for as long as the PCCS
    trickled (hours): every attestation, of any platform, waited behind it. The fetch
    itself now ends at its deadline too, so the next platform's is not queued behind."""
    sgx, _ = vector(vectors, SGX[0])
    tdx, _ = vector(vectors, TDX[0])
    with trickling_pccs() as url, CollateralSource(url, tmp_path / "c", timeout=1.0) as coll:
        began = time.monotonic()
        # (the time left of the 1 s deadline when the fetch began: 0.99 s on a busy host)
        with pytest.raises(
            FetchError, match=r"(gave no collateral|no full answer) in (1|0\.\d+) s$"
        ):
            coll.get(sgx)
        assert time.monotonic() - began < 3
        began = time.monotonic()
        with pytest.raises(FetchError):  # the fetch under way is not waited for again
            coll.get(sgx)
        with pytest.raises(FetchError):  # another platform: queued behind it, bounded
            coll.get(tdx)
        assert time.monotonic() - began < 3


@pytest.mark.timeout(60)
def test_a_fetch_ends_at_its_deadline_while_headers_trickle() -> None:
    """Second review: the deadline was checked between body chunks only, so headers sent
    a byte at a time (each within httpx's read timeout) held the fetch for hours."""
    from secfl._internal.httpcache import CachedHttp

    with trickling_pccs() as url:
        began = time.monotonic()
        with pytest.raises(FetchError, match=r"no full answer in 1 s$"):
            CachedHttp(None, timeout=1.0, trust_env=False).get(url + "/x")
        assert time.monotonic() - began < 3


def test_a_trickling_pccs_leaves_the_spm_answering(
    vectors: Path, board: Board, tmp_path: Path
) -> None:
    """A real `secfl spm serve --pccs` against a trickling PCCS: the attestation is
    refused in one line once the fetch is late, and the SPM keeps answering."""
    quote, _ = vector(vectors, SGX[0])
    make_sim(tmp_path / "sim")
    document = intel_policy(board, SGX)
    with trickling_pccs() as url:
        proc = SpmProcess(tmp_path / "spm", tmp_path / "sim", None,
                          args=["--pccs", url, "--pccs-timeout", "3"])  # fmt: skip
        proc.env["NO_PROXY"] = "127.0.0.1"
        proc.start()
        try:
            with SpmClient(proc.url, pin=proc.pin, timeout=25) as client:
                client.submit_policy(document, board.sign(document, "alice", "bob"))
                began = time.monotonic()
                with pytest.raises(
                    SpmRefused, match="^collateral: .*(gave no collateral|no full answer) in 3 s"
                ):
                    _attest_quote(client, quote)
                assert time.monotonic() - began < 8
                began = time.monotonic()
                with pytest.raises(SpmRefused, match="^collateral: "):
                    _attest_quote(client, quote)
                assert client.nonce()
                assert time.monotonic() - began < 5
        finally:
            proc.stop()


def test_forged_collateral_cannot_raise_the_floors(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path
) -> None:
    """Second review: dcap-qvl reads the documents before it checks their signatures,
    and its parse error quoted a forged "tcb level", which was taken for a TCB
    verdict on genuine collateral: the forged evaluation number (2^31 - 1) became the
    floor, and every SGX attestation was refused until a restart. The signatures are
    now checked first, and no floor moves on a document that failed them."""
    quote = serve(pccs, vectors, SGX)
    path = "/sgx/certification/v4/qe/identity"
    status, headers, body = pccs.routes[path]
    forged = body.replace(b'"tcbEvaluationDataNumber":17', b'"tcbEvaluationDataNumber":2147483647')
    forged = forged.replace(b'"tcbStatus":"UpToDate"', b'"tcbStatus":"tcb level"', 1)
    pccs.routes[path] = (status, headers, forged)
    lenient = policy(board, SGX, min_tcb="ConfigurationAndSWHardeningNeeded")
    clock = Clock()
    with CollateralSource(pccs.url, tmp_path / "c", retry_after=60, clock=clock) as coll:
        with pytest.raises(Refused, match="^evidence: collateral: the QE identity signature"):
            check_evidence(lenient, quote, utc(SGX[4]), coll)
        pccs.routes[path] = (status, headers, body)  # the PCCS is repaired
        clock.now += 60
        claims = check_evidence(lenient, quote, utc(SGX[4]), coll)
    assert claims.tcb_status == "ConfigurationAndSWHardeningNeeded"


@pytest.mark.parametrize("plant", ["fifo", "link to /dev/zero"])
def test_planted_cache_files_are_refused_not_read(
    vectors: Path, pccs: LocalServer, tmp_path: Path, plant: str
) -> None:
    """The cache is in the data folder, the host's: a FIFO hung the first version, a
    link to /dev/zero read until memory ran out."""
    quote = serve(pccs, vectors, SGX)
    with source(pccs, tmp_path) as coll:
        coll.get(quote)
    for body in (tmp_path / "cache").glob("*.body"):
        body.unlink()
        if plant == "fifo":
            os.mkfifo(body)
        else:
            body.symlink_to("/dev/zero")
    pccs.routes.clear()  # a restarted SPM, its PCCS down: only the cache is left
    began = time.monotonic()
    with source(pccs, tmp_path) as coll, pytest.raises(FetchError, match="unreadable"):
        coll.get(quote)
    assert time.monotonic() - began < 5


def test_a_deeply_nested_cached_header_file_is_a_fetch_error(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path
) -> None:
    """The cache is in the data folder, the host's: its headers file read as JSON nested
    200,000 deep raised RecursionError out of the collateral source (a 500 with a
    traceback, the nonce unspent and nothing audited) where an unreadable cache is a
    FetchError, which a policy allowing an unknown TCB accepts."""
    quote = serve(pccs, vectors, SGX)
    with source(pccs, tmp_path) as coll:
        coll.get(quote)
    for headers in (tmp_path / "cache").glob("*.headers.json"):
        headers.write_bytes(b"[" * 200_000)
    pccs.routes.clear()  # a restarted SPM, its PCCS down: only the cache is left
    with source(pccs, tmp_path) as coll:
        with pytest.raises(FetchError, match="unreadable"):
            coll.get(quote)
        claims = check_evidence(policy(board, SGX, allow_unknown=True), quote, utc(SGX[4]), coll)
    assert claims.tcb_status == "unknown"


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b.replace(b'"signature":"', b'"signature":"a', 1), "hex string of whole bytes"),
        (None, "holds more than 3 certificates"),
    ],
    ids=["odd-length signature", "a chain of 50 roots"],
)
def test_malformed_answers_are_one_line_refusals(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path, mangle: Any, message: str
) -> None:
    """An odd-length hex signature escaped as pydantic's ValidationError (a 500 with a
    traceback in the SPM's log); an issuer chain of thousands of roots cost seconds of
    CPU on every attestation."""
    quote = serve(pccs, vectors, SGX)
    path = "/sgx/certification/v4/tcb?fmspc=00A067110000"
    status, headers, body = pccs.routes[path]
    if mangle is not None:
        body = mangle(body)
    else:
        root = (vectors / "intel" / "intel_sgx_root_ca.pem").read_text()
        headers = {"TCB-Info-Issuer-Chain": urlquote(root * 50, safe="")}
    pccs.routes[path] = (status, headers, body)
    began = time.monotonic()
    with source(pccs, tmp_path) as coll, pytest.raises(Refused) as info:
        check_evidence(policy(board, SGX), quote, utc(SGX[4]), coll)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert time.monotonic() - began < 2


def test_a_pccs_down_is_asked_again_only_after_retry_after(
    vectors: Path, pccs: LocalServer, tmp_path: Path
) -> None:
    """The first version fell back to a cache that fetched whatever it lacked: each
    attestation asked the dead PCCS again, and waited twice."""
    quote, _ = vector(vectors, SGX[0])
    clock = Clock()
    with CollateralSource(pccs.url, tmp_path / "c", retry_after=60, clock=clock) as coll:
        for _ in range(3):
            with pytest.raises(FetchError, match="HTTP 404"):
                coll.get(quote)
        assert len(pccs.requests) == 1
        clock.now += 60
        with pytest.raises(FetchError):
            coll.get(quote)
        assert len(pccs.requests) == 2


def test_an_earlier_crl_is_refused_once_a_later_one_verified(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path
) -> None:
    """The PCK Platform CA's CRL of 2026 verified (with the TDX v5 quote); a PCCS that
    then serves that CA's CRL of 2025 would lift any revocation made in between."""
    newer = serve(pccs, vectors, TDX_OUTDATED)
    qe = pccs.routes["/tdx/certification/v4/qe/identity"]
    with source(pccs, tmp_path) as coll:
        with pytest.raises(Refused, match="^evidence: tcb: "):
            check_evidence(policy(board, TDX_OUTDATED), newer, utc(TDX_OUTDATED[4]), coll)
        older = serve(pccs, vectors, TDX)
        pccs.routes["/tdx/certification/v4/qe/identity"] = qe  # only the CRL is older
        with pytest.raises(FetchError, match="served a PCK platform CRL issued earlier than"):
            coll.get(older)


# --- the third review ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_hanging_dns_lookup_ends_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """asyncio looks names up on a thread, and asyncio.run waited for that thread at the
    end: a lookup that hung held the fetch past its deadline (6 s for 1)."""
    from secfl._internal.httpcache import CachedHttp

    real = socket.getaddrinfo

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(4)
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    began = time.monotonic()
    with pytest.raises(FetchError, match=r"no full answer in 1 s$"):
        CachedHttp(None, timeout=1.0, trust_env=False).get("http://pccs.invalid/x")
    assert time.monotonic() - began < 2.5


def test_the_four_gets_of_a_collateral_share_one_deadline(
    vectors: Path, pccs: LocalServer, tmp_path: Path
) -> None:
    """Each of a collateral's four GETs had its own deadline: a PCCS answering each
    just in time held the one fetching thread four times as long, for every platform."""
    quote = serve(pccs, vectors, SGX)
    pccs.delay = 0.6  # each answer in time for a deadline of its own
    with CollateralSource(pccs.url, tmp_path / "c", timeout=1.0) as coll:
        began = time.monotonic()
        with pytest.raises(FetchError):
            coll.get(quote)
        time.sleep(0.2)  # the worker's own deadline, not only the caller's wait
        assert coll._worker.submit(lambda: None).result(timeout=1.5) is None
        assert time.monotonic() - began < 2.5


def test_the_evaluation_floor_cannot_be_skipped(board: Board, vectors: Path) -> None:
    """Third review: with allow_unknown_tcb a host that blocked the PCCS (or an SPM
    without --pccs) skipped the board's floor: the quote was accepted unappraised."""
    with pytest.raises(Exception, match="requires an appraised TCB"):
        policy(board, SGX, evaluation=18, allow_unknown=True)
    quote, _ = vector(vectors, SGX[0])
    rules = policy(board, SGX, evaluation=18)
    with pytest.raises(Refused, match="^tcb: the policy requires Intel TCB evaluation 18 or "
                       "later, and this sgx quote was not appraised"):  # fmt: skip
        check_evidence(rules, quote, utc(SGX[4]))


def test_only_intels_tcb_signer_signs_tcb_infos(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path
) -> None:
    """Third review: any certificate chaining to Intel's root passed for the signer of a
    TCB info, a PCK certificate too (whose key can be extracted from a revoked machine)."""
    from secfl.tee._intel import parse_quote

    quote = serve(pccs, vectors, SGX)
    pck_chain = parse_quote(quote).pck_chain_pem.rstrip(b"\0").decode()
    path = "/sgx/certification/v4/tcb?fmspc=00A067110000"
    status, _, body = pccs.routes[path]
    pccs.routes[path] = (status, {"TCB-Info-Issuer-Chain": urlquote(pck_chain, safe="")}, body)
    lenient = policy(board, SGX, min_tcb="ConfigurationAndSWHardeningNeeded")
    with source(pccs, tmp_path) as coll, pytest.raises(Refused) as info:
        check_evidence(lenient, quote, utc(SGX[4]), coll)
    assert "is not Intel's TCB signing certificate and the root" in str(info.value)


def test_a_copy_that_finds_the_qe_out_of_date_holds_its_floors(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A QE identity of evaluation 18 (Intel's after a TCB recovery) under which the
    platform's QE is below every level was refused as "collateral:", and the SPM did not
    hold its floors: an hour later the host served the QE identity of evaluation 17,
    still within its dates, and the same quote was accepted. (Under Intel's own PKI the
    vectors have no such pair; the same documents are signed by a forged, pinned one.)"""
    from secfl.tee import _roots as roots
    from tests.tee.test_intel import forge, qe_identity_above

    raw, real = vector(vectors, SGX[0])
    f = forge(raw, dict(real, qe_identity=qe_identity_above(real["qe_identity"], 20, 18)))
    older = f.signed(qe_identity=real["qe_identity"])  # evaluation 17, the same PKI
    monkeypatch.setattr(roots, "INTEL_SGX_ROOT_CA_SHA256", f.root_fingerprint)
    lenient = policy(board, SGX, min_tcb="ConfigurationAndSWHardeningNeeded")
    clock = Clock()
    pccs.routes.update(pcs_routes(f.collateral, "sgx", SGX[2], SGX[3], spaced=False))
    with source(pccs, tmp_path, clock) as coll:
        with pytest.raises(Refused, match="QE ISVSVN 10 is below minimum"):
            check_evidence(lenient, f.quote, utc(SGX[4]), coll)
        pccs.routes.update(pcs_routes(older, "sgx", SGX[2], SGX[3], spaced=False))
        clock.now += 3600  # the copy is old: fetched again, the rolled-back one served
        with pytest.raises(Refused, match="^evidence: tcb: QE ISVSVN 10 is below minimum"):
            check_evidence(lenient, f.quote, utc(SGX[4]), coll)
        assert coll.floors.get(("qe", "sgx")) == 18


@pytest.mark.parametrize("evaluation", [None, 17])
def test_an_unappraised_tcb_is_refused_for_what_it_is(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path, evaluation: int | None
) -> None:
    """An SPM started with --pccs that refused a debug quote (which no appraisal rates)
    under a policy allowing debug said to "start the SPM with --pccs URL"."""
    from secfl.tee._intel import verify_quote

    debug_quote = (vectors / "intel" / "sgx_v3_occlum_quote.bin").read_bytes()
    at = utc("2024-06-01")
    claims = verify_quote(debug_quote, at=at)
    case = ("sgx_v3_occlum_quote", "sgx", "", "", "", claims.measurements["mrenclave"])
    doc = yaml.safe_load(intel_policy(board, case, evaluation=evaluation))
    doc["platforms"]["allow_debug"] = True
    with source(pccs, tmp_path) as coll, pytest.raises(Refused) as info:
        check_evidence(load_policy(yaml.safe_dump(doc)), debug_quote, at, coll)
    assert "a debug TEE is not appraised" in str(info.value)
    assert "--pccs" not in str(info.value)


# --- the floors outlive the process ----------------------------------------------------------

_APPRAISE = """
import sys, time
from datetime import datetime
from pathlib import Path
from secfl.errors import Refused
from secfl.policy._document import load_policy
from secfl.spm._evidence_checks import check_evidence
from secfl.spm._server import open_spm

data, sim, url, policy, quote, at = sys.argv[1:]
spm = open_spm(data, platform="simulated", sim_dir=sim, pccs_url=url)
try:
    check_evidence(load_policy(Path(policy).read_text()), Path(quote).read_bytes(),
                   datetime.fromisoformat(at), spm.attestor.collateral)
except Refused as exc:
    print(exc, flush=True)
print("appraised", flush=True)
time.sleep(120)
"""


@pytest.mark.timeout(120)
def test_the_floors_hold_after_the_spm_is_killed(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path
) -> None:
    """The floors lived in memory: an SPM killed and started again took the PCK CRL of
    2025 after it had verified that CA's CRL of 2026, lifting every revocation made in
    between (and a TCB info from before a TCB recovery, for its 30 days). Each raise is
    now an audit entry, replayed at start."""
    from secfl.spm._server import open_spm

    newer = serve(pccs, vectors, TDX_OUTDATED)
    qe = pccs.routes["/tdx/certification/v4/qe/identity"]
    data, sim = tmp_path / "data", tmp_path / "sim"
    make_sim(sim)
    (tmp_path / "policy.yaml").write_text(intel_policy(board, TDX_OUTDATED))
    (tmp_path / "quote.bin").write_bytes(newer)
    at = utc(TDX_OUTDATED[4]).isoformat()
    args = [data, sim, pccs.url, tmp_path / "policy.yaml", tmp_path / "quote.bin", at]
    proc = subprocess.Popen(
        [sys.executable, "-c", _APPRAISE, *map(str, args)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert lines[0].startswith("evidence: tcb: ") and lines[1] == "appraised\n", lines
    finally:
        proc.kill()  # SIGKILL: nothing of it runs on
        proc.wait()
    spm = open_spm(data, platform="simulated", sim_dir=sim, pccs_url=pccs.url)
    try:
        coll = spm.attestor.collateral
        assert coll is not None

        def logged() -> list[tuple[str, str]]:
            entries = spm.store.audit_since(0)
            return [(e.detail["tee"], e.detail["fmspc"]) for e in entries
                    if e.event == "collateral.verified"]  # fmt: skip

        older = serve(pccs, vectors, TDX)
        pccs.routes["/tdx/certification/v4/qe/identity"] = qe  # only the CRL is older
        with pytest.raises(FetchError, match="served a PCK platform CRL issued earlier than"):
            coll.get(older)
        assert logged() == [("tdx", "90C06F000000")]
        # The same copy, verified again by the new process, writes nothing more.
        serve(pccs, vectors, TDX_OUTDATED)
        with pytest.raises(Refused, match="^evidence: tcb: "):
            check_evidence(policy(board, TDX_OUTDATED), newer, utc(TDX_OUTDATED[4]), coll)
        assert logged() == [("tdx", "90C06F000000")]
    finally:
        spm.close()


def test_a_rolled_back_answer_is_asked_again_after_retry_after(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path
) -> None:
    """A fetch whose copy was older than a floor counted as a good fetch: the SPM did
    not ask again for max_age (an hour), and refused that platform's quotes meanwhile,
    even after the PCCS (a lagging replica, say) had caught up."""
    newer = serve(pccs, vectors, TDX_OUTDATED)
    qe = pccs.routes["/tdx/certification/v4/qe/identity"]
    clock = Clock()
    with CollateralSource(pccs.url, tmp_path / "c", retry_after=60, clock=clock) as coll:
        with pytest.raises(Refused, match="^evidence: tcb: "):
            check_evidence(policy(board, TDX_OUTDATED), newer, utc(TDX_OUTDATED[4]), coll)
        newer_crl = pccs.routes["/sgx/certification/v4/pckcrl?ca=platform&encoding=der"]
        older = serve(pccs, vectors, TDX)
        pccs.routes["/tdx/certification/v4/qe/identity"] = qe
        with pytest.raises(FetchError, match="served a PCK platform CRL issued earlier"):
            coll.get(older)
        asked = len(pccs.requests)
        with pytest.raises(FetchError, match="served a PCK platform CRL issued earlier"):
            coll.get(older)
        assert len(pccs.requests) == asked  # not at once: retry_after
        pccs.routes["/sgx/certification/v4/pckcrl?ca=platform&encoding=der"] = newer_crl
        clock.now += 60
        assert coll.get(older).pck_crl == coll.get(newer).pck_crl
        assert len(pccs.requests) > asked


# --- the fourth review ---------------------------------------------------------------------


def _count_appraisals(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times check_evidence verified a quote with collateral."""
    from secfl.spm import _evidence_checks

    calls: list[int] = []
    real = _evidence_checks.verify

    def counted(*args: Any, **kw: Any) -> Any:
        if kw.get("collateral") is not None:
            calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(_evidence_checks, "verify", counted)
    return calls


def _forged_crl(real_hex: str, entries: int) -> bytes:
    """A CRL under the real one's issuer name, of ``entries`` serials, signed by no one."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    real = x509.load_der_x509_crl(bytes.fromhex(real_hex))
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(real.issuer)
        .last_update(real.last_update_utc)
        .next_update(real.next_update_utc or real.last_update_utc)
    )
    for serial in range(1, entries + 1):
        entry = x509.RevokedCertificateBuilder().serial_number(serial)
        builder = builder.add_revoked_certificate(
            entry.revocation_date(real.last_update_utc).build()
        )
    key = ec.generate_private_key(ec.SECP256R1())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_a_cached_copy_that_did_not_verify_is_not_verified_again(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a review: a forged copy in the cache (the host's, in the data folder)
    was read and verified again on every attestation while the PCCS was down, a CRL
    of megabytes costing 0.5 s each. It is refused from its digest now, with the same
    one-line refusal, and the PCCS is still asked again after retry_after."""
    quote = serve(pccs, vectors, SGX)
    _, doc = vector(vectors, SGX[0])
    path = "/sgx/certification/v4/pckcrl?ca=processor&encoding=der"
    status, headers, good = pccs.routes[path]
    pccs.routes[path] = (status, headers, _forged_crl(doc["pck_crl"], 500))
    saved = dict(pccs.routes)
    lenient = policy(board, SGX, min_tcb="ConfigurationAndSWHardeningNeeded")
    at, clock = utc(SGX[4]), Clock()
    appraisals = _count_appraisals(monkeypatch)
    why = "collateral: the PCK CRL signature does not verify under 'Intel SGX PCK Processor CA'"
    with CollateralSource(pccs.url, tmp_path / "c", retry_after=60, clock=clock) as coll:
        with pytest.raises(Refused) as info:
            check_evidence(lenient, quote, at, coll)  # fetched, cached, refused
        assert str(info.value) == f"evidence: {why}"
        assert len(appraisals) == 1
        pccs.routes.clear()  # the PCCS goes down: the cache serves the forged copy
        for _ in range(3):
            clock.now += 20
            with pytest.raises(Refused) as info:
                check_evidence(lenient, quote, at, coll)
            message = str(info.value)
            assert message.startswith(f"evidence: {why} (the cached copy, refused before")
            assert "\n" not in message
        assert len(appraisals) == 1  # not verified again
        asked = len(pccs.requests)
        assert asked > 4  # asked again 60 s after the refusal, however many followed
        pccs.routes.update(saved)
        pccs.routes[path] = (status, headers, good)  # the PCCS is repaired
        clock.now += 60
        claims = check_evidence(lenient, quote, at, coll)
    assert claims.tcb_status == "ConfigurationAndSWHardeningNeeded"
    assert len(appraisals) == 2


def test_only_a_refusal_of_the_copy_itself_is_remembered(
    vectors: Path, pccs: LocalServer, tmp_path: Path
) -> None:
    """A revoked PCK is the quote's fault, not the copy's: another quote of the same
    platform may pass with it, so the cache still serves it; so does a refusal by
    dcap-qvl (it weighs the quote's QE report and FMSPC too), whatever its prefix."""
    from secfl.errors import VerificationError

    quote = serve(pccs, vectors, SGX)
    clock = Clock()
    with CollateralSource(pccs.url, tmp_path / "c", retry_after=60, clock=clock) as coll:
        copy = coll.get(quote)
        pccs.routes.clear()
        coll.rejected(quote, copy, "revoked: PCK certificate 'x' (serial 3) is revoked")
        clock.now += 1
        assert coll.get(quote) == copy  # from the cache
        coll.rejected(quote, copy, "collateral: QE MISCSELECT mismatch")  # dcap-qvl's
        clock.now += 1
        assert coll.get(quote) == copy
        coll.rejected(
            quote, copy, "collateral: the TCB info signature does not verify", copy_fault=True
        )
        clock.now += 1
        with pytest.raises(VerificationError, match=r"^collateral: the TCB info signature "
                           r"does not verify \(the cached copy, refused before"):  # fmt: skip
            coll.get(quote)


def test_refusals_do_not_put_off_asking_the_pccs_again(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path
) -> None:
    """Each refusal of a served copy set the PCCS's retry time anew: under attestations
    more often than retry_after, a copy that had expired while the PCCS was down was
    refused forever, the PCCS never asked again even once it was back."""
    quote = serve(pccs, vectors, SGX)
    saved = dict(pccs.routes)
    lenient = policy(board, SGX, min_tcb="ConfigurationAndSWHardeningNeeded")
    clock = Clock()
    with CollateralSource(
        pccs.url, tmp_path / "c", max_age=3600, retry_after=60, clock=clock
    ) as coll:
        check_evidence(lenient, quote, utc(SGX[4]), coll)  # verified, kept in memory
        pccs.routes.clear()
        clock.now += 3600
        late = utc("2025-09-01")  # the kept copy's CRL and TCB info are past their dates
        for _ in range(3):
            with pytest.raises(Refused, match="^evidence: expired: "):
                check_evidence(lenient, quote, late, coll)
            clock.now += 20
        asked = len(pccs.requests)
        pccs.routes.update(saved)  # back, 60 s after the fetch that failed
        with pytest.raises(Refused, match="^evidence: expired: "):
            check_evidence(lenient, quote, late, coll)  # its copy is expired too
        assert len(pccs.requests) == asked + 4  # asked again


def test_a_copy_refused_for_its_dates_is_verified_again_later(
    vectors: Path, pccs: LocalServer, board: Board, tmp_path: Path
) -> None:
    """Found by a review: a copy refused as not yet valid (the SPM's clock minutes
    behind Intel's issue date) was remembered as refused, and every attestation of its
    platform was refused from the cache while the PCCS was down, after the copy had
    become valid."""
    quote = serve(pccs, vectors, SGX)
    lenient = policy(board, SGX, min_tcb="ConfigurationAndSWHardeningNeeded")
    clock = Clock()
    with CollateralSource(pccs.url, tmp_path / "c", retry_after=60, clock=clock) as coll:
        with pytest.raises(Refused, match="^evidence: expired: the .* was issued on"):
            check_evidence(lenient, quote, utc("2025-06-19T10:50:00"), coll)
        pccs.routes.clear()  # the PCCS goes down: the cache serves the copy
        clock.now += 20
        claims = check_evidence(lenient, quote, utc(SGX[4]), coll)
    assert claims.tcb_status == "ConfigurationAndSWHardeningNeeded"
