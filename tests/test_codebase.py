"""Properties of the codebase itself: lint-clean, and a light CLI start-up."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(
    shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(),
    reason="ruff is not installed (pip install '.[test]')",
)
def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    for args in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [ruff, *args, "filekeeper", "migrations", "tests", "bench"], cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_importing_the_cli_imports_neither_httpx_nor_alembic() -> None:
    code = "import sys, filekeeper.cli; print(sorted({'httpx', 'alembic', 'tenacity'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# --- the structure: no cycles, one writer -------------------------------------------------------------

PACKAGE = ROOT / "filekeeper"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every filekeeper module ``path`` imports, at the top or inside a function (``from . import x``
    counts as importing ``x`` when it is a module, else the package it comes from)."""
    import ast

    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("filekeeper")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if not target.startswith("filekeeper"):
                continue
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                is_module = (ROOT / Path(*candidate.split("."))).with_suffix(".py").exists() or (
                    ROOT / Path(*candidate.split(".")) / "__init__.py"
                ).exists()
                found.add(candidate if is_module else target)
    return found - {module}


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    # A package's __init__ importing its own submodules is how packages work, not a cycle back.
    real = [c for c in cycles if not any(a.startswith(f"{b}.") for a, b in itertools.pairwise(c))]
    assert real == [], "\n".join(" -> ".join(c) for c in real)


def test_only_the_ledger_writes_the_ledger() -> None:
    """No raw INSERT, UPDATE or DELETE of the ledger's tables outside ledger.py (migrations aside)."""
    import ast

    tables = {"files", "events", "accounts", "reconcile_runs"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "ledger.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "sqlalchemy":
                bad = {a.name for a in node.names} & {"insert", "update", "delete"}
                if bad:
                    offenders.append(f"{path.name}: imports {sorted(bad)} from sqlalchemy")
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("insert", "update", "delete")
                and isinstance(node.value, ast.Name)
                and node.value.id in tables
            ):
                offenders.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}()")
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value.upper()
                if any(
                    f"{verb} {t.upper()}" in text for verb in ("INSERT INTO", "UPDATE", "DELETE FROM") for t in tables
                ):
                    offenders.append(f"{path.name}:{node.lineno}: raw SQL {node.value[:40]!r}")
    assert offenders == []


def test_event_actions_are_constants() -> None:
    """Every action the code writes is a member of schema.Action; no bare action strings elsewhere."""
    import ast

    from filekeeper.schema import Action

    names = {str(a) for a in Action}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "schema.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Constant)
                and node.value in names
                and node.value.startswith(("reconcile_", "evict"))
            ):
                offenders.append(f"{path.name}:{node.lineno}: {node.value!r}")
    assert offenders == []


def test_the_public_surface_exports_what_keeper_hands_back() -> None:
    import inspect
    import typing

    import filekeeper

    assert sorted(filekeeper.__all__) == sorted(set(filekeeper.__all__))
    for name in filekeeper.__all__:
        assert hasattr(filekeeper, name), name
    exported = [getattr(filekeeper, n) for n in filekeeper.__all__]
    for name, method in inspect.getmembers(filekeeper.Keeper, inspect.isfunction):
        if name.startswith("_"):
            continue
        import filekeeper.providers
        import filekeeper.reconcile
        import filekeeper.reports

        names = {**vars(filekeeper.providers), **vars(filekeeper.reconcile), **vars(filekeeper.reports)}
        names["ReconcileProgress"] = filekeeper.reconcile.Progress
        hints = typing.get_type_hints(method, {**names, **vars(filekeeper.keeper), **vars(filekeeper)})
        for hint in (hints.get("return"), *(v for k, v in hints.items() if k != "return")):
            for t in (*typing.get_args(hint), hint):
                for inner in (*typing.get_args(t), t):
                    if isinstance(inner, type) and inner.__module__.startswith("filekeeper"):
                        assert (
                            inner in exported
                            or inner is filekeeper.Keeper
                            or inner.__name__
                            in (
                                "Provider",
                                "ReportQuery",
                                "EventOut",
                            )
                        ), f"Keeper.{name} uses {inner.__module__}.{inner.__name__}, which filekeeper does not export"


def test_the_version_is_a_leaf() -> None:
    code = "import filekeeper._version as v, sys; print(v.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    from filekeeper import __version__

    assert out.stdout.strip() == __version__
    import ast

    tree = ast.parse((PACKAGE / "_version.py").read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom) and n.module != "__future__"]
    assert imports == []


# --- one provider registry ----------------------------------------------------------------------------


def test_every_list_of_providers_derives_from_the_registry() -> None:
    from click.testing import CliRunner

    from filekeeper.cli import cli
    from filekeeper.providers import ADAPTERS, PROFILES, PROVIDERS, REGISTRY
    from tests.conftest import KEY_VARS, URL_VARS
    from tests.conftest import PROVIDERS as TESTED
    from tests.emulator import FLAVORS

    assert PROVIDERS == tuple(cls.profile.name for cls in REGISTRY) == tuple(ADAPTERS) == tuple(PROFILES)
    assert all(ADAPTERS[n].profile is PROFILES[n] for n in PROVIDERS)
    keyed = tuple(n for n in PROVIDERS if PROFILES[n].key_env)
    assert keyed == TESTED
    assert {n: PROFILES[n].key_env for n in keyed} == KEY_VARS
    assert {n: PROFILES[n].base_url_env for n in keyed} == URL_VARS
    assert set(PROVIDERS) <= set(FLAVORS), "every provider needs an emulator flavor"
    help_text = CliRunner().invoke(cli, ["upload", "--help"]).output
    assert all(n in help_text for n in PROVIDERS)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "from filekeeper.providers import PROFILES" in ci and 'done 3<<<"$ci_providers"' in ci, (
        ".ci/run loops over the registry"
    )
    readme = (ROOT / "README.md").read_text()
    for n in PROVIDERS:
        assert f"| {n} |" in readme, f"README has no row for {n}"


def test_the_architecture_page_lists_every_module_and_only_those() -> None:
    import re

    page = (ROOT / "docs" / "architecture.md").read_text()
    listed = set(re.findall(r"^\| `(filekeeper/[\w/]+\.py)` \|", page, flags=re.MULTILINE))
    actual = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")}
    assert listed == actual, f"missing: {sorted(actual - listed)}; gone: {sorted(listed - actual)}"


def test_the_lazy_exports_match_all() -> None:
    import filekeeper

    assert set(filekeeper.__all__) == {*filekeeper._EXPORTS, "__version__"}
    code = "import sys, filekeeper; print(sorted(m for m in ('sqlalchemy', 'httpx', 'alembic') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"  # importing the package loads no heavy dependency


def test_the_cli_sorts_are_the_ledgers() -> None:
    from filekeeper import cli, records

    assert cli.SORTS == records.SORTS
