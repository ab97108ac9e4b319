"""The one extension surface of meshgate.

Built-in features register through these same hooks (see ``meshgate/plugins.py``): the providers,
the pipeline steps and the request log are default plugins. A third-party plugin is a module with
``@hookimpl`` functions, published under the ``meshgate`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from meshgate.gateway.pipeline import Step
    from meshgate.gateway.runtime import Runtime
    from meshgate.providers.base import ProviderType

hookspec = pluggy.HookspecMarker("meshgate")
hookimpl = pluggy.HookimplMarker("meshgate")


@hookspec
def register_providers(register: Callable[[ProviderType], None]) -> None:
    """Register provider types (`register(ProviderType(...))`), selected by `provider:` in mesh.yaml."""


@hookspec
def register_pipeline_steps(register: Callable[[Step], None], runtime: Runtime) -> None:
    """Register steps of the call pipeline. Steps run in ascending `order` before the model is called,
    and in descending order after it (settle usage, audit, metrics)."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the `meshgate` command line."""


@hookspec
async def startup(runtime: Runtime) -> None:
    """Called once the runtime is built, before the server accepts requests."""


@hookspec
async def shutdown(runtime: Runtime) -> None:
    """Called after in-flight requests finished, before the process exits."""
