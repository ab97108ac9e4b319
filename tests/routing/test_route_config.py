# ruff: noqa: E501
"""The route form of mesh.yaml: what is accepted, and the errors that name file, field and reason."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from meshgate.config import load_config
from meshgate.errors import ConfigError
from meshgate.plugins import make_plugin_manager, provider_types
from meshgate.routing.config import RouteConfig

TYPES = provider_types(make_plugin_manager())
UP = 'base_url: "http://127.0.0.1:1/v1"'


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "mesh.yaml"
    path.write_text(textwrap.dedent(text))
    return load_config(path, TYPES)


def test_the_issue_form_loads_exactly_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTREAM_KEY", "k1")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k2")
    config = load(
        tmp_path,
        """
        cache:
          mode: exact                          # off | exact | semantic; the default for every model
          ttl: 1h
        models:
          - name: chat                         # what clients call
            routing: weighted                  # weighted (default) | ordered | least-latency | least-cost
            deployments:
              - {name: primary, provider: openai-compatible, model: m1, base_url: "http://127.0.0.1:18080/v1", api_key: "${UPSTREAM_KEY}", weight: 80, hosting: cloud}
              - {name: second, provider: anthropic, model: claude-x, api_key: "${ANTHROPIC_API_KEY}", weight: 20, hosting: private}
            fallbacks: [local-chat]            # other model names, tried in order when every deployment failed
            sticky: user                       # optional: the same user (or key) keeps its deployment
            cache: {mode: semantic, threshold: 0.95}   # optional: overrides the default
          - name: local-chat
            provider: local-llama
        """,
    )
    route = config.models[0]
    assert isinstance(route, RouteConfig)
    assert [d.name for d in route.deployments] == ["primary", "second"]
    assert route.weights == [80, 20]
    assert [d.hosting for d in route.deployments] == ["cloud", "private"]
    assert route.fallbacks == ["local-chat"] and route.sticky == "user"
    effective = config.cache_config_for("chat")
    assert (effective.mode, effective.threshold, effective.ttl) == ("semantic", 0.95, 3600.0)
    assert config.cache_config_for("local-chat").mode == "exact"


def test_a_flat_entry_with_fallbacks_is_a_one_deployment_route(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        f"""
        models:
          - {{name: a, provider: openai-compatible, model: m, {UP}, fallbacks: [b], price: {{input: 1, output: 2}}}}
          - {{name: b, provider: openai-compatible, model: m, {UP}}}
        """,
    )
    route = config.models[0]
    assert isinstance(route, RouteConfig)
    assert [d.name for d in route.deployments] == ["a"] and route.price.input == 1


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            f"[{{name: r, provider: openai-compatible, deployments: [{{name: d, provider: openai-compatible, model: m, {UP}}}]}}]",
            "models[0]: a route has `deployments:` and no `provider:`",
        ),
        (
            f"[{{name: r, deployments: [{{provider: openai-compatible, model: m, {UP}}}]}}]",
            "models[0].deployments[0].name: field required",
        ),
        (
            f"[{{name: r, deployments: [{{name: d, provider: openai-compatible, model: m, {UP}, weight: -1}}]}}]",
            "models[0].deployments[0].weight: expected a whole number",
        ),
        (
            "[{name: r, deployments: [{name: d, provider: nope}]}]",
            "models[0].deployments[0].provider: unknown provider",
        ),
        (
            f"[{{name: r, deployments: [{{name: d, provider: openai-compatible, model: m, {UP}, colour: red}}]}}]",
            "models[0].deployments[0].colour: unknown field",
        ),
        (
            f"[{{name: r, routing: fastest, deployments: [{{name: d, provider: openai-compatible, model: m, {UP}}}]}}]",
            "models[0].routing",
        ),
        (
            f"[{{name: r, fallbacks: [ghost], deployments: [{{name: d, provider: openai-compatible, model: m, {UP}}}]}}]",
            "models[0].fallbacks[0]: no model named 'ghost'",
        ),
        (
            f"[{{name: r, fallbacks: [r], deployments: [{{name: d, provider: openai-compatible, model: m, {UP}}}]}}]",
            "a model cannot fall back to itself",
        ),
        (
            f"[{{name: r, deployments: [{{name: x, provider: openai-compatible, model: m, {UP}}}]}}, {{name: x, provider: openai-compatible, model: m, {UP}}}]",
            "models[1].deployments[0].name: 'x' is already a deployment of `r`",
        ),
        (
            f"[{{name: r, deployments: [{{name: d, provider: openai-compatible, model: m, {UP}, api_key: sk-plain}}]}}]",
            "models[0].deployments[0].api_key: secrets are not written in the file",
        ),
        (
            f"[{{name: r, cache: {{mode: fuzzy}}, deployments: [{{name: d, provider: openai-compatible, model: m, {UP}}}]}}]",
            "models[0].cache.mode",
        ),
        (
            f"[{{name: a, provider: openai-compatible, model: m, {UP}, weight: 3}}]",
            "models[0].weight: a weight belongs",
        ),
        (
            f"[{{name: r, deployments: [{{name: d, provider: openai-compatible, model: m, {UP}, hosting: moon}}]}}]",
            "models[0].deployments[0].hosting",
        ),
    ],
)
def test_route_errors_name_the_field(tmp_path: Path, entries: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, f"models: {entries}\n")
    assert message in str(caught.value)


def test_data_classes_can_be_changed_and_are_checked(tmp_path: Path) -> None:
    config = load(tmp_path, "data_classes: {confidential: [local]}\nmodels: []\n")
    assert config.data_classes["confidential"] == ("local",)
    assert config.data_classes["restricted"] == ("local",)
    with pytest.raises(ConfigError, match=r"data_classes\.secret: 'secret' is not a data class"):
        load(tmp_path, "data_classes: {secret: [local]}\nmodels: []\n")
    with pytest.raises(ConfigError, match=r"data_classes\.public: expected a list of hostings"):
        load(tmp_path, "data_classes: {public: [mars]}\nmodels: []\n")
