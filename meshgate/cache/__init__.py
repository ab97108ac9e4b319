"""The response cache (exact and semantic), a pipeline step at ORDER_CACHE; see docs/cache.md."""
