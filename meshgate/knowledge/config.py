"""The `knowledge:` block of mesh.yaml: where scale-out indexes live, and how answers are grounded.

```yaml
knowledge:
  indexes:                       # options per index kind; `embedded` needs none
    milvus: {uri: "http://milvus:19530", token: "${MILVUS_TOKEN}"}
    pgvector: {url: "postgresql://rag@db/rag"}
    pinecone: {host: "https://docs-abc123.svc.pinecone.io", api_key: "${PINECONE_API_KEY}"}
  top_k: 5                       # chunks a grounded answer reads unless the request says
  min_evidence: 0.5              # below this fused evidence score a grounded answer abstains
  rerank: false                  # rerank searches and grounded answers unless the request says;
                                 # true (top 20 candidates) or {top_n: 30}
```
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RerankSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top_n: int = Field(20, ge=1, le=50, description="Fused candidates the reranker reorders (at least top_k).")


class KnowledgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    indexes: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Options per index kind.")
    top_k: int = Field(5, ge=1, le=50, description="Chunks a grounded answer reads unless the request says.")
    min_evidence: float | None = Field(
        None, ge=0.0, le=1.0, description="Evidence score under which a grounded answer abstains (default: measured)."
    )
    rerank: bool | RerankSettings = Field(
        False,
        description="Rerank the top fused candidates (knowledge/rerank.py) unless a request says `rerank`.",
    )
