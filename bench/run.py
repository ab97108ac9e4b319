"""Gateway overhead and throughput, side by side: the upstream alone, meshgate, LiteLLM's proxy, Portkey's gateway.

    python bench/run.py --duration 10 --rounds 2 --litellm /path/to/venv/bin/litellm \
        --portkey /path/to/node_modules/@portkey-ai/gateway/build/start-server.js

One fixed upstream that costs almost no CPU (nginx returning a fixed chat completion), one load
tool (wrk), the same request for every target, runs interleaved round by round so that the noise
of a shared machine falls on all targets alike. meshgate runs with every control on: auth, a key
with a rate limit and a budget, a priced model, usage and audit logging. Prints a markdown table
and writes the raw figures to bench/results/gateway-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness import (
    EVERY_CONTROL,
    create_key,
    ensure_free,
    nginx_binary,
    process_tree,
    start_meshgate,
    start_nginx,
    stop_all,
    wait_http,
    write_mesh,
)

HERE = Path(__file__).resolve().parent
UPSTREAM_PORT, MESHGATE_PORT, LITELLM_PORT, PORTKEY_PORT = 18080, 18081, 18082, 18083
#: `--routed`: a second meshgate whose `bench` is a two-deployment route with the exact cache on (and,
#: with `--litellm`, a second LiteLLM configured alike).
ROUTED_PORT = 18084
LITELLM_ROUTED_PORT = 18085
UPSTREAM_KEY = "sk-upstream"
#: The other gateways, whose req/s meshgate's is compared with in the table when they ran.
PEERS = {"litellm": "LiteLLM", "portkey": "Portkey"}
#: Each meshgate target's LiteLLM configured the same way (the like-for-like ratio).
ALIKE = {"meshgate": "litellm", "meshgate-routed": "litellm-routed"}
BODY = {"model": "bench", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "bench-model",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help?"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
}
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
{headers}
"""
#: `--routed`: every request is new (a counter in the prompt) and deterministic (temperature 0), so
#: each one is looked up in the cache, misses, goes to a deployment and is stored: the miss path.
WRK_UNIQUE_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
{headers}
local counter = 0
request = function()
  counter = counter + 1
  local body = '{prefix}' .. counter .. '{suffix}'
  return wrk.format(nil, nil, nil, body)
end
"""


def tagged(script: str, tag: str) -> str:
    """`script` (unique_wrk_script's) with prompts no other run sends: "Say hello <tag> <n>."."""
    assert "Say hello " in script
    return script.replace("Say hello ", f"Say hello {tag} ")


ROUTED_DEPLOYMENT = (
    '{{name: {name}, provider: openai-compatible, model: bench-model, base_url: "{base}", '
    'api_key: "${{BENCH_UPSTREAM_KEY}}", weight: 50, price: {{input: 2.5, output: 10.0}}}}'
)
ROUTED_MESH = """cache:
  mode: exact
  ttl: 1h
models:
  - name: bench
    routing: weighted
    deployments:
      - {first}
      - {second}
"""
#: `--guards`: meshgates whose `bench` is under a guard, every control on as well. `cloud-egress` is
#: the issue's policy (PII with NER, secrets, injection and moderation classifiers, output checks);
#: `patterns` runs only the pattern detectors (PII without NER, secrets, a custom regex).
GUARDED_PORTS = {"meshgate-guarded": 18085, "meshgate-patterns": 18086}
GUARDED_MESH = {
    "meshgate-guarded": """guards:
  - name: cloud-egress
    apply_to: {{hosting: [cloud]}}
    input:  {{pii: redact, secrets: block, injection: block, moderation: flag}}
    output: {{pii: redact, secrets: block, moderation: block, leakage: block}}
    on_error: block
models:
  - {model}
""",
    "meshgate-patterns": """detectors:
  - {{name: pii-patterns, kind: pii, ner: false}}
  - {{name: codenames, kind: regex, pattern: "Project (Heron|Falcon)"}}
guards:
  - name: patterns
    apply_to: {{hosting: [cloud]}}
    input:  {{pii-patterns: redact, secrets: block, codenames: block}}
    output: {{pii-patterns: redact, secrets: block}}
models:
  - {model}
""",
}
GUARDED_MODEL = (
    '{{name: bench, provider: openai-compatible, model: bench-model, base_url: "{base}", '
    'api_key: "${{BENCH_UPSTREAM_KEY}}", price: {{input: 2.5, output: 10.0}}}}'
)
#: Portkey's gateway has no key of its own: the provider, the upstream's address and key travel in headers.
PORTKEY_HEADERS = {
    "Authorization": f"Bearer {UPSTREAM_KEY}",
    "x-portkey-provider": "openai",
    "x-portkey-custom-host": f"http://127.0.0.1:{UPSTREAM_PORT}/v1",
}


@dataclass
class Run:
    target: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


@dataclass
class Results:
    date: str
    machine: str
    versions: dict[str, str]
    runs: list[Run] = field(default_factory=list)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)


