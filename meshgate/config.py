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

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr, ValidationError

from meshgate.cache.config import CacheConfig
from meshgate.data_classes import DEFAULT_ALLOWED_HOSTING, HOSTINGS, data_class_problem
from meshgate.errors import ConfigError
from meshgate.guards.config import DetectorSpec, GuardPolicy, check_references
from meshgate.guards.engine import Guards
from meshgate.knowledge.config import KnowledgeConfig
from meshgate.names import name_problem
from meshgate.providers.base import ModelConfig, ProviderType
from meshgate.routing.config import ROUTE_FIELDS, SHARED_FIELDS, RouteConfig

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

TOP_LEVEL_KEYS = ("server", "models", "cache", "data_classes", "detectors", "guards", "knowledge")


@dataclass
class MeshConfig:
    path: str
    server: dict[str, Any]
    #: The models clients call: provider entries, and RouteConfig for routes.
    models: list[ModelConfig]
    #: Field paths whose value came from an env-var reference, with the reference as written.
    env_refs: dict[str, str] = field(default_factory=dict)
    uses_default_models: bool = False
    #: The `cache:` block: the default of every model.
    cache: CacheConfig = field(default_factory=CacheConfig)
    #: Which hostings each data class may reach (`data_classes:`, over the defaults).
    data_classes: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_ALLOWED_HOSTING))
    #: `detectors:` and `guards:`, and the detectors and guards built from them.
    detectors: list[DetectorSpec] = field(default_factory=list)
    guards: list[GuardPolicy] = field(default_factory=list)
    guard_engine: Guards = field(default_factory=lambda: Guards(()), repr=False, compare=False)
    #: `knowledge:`: index options and grounding defaults of the knowledge banks.
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)

    #: Effective cache configurations by model, made once (a reload makes a new MeshConfig).
    _cache_configs: dict[str, CacheConfig] = field(default_factory=dict, init=False, repr=False, compare=False)

    def cache_config_for(self, model: str) -> CacheConfig:
        """The effective cache configuration of a model: its own `cache:` block over the default."""
        found = self._cache_configs.get(model)
        if found is None:
            found = self.cache
            for entry in self.models:
                if entry.name == model:
                    found = self.cache.merged(entry.cache if isinstance(entry, RouteConfig) else None)
                    break
            self._cache_configs[model] = found
        return found


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


def _validate_entry(
    entry: dict[str, Any],
    provider_types: dict[str, ProviderType],
    source: str,
    path: list[str | int],
    env_refs: dict[str, str],
) -> ModelConfig:
    """One provider entry (a flat model or a deployment), validated by its provider type."""
    where = f"{source}: {_path_str(path)}"
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
        raise ConfigError(_format_validation_error(source, path, exc)) from None
    for field_name, value in model:
        if isinstance(value, SecretStr) and f"{_path_str(path)}.{field_name}" not in env_refs:
            raise ConfigError(
                f"{where}.{field_name}: secrets are not written in the file; reference an environment "
                f"variable instead, e.g. {field_name}: ${{MY_{field_name.upper()}}}"
            )
    problem = name_problem("model name", model.name)
    if problem is not None:
        raise ConfigError(f"{where}.name: {problem}")
    return model


def _weight(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}.weight: expected a whole number >= 0 (a share of the traffic)")
    return value


