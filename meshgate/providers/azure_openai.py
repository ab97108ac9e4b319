"""Azure OpenAI: OpenAI's API behind a resource endpoint, one deployment per model.

Requests go to `{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=...`
(and `/embeddings`), authenticated by the resource key in `api-key` or by a Microsoft Entra token
as a bearer. Bodies, streams and errors are OpenAI's, so everything else is openai-compatible's.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import quote

from pydantic import Field, SecretStr, model_validator

from meshgate.providers.base import ProviderType, by_kind
from meshgate.providers.openai_compatible import (
    OpenAICompatibleChat,
    OpenAICompatibleConfig,
    OpenAICompatibleEmbedding,
)

#: The newest generally available data-plane inference version.
DEFAULT_API_VERSION = "2024-10-21"


class AzureOpenAIConfig(OpenAICompatibleConfig):
    provider: Literal["azure-openai"]  # type: ignore[assignment]
    endpoint: str = Field(description="The resource endpoint, e.g. https://NAME.openai.azure.com.")
    deployment: str = Field(min_length=1, description="The deployment name, which picks the model.")
    api_version: str = Field(DEFAULT_API_VERSION, min_length=1, description="Sent as `api-version`.")
    api_key: SecretStr | None = Field(None, description="The resource key, sent as `api-key`.")
    entra_token: SecretStr | None = Field(
        None, description="A Microsoft Entra ID access token, sent as a bearer (instead of api_key)."
    )
    model: str = Field("", description="Sent as `model` in the body (Azure ignores it); default the deployment.")
    base_url: str = Field("", description="Derived from endpoint and deployment; not set in mesh.yaml.")

    @model_validator(mode="before")
    @classmethod
    def _no_base_url(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("base_url"):
            raise ValueError("base_url is derived from endpoint and deployment; leave it out")
        return data

    @model_validator(mode="after")
    def _derive(self) -> AzureOpenAIConfig:
        endpoint = self.endpoint.rstrip("/")
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError("endpoint must start with http:// or https://")
        if self.api_key is not None and self.entra_token is not None:
            raise ValueError("give api_key or entra_token, not both")
        self.endpoint = endpoint
        self.base_url = f"{endpoint}/openai/deployments/{quote(self.deployment, safe='')}"
        self.model = self.model or self.deployment
        return self

    def request_path(self, path: str) -> str:
        return f"{path}?api-version={quote(self.api_version, safe='')}"

    def auth_headers(self) -> dict[str, str]:
        if self.entra_token is not None:
            return {"authorization": f"Bearer {self.entra_token.get_secret_value()}"}
        if self.api_key is not None:
            return {"api-key": self.api_key.get_secret_value()}
        return {}


class AzureOpenAIChat(OpenAICompatibleChat):
    provider = "azure-openai"

    def describe(self) -> dict[str, Any]:
        assert isinstance(self.config, AzureOpenAIConfig)
        return {"deployment": self.config.deployment, "api_version": self.config.api_version}


class AzureOpenAIEmbedding(OpenAICompatibleEmbedding):
    provider = "azure-openai"

    def describe(self) -> dict[str, Any]:
        assert isinstance(self.config, AzureOpenAIConfig)
        return {"deployment": self.config.deployment, "api_version": self.config.api_version}


PROVIDER = ProviderType(
    name="azure-openai",
    config_model=AzureOpenAIConfig,
    factory=by_kind(AzureOpenAIChat, AzureOpenAIEmbedding),
    description="Azure OpenAI: a deployment of an Azure OpenAI resource, by resource key or Entra ID token.",
)
