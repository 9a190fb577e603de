"""The package layering: the runtime never imports the research harness, and the
shared primitives import nothing above them.

Every ``import`` and ``from ... import`` in a module counts, including those inside
functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "secfl"
RUNTIME = ("_internal", "tee", "policy", "shield", "spm", "launcher", "tasks", "fl", "flower")


def imports_of(path: Path, package: str | None = None) -> set[str]:
    """The secfl modules ``path`` imports (absolute names); ``package`` is the one
    the module is in (default: from its place under ``src/secfl``)."""
    if package is None:
        package = ".".join(("secfl", *path.relative_to(SRC).parent.parts))
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)
    return {m for m in found if m == "secfl" or m.startswith("secfl.")}


def modules(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


@pytest.mark.parametrize("package", RUNTIME)
def test_the_runtime_never_imports_the_evaluation(package: str) -> None:
    bad = [
        f"{path.relative_to(SRC)} imports {name}"
        for path in modules(package)
        for name in sorted(imports_of(path))
        if name == "secfl.eval" or name.startswith("secfl.eval.")
    ]
    assert bad == []


def test_shared_primitives_import_nothing_above_them() -> None:
    bad = [
        f"{path.relative_to(SRC)} imports {name}"
        for path in modules("_internal")
        for name in sorted(imports_of(path))
        if not name.startswith(("secfl._internal", "secfl.errors"))
    ]
    assert bad == []


def test_the_check_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The walker must find an import inside a function and a relative one (or the
    tests above prove nothing)."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from secfl.eval import grid\nfrom ..eval import report\n")
    assert {"secfl.eval.grid", "secfl.eval.report"} <= imports_of(probe, "secfl.fl")


#: The modules of the component packages that are public by name (the rest of the
#: public API is what each package's ``__init__`` lists in ``__all__``).
PUBLIC_MODULES = {"spm/client.py", "spm/enroll.py"}


@pytest.mark.parametrize("package", ["tee", "policy", "shield", "spm", "launcher", "tasks", "fl"])
def test_internal_modules_are_underscored(package: str) -> None:
    """A reader can tell the public surface at a glance: every other module is ``_name``."""
    loose = [
        str(p.relative_to(SRC))
        for p in modules(package)
        if not p.name.startswith("_") and str(p.relative_to(SRC)) not in PUBLIC_MODULES
    ]
    assert loose == [], f"public-looking modules outside __all__ packages: {loose}"


@pytest.mark.parametrize(
    "package", ["tee", "policy", "shield", "launcher", "tasks", "fl.strategies"]
)
def test_public_names_resolve(package: str) -> None:
    """Every name a package exports in ``__all__`` imports."""
    import importlib

    module = importlib.import_module(f"secfl.{package}")
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert missing == []