def _parse_entry(
    entry: dict[str, Any],
    index: int,
    provider_types: dict[str, ProviderType],
    source: str,
    env_refs: dict[str, str],
) -> ModelConfig:
    """A `models:` entry: a flat provider entry, or a route (with `deployments:` or route fields)."""
    where = f"{source}: models[{index}]"
    route_fields = {key: entry[key] for key in ROUTE_FIELDS if key in entry}
    if "weight" in entry and "deployments" not in entry:
        raise ConfigError(f"{where}.weight: a weight belongs to a deployment of a route (under `deployments:`)")
    if not route_fields:
        return _validate_entry(entry, provider_types, source, ["models", index], env_refs)
    if "deployments" in entry:
        if "provider" in entry:
            raise ConfigError(
                f"{where}: a route has `deployments:` and no `provider:` of its own (each deployment has one)"
            )
        raw = entry["deployments"]
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"{where}.deployments: expected a non-empty list of deployment entries")
        deployments, weights = [], []
        for position, item in enumerate(raw):
            path: list[str | int] = ["models", index, "deployments", position]
            if not isinstance(item, dict):
                raise ConfigError(f"{source}: {_path_str(path)}: expected a mapping with `name` and `provider`")
            item = dict(item)
            weights.append(_weight(item.pop("weight", 1), f"{source}: {_path_str(path)}"))
            if "name" not in item:
                raise ConfigError(f"{source}: {_path_str(path)}.name: field required (each deployment is named)")
            deployments.append(_validate_entry(item, provider_types, source, path, env_refs))
        shared = {key: value for key, value in entry.items() if key != "deployments"}
    else:
        flat = {key: value for key, value in entry.items() if key not in ROUTE_FIELDS}
        deployment = _validate_entry(flat, provider_types, source, ["models", index], env_refs)
        deployments, weights = [deployment], [1]
        shared = {key: value for key, value in entry.items() if key in ROUTE_FIELDS or key in SHARED_FIELDS}
    try:
        route = RouteConfig.model_validate({**shared, "deployments": deployments, "weights": weights})
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, ["models", index], exc)) from None
    problem = name_problem("model name", route.name)
    if problem is not None:
        raise ConfigError(f"{where}.name: {problem}")
    if not any(weights) and route.routing == "weighted":
        raise ConfigError(f"{where}.deployments: every weight is 0; at least one deployment must take traffic")
    if route.cache is not None:
        try:
            CacheConfig().merged(route.cache)
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(source, ["models", index, "cache"], exc)) from None
    if not route.price.input and not route.price.output and "price" not in shared:
        # Budgets reserve a call's worst case before it runs: the dearest deployment's price.
        route.price = max((d.price for d in deployments), key=lambda p: p.input + p.output)
    return route


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
    # Deployment names key circuit breakers (shared across replicas): unique in the whole file.
    deployment_names: dict[str, str] = {}
    for index, entry in enumerate(raw_models):
        where = f"{source}: models[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping with at least `name` and `provider`")
        model = _parse_entry(entry, index, provider_types, source, env_refs)
        if model.name in seen:
            raise ConfigError(f"{where}.name: {model.name!r} is already used by models[{seen[model.name]}]")
        seen[model.name] = index
        owned = model.deployments if isinstance(model, RouteConfig) else [model]
        for position, deployment in enumerate(owned):
            if deployment.name in deployment_names and deployment_names[deployment.name] != model.name:
                raise ConfigError(
                    f"{where}.deployments[{position}].name: {deployment.name!r} is already a deployment of "
                    f"`{deployment_names[deployment.name]}` (deployment names are unique in the file)"
                )
            deployment_names[deployment.name] = model.name
        models.append(model)
    for index, model in enumerate(models):
        if not isinstance(model, RouteConfig):
            continue
        for position, name in enumerate(model.fallbacks):
            if name == model.name:
                raise ConfigError(
                    f"{source}: models[{index}].fallbacks[{position}]: a model cannot fall back to itself"
                )
            if name not in seen:
                raise ConfigError(
                    f"{source}: models[{index}].fallbacks[{position}]: no model named {name!r} "
                    f"(known: {', '.join(sorted(seen))})"
                )
    return models


