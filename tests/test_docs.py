"""Docs that are generated from code must match it."""

from __future__ import annotations

from pathlib import Path

from meshgate.docs_gen import render

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_reference_is_current() -> None:
    current = (ROOT / "docs" / "configuration.md").read_text()
    assert current == render(), (
        "docs/configuration.md is stale: run `python -m meshgate.docs_gen > docs/configuration.md`"
    )


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "pip install -e '.[test]' && scripts/test"
    assert command in readme and command in ci
