"""Building the served models from mesh.yaml, and picking up a changed mesh.yaml without a restart.

`SIGHUP` (or `meshgate config reload`, which signals every server process of the data dir) loads
mesh.yaml again. The new file is validated and its new models are started before anything changes:
a file that does not parse or validate, or a model that fails to start, keeps the old configuration
running and says why (log, status file, audit event `config.reload_failed`). Otherwise the new models
take over at once; calls already running finish on the models they started with, which are closed
`shutdown_timeout` seconds later. Models whose entry did not change are kept as they are (a local
model is not loaded again, a deployment keeps its circuit). Audited as `config.reloaded`.

Server settings (`server:`) are read at start only; a reload that changes them says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from meshgate.background import Background
from meshgate.config import MeshConfig, load_config, with_chat_model
from meshgate.errors import ConfigError
from meshgate.gateway.reload_client import RUN_DIR
from meshgate.observe.audit import AuditEvent, AuditLog
from meshgate.providers.base import ChatModel, EmbeddingModel, Model, ModelConfig, ProviderContext, ProviderType
from meshgate.routing.breaker import BreakerBoard
from meshgate.routing.config import RouteConfig
from meshgate.routing.router import Deployment, RouteBase, RoutedChatModel, RoutedEmbeddingModel


class Runtime(Protocol):
    """What reloading needs of the runtime (gateway/runtime.py), which imports this module."""

    config: MeshConfig
    settings: Any
    provider_types: dict[str, ProviderType]
    provider_context: ProviderContext
    board: BreakerBoard
    allowed_hosting: dict[str, tuple[str, ...]]
    models: dict[str, Model]
    pipeline: Any
    audit: AuditLog | None
    _leaves: dict[str, Model]
    _started: list[Model]

    def lookup(self, name: str) -> Model | None: ...


log = logging.getLogger("meshgate.config")


def build_models(
    runtime: Runtime, config: MeshConfig, previous: dict[str, Model]
) -> tuple[dict[str, Model], dict[str, Model]]:
    """The models clients call (by name) and the provider models behind them (by deployment name).
    A provider model of `previous` whose entry is unchanged is reused as it is."""
    leaves: dict[str, Model] = {}

    def leaf(entry: ModelConfig) -> Model:
        old = previous.get(entry.name)
        model = (
            old
            if old is not None and old.config == entry
            else runtime.provider_types[entry.provider].factory(entry, runtime.provider_context)
        )
        leaves[entry.name] = model
        return model

    models: dict[str, Model] = {}
    for index, entry in enumerate(config.models):
        if not isinstance(entry, RouteConfig):
            models[entry.name] = leaf(entry)
            continue
        deployments = [
            Deployment(
                item.name,
                leaf(item),
                weight,
                runtime.board.breaker(item.name, entry.breaker),
                runtime.board.ewma(item.name),
            )
            for item, weight in zip(entry.deployments, entry.weights, strict=True)
        ]
        if all(isinstance(d.model, ChatModel) for d in deployments):
            kind: type[RouteBase] = RoutedChatModel
        elif all(isinstance(d.model, EmbeddingModel) for d in deployments):
            kind = RoutedEmbeddingModel
        else:
            raise ConfigError(
                f"{config.path}: models[{index}].deployments: the deployments of a route must all be chat "
                "models or all embedding models"
            )
        models[entry.name] = kind(
            entry, deployments, runtime.board, runtime.lookup, runtime.allowed_hosting, runtime.settings.request_timeout
        )
    for index, entry in enumerate(config.models):
        if not isinstance(entry, RouteConfig):
            continue
        chat = isinstance(models[entry.name], ChatModel)
        for position, name in enumerate(entry.fallbacks):
            if isinstance(models[name], ChatModel) != chat:
                raise ConfigError(
                    f"{config.path}: models[{index}].fallbacks[{position}]: `{name}` is "
                    f"{'an embedding' if chat else 'a chat'} model; a fallback serves the same kind of call"
                )
    return models, leaves


@dataclass
class ReloadResult:
    ok: bool
    message: str
    added: list[str]
    removed: list[str]
    changed: list[str]


class ConfigReloader:
    """Reloads the runtime's mesh.yaml on SIGHUP (see the module's docstring)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._lock = asyncio.Lock()
        self._tasks = Background(log, "config reload")
        #: Models a reload replaced, closed after the grace period (or at shutdown, if sooner).
        self._retiring: list[Model] = []
        self._signal = False

    @property
    def run_dir(self) -> Path:
        data_dir: Path = self.runtime.settings.data_dir
        return data_dir / RUN_DIR

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / f"{os.getpid()}.json").write_text(
            json.dumps({"pid": os.getpid(), "config": self.runtime.config.path, "started": time.time()})
        )
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_signal)
            self._signal = True

    def stop(self) -> None:
        if self._signal:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._signal = False
        for suffix in (".json", ".reload.json"):
            with contextlib.suppress(OSError):
                (self.run_dir / f"{os.getpid()}{suffix}").unlink()
        self._tasks.cancel()

    def _on_signal(self) -> None:
        log.info("SIGHUP: reloading %s", self.runtime.config.path)
        self._tasks.spawn(self.reload())

    def _load(self) -> MeshConfig:
        runtime = self.runtime
        path = runtime.config.path
        if path == "(defaults)":
            raise ConfigError(
                "no mesh.yaml to reload: the server runs on the embedded defaults (start it with --config)"
            )
        config = load_config(path, runtime.provider_types)
        if chat_model := os.environ.get("MESHGATE_CHAT_MODEL"):
            name = os.environ.get("MESHGATE_CHAT_MODEL_NAME") or "local-chat"
            config = with_chat_model(config, chat_model, name, runtime.provider_types)
        return config

    async def reload(self) -> ReloadResult:
        async with self._lock:
            result = await self._reload()
        self._report(result)
        return result

    async def _reload(self) -> ReloadResult:
        runtime = self.runtime
        try:
            config = self._load()
            models, leaves = build_models(runtime, config, runtime._leaves)
        except ConfigError as exc:
            return await self._failed(str(exc))
        fresh = [model for name, model in leaves.items() if runtime._leaves.get(name) is not model]
        started: list[Model] = []
        try:
            for model in fresh:
                await model.start()
                started.append(model)
        except Exception as exc:
            for model in started:
                with contextlib.suppress(Exception):
                    await model.close()
            return await self._failed(f"model `{fresh[len(started)].name}` failed to start: {exc}")
        gone = [model for name, model in runtime._leaves.items() if leaves.get(name) is not model]
        before = runtime.models
        added = [name for name in models if name not in before]
        removed = [name for name in before if name not in models]
        old_entries = {entry.name: entry for entry in runtime.config.models}
        changed = [
            entry.name for entry in config.models if entry.name in old_entries and old_entries[entry.name] != entry
        ]
        notes = []
        if config.server != runtime.config.server:
            notes.append("server settings changed: they apply at the next restart")
        # The swap: plain assignments, no await in between, so every call sees one config or the other.
        runtime.config = config
        runtime.allowed_hosting.clear()
        runtime.allowed_hosting.update(config.data_classes)
        runtime.models = models
        runtime.pipeline.models = models
        runtime._leaves = leaves
        runtime._started = [m for m in runtime._started if m not in gone] + started
        if gone:
            self._retiring.extend(gone)
            self._tasks.spawn(self._close_later(gone))
        assert runtime.audit is not None
        await runtime.audit.record(
            AuditEvent(
                "config.reloaded",
                "system",
                config.path,
                {"config": config.path, "added": added, "removed": removed, "changed": changed},
            )
        )
        summary = f"added {added or 'none'}, removed {removed or 'none'}, changed {changed or 'none'}"
        message = "; ".join([summary, *notes])
        log.info("config reloaded from %s: %s", config.path, message)
        return ReloadResult(True, message, added, removed, changed)

    async def _failed(self, reason: str) -> ReloadResult:
        log.error("config reload failed, the previous configuration stays: %s", reason)
        audit = self.runtime.audit
        if audit is not None:
            await audit.record(
                AuditEvent("config.reload_failed", "system", self.runtime.config.path, {"reason": reason[:2000]})
            )
        return ReloadResult(False, reason, [], [], [])

    async def _close_later(self, models: list[Model]) -> None:
        await asyncio.sleep(self.runtime.settings.shutdown_timeout)
        await self._close(models)

    async def _close(self, models: list[Model]) -> None:
        for model in models:
            if model not in self._retiring:
                continue  # closed already (shutdown came first)
            self._retiring.remove(model)
            try:
                await model.close()
            except Exception:
                log.exception("model %s did not close cleanly", model.name)

    async def close_retiring(self) -> None:
        """At shutdown: close the replaced models whose grace period has not ended (their calls
        are over: the server drained them before stopping the runtime)."""
        await self._close(list(self._retiring))

    def _report(self, result: ReloadResult) -> None:
        with contextlib.suppress(OSError):
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / f"{os.getpid()}.reload.json").write_text(
                json.dumps({"at": time.time(), "ok": result.ok, "message": result.message})
            )
