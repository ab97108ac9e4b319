"""mesh.yaml: env references, validation errors that name file, field and reason; `config check`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshgate.cli import cli
from meshgate.config import load_config
from meshgate.errors import ConfigError
from meshgate.plugins import make_plugin_manager, provider_types
from meshgate.settings import resolve_settings

TYPES = provider_types(make_plugin_manager())

BENCH = """
models:
  - name: bench
    provider: openai-compatible
    model: bench-model
    base_url: http://127.0.0.1:18080/v1
    api_key: ${BENCH_UPSTREAM_KEY}
    price: {input: 2.5, output: 10.0}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mesh.yaml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), TYPES)
    return str(caught.value)


def test_issue_example_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_UPSTREAM_KEY", "sk-secret")
    config = load_config(write(tmp_path, BENCH), TYPES)
    (model,) = config.models
    assert model.name == "bench"
    assert model.api_key.get_secret_value() == "sk-secret"  # type: ignore[attr-defined]
    assert model.price.input == 2.5 and model.price.output == 10.0
    assert config.env_refs == {"models[0].api_key": "${BENCH_UPSTREAM_KEY}"}


def test_missing_env_var_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENCH_UPSTREAM_KEY", raising=False)
    message = error_of(tmp_path, BENCH)
    assert "mesh.yaml: models[0].api_key" in message
    assert "BENCH_UPSTREAM_KEY is not set" in message


def test_env_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UPSTREAM_URL", raising=False)
    text = "models:\n  - {name: a, provider: openai-compatible, model: m, base_url: '${UPSTREAM_URL:-http://h:1/v1}'}\n"
    assert load_config(write(tmp_path, text), TYPES).models[0].base_url == "http://h:1/v1"  # type: ignore[attr-defined]


def test_literal_secret_is_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path, BENCH.replace("${BENCH_UPSTREAM_KEY}", "sk-literal"))
    assert "models[0].api_key" in message and "environment" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models:\n  - {name: a, provider: nope}\n", "models[0].provider: unknown provider 'nope'"),
        ("models:\n  - {name: a}\n", "models[0].provider: field required"),
        (
            "models:\n  - {name: a, provider: openai-compatible, base_url: 'http://x/v1'}\n",
            "models[0].model: Field required",
        ),
        (
            "models:\n  - {name: a, provider: openai-compatible, model: m, base_url: 'x'}\n",
            "models[0].base_url",
        ),
        (
            "models:\n  - {name: a, provider: openai-compatible, model: m, base_url: 'http://x', colour: red}\n",
            "models[0].colour: unknown field",
        ),
        (
            "models:\n  - {name: a, provider: openai-compatible, model: m, base_url: 'http://x', price: {input: -1}}\n",
            "models[0].price.input",
        ),
        (
            "models:\n  - {name: a, provider: local-llama}\n  - {name: a, provider: local-embedding}\n",
            "models[1].name: 'a' is already used by models[0]",
        ),
        ("modles: []\n", "modles: unknown top-level key"),
        ("models: {a: 1}\n", "models: expected a list"),
        ("models:\n  - name: a\n   provider: x\n", "(line 3"),
    ],
)
def test_errors_name_file_field_and_reason(tmp_path: Path, text: str, expected: str) -> None:
    message = error_of(tmp_path, text)
    assert message.startswith(str(tmp_path / "mesh.yaml"))
    assert expected in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml", TYPES)


def test_no_config_serves_local_defaults() -> None:
    config = load_config(None, TYPES)
    assert [m.name for m in config.models] == ["local-chat", "local-embed"]
    assert config.uses_default_models


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHGATE_PORT", "5000")
    monkeypatch.setenv("MESHGATE_DATA_DIR", str(tmp_path / "env-dir"))
    settings = resolve_settings({}, {"port": 6000, "host": "0.0.0.0"})
    assert settings.port == 5000  # env beats file
    assert settings.host == "0.0.0.0"  # file beats default
    assert settings.data_dir == tmp_path / "env-dir"
    assert resolve_settings({"port": 7000}, {"port": 6000}).port == 7000  # flag beats env
    with pytest.raises(ConfigError, match=r"server\.colour: unknown setting"):
        resolve_settings({}, {"colour": 1})
    monkeypatch.setenv("MESHGATE_PORT", "many")
    with pytest.raises(ConfigError, match="MESHGATE_PORT: port: expected int"):
        resolve_settings({}, {})


def test_config_check_prints_resolved_config_without_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_UPSTREAM_KEY", "sk-very-secret")
    path = write(tmp_path, BENCH + "server:\n  port: 4100\n")
    result = CliRunner().invoke(
        cli,
        [
            "config",
            "check",
            "--config",
            str(path),
            "--format",
            "json",
            "--database-url",
            "postgresql://u:pw@db/x",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "sk-very-secret" not in result.output and ":pw@" not in result.output
    data = json.loads(result.output.split("# ok")[0])
    assert data["server"]["port"] == 4100
    assert data["models"][0]["api_key"] == "${BENCH_UPSTREAM_KEY}"
    assert data["models"][0]["price"] == {"input": 2.5, "output": 10.0}


def test_config_check_fails_with_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  - {name: a, provider: nope}\n")
    result = subprocess.run(
        [sys.executable, "-m", "meshgate", "config", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "models[0].provider: unknown provider" in result.stderr


def test_usage_command_formats(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path / "d")]
    assert runner.invoke(cli, ["keys", "create", "--team", "t", *data]).exit_code == 0
    for fmt, expected in (("table", "TEAM"), ("json", "[]"), ("csv", "team,requests")):
        result = runner.invoke(cli, ["usage", "--by", "team", "--since", "7d", "--format", fmt, *data])
        assert result.exit_code == 0, result.output
        assert expected in result.output
    bad = runner.invoke(cli, ["usage", "--since", "yesterday", *data])
    assert bad.exit_code == 2 and "duration" in bad.output


@pytest.mark.parametrize("name", ["a/b", "my model", "gpt:4o", "-x", "m" * 65, "qwen*"])
def test_model_names_use_the_one_character_set(tmp_path: Path, name: str) -> None:
    text = f"models:\n  - {{name: {json.dumps(name)}, provider: local-embedding}}\n"
    message = error_of(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'mesh.yaml'}: models[0].name: model name {name!r} is not valid")
    assert "letters, digits" in message


def test_model_names_in_use_are_valid(tmp_path: Path) -> None:
    text = "".join(f"  - {{name: {n}, provider: local-embedding}}\n" for n in ("local-chat", "remote-embed", "v1.5_b"))
    assert [m.name for m in load_config(write(tmp_path, "models:\n" + text), TYPES).models] == [
        "local-chat",
        "remote-embed",
        "v1.5_b",
    ]