def peak_rss_mb(pid: int) -> float:
    """VmHWM of the process and its descendants (uvicorn workers)."""
    total = 0.0
    for one in process_tree(pid):
        try:
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except FileNotFoundError:
            pass
    return round(total, 1)


def package_version(python: str, package: str) -> str:
    code = f"from importlib.metadata import version; print(version({package!r}))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip()


def node_binary() -> str:
    return shutil.which("node") or "/usr/bin/node"


def portkey_command(path: str) -> list[str]:
    """Portkey's start script (its package's `bin`, plain JavaScript) runs under node; anything else as is."""
    return [node_binary(), path] if Path(path).resolve().suffix == ".js" else [path]


def portkey_versions(path: str) -> dict[str, str]:
    """Node's, and the one in the package.json of @portkey-ai/gateway (found upwards from the start script)."""
    node = subprocess.run([node_binary(), "--version"], capture_output=True, text=True).stdout.strip()
    for folder in Path(path).resolve().parents:
        manifest = folder / "package.json"
        if manifest.exists():
            return {"portkey": str(json.loads(manifest.read_text()).get("version", "unknown")), "node": node}
    return {"portkey": "unknown", "node": node}


LITELLM_DEPLOYMENT = (
    "  - model_name: bench\n    litellm_params:\n      model: openai/bench-model\n"
    "      api_base: http://127.0.0.1:{port}/v1\n      api_key: os.environ/BENCH_UPSTREAM_KEY\n"
)
#: `--routed` with `--litellm`: LiteLLM configured like meshgate-routed, so that the ratio of the two
#: compares like with like: two deployments of `bench` (its router shuffles between them, weights
#: equal) and its response cache on, in memory (`cache_params.type: local`).
LITELLM_ROUTED_SETTINGS = (
    "router_settings:\n  routing_strategy: simple-shuffle\n"
    "litellm_settings:\n  cache: true\n  cache_params:\n    type: local\n"
)


