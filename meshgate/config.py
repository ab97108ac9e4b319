"""mesh.yaml: loading, env-var references and validation with errors that name file, field and reason.

```yaml
server: {port: 4000}            # any setting of meshgate.settings
models:
  - name: bench                 # the name clients use
    provider: openai-compatible # a registered provider type
    model: bench-model
    base_url: http://127.0.0.1:18080/v1
    api_key: ${BENCH_UPSTREAM_KEY}
    price: {input: 2.5, output: 10.0}
```

Secrets are never written in the file: `${VAR}` (or `${VAR:-default}`) is replaced by the variable's
value when the file is loaded; a missing variable is an error that names it and the field.
Without a `models:` key the embedded defaults are served (`local-chat`, `local-embed`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr, ValidationError

from meshgate.errors import ConfigError
from meshgate.names import name_problem
from meshgate.providers.base import ModelConfig, ProviderType

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

#: What `meshgate serve` runs with no configuration at all.
DEFAULT_MODELS: list[dict[str, Any]] = [
    {
        "name": "local-chat",
        "provider": "local-llama",
        "description": "Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M), on CPU",
    },
    {
        "name": "local-embed",
        "provider": "local-embedding",
        "description": "all-MiniLM-L6-v2 int8 ONNX, 384 dimensions",
    },
]

TOP_LEVEL_KEYS = ("server", "models")


@dataclass
class MeshConfig:
    path: str
    server: dict[str, Any]
    models: list[ModelConfig]
    #: Field paths whose value came from an env-var reference, with the reference as written.
    env_refs: dict[str, str] = field(default_factory=dict)
    uses_default_models: bool = False


def _path_str(parts: list[str | int]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _resolve_env(value: Any, path: list[str | int], source: str, refs: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _resolve_env(v, [*path, str(k)], source, refs) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, [*path, i], source, refs) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        resolved = os.environ.get(name)
        if resolved is None:
            if default is not None:
                return default
            raise ConfigError(
                f"{source}: {_path_str(path)}: environment variable {name} is not set "
                f"(export {name}=... or write ${{{name}:-default}})"
            )
        return resolved

    refs[_path_str(path)] = value
    return ENV_REF.sub(substitute, value)


def _format_validation_error(source: str, prefix: list[str | int], error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = _path_str([*prefix, *item["loc"]])
        reason = item["msg"]
        if item["type"] == "extra_forbidden":
            reason = "unknown field"
        lines.append(f"{source}: {where}: {reason}")
    return "\n".join(lines)


def parse_models(
    raw_models: Any,
    provider_types: dict[str, ProviderType],
    source: str,
    env_refs: dict[str, str] | None = None,
) -> list[ModelConfig]:
    env_refs = env_refs if env_refs is not None else {}
    if not isinstance(raw_models, list):
        raise ConfigError(f"{source}: models: expected a list of model entries")
    models: list[ModelConfig] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(raw_models):
        where = f"{source}: models[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping with at least `name` and `provider`")
        provider = entry.get("provider")
        if provider is None:
            raise ConfigError(f"{where}.provider: field required (one of: {', '.join(sorted(provider_types))})")
        if provider not in provider_types:
            raise ConfigError(
                f"{where}.provider: unknown provider {provider!r} (one of: {', '.join(sorted(provider_types))})"
            )
        try:
            model = provider_types[provider].config_model.model_validate(entry)
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(source, ["models", index], exc)) from None
        for field_name, value in model:
            if isinstance(value, SecretStr) and f"models[{index}].{field_name}" not in env_refs:
                raise ConfigError(
                    f"{where}.{field_name}: secrets are not written in the file; reference an environment "
                    f"variable instead, e.g. {field_name}: ${{MY_{field_name.upper()}}}"
                )
        problem = name_problem("model name", model.name)
        if problem is not None:
            raise ConfigError(f"{where}.name: {problem}")
        if model.name in seen:
            raise ConfigError(f"{where}.name: {model.name!r} is already used by models[{seen[model.name]}]")
        seen[model.name] = index
        models.append(model)
    return models


def load_config(path: str | Path | None, provider_types: dict[str, ProviderType]) -> MeshConfig:
    """Load and validate mesh.yaml, or the embedded defaults when `path` is None."""
    if path is None:
        models = parse_models(DEFAULT_MODELS, provider_types, "defaults")
        return MeshConfig(path="(defaults)", server={}, models=models, uses_default_models=True)
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}{where}: invalid YAML: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level (keys: {', '.join(TOP_LEVEL_KEYS)})")
    unknown = [key for key in raw if key not in TOP_LEVEL_KEYS]
    if unknown:
        raise ConfigError(f"{source}: {unknown[0]}: unknown top-level key (known: {', '.join(TOP_LEVEL_KEYS)})")
    refs: dict[str, str] = {}
    resolved = _resolve_env(raw, [], source, refs)
    server = resolved.get("server") or {}
    if not isinstance(server, dict):
        raise ConfigError(f"{source}: server: expected a mapping of settings")
    if "models" in resolved:
        models = parse_models(resolved["models"] or [], provider_types, source, refs)
        defaults = False
    else:
        models = parse_models(DEFAULT_MODELS, provider_types, "defaults")
        defaults = True
    return MeshConfig(path=source, server=server, models=models, env_refs=refs, uses_default_models=defaults)


def with_chat_model(config: MeshConfig, path: str, name: str, provider_types: dict[str, ProviderType]) -> MeshConfig:
    """`meshgate serve --chat-model PATH [--chat-model-name NAME]`: serve a GGUF as NAME (default
    `local-chat`). On the embedded defaults it takes the default chat model's place; with a mesh.yaml
    it replaces the local model of that name or is added beside the others."""
    entry: dict[str, Any] = {
        "name": name,
        "provider": "local-llama",
        "path": path,
        "description": f"{Path(path).name} (GGUF), on CPU",
    }
    models = list(config.models)
    if config.uses_default_models:
        models = [model for model in models if model.provider != "local-llama"]
    for index, model in enumerate(models):
        if model.name != name:
            continue
        if model.provider != "local-llama":
            raise ConfigError(
                f"--chat-model-name: {name!r} is a {model.provider} model in {config.path}; pick another name"
            )
        # Keep the entry's own settings (context window, concurrency, ...), not what belonged to the
        # old file (its hash, a template written for it).
        kept = model.model_dump(exclude={"path", "sha256", "chat_template", "description", "card"})
        models[index] = parse_models([{**kept, **entry}], provider_types, "--chat-model")[0]
        break
    else:
        models += parse_models([entry], provider_types, "--chat-model")
    return MeshConfig(config.path, config.server, models, config.env_refs, uses_default_models=False)


def describe_config(config: MeshConfig, settings: Any) -> dict[str, Any]:
    """The resolved configuration as printed by `meshgate config check`: secrets stay references."""
    models = []
    for index, model in enumerate(config.models):
        data = model.model_dump(mode="json")
        for key, value in model:
            ref = config.env_refs.get(f"models[{index}].{key}")
            if ref is not None:
                data[key] = ref
            elif isinstance(value, SecretStr):
                data[key] = "****"
        models.append(data)
    server = {name: (str(value) if isinstance(value, Path) else value) for name, value in vars(settings).items()}
    if server.get("database_url"):
        server["database_url"] = _redact_url(server["database_url"])
    return {"config": config.path, "server": server, "models": models}


def _redact_url(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1****@", url)
