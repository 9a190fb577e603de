"""``flwr-clientapp`` / ``flwr-serverapp`` with the app's exceptions kept from the host.

Flower's app processes log an exception the app raised with its traceback (the app's
files, functions and source lines) and its message (``str(exc)``, which may quote a
site's data), on the stderr the host reads; the ClientApp's message also goes out as
the error reply's reason, and the ServerApp's as the run's status. Under secfl the
app's code and the sites' data are confidential (found by a review). This runs
Flower's own entry point with the app's call wrapped: an exception becomes one of the
same kind (what Flower's exit codes go by) saying only its type; secfl's own refusals
(a :class:`~secfl.errors.SecflError`, one line meant for the log) keep their text.
The executor (:mod:`secfl.flower._exec`) starts it as ``python -m
secfl.flower._app_process flwr-clientapp ARGS``. It imports Flower: it runs only in
the Flower venv.

It also installs only a FAB whose bytes hash to one of the digests the executor gives
it (``SECFL_FLOWER_FAB_SHA256``, from the measured command line). The executor checked
the task's FAB hash, but that is the Runtime API's word, and a SuperNode's Runtime API
was plain HTTP on a fixed loopback port: a process that answers there in Flower's place
(one that bound the port first) named the approved hash in the task and handed out a
FAB of its own, which Flower installed and ran without hashing it against the task
(found by a review; that API is now TLS with a key its wrapper makes, and this check
stays). Any other FAB is refused in one line, before anything of it is
installed, and the process exits with :data:`FAB_REFUSED`.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from secfl.errors import FlowerError, SecflError
from secfl.flower._fab import check_fab

__all__ = ["hidden", "main"]

#: The approved FABs' SHA-256 digests (hex, comma-separated): the executor sets it.
APPROVED_ENV = "SECFL_FLOWER_FAB_SHA256"
#: An app process's exit code when it refused the FAB the Runtime API handed it.
FAB_REFUSED = 77
_REFUSED: list[str] = []

#: What an app's hidden exception says besides its type.
HIDDEN = "its message and traceback are not shown under secfl: the host reads them"


class AppFailed(Exception):
    """An app's exception, its message and traceback left out."""


def hidden(exc: BaseException, entity: str) -> BaseException:
    """What is raised in place of ``exc``: its type's name only (secfl's own refusals
    as they are). Flower's load errors and its ``AppExitException`` keep their class:
    Flower tells the exit code by it."""
    if isinstance(exc, SecflError):
        text = f"{entity}: {exc}"
    else:
        text = f"{entity} raised {type(exc).__name__[:80]} ({HIDDEN})"
    for kind in type(exc).__mro__:
        if kind.__module__.startswith("flwr.") and issubclass(kind, Exception):
            try:
                replacement = kind(text)
            except Exception:  # a constructor of another signature
                break
            if hasattr(exc, "exit_code"):  # an app's AppExitException says how to exit
                replacement.exit_code = exc.exit_code  # type: ignore[attr-defined]
            return replacement
    if isinstance(exc, ImportError):
        return ImportError(text)
    return AppFailed(text)


def _guarded(call: Callable[..., Any], entity: str) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            raise hidden(exc, entity) from None

    return run


def _pin_fab(runtime: Any, approved: frozenset[str]) -> None:
    """``runtime``'s ``install_from_fab`` installs only a FAB of an ``approved`` digest;
    another ends the process (:data:`FAB_REFUSED`) before anything of it is installed."""
    flower_install = runtime.install_from_fab

    def install(fab: Any, *args: Any, **kwargs: Any) -> Any:
        digest = hashlib.sha256(fab).hexdigest() if isinstance(fab, bytes) else ""
        if digest not in approved:
            pins = ", ".join(sorted(h[:16] for h in approved)) or "none given"
            sys.stderr.write(
                f"error: secfl: fab: the Runtime API handed this task app sha256 "
                f"{digest[:16] or '(not bytes)'}..., not the board-approved {pins}...: not "
                "installed, not run (another process answers on Flower's loopback port)\n"
            )
            _REFUSED.append(digest)
            raise SystemExit(FAB_REFUSED)  # no Exception: Flower's handlers let it through
        try:  # the approved bytes, yet compiled code beside the reviewed source is refused
            check_fab(fab)
        except FlowerError as exc:
            sys.stderr.write(f"error: secfl: {exc}: not installed, not run\n")
            _REFUSED.append(digest)
            raise SystemExit(FAB_REFUSED) from None
        return flower_install(fab, *args, **kwargs)

    runtime.install_from_fab = install


def _approved() -> frozenset[str]:
    return frozenset(h for h in os.environ.get(APPROVED_ENV, "").lower().split(",") if h)


def _hide_clientapp() -> Callable[[], Any]:
    from flwr.supernode import cli

    runtime: Any = importlib.import_module("flwr.supernode.runtime.run_clientapp")

    _pin_fab(runtime, _approved())
    flower_loader = runtime.get_load_client_app_fn

    def loader(*args: Any, **kwargs: Any) -> Callable[..., Any]:
        load = _guarded(flower_loader, "ClientApp")(*args, **kwargs)

        def load_app(*a: Any, **k: Any) -> Callable[..., Any]:
            return _guarded(_guarded(load, "ClientApp")(*a, **k), "ClientApp")

        return load_app

    runtime.get_load_client_app_fn = loader
    return cli.flwr_clientapp


def _hide_serverapp() -> Callable[[], Any]:
    from flwr.superlink import cli

    # (the package's attribute of that name is a function: the module by its path)
    runtime: Any = importlib.import_module("flwr.superlink.runtime.run_serverapp")

    _pin_fab(runtime, _approved())
    runtime.run_ = _guarded(runtime.run_, "ServerApp")
    return cli.flwr_serverapp


ENTRIES = {"flwr-clientapp": _hide_clientapp, "flwr-serverapp": _hide_serverapp}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ENTRIES:
        sys.exit(f"usage: python -m secfl.flower._app_process {{{'|'.join(ENTRIES)}}} ARGS")
    from secfl._internal.failures import hide_uncaught_errors, show_task_errors

    show_task_errors(False)  # warnings without their text
    hide_uncaught_errors()  # threads, finalisers, fatal signals: one line each
    entry = ENTRIES[sys.argv[1]]()
    sys.argv = [sys.argv[1], *sys.argv[2:]]
    try:
        code = entry()
    except SystemExit as exc:  # an app's sys.exit("text"): Python would print the text
        code = exc.code
    if code is not None and not isinstance(code, int):
        sys.stderr.write(f"error: {sys.argv[0]}: the app exited with a message ({HIDDEN})\n")
        code = 1
    if code == FAB_REFUSED and not _REFUSED:  # an app's own exit code: not our refusal
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
