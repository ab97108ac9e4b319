"""Anchors: copies of the signed audit checkpoints kept outside the database.

Someone who can write the database but not the signing key cannot forge a checkpoint, but they can
delete the newest records together with their checkpoints: what is left is a shorter log that is
consistent in itself. An anchor keeps every checkpoint where that person cannot reach, so `verify`
notices that the database ends before the last anchored checkpoint.

The default anchor is an append-only file, `<data dir>/audit-anchor.log` (or the path of the
`audit_anchor` setting; `off` disables it): one JSON line per checkpoint, written with O_APPEND
(so workers sharing the data dir never interleave a line), mode 0600. At scale, `syslog://host:port`
(UDP) or `syslog:///dev/log` sends every checkpoint line to a syslog server instead, out of reach
of whoever can write the server's disk; such an anchor is write-only, and `audit verify --anchor
FILE` checks an export of what the syslog server kept. Other sinks (a WORM object-store bucket)
implement `Anchor`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

from meshgate.errors import ConfigError

log = logging.getLogger("meshgate.audit")

ANCHOR_ENV = "MESHGATE_AUDIT_ANCHOR"
ANCHOR_FILE = "audit-anchor.log"


class Anchor(Protocol):
    """Somewhere outside the database that checkpoints are appended to and read back from."""

    name: str

    def write(self, checkpoint: dict[str, Any]) -> None: ...

    def read(self) -> tuple[list[dict[str, Any]], int]:
        """The checkpoints written so far, and how many entries could not be read."""
        ...


class SyslogAnchor:
    """Every checkpoint as one syslog message (`meshgate-audit: {json}`, facility AUTHPRIV) to a
    syslog server over UDP or a local socket. Write-only: `readable` is False, so verify does not
    read it; export what the server kept (the JSON after the tag, a line each) for `--anchor`."""

    readable = False

    def __init__(self, address: str | tuple[str, int]) -> None:
        import logging.handlers

        self.name = f"syslog {address}"
        self._handler = logging.handlers.SysLogHandler(
            address=address, facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV
        )
        self._handler.setFormatter(logging.Formatter("meshgate-audit: %(message)s"))

    def write(self, checkpoint: dict[str, Any]) -> None:
        line = json.dumps(checkpoint, sort_keys=True, separators=(",", ":"))
        record = logging.LogRecord("meshgate.audit", logging.INFO, __file__, 0, line, None, None)
        self._handler.emit(record)  # errors go to the handler's handleError, never to the caller

    def read(self) -> tuple[list[dict[str, Any]], int]:
        return [], 0


def parse_anchor(configured: str, data_dir: Path | None) -> Anchor | None:
    """An anchor from the `audit_anchor` setting: `off`, `syslog://host:port`, `syslog:///dev/log`,
    a file path, or empty for `<data dir>/audit-anchor.log`."""
    if configured.lower() in ("off", "none", "false", "0"):
        return None
    if configured.startswith("syslog://"):
        rest = configured[len("syslog://") :]
        if rest.startswith("/"):
            return SyslogAnchor(rest)
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"audit_anchor: {configured!r} is not syslog://host:port or syslog:///socket/path")
        return SyslogAnchor((host.strip("[]"), int(port)))
    if configured:
        return FileAnchor(Path(configured).expanduser())
    return FileAnchor(data_dir / ANCHOR_FILE) if data_dir is not None else None


class FileAnchor:
    """One JSON line per checkpoint, appended with O_APPEND to a file of mode 0600. Make it
    append-only for the server's user too with `chattr +a` where the file system allows it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)

    def write(self, checkpoint: dict[str, Any]) -> None:
        line = (json.dumps(checkpoint, sort_keys=True, separators=(",", ":")) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, line)  # one write: a line is never split between two writers
        finally:
            os.close(descriptor)

    def read(self) -> tuple[list[dict[str, Any]], int]:
        if not self.path.exists():
            return [], 0
        entries: list[dict[str, Any]] = []
        unreadable = 0
        with self.path.open("rb") as handle:
            for raw in handle:
                if not raw.strip():
                    continue
                try:
                    entry = json.loads(raw)
                except ValueError:
                    unreadable += 1  # e.g. a line torn by a crash mid-write
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("seq"), int):
                    entries.append(entry)
                else:
                    unreadable += 1
        return entries, unreadable


def default_anchor(data_dir: Path | None, configured: str | None = None) -> Anchor | None:
    """The anchor of the `audit_anchor` setting (see `parse_anchor`; read from
    `MESHGATE_AUDIT_ANCHOR` when not given), else `<data dir>/audit-anchor.log`."""
    return parse_anchor((os.environ.get(ANCHOR_ENV, "") if configured is None else configured).strip(), data_dir)


def write_all(anchors: list[Anchor], checkpoint: dict[str, Any]) -> None:
    """Append to every anchor; a failing anchor is logged, never fails the audited operation (the
    checkpoint is committed in the database already, and `verify` reports it as not anchored)."""
    for anchor in anchors:
        try:
            anchor.write(checkpoint)
        except OSError as error:
            log.warning("audit anchor %s: could not append checkpoint %s: %s", anchor.name, checkpoint["seq"], error)
