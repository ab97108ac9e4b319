"""mesh.yaml picked up without a restart: in process, and through SIGHUP / `meshgate config reload`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from meshgate.testing.fake_openai import FakeOpenAI
from tests.conftest import AppClient, free_port, make_runtime
from tests.test_e2e import ServerProcess, create_key

HELLO = [{"role": "user", "content": "hi"}]


def write(path: Path, text: str) -> None:
    path.write_text(textwrap.dedent(text))


def models_yaml(base: str, *names: str) -> str:
    entries = "".join(
        f"""
          - name: {name}
            provider: openai-compatible
            model: echo
            base_url: "{base}"
        """
        for name in names
    )
    return "models:" + entries


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


async def test_reload_swaps_models_and_keeps_the_old_config_on_a_bad_file(tmp_path: Path, upstream: FakeOpenAI) -> None:
    runtime = make_runtime(tmp_path, models_yaml(upstream.base_url, "one", "two"))
    client = await AppClient.started(runtime)
    path = Path(runtime.config.path)
    kept = runtime.models["one"]
    try:
        write(path, models_yaml(upstream.base_url, "one", "three"))
        result = await runtime.reloads.reload()
        assert result.ok, result.message
        assert (result.added, result.removed, result.changed) == (["three"], ["two"], [])
        assert runtime.models["one"] is kept  # unchanged entries keep their live model
        ok = await client.http.post("/v1/chat/completions", json={"model": "three", "messages": HELLO})
        assert ok.status_code == 200
        gone = await client.http.post("/v1/chat/completions", json={"model": "two", "messages": HELLO})
        assert gone.status_code == 404

        write(path, "models: [oops")
        result = await runtime.reloads.reload()
        assert not result.ok and "invalid YAML" in result.message
        write(path, models_yaml(upstream.base_url, "one").replace("echo", "echo\n            nonsense: 1"))
        result = await runtime.reloads.reload()
        assert not result.ok and "nonsense: unknown field" in result.message
        still = await client.http.post("/v1/chat/completions", json={"model": "three", "messages": HELLO})
        assert still.status_code == 200

        assert runtime.db is not None and runtime.audit_writer is not None
        await runtime.audit_writer.flush()
        rows = await runtime.db.fetchall("SELECT event FROM audit_log WHERE event LIKE 'config.%' ORDER BY seq")
        assert [row["event"] for row in rows] == ["config.reloaded", "config.reload_failed", "config.reload_failed"]
    finally:
        await client.http.aclose()
        await runtime.stop()


@pytest.mark.slow
def test_config_reload_command_signals_the_running_server(tmp_path: Path, upstream: FakeOpenAI) -> None:
    config = tmp_path / "mesh.yaml"
    config.write_text(textwrap.dedent(models_yaml(upstream.base_url, "before")))
    env = {**os.environ, "MESHGATE_DATA_DIR": str(tmp_path / "data")}
    key = create_key(env)
    server = ServerProcess(["--config", str(config)], env, free_port())
    headers = {"authorization": f"Bearer {key}"}

    def served() -> set[str]:
        listed = httpx.get(f"{server.base_url}/models", headers=headers, timeout=10).json()
        return {model["id"] for model in listed["data"]}

    def reload() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshgate", "config", "reload"], capture_output=True, text=True, env=env, timeout=90
        )

    try:
        server.wait_ready()
        assert served() == {"before"}
        config.write_text(textwrap.dedent(models_yaml(upstream.base_url, "before", "after")))
        result = reload()
        assert result.returncode == 0, result.stderr
        assert "reloaded (pid" in result.stdout and "added ['after']" in result.stdout
        assert served() == {"before", "after"}

        config.write_text("models:\n  - name: broken\n")
        result = reload()
        assert result.returncode == 1
        assert "NOT reloaded" in result.stderr and "provider: field required" in result.stderr
        assert served() == {"before", "after"}  # the old configuration stays
    finally:
        assert server.stop() == 0
    assert "config reloaded" in "".join(server.output)
