"""A bounded schemathesis run against the app's own OpenAPI schema: no input makes a 500."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshgate.testing.fake_openai import FakeOpenAI
from tests.conftest import make_runtime, served_in_thread, upstream_models_yaml


@pytest.fixture(scope="module")
def served_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app (upstream models only, so fuzzing is fast) served by uvicorn in a thread."""
    with FakeOpenAI(required_key="sk-upstream-test-key") as fake:
        runtime = make_runtime(Path(tmp_path_factory.mktemp("fuzz")), upstream_models_yaml(fake.base_url), auth=False)
        with served_in_thread(runtime) as url:
            yield url


def test_no_input_makes_a_server_error(served_app: str) -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            served_app + "/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "40",
            "--generation-deterministic",
            "--request-timeout",
            "20",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "passed" in result.stdout.lower()