def _parse_data_classes(raw: Any, source: str) -> dict[str, tuple[str, ...]]:
    allowed = dict(DEFAULT_ALLOWED_HOSTING)
    if raw is None:
        return allowed
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: data_classes: expected a mapping of data class to allowed hostings")
    for name, hostings in raw.items():
        problem = data_class_problem(name)
        if problem is not None:
            raise ConfigError(f"{source}: data_classes.{name}: {problem}")
        if isinstance(hostings, str):
            hostings = [hostings]
        if not isinstance(hostings, list) or any(h not in HOSTINGS for h in hostings):
            raise ConfigError(f"{source}: data_classes.{name}: expected a list of hostings (of: {', '.join(HOSTINGS)})")
        allowed[name] = tuple(hostings)
    return allowed


def _parse_cache(raw: Any, source: str) -> CacheConfig:
    if raw is None:
        return CacheConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: cache: expected a mapping (mode, ttl, ...)")
    try:
        return CacheConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, ["cache"], exc)) from None


def _parse_guards(resolved: dict[str, Any], source: str) -> tuple[list[DetectorSpec], list[GuardPolicy], Guards]:
    parsed: dict[str, list[Any]] = {"detectors": [], "guards": []}
    for key, model in (("detectors", DetectorSpec), ("guards", GuardPolicy)):
        into = parsed[key]
        raw = resolved.get(key)
        if raw is None:
            continue
        if not isinstance(raw, list):
            raise ConfigError(f"{source}: {key}: expected a list")
        for index, item in enumerate(raw):
            if not isinstance(item, dict):
                raise ConfigError(f"{source}: {key}[{index}]: expected a mapping")
            try:
                into.append(model.model_validate(item))
            except ValidationError as exc:
                raise ConfigError(_format_validation_error(source, [key, index], exc)) from None
    detectors: list[DetectorSpec] = parsed["detectors"]
    guards: list[GuardPolicy] = parsed["guards"]
    problems = check_references(guards, detectors)
    if problems:
        raise ConfigError(f"{source}: {problems[0]}")
    for index, spec in enumerate(detectors):
        try:
            Guards((), [spec])
        except ValueError as exc:
            raise ConfigError(f"{source}: detectors[{index}] ({spec.name}): {exc}") from None
    return detectors, guards, Guards(guards, detectors)


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
    detectors, guards, engine = _parse_guards(resolved, source)
    return MeshConfig(
        path=source,
        server=server,
        models=models,
        env_refs=refs,
        uses_default_models=defaults,
        cache=_parse_cache(resolved.get("cache"), source),
        data_classes=_parse_data_classes(resolved.get("data_classes"), source),
        detectors=detectors,
        guards=guards,
        guard_engine=engine,
        knowledge=_parse_knowledge(resolved.get("knowledge"), source),
    )


def _parse_knowledge(raw: Any, source: str) -> KnowledgeConfig:
    if raw is None:
        return KnowledgeConfig()
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: knowledge: expected a mapping (indexes, top_k, min_evidence)")
    try:
        return KnowledgeConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, ["knowledge"], exc)) from None


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
    return dataclasses.replace(config, models=models, uses_default_models=False)


def describe_config(config: MeshConfig, settings: Any) -> dict[str, Any]:
    """The resolved configuration as printed by `meshgate config check`: secrets stay references."""

    def described(model: ModelConfig, path: str) -> dict[str, Any]:
        data = model.model_dump(mode="json")
        for key, value in model:
            ref = config.env_refs.get(f"{path}.{key}")
            if ref is not None:
                data[key] = ref
            elif isinstance(value, SecretStr):
                data[key] = "****"
        return data

    models = []
    for index, model in enumerate(config.models):
        data = described(model, f"models[{index}]")
        if isinstance(model, RouteConfig):
            data["deployments"] = [
                {**described(d, f"models[{index}].deployments[{j}]"), "weight": model.weights[j]}
                for j, d in enumerate(model.deployments)
            ]
        models.append(data)
    server = {name: (str(value) if isinstance(value, Path) else value) for name, value in vars(settings).items()}
    if server.get("database_url"):
        server["database_url"] = _redact_url(server["database_url"])
    return {"config": config.path, "server": server, "models": models}


def _redact_url(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1****@", url)
