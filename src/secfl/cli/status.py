"""``secfl status``: a federation's state at a glance, from its SPM.

The policy version in force and who approved it, the run, the aggregator's last
committed round (its counter and objective value), when each service last attested
(and was last refused), the counters, and what the clone audit left out or asked
the board to revoke. All of it comes from the pinned SPM, which reads it from its
authenticated rows and from the audit log verified back from its head.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from secfl.cli._common import out, print_verbatim
from secfl.cli.audit import printable
from secfl.errors import UsageError

__all__ = ["policy_name", "status", "when"]


def status(
    spm: Annotated[str, typer.Option("--spm", help="SPM URL, https://HOST:PORT.")],
    spm_pin: Annotated[str, typer.Option(help="SHA-256 of the SPM's TLS key.")],
    policy: Annotated[str, typer.Option("--policy", metavar="NAME", help="The policy's name.")],
    as_json: Annotated[bool, typer.Option("--json", help="The SPM's answer as JSON.")] = False,
) -> None:
    """Show a federation's state: policy version and approvers, run, last round,
    attested services, counters, and the clone audit's exclusions."""
    from secfl.spm.client import SpmClient

    with SpmClient(spm, pin=spm_pin) as client:
        doc = client.status(policy_name(policy))
    if as_json:
        print_verbatim(json.dumps(doc, sort_keys=True, indent=1))
        return
    show(doc)


def policy_name(policy: str) -> str:
    """``policy`` if it is a policy name, else a usage error naming ``--policy``."""
    import re

    from secfl.policy._fields import NAME

    if not re.fullmatch(NAME, policy):
        raise UsageError(f"--policy: '{printable(policy, 40)}' is not a policy name")
    return policy


def show(doc: dict[str, Any]) -> None:
    """The status document as text: one line per fact, then tables."""
    p = doc["policy"]
    say = _say
    approvers = ", ".join(p["approvers"]) or "-"
    say(f"policy {p['name']}: version {p['version']} (digest {p['digest'][:16]}…), "
        f"accepted {when(p['accepted_at'])} by {approvers}")  # fmt: skip
    say(f"run: {p['run'] if p['run'] is not None else '1 (federation.run not set)'}")
    r = doc["round"]
    if r is None:
        say("round: none reported yet (the aggregator reports each round it commits)")
    else:
        line = (
            f"round: {_v(r['round'])} committed at counter {_v(r['counter'])}, "
            f"{_v(r['participants'])} participant(s)"
        )
        if r.get("excluded"):
            line += f", {r['excluded']} excluded by the audit"
        objective = r.get("objective")
        if objective:
            line += f", {objective['metric']} {objective['value']:.6g} ({objective['mode']})"
        line += f"; {when(r['at'])}"
        if r.get("run") is not None or r.get("policy_version") is not None:
            line += f" (run {_v(r.get('run'))}, policy version {_v(r.get('policy_version'))})"
        say(line)
    counters = ", ".join(f"{k} {v}" for k, v in sorted(doc["counters"].items())) or "-"
    say(f"counters: {counters}")
    _services(doc["services"], p["version"])
    _findings(doc["findings"])
    say(f"revocations in force: {doc['revocations']}"
        + (" (`secfl revocations` lists them)" if doc["revocations"] else ""))  # fmt: skip
    say(f"as of audit entry {doc['head_seq']} (the SPM's log, verified up to there)")


def _services(services: list[dict[str, Any]], version: int) -> None:
    table = Table(box=None, header_style="bold", pad_edge=False, title_justify="left")
    for column in ("SERVICE", "ROLE", "LAST ATTESTED (UTC)", "VERSION", "SESSIONS", "LAST REFUSED"):
        table.add_column(column, overflow="fold")
    for s in services:
        version_text = _v(s.get("attested_version"))
        if s.get("attested_version") not in (None, version):
            version_text += " (old)"
        refused = "-"
        if s.get("refused_at"):
            refused = f"{when(s['refused_at'])}: {s.get('refusal') or ''}"
        table.add_row(
            Text(printable(s["name"])), Text(printable(s["role"])),
            when(s.get("attested_at")), version_text, str(s["live_sessions"]),
            Text(printable(refused, 200)),
        )  # fmt: skip
    _say("services:")
    out.print(table)


def _findings(findings: list[dict[str, Any]]) -> None:
    if not findings:
        _say("exclusions by the audit: none")
        return
    _say("exclusions by the audit (newest first):")
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ROUND", "EXCLUDED", "WHEN (UTC)", "REVOCATION REQUEST"):
        table.add_column(column, overflow="fold")
    for f in findings:
        request = f["state"] if f["requested"] else "-"
        table.add_row(_v(f["round"]), Text(printable(", ".join(f["excluded"]) or "-")),
                      when(f["at"]), request)  # fmt: skip
    out.print(table)


def when(at: str | None) -> str:
    """An audit timestamp as ``YYYY-MM-DD HH:MM:SS`` (UTC), or ``-``."""
    return printable(at.replace("T", " ")[:19]) if at else "-"


def _v(value: object) -> str:
    return "-" if value is None else printable(value)


def _say(line: str) -> None:
    out.print(printable(line, 4096), markup=False)
