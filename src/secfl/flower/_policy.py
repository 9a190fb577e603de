"""The policy of a Flower federation under secfl, and the exact commands it measures.

:func:`flower_policy` turns a :class:`FlowerFederation` (the app's FAB digest and
code-volume tag, the sites, the board, the platforms, the addresses) into a policy
document (a dict, YAML-ready) with:

- a ``superlink`` service (role ``any``: no secfl aggregator runs): its measurement
  is ``secfl run``'s of the exact wrapper and ``flower-superlink`` command line
  (:meth:`superlink_argv`) with the app's code volume; it receives the certificate
  and key of the SuperLink's loopback hop (``superlink-tls``, issued by the policy's
  ``flower-ca``), the CA, and the public halves of every site's node key (the keys
  it registers: only those join), and the model owner's output key when the
  ServerApp's outputs are sealed; its gate (``--mutual-tls``) serves the attested
  certificate the SPM issues to this instance, to attested sites only;
- one service per site (role ``any``, so that it may write its refusals to the audit
  log; no secfl aggregator runs here): the exact wrapper and
  ``flower-supernode`` command line (:meth:`supernode_argv`, which pins the FAB's
  SHA-256) and its own node key, released to it alone (its wrapper's relay reaches
  the gate with the site's attested certificate and accepts only the attested
  ``superlink``); its data volume, opened by ``secfl run`` and named in
  ``node_config``;
- the secrets (``secfl-ca`` for the services' identities, ``flower-ca``,
  ``superlink-tls``, ``NAME-node`` per site, the imported volume keys) and volumes.

The same arguments always give the same document and measurements, so every party
can recompute what the board signs. No Flower is needed here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secfl.errors import FlowerError
from secfl.flower._nodes import SERVICE_LABEL
from secfl.launcher._measurement import resolve_program, run_measurement

__all__ = [
    "APP_VOLUME",
    "FAB_NAME",
    "FlowerFederation",
    "Site",
    "flower_policy",
]

#: The app's code volume and the FAB's file name inside it.
APP_VOLUME = "app"
FAB_NAME = "app.fab"
_CA = "/flower/ca.pem"


@dataclass(frozen=True)
class Site:
    """One site: its service name, its data volume (tag and sealed key) and where its
    SuperNode's Runtime API listens (loopback; distinct ports when sites share a host)."""

    name: str
    data_tag: str
    data_sealed: str
    runtime_port: int = 9094
    #: More ``node_config`` entries (KEY=VALUE as Flower writes them).
    node_config: tuple[str, ...] = ()
    #: The site's site key (public, PEM): only a SuperNode whose host holds the private
    #: half enrols as this site (a site's command line is public: secfl.spm._site_key).
    site_key: str | None = None

    @property
    def data_volume(self) -> str:
        return f"{self.name}-data"

    @property
    def node_key(self) -> str:
        return f"{self.name}-node"