def start_litellm(
    command: str, tmp: Path, env: dict[str, str], port: int = LITELLM_PORT, routed: bool = False
) -> subprocess.Popen[bytes]:
    """LiteLLM's proxy, one worker, only its master key, routing `bench` to the upstream (`routed`:
    to two deployments of it, with its cache on)."""
    config = tmp / f"litellm-{port}.yaml"
    deployment = LITELLM_DEPLOYMENT.format(port=UPSTREAM_PORT)
    config.write_text(
        "model_list:\n"
        + deployment * (2 if routed else 1)
        + (LITELLM_ROUTED_SETTINGS if routed else "")
        + "general_settings:\n  master_key: sk-litellm-bench\n"
    )
    process = subprocess.Popen(
        [command, "--config", str(config), "--port", str(port), "--num_workers", "1"],
        env={**env, "LITELLM_LOG": "ERROR"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=300)
    return process


def start_portkey(path: str) -> subprocess.Popen[bytes]:
    """Portkey's gateway, one Node process, headless (no console UI); it is told the upstream per request."""
    process = subprocess.Popen(
        [*portkey_command(path), f"--port={PORTKEY_PORT}", "--headless"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{PORTKEY_PORT}/", timeout=120)
    return process


def wrk_script(body: str, headers: dict[str, str]) -> str:
    lines = "\n".join(f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items())
    return WRK_SCRIPT.format(body=body, headers=lines)


def unique_wrk_script(headers: dict[str, str]) -> str:
    """A wrk script whose every request is a new deterministic prompt (see WRK_UNIQUE_SCRIPT)."""
    marker = "@@N@@"
    body = json.dumps({**BODY, "temperature": 0, "messages": [{"role": "user", "content": f"Say hello {marker}."}]})
    prefix, suffix = body.split(marker)
    lines = "\n".join(f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items())
    return WRK_UNIQUE_SCRIPT.format(headers=lines, prefix=prefix, suffix=suffix)


def to_ms(text: str) -> float:
    value = float(re.match(r"[\d.]+", text).group())  # type: ignore[union-attr]
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[re.sub(r"[\d.]", "", text)]


def wrk(url: str, script: Path, connections: int, duration: int) -> tuple[float, float, float, int]:
    threads = 1 if connections == 1 else 2
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = to_ms(re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    p99 = to_ms(re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    return rps, p50, p99, wrk_errors(out)


def wrk_errors(out: str) -> int:
    """Failed requests in wrk's report: non-2xx answers, and connect, read, write and timeout errors."""
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return errors + (sum(int(n) for n in socket_errors.groups()) if socket_errors else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the median is reported")
    parser.add_argument("--connections", default="1,32,256")
    parser.add_argument("--litellm", default=shutil.which("litellm"), help="the litellm command (omit to skip)")
    parser.add_argument(
        "--portkey", default="", help="Portkey's start script, node_modules/@portkey-ai/gateway/build/start-server.js"
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON results file")
    parser.add_argument("--meshgate-workers", type=int, default=1, help="more than 1 uses the local Redis")
    parser.add_argument(
        "--routed",
        action="store_true",
        help="also run `meshgate-routed`: bench as a two-deployment route with the exact cache on, every "
        "request a cache miss",
    )
    parser.add_argument(
        "--guards",
        action="store_true",
        help="also run `meshgate-guarded` (the issue's cloud-egress guard) and `meshgate-patterns` (pattern "
        "detectors only) on the same upstream",
    )
    args = parser.parse_args()
    ensure_free(
        UPSTREAM_PORT,
        MESHGATE_PORT,
        LITELLM_PORT,
        PORTKEY_PORT,
        *([ROUTED_PORT, LITELLM_ROUTED_PORT] if args.routed else []),
        *(GUARDED_PORTS.values() if args.guards else []),
    )
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} is missing: apt-get install nginx-light wrk")

    tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-"))
    processes: dict[str, subprocess.Popen[bytes]] = {}
    body_json = json.dumps(BODY)
    try:
        # -- upstream --------------------------------------------------------------------------
        processes["upstream"] = start_nginx(tmp, UPSTREAM_PORT, COMPLETION)

        # -- meshgate, every control on ------------------------------------------------------------
        env = {**os.environ, "BENCH_UPSTREAM_KEY": UPSTREAM_KEY, "MESHGATE_DATA_DIR": str(tmp / "meshgate")}
        config = write_mesh(tmp, UPSTREAM_PORT, "bench-model")
        key = create_key(env, *EVERY_CONTROL)
        workers = []
        if args.meshgate_workers > 1:
            workers = ["--workers", str(args.meshgate_workers), "--redis-url", "redis://127.0.0.1:6379/0"]
        processes["meshgate"] = start_meshgate(env, MESHGATE_PORT, "--config", str(config), *workers)
        targets = {
            "upstream": (f"http://127.0.0.1:{UPSTREAM_PORT}/v1/chat/completions", {"Authorization": "Bearer unused"}),
            "meshgate": (f"http://127.0.0.1:{MESHGATE_PORT}/v1/chat/completions", {"Authorization": f"Bearer {key}"}),
        }
        if args.routed:
            routed_env = {**env, "MESHGATE_DATA_DIR": str(tmp / "meshgate-routed")}
            routed_config = tmp / "routed.yaml"
            base = f"http://127.0.0.1:{UPSTREAM_PORT}/v1"
            routed_config.write_text(
                ROUTED_MESH.format(
                    first=ROUTED_DEPLOYMENT.format(name="bench-a", base=base),
                    second=ROUTED_DEPLOYMENT.format(name="bench-b", base=base),
                )
            )
            routed_key = create_key(routed_env, *EVERY_CONTROL)
            processes["meshgate-routed"] = start_meshgate(
                routed_env, ROUTED_PORT, "--config", str(routed_config), *workers
            )
            targets["meshgate-routed"] = (
                f"http://127.0.0.1:{ROUTED_PORT}/v1/chat/completions",
                {"Authorization": f"Bearer {routed_key}"},
            )

        if args.guards:
            base = f"http://127.0.0.1:{UPSTREAM_PORT}/v1"
            for name, port in GUARDED_PORTS.items():
                guarded_env = {**env, "MESHGATE_DATA_DIR": str(tmp / name)}
                guarded_config = tmp / f"{name}.yaml"
                guarded_config.write_text(GUARDED_MESH[name].format(model=GUARDED_MODEL.format(base=base)))
                guarded_key = create_key(guarded_env, *EVERY_CONTROL)
                processes[name] = start_meshgate(guarded_env, port, "--config", str(guarded_config), *workers)
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                targets[name] = (url, {"Authorization": f"Bearer {guarded_key}"})

        # -- LiteLLM's proxy, one worker, same upstream ------------------------------------------
        if args.litellm:
            processes["litellm"] = start_litellm(args.litellm, tmp, env)
            targets["litellm"] = (
                f"http://127.0.0.1:{LITELLM_PORT}/v1/chat/completions",
                {"Authorization": "Bearer sk-litellm-bench"},
            )
            if args.routed:
                processes["litellm-routed"] = start_litellm(args.litellm, tmp, env, LITELLM_ROUTED_PORT, routed=True)
                targets["litellm-routed"] = (
                    f"http://127.0.0.1:{LITELLM_ROUTED_PORT}/v1/chat/completions",
                    {"Authorization": "Bearer sk-litellm-bench"},
                )

        # -- Portkey's gateway, one Node process, same upstream -------------------------------------
        if args.portkey:
            processes["portkey"] = start_portkey(args.portkey)
            targets["portkey"] = (f"http://127.0.0.1:{PORTKEY_PORT}/v1/chat/completions", PORTKEY_HEADERS)

        versions = {"python": platform.python_version(), "meshgate": package_version(sys.executable, "meshgate")}
        if args.litellm:
            versions["litellm"] = package_version(str(Path(args.litellm).with_name("python")), "litellm")
        if args.portkey:
            versions.update(portkey_versions(args.portkey))
        versions["nginx"] = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True).stderr.strip()
        results = Results(
            date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            machine=f"{os.cpu_count()} cores, {platform.machine()}, {platform.platform()}",
            versions=versions,
        )
        scripts = {}
        for name, (_, headers) in targets.items():
            scripts[name] = tmp / f"{name}.lua"
            scripts[name].write_text(wrk_script(body_json, headers))
        unique = {name for name in targets if name in ("meshgate-routed", "litellm-routed")}
        connections = [int(c) for c in args.connections.split(",")]
        for round_index in range(args.rounds):
            for count in connections:
                for name, (url, _) in targets.items():
                    if name in unique:
                        # wrk's counter starts at 1 in every run: a tag per run keeps every prompt
                        # new (a miss), never one an earlier run stored (a hit).
                        tag = f"r{round_index}c{count}"
                        scripts[name].write_text(tagged(unique_wrk_script(targets[name][1]), tag))
                    rps, p50, p99, errors = wrk(url, scripts[name], count, args.duration)
                    results.runs.append(Run(name, count, rps, p50, p99, errors))
                    print(
                        f"round {round_index + 1} c={count:<4} {name:<9} {rps:>10.0f} req/s  "
                        f"p50 {p50:.2f} ms  p99 {p99:.2f} ms  errors {errors}",
                        flush=True,
                    )
        for name, process in processes.items():
            results.peak_rss_mb[name] = peak_rss_mb(process.pid)
        print(table(results))
        output = args.output or HERE / "results" / f"gateway-{time.strftime('%Y%m%d-%H%M%S')}.json"
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(asdict(results), indent=2))
        print(f"raw figures: {output}")
    finally:
        stop_all(processes.values())
        shutil.rmtree(tmp, ignore_errors=True)


def table(results: Results) -> str:
    """Medians over rounds; added latency against the upstream alone; meshgate's req/s against each peer that ran."""
    medians: dict[tuple[str, int], tuple[float, float, float]] = {}
    for key in {(r.target, r.connections) for r in results.runs}:
        runs = [r for r in results.runs if (r.target, r.connections) == key]
        medians[key] = (
            statistics.median(r.rps for r in runs),
            statistics.median(r.p50_ms for r in runs),
            statistics.median(r.p99_ms for r in runs),
        )
    peers = [peer for peer in PEERS if any(r.target == peer for r in results.runs)]
    columns = ["target", "connections", "req/s", "p50 ms", "p99 ms", "p50 added ms", "p99 added ms"]
    columns += [f"meshgate vs {PEERS[peer]}" for peer in peers]
    variants = any(r.target.startswith("meshgate-") for r in results.runs)
    if variants:
        columns.append("of plain meshgate")
    alike = any(r.target in ALIKE.values() and r.target != "litellm" for r in results.runs)
    if alike:
        columns.append("meshgate vs LiteLLM configured alike")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for (target, count), (rps, p50, p99) in sorted(medians.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        base = medians.get(("upstream", count))
        added = [f"{p50 - base[1]:.2f}", f"{p99 - base[2]:.2f}"] if base and target != "upstream" else ["", ""]
        ratios = [ratio(medians, target, peer, count) for peer in peers]
        cells = [target, str(count), f"{rps:,.0f}", f"{p50:.2f}", f"{p99:.2f}", *added, *ratios]
        if variants:
            plain = medians.get(("meshgate", count))
            cells.append(f"{rps / plain[0]:.2f}" if plain and target.startswith("meshgate-") else "")
        if alike:
            cells.append(ratio(medians, target, ALIKE.get(target, ""), count))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Peak RSS (MB): " + ", ".join(f"{k} {v}" for k, v in results.peak_rss_mb.items()))
    return "\n".join(lines)


def ratio(medians: dict[tuple[str, int], tuple[float, float, float]], target: str, peer: str, count: int) -> str:
    """meshgate's req/s over the peer's, on meshgate's row only."""
    theirs = medians.get((peer, count))
    return f"{medians[(target, count)][0] / theirs[0]:.1f}x" if theirs and target.startswith("meshgate") else ""


if __name__ == "__main__":
    main()
