"""Many concurrent streams through meshgate: chunks delivered and lost, stalls, time to first token.

    python bench/streaming.py --streams 100,1000

The paced upstream and the client are one small compiled program (`bench/streamload`, Go standard
library only, built here with Debian's golang-go), so that on a 2-core machine the gateway under
test gets the CPU: a Python upstream and a Python client alone already stall 1000 streams.

The upstream streams CHUNKS content chunks PACE ms apart. The client opens N streams, directly to
the upstream and then through `meshgate serve` with every control on (auth, a key with rate limit
and budget, a priced model, usage and audit records, metrics), and times every chunk as it
arrives. A stall is a gap over twice the pacing between two chunks of one stream; a lost chunk is
one that never arrived. `max open` is the most streams open at one instant and `all open s` how
long all N were open together: proof that the streams really ran concurrently. The starts are
spread over `--ramp` seconds (as load tools ramp up users); `--ramp 0` opens them all at once.

Between the two, the "nginx proxy" row runs the same load through Debian's nginx (one worker) as a
plain reverse proxy to the same upstream: what any proxy costs on this machine, a C one doing no
work at all, the reference for meshgate's added TTFT and CPU. `--no-nginx` leaves it out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import (
    EVERY_CONTROL,
    create_key,
    ensure_free,
    nginx_binary,
    nginx_http_common,
    process_tree,
    start_meshgate,
    wait_http,
    write_mesh,
)

HERE = Path(__file__).resolve().parent
UPSTREAM_PORT, MESHGATE_PORT, NGINX_PORT = 18085, 18086, 18090

NGINX_PROXY_CONF = """
daemon off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {tmp}/nginx-proxy.pid;
error_log {tmp}/nginx-proxy-error.log warn;
events {{ worker_connections 8192; }}
http {{
{http_common}
  upstream paced {{
    server 127.0.0.1:{upstream_port};
    keepalive 2048;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    keepalive_requests 100000;
    location / {{
      proxy_pass http://paced;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


def build_streamload(tmp: Path) -> Path:
    go = shutil.which("go")
    if go is None:
        raise SystemExit("go is missing: apt-get install golang-go (bench/streamload uses only its standard library)")
    binary = tmp / "streamload"
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOCACHE": str(tmp / "gocache"), "GOPATH": str(tmp / "gopath")}
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=HERE / "streamload", env=env, check=True)
    return binary


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of the process and its descendants (nginx: the master and its worker)."""
    total = 0.0
    for one in process_tree(pid):
        with contextlib.suppress(FileNotFoundError):  # exited in between
            total += cpu_seconds(one)
    return total


def start_nginx_proxy(tmp: Path, port: int, upstream_port: int) -> subprocess.Popen[bytes]:
    """Debian's nginx, one worker, as a plain streaming reverse proxy in front of the upstream."""
    conf = tmp / "nginx-proxy.conf"
    text = NGINX_PROXY_CONF.format(tmp=tmp, port=port, upstream_port=upstream_port, http_common=nginx_http_common(tmp))
    conf.write_text(text)
    return subprocess.Popen([nginx_binary(), "-p", str(tmp), "-c", str(conf)])


def through_proxy(
    binary: Path,
    process: subprocess.Popen[bytes],
    url: str,
    model: str,
    key: str,
    streams: int,
    args: argparse.Namespace,
) -> tuple[dict[str, Any], float]:
    """The load through a proxy, and the proxy's CPU over it, in percent of one core."""
    before = tree_cpu_seconds(process.pid)
    figures = load(binary, url, model, key, streams, args)
    return figures, 100 * (tree_cpu_seconds(process.pid) - before) / figures["wall_seconds"]


def load(binary: Path, url: str, model: str, key: str, streams: int, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        str(binary),
        "load",
        f"-url={url}",
        f"-model={model}",
        f"-key={key}",
        f"-streams={streams}",
        f"-pace={args.pace_ms}ms",
        f"-chunks={args.chunks}",
        f"-ramp={args.ramp}s",
    ]
    result: dict[str, Any] = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    return result


def row(target: str, figures: dict[str, Any], cpu: float | None, ttft_base: float | None) -> str:
    overhead = f"{figures['ttft_p50_ms'] - ttft_base:+.1f}" if ttft_base is not None else ""
    return (
        f"| {target} | {figures['streams']} | {figures['max_concurrent']} | {figures['seconds_all_open']} | "
        f"{figures['chunks']:,} / {figures['expected']:,} | {figures['lost']} | {figures['stalled_streams']} | "
        f"{figures['stalls']} | {figures['max_gap_ms']} | {figures['gap_p99_ms']} | {figures['ttft_p50_ms']} | "
        f"{figures['ttft_p99_ms']} | {overhead} | {'' if cpu is None else f'{cpu:.0f}%'} | {figures['errors']} |"
    )


HEADER = (
    "| target | streams | max open | all open s | chunks | lost | stalled streams | stalls | max gap ms | "
    "gap p99 ms | TTFT p50 ms | TTFT p99 ms | TTFT p50 added ms | gateway CPU | errors |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="100,1000", help="comma-separated stream counts")
    parser.add_argument("--pace-ms", type=int, default=20, help="milliseconds between two chunks of a stream")
    parser.add_argument("--chunks", type=int, default=100, help="content chunks per stream")
    parser.add_argument("--ramp", type=float, default=1.0, help="seconds over which the streams start")
    parser.add_argument("--output", type=Path, default=None, help="JSON results file")
    parser.add_argument("--no-nginx", action="store_true", help="leave out the nginx proxy row")
    parser.add_argument("--upstream-port", type=int, default=UPSTREAM_PORT, help="the paced upstream's port")
    parser.add_argument("--meshgate-port", type=int, default=MESHGATE_PORT, help="meshgate's port")
    parser.add_argument("--nginx-port", type=int, default=NGINX_PORT, help="the nginx proxy's port")
    args = parser.parse_args()
    ensure_free(args.upstream_port, args.meshgate_port, *([] if args.no_nginx else [args.nginx_port]))
    with_nginx = not args.no_nginx
    if with_nginx and not Path(nginx_binary()).exists():
        print("nginx is missing (apt-get install nginx-light): no nginx proxy row", flush=True)
        with_nginx = False
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-stream-bench-"))
    env = {**os.environ, "MESHGATE_DATA_DIR": str(tmp / "meshgate"), "BENCH_UPSTREAM_KEY": "sk-unused"}
    binary = build_streamload(tmp)
    upstream_model = f"paced:{args.pace_ms}:{args.chunks}"
    processes = [subprocess.Popen([str(binary), "serve", f"-addr=127.0.0.1:{args.upstream_port}"])]
    results: list[dict[str, Any]] = []
    lines = [HEADER]
    try:
        wait_http(f"http://127.0.0.1:{args.upstream_port}/v1/models")
        upstream_url = f"http://127.0.0.1:{args.upstream_port}/v1/chat/completions"
        nginx = None
        if with_nginx:
            nginx = start_nginx_proxy(tmp, args.nginx_port, args.upstream_port)
            processes.append(nginx)
            wait_http(f"http://127.0.0.1:{args.nginx_port}/v1/models")
        nginx_url = f"http://127.0.0.1:{args.nginx_port}/v1/chat/completions"
        config = write_mesh(tmp, args.upstream_port, upstream_model, name="paced")
        key = create_key(env, *EVERY_CONTROL)
        meshgate = start_meshgate(env, args.meshgate_port, "--config", str(config))
        processes.append(meshgate)
        meshgate_url = f"http://127.0.0.1:{args.meshgate_port}/v1/chat/completions"
        load(binary, meshgate_url, "paced", key, 10, args)  # warm up: connections, code paths
        if nginx is not None:
            load(binary, nginx_url, upstream_model, "unused", 10, args)
        for streams in (int(s) for s in args.streams.split(",")):
            direct = load(binary, upstream_url, upstream_model, "unused", streams, args)
            lines.append(row("upstream", direct, None, None))
            print(lines[-1], flush=True)
            results.append({"target": "upstream", **direct})
            proxies = [("meshgate", meshgate, meshgate_url, "paced", key)]
            if nginx is not None:  # nginx forwards the body unchanged: the upstream's own model name
                proxies.insert(0, ("nginx proxy", nginx, nginx_url, upstream_model, "unused"))
            for target, proxy, url, model, target_key in proxies:
                figures, cpu = through_proxy(binary, proxy, url, model, target_key, streams, args)
                lines.append(row(target, figures, cpu, direct["ttft_p50_ms"]))
                print(lines[-1], flush=True)
                results.append({"target": target, "gateway_cpu_percent": cpu, **figures})
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{args.chunks} chunks {args.pace_ms} ms apart per stream, starts spread over {args.ramp} s\n")
    print("\n".join(lines))
    output = args.output or HERE / "results" / f"streaming-{time.strftime('%Y%m%d-%H%M%S')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps({"pace_ms": args.pace_ms, "chunks": args.chunks, "ramp_s": args.ramp, "runs": results})
    )
    print(f"raw figures: {output}")


if __name__ == "__main__":
    main()