@dataclass
class FlowerFederation:
    """Everything the policy of a Flower federation depends on."""

    name: str
    #: The Flower venv's Python (runs the wrappers; its file is part of the measurement).
    python: str
    fab_sha256: str
    app_tag: str
    app_sealed: str
    #: Where the SuperNodes reach the SuperLink's gate (HOST:PORT; HOST in its certificate).
    superlink: str
    sites: list[Site]
    #: Board members: (name, public key PEM[, recovery key PEM]).
    board: list[dict[str, str]]
    threshold: int
    platforms: dict[str, Any]
    #: Where the gate listens on the SuperLink's host (default: 0.0.0.0 and the port).
    listen: str | None = None
    #: The SuperLink's own HTTP port on loopback (Fleet, Control and Runtime APIs).
    superlink_port: int = 9093
    run_config: list[str] = field(default_factory=list)
    #: Seal the ServerApp's outputs into this volume under the model owner's key.
    output: str | None = None
    output_sealed: str | None = None
    certificate_ttl: int = 86400
    #: The SuperLink's site key (public, PEM): its command is public too, and whoever
    #: enrols as it gets its certificate and the output key (secfl.spm._site_key).
    superlink_key: str | None = None

    def __post_init__(self) -> None:
        host, _, port = self.superlink.rpartition(":")
        if not host or not port.isdigit():
            raise FlowerError(f"flower: --superlink {self.superlink} is not HOST:PORT")
        if len({s.name for s in self.sites}) != len(self.sites) or not self.sites:
            raise FlowerError("flower: give one or more sites, each name once")
        if (self.output is None) != (self.output_sealed is None):
            raise FlowerError("flower: the output volume needs the model owner's sealed key")

    @property
    def host(self) -> str:
        return self.superlink.rpartition(":")[0].strip("[]")

    @property
    def gate(self) -> str:
        return self.listen or f"0.0.0.0:{self.superlink.rpartition(':')[2]}"

    def wrapper(self) -> list[str]:
        return [self.python, "-m", "secfl.flower"]

    def superlink_argv(self) -> list[str]:
        """The superlink service's exact command line (after ``secfl run ... --``)."""
        argv = [*self.wrapper(), "superlink",
                "--fab", f"$SECFL_VOLUMES/{APP_VOLUME}/{FAB_NAME}",
                "--fab-sha256", self.fab_sha256,
                "--nodes", "$SECFL_FILES/flower/nodes.pem",
                "--listen", self.gate, "--mutual-tls"]  # fmt: skip
        for item in self.run_config:
            argv += ["--run-config", item]
        if self.output is not None:
            argv += ["--output", self.output, "--output-key", "$SECFL_FILES/flower/output.key"]
        return [*argv, "--", "flower-superlink",
                "--ssl-certfile", "$SECFL_FILES/flower/superlink.crt",
                "--ssl-keyfile", "$SECFL_FILES/flower/superlink.key",
                "--ssl-ca-certfile", f"$SECFL_FILES{_CA}",
                "--enable-supernode-auth", "--isolation", "process",
                "--disable-runtime-dependency-installation",
                "--host", "127.0.0.1", "--port", str(self.superlink_port)]  # fmt: skip

    def supernode_argv(self, site: Site, fab_sha256: str | None = None) -> list[str]:
        """A site's exact command line (``fab_sha256``: pin another app, as a modified
        SuperNode would)."""
        config = " ".join([f'data-path="$SECFL_VOLUMES/{site.data_volume}"', *site.node_config])
        return [*self.wrapper(), "supernode", "--fab-sha256", fab_sha256 or self.fab_sha256,
                "--", "flower-supernode", "--superlink", self.superlink,
                "--auth-supernode-private-key", "$SECFL_FILES/flower/node.key",
                "--node-config", config, "--isolation", "process",
                "--host", "127.0.0.1", "--port", str(site.runtime_port)]  # fmt: skip

    def measurement(self, argv: Sequence[str], code: Mapping[str, str] | None = None) -> str:
        return run_measurement(resolve_program(argv[0]), argv, dict(code or {}))

    def superlink_measurement(self) -> str:
        return self.measurement(self.superlink_argv(), {APP_VOLUME: self.app_tag})

    def supernode_measurement(self, site: Site) -> str:
        return self.measurement(self.supernode_argv(site))


def _sans(host: str) -> list[str]:
    """The SuperLink certificate's names: the host SuperNodes dial, and loopback (the
    wrapper's own hop to Flower)."""
    return list(dict.fromkeys([host, "127.0.0.1", "localhost"]))


