"""The layering is written down as import-linter contracts ([tool.importlinter] in pyproject.toml),
checked by `lint-imports` in scripts/test: no import circle comes back unnoticed."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from importlinter.cli import lint_imports
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True) == 0


def test_the_contracts_name_the_rules_that_broke_the_circles() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = {c["id"]: c for c in project["tool"]["importlinter"]["contracts"]}
    assert contracts["observe-below-runtime"]["forbidden_modules"][0] == "meshgate.gateway.runtime"
    backends = {"meshgate.store.sqlite", "meshgate.store.postgres"}
    assert set(contracts["store-interface"]["forbidden_modules"]) == backends
    assert contracts["layers"]["type"] == "layers"
    assert contracts["no-circles"]["type"] == "acyclic_siblings"


def test_ci_runs_lint_imports_and_the_test_extras_install_it() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "import-linter" in {Requirement(r).name for r in project["project"]["optional-dependencies"]["test"]}
    lines = [line.strip() for line in (ROOT / "scripts" / "test").read_text().splitlines()]
    assert "lint-imports" in lines
    pytest_line = next(i for i, line in enumerate(lines) if line.startswith("python -m pytest"))
    assert lines.index("lint-imports") < pytest_line
