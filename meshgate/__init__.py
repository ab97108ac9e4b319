"""meshgate: an open, self-hosted LLM Mesh."""

__version__ = "0.1.0"

__all__ = ["__version__"]
