"""`meshgate config reload`: signal every server process of a data dir and wait for their answers.

Each server process writes `<data dir>/run/<pid>.json` while it runs and `<pid>.reload.json` after
each reload (gateway/reload.py); this sends SIGHUP to every live one and reads how it went.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

#: Where each server process of a data dir says it runs (`<pid>.json`) and how its last reload went
#: (`<pid>.reload.json`).
RUN_DIR = "run"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_servers(data_dir: Path, timeout: float) -> list[tuple[int, bool, str]]:
    """(pid, reloaded, message) for every running server of `data_dir`; stale entries are removed."""
    run = data_dir / RUN_DIR
    pids = []
    for entry in sorted(run.glob("*.json")) if run.is_dir() else ():
        if entry.name.endswith(".reload.json"):
            continue
        with contextlib.suppress(ValueError):
            pid = int(entry.stem)
            if _alive(pid):
                pids.append(pid)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
    sent = time.time()
    for pid in pids:
        os.kill(pid, signal.SIGHUP)
    outcomes = []
    deadline = time.monotonic() + timeout
    for pid in pids:
        status = run / f"{pid}.reload.json"
        while True:
            report = None
            with contextlib.suppress(OSError, ValueError):
                report = json.loads(status.read_text())
            if report is not None and report.get("at", 0) >= sent:
                outcomes.append((pid, bool(report["ok"]), str(report["message"])))
                break
            if time.monotonic() > deadline or not _alive(pid):
                outcomes.append((pid, False, f"no answer within {timeout:g}s"))
                break
            time.sleep(0.1)
    return outcomes
