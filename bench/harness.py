"""What the benchmarks share: the nginx upstream, meshgate with every control on, waiting for HTTP.

The scripts in bench/ run as `python bench/<script>.py`, which puts this folder on the import path.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: A key that passes through every control (rate limit, TPM, budget) without being stopped by it.
EVERY_CONTROL = ["--rpm", "100000000", "--tpm", "1000000000000", "--budget", "1000000", "--budget-period", "day"]


def nginx_http_common(tmp: Path) -> str:
    """No access log, and temporary files in `tmp`: Debian's nginx would use /var/lib/nginx."""
    paths = (f"  {kind}_temp_path {tmp}/{kind.split('_')[0]};" for kind in NGINX_TEMP_KINDS)
    return "  access_log off;\n" + "\n".join(paths)


NGINX_TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")

NGINX_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
{http_common}
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location /v1/chat/completions {{
      default_type application/json;
      return 200 '{body}';
    }}
  }}
}}
"""


def ensure_free(*ports: int) -> None:
    """Stop at once when another process holds a port the bench needs: the bench would otherwise
    measure (and fail against) whatever answers there."""
    for port in ports:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                raise SystemExit(f"port {port} is in use by another process: stop it, or pick other ports")


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (nginx's workers, uvicorn's, a Node gateway's children), as far
    as they are still running."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:  # exited in between
        return []
    return [pid, *(one for child in children for one in process_tree(int(child)))]


def wait_http(url: str, timeout: float = 120, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2):
                return
        except Exception:
            time.sleep(0.3)
    raise SystemExit(f"{url} did not come up in {timeout}s")


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def start_nginx(tmp: Path, port: int, completion: dict[str, Any]) -> subprocess.Popen[bytes]:
    """nginx answering every POST /v1/chat/completions with the same fixed completion."""
    text = NGINX_CONF.format(tmp=tmp, port=port, body=json.dumps(completion), http_common=nginx_http_common(tmp))
    (tmp / "nginx.conf").write_text(text)
    process = subprocess.Popen([nginx_binary(), "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"])
    wait_http(f"http://127.0.0.1:{port}/v1/chat/completions")
    return process


def write_mesh(tmp: Path, upstream_port: int, upstream_model: str, name: str = "bench") -> Path:
    """A mesh.yaml with one priced openai-compatible model (so cost and budgets are exercised)."""
    path = tmp / "mesh.yaml"
    path.write_text(
        f"models:\n  - name: {name}\n    provider: openai-compatible\n    model: '{upstream_model}'\n"
        f"    base_url: http://127.0.0.1:{upstream_port}/v1\n    api_key: ${{BENCH_UPSTREAM_KEY}}\n"
        "    price: {input: 2.5, output: 10.0}\n"
    )
    return path


def create_key(env: dict[str, str], *options: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "meshgate", "keys", "create", "--team", "bench", "--role", "app", *options],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def start_meshgate(env: dict[str, str], port: int, *options: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "meshgate", "serve", "--port", str(port), "--log-level", "warning", *options],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{port}/readyz")
    return process


def stop_all(processes: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process first (they shut down side by side), then wait for each, killing
    what has not exited after 20 s."""
    processes = list(processes)
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