def flower_policy(
    fed: FlowerFederation, *, version: int = 1, predecessor: str = ""
) -> dict[str, Any]:
    """The policy document (a dict, ready for YAML) of ``fed``."""
    measure = next(iter(fed.platforms.get("accept", ["simulated"])))
    if measure != "simulated":
        raise FlowerError(
            "flower: measurements of hardware TEEs come from their images: write them into "
            "the policy (services[].measurements) after `secfl flower policy`"
        )
    # each key after the name of its site: the gate holds a key to that site's certificate
    nodes = "".join(f"{SERVICE_LABEL}{s.name}\n$$SECFL::{s.node_key}:pub$$\n" for s in fed.sites)
    link_files = {
        "/flower/superlink.crt": "$$SECFL::superlink-tls:crt$$",
        "/flower/superlink.key": "$$SECFL::superlink-tls:key$$",
        _CA: "$$SECFL::flower-ca:crt$$",
        "/flower/nodes.pem": nodes,
    }
    if fed.output is not None:
        link_files["/flower/output.key"] = "$$SECFL::model-output-key:hex$$"
    services: list[dict[str, Any]] = [
        {
            "name": "superlink",
            # "any", not "aggregator": the policy runs no secfl aggregator (whose
            # settings the federation checks would then require); it may still write
            # its findings (fl.flower.*) to the audit log.
            "role": "any",
            "measurements": {"simulated": [fed.superlink_measurement()]},
            "volumes": [APP_VOLUME],
            "inject": {"files": link_files},
            "certificate_ttl": fed.certificate_ttl,
            **({"site_key": fed.superlink_key} if fed.superlink_key else {}),
        }
    ]
    for site in fed.sites:
        services.append(
            {
                "name": site.name,
                "role": "any",  # it may write its refusals to the audit log
                "measurements": {"simulated": [fed.supernode_measurement(site)]},
                "volumes": [site.data_volume],
                "inject": {"files": {"/flower/node.key": f"$$SECFL::{site.node_key}:key$$"}},
                "certificate_ttl": fed.certificate_ttl,
                **({"site_key": site.site_key} if site.site_key else {}),
            }
        )
    secrets: list[dict[str, Any]] = [
        {"name": "secfl-ca", "kind": "x509-ca", "common_name": f"{fed.name} identities"},
        {"name": "flower-ca", "kind": "x509-ca", "common_name": f"{fed.name} Flower CA"},
        {"name": "superlink-tls", "kind": "x509", "issuer": "flower-ca",
         "common_name": fed.host[:64], "sans": _sans(fed.host), "usage": ["server"]},
        {"name": "app-key", "kind": "imported", "sealed": fed.app_sealed},
    ]  # fmt: skip
    secrets += [{"name": s.node_key, "kind": "ecdsa-p256"} for s in fed.sites]
    secrets += [
        {"name": f"{s.data_volume}-key", "kind": "imported", "sealed": s.data_sealed}
        for s in fed.sites
    ]
    if fed.output_sealed is not None:
        secrets.append(
            {"name": "model-output-key", "kind": "imported", "sealed": fed.output_sealed}
        )
    volumes: list[dict[str, Any]] = [
        {"name": APP_VOLUME, "key": "app-key", "kind": "code", "tag": fed.app_tag}
    ]
    volumes += [
        {"name": s.data_volume, "key": f"{s.data_volume}-key", "kind": "data", "tag": s.data_tag}
        for s in fed.sites
    ]
    return {
        "name": fed.name,
        "version": version,
        **({"predecessor": predecessor} if predecessor else {}),
        "board": {"members": fed.board, "threshold": fed.threshold},
        "platforms": fed.platforms,
        "identity_ca": "secfl-ca",
        "services": services,
        "secrets": secrets,
        "volumes": volumes,
    }


def run_command(
    fed: FlowerFederation,
    service: str,
    argv: Sequence[str],
    volumes: Mapping[str, Path | str],
    spm: str = "SPM_URL",
    pin: str = "SPM_PIN",
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``secfl run`` command line that starts ``argv`` as ``service``."""
    cmd = ["secfl", "run", "--spm", spm, "--spm-pin", pin, "--policy", fed.name,
           "--service", service, *extra]  # fmt: skip
    for name, path in volumes.items():
        cmd += ["--volume", f"{name}={path}"]
    return [*cmd, "--", *argv]
