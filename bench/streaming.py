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
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import EVERY_CONTROL, create_key, start_meshgate, wait_http, write_mesh

HERE = Path(__file__).resolve().parent
UPSTREAM_PORT, MESHGATE_PORT = 18085, 18086


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
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-stream-bench-"))
    env = {**os.environ, "MESHGATE_DATA_DIR": str(tmp / "meshgate"), "BENCH_UPSTREAM_KEY": "sk-unused"}
    binary = build_streamload(tmp)
    upstream_model = f"paced:{args.pace_ms}:{args.chunks}"
    processes = [subprocess.Popen([str(binary), "serve", f"-addr=127.0.0.1:{UPSTREAM_PORT}"])]
    results: list[dict[str, Any]] = []
    lines = [HEADER]
    try:
        wait_http(f"http://127.0.0.1:{UPSTREAM_PORT}/v1/models")
        config = write_mesh(tmp, UPSTREAM_PORT, upstream_model, name="paced")
        key = create_key(env, *EVERY_CONTROL)
        meshgate = start_meshgate(env, MESHGATE_PORT, "--config", str(config))
        processes.append(meshgate)
        upstream_url = f"http://127.0.0.1:{UPSTREAM_PORT}/v1/chat/completions"
        meshgate_url = f"http://127.0.0.1:{MESHGATE_PORT}/v1/chat/completions"
        load(binary, meshgate_url, "paced", key, 10, args)  # warm up: connections, code paths
        for streams in (int(s) for s in args.streams.split(",")):
            direct = load(binary, upstream_url, upstream_model, "unused", streams, args)
            lines.append(row("upstream", direct, None, None))
            print(lines[-1], flush=True)
            before = cpu_seconds(meshgate.pid)
            through = load(binary, meshgate_url, "paced", key, streams, args)
            cpu = 100 * (cpu_seconds(meshgate.pid) - before) / through["wall_seconds"]
            lines.append(row("meshgate", through, cpu, direct["ttft_p50_ms"]))
            print(lines[-1], flush=True)
            results += [{"target": "upstream", **direct}, {"target": "meshgate", "gateway_cpu_percent": cpu, **through}]
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
