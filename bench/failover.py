"""Failover under load: two upstreams behind one route, one killed mid-run and restarted.

    python bench/failover.py --duration 20 --concurrency 16 --litellm /tmp/litellm-venv/bin/litellm

Two upstreams (A and B, each its own single process: nginx with `master_process off`, or the
Python fake with `--upstream fake`) serve the same model behind one route of meshgate, and behind
one model group of LiteLLM's proxy (the same two deployments, 50/50, retries, a cooldown after 3
failures for 5 s). A closed-loop client (aiohttp, `--concurrency` calls in flight, non-streaming
chat completions) runs three phases against each gateway in turn (one at a time: the machine has 2
cores): `steady` (both up), `killed` (A got SIGKILL at the start of the phase), `restarted` (A
started again on the same port at the start of the phase). Each call counts in the phase in which
it started. Per phase: calls, client-visible errors (non-2xx or transport error), p50, p99 and max
latency, and which upstream served (meshgate's `x-meshgate-deployment`; LiteLLM's
`x-litellm-model-id`). Prints a markdown table and writes the raw figures to
bench/results/failover-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from harness import (
    NGINX_CONF,
    create_key,
    ensure_free,
    nginx_binary,
    nginx_http_common,
    start_meshgate,
    stop_all,
    wait_http,
)
from run import COMPLETION, package_version

HERE = Path(__file__).resolve().parent
PORT_A, PORT_B, MESHGATE_PORT, LITELLM_PORT = 18280, 18281, 18282, 18283
UPSTREAM_KEY = "sk-upstream"
LITELLM_KEY = "sk-litellm-failover"
PHASES = ("steady", "killed", "restarted")
WARMUP = 2.0
BODY = {"model": "chat", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
#: meshgate's route: the form of docs/routing.md, breaker as in the issue.
MESH_YAML = """models:
  - name: chat
    routing: weighted
    breaker: {{failures: 3, cooldown: 5s}}
    deployments:
      - {{name: up-a, provider: openai-compatible, model: echo, weight: 50,
          base_url: "http://127.0.0.1:{a}/v1", api_key: "${{FAILOVER_UPSTREAM_KEY}}"}}
      - {{name: up-b, provider: openai-compatible, model: echo, weight: 50,
          base_url: "http://127.0.0.1:{b}/v1", api_key: "${{FAILOVER_UPSTREAM_KEY}}"}}
"""
#: LiteLLM's nearest equivalent: one model group of two deployments (simple-shuffle by weight),
#: retries within the group (each retry picks again, skipping the deployment that failed), a
#: deployment cooled down after 3 failures (LiteLLM counts them per minute) for 5 s. meshgate tries
#: each deployment at most once (2 attempts); LiteLLM gets 2 retries (3 attempts), the more lenient.
#: LiteLLM's `fallbacks` move a call to *another* model group; with one group they have nothing to
#: add, the retries are its failover between deployments.
LITELLM_YAML = """model_list:
  - model_name: chat
    litellm_params: {{model: openai/echo, api_base: "http://127.0.0.1:{a}/v1", api_key: {key}, weight: 50}}
    model_info: {{id: up-a}}
  - model_name: chat
    litellm_params: {{model: openai/echo, api_base: "http://127.0.0.1:{b}/v1", api_key: {key}, weight: 50}}
    model_info: {{id: up-b}}
router_settings:
  routing_strategy: simple-shuffle
  num_retries: 2
  retry_after: 0
  allowed_fails: 3
  cooldown_time: 5
  timeout: 30
general_settings:
  master_key: {master}
"""


@dataclass
class Phase:
    gateway: str
    phase: str
    seconds: float
    calls: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    served: dict[str, int]
    first_errors: list[str] = field(default_factory=list)


@dataclass
class Events:
    gateway: str
    #: From the restart command to A's port answering again.
    a_listening_after_s: float | None
    #: From the restart command to the first call A served again (None: not within the phase).
    a_serving_after_s: float | None
    #: The slowest call that started in the first second after the kill.
    slowest_after_kill_ms: float
    #: Calls that started while A was down and were served by A: started late in `killed`, answered after
    #: the restart. [seconds after the kill, ms] each.
    a_named_while_down: list[list[float]] = field(default_factory=list)


@dataclass
class Results:
    date: str
    machine: str
    versions: dict[str, str]
    settings: dict[str, Any]
    phases: list[Phase] = field(default_factory=list)
    events: list[Events] = field(default_factory=list)


@dataclass
class Call:
    phase: str
    started: float
    ms: float
    ok: bool
    served: str
    error: str = ""


# -- the upstreams ---------------------------------------------------------------------------------


class Upstream:
    """One upstream in a process of its own, so that SIGKILL takes all of it at once."""

    def __init__(self, kind: str, port: int, tmp: Path) -> None:
        self.kind, self.port, self.tmp = kind, port, tmp
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.kind == "nginx":
            self.tmp.mkdir(parents=True, exist_ok=True)
            conf = "master_process off;\n" + NGINX_CONF.format(
                tmp=self.tmp, port=self.port, body=json.dumps(COMPLETION), http_common=nginx_http_common(self.tmp)
            )
            (self.tmp / "nginx.conf").write_text(conf)
            command = [nginx_binary(), "-c", str(self.tmp / "nginx.conf"), "-g", "daemon off;"]
        else:
            command = [sys.executable, "-m", "meshgate.testing.fake_openai", "--port", str(self.port)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def wait_listening(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.listening():
            if time.monotonic() > deadline:
                raise SystemExit(f"upstream on port {self.port} did not come up in {timeout}s")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


# -- the gateways ----------------------------------------------------------------------------------


def start_meshgate_route(tmp: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    config = tmp / "mesh.yaml"
    config.write_text(MESH_YAML.format(a=PORT_A, b=PORT_B))
    env = {**os.environ, "FAILOVER_UPSTREAM_KEY": UPSTREAM_KEY, "MESHGATE_DATA_DIR": str(tmp / "meshgate")}
    key = create_key(env)
    process = start_meshgate(env, MESHGATE_PORT, "--config", str(config))
    return process, {"Authorization": f"Bearer {key}"}


def start_litellm(command: str, tmp: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    config = tmp / "litellm.yaml"
    config.write_text(LITELLM_YAML.format(a=PORT_A, b=PORT_B, key=UPSTREAM_KEY, master=LITELLM_KEY))
    process = subprocess.Popen(
        [command, "--config", str(config), "--port", str(LITELLM_PORT), "--num_workers", "1"],
        env={**os.environ, "LITELLM_LOG": "ERROR"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{LITELLM_PORT}/health/liveliness", timeout=300)
    return process, {"Authorization": f"Bearer {LITELLM_KEY}"}


def stop(process: subprocess.Popen[bytes]) -> None:
    stop_all([process])


def served_by(gateway: str, headers: Any) -> str:
    if gateway == "meshgate":
        return headers.get("x-meshgate-deployment", "?")
    return headers.get("x-litellm-model-id", "?")


# -- the load --------------------------------------------------------------------------------------


async def load(
    gateway: str, url: str, headers: dict[str, str], upstream_a: Upstream, duration: float, concurrency: int
) -> tuple[list[Call], dict[str, float | None]]:
    """Closed loop: `concurrency` workers, each sending the next call when the last one ended."""
    calls: list[Call] = []
    state = {"phase": "warmup", "stop": False}
    marks: dict[str, float | None] = {"kill": None, "restart": None, "listening": None}
    body = json.dumps(BODY).encode()
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers={**headers, "Content-Type": "application/json"}
    ) as session:

        async def worker() -> None:
            while not state["stop"]:
                phase, began = str(state["phase"]), time.monotonic()
                try:
                    async with session.post(url, data=body) as response:
                        text = await response.read()
                        ok = response.status == 200
                        error = "" if ok else f"HTTP {response.status}: {text[:300].decode('utf-8', 'replace')}"
                        retries = response.headers.get("x-litellm-attempted-retries")
                        if error and retries is not None:
                            error += f" [x-litellm-attempted-retries: {retries}]"
                        who = served_by(gateway, response.headers)
                except Exception as exc:  # a transport error is a client-visible error too
                    ok, error, who = False, f"{type(exc).__name__}: {exc}"[:300], "?"
                calls.append(Call(phase, began, (time.monotonic() - began) * 1000, ok, who, error))

        async def controller() -> None:
            await asyncio.sleep(WARMUP)
            state["phase"] = "steady"
            await asyncio.sleep(duration)
            state["phase"] = "killed"
            marks["kill"] = time.monotonic()
            upstream_a.kill()
            await asyncio.sleep(duration)
            state["phase"] = "restarted"
            marks["restart"] = time.monotonic()
            upstream_a.start()
            for _ in range(3000):  # 30 s at most
                if upstream_a.listening():
                    break
                await asyncio.sleep(0.01)
            if upstream_a.listening():
                marks["listening"] = time.monotonic()
            await asyncio.sleep(duration - (time.monotonic() - marks["restart"]))
            state["stop"] = True

        await asyncio.gather(controller(), *(worker() for _ in range(concurrency)))
    return calls, marks


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def summarize(gateway: str, calls: list[Call], marks: dict[str, float | None], duration: float) -> list[Phase]:
    phases = []
    for name in PHASES:
        mine = [c for c in calls if c.phase == name]
        latencies = [c.ms for c in mine]
        served: dict[str, int] = {}
        for call in mine:
            if call.ok:
                served[call.served] = served.get(call.served, 0) + 1
        errors = [c.error for c in mine if not c.ok]
        phases.append(
            Phase(
                gateway=gateway,
                phase=name,
                seconds=duration,
                calls=len(mine),
                errors=len(errors),
                rps=round(len(mine) / duration, 1),
                p50_ms=round(percentile(latencies, 0.50), 2),
                p99_ms=round(percentile(latencies, 0.99), 2),
                max_ms=round(max(latencies, default=0.0), 2),
                served=dict(sorted(served.items())),
                first_errors=list(dict.fromkeys(errors))[:5],
            )
        )
    return phases


def events(gateway: str, calls: list[Call], marks: dict[str, float | None]) -> Events:
    kill, restart, listening = marks["kill"], marks["restart"], marks["listening"]
    assert kill is not None and restart is not None
    after_kill = [c.ms for c in calls if kill <= c.started < kill + 1.0]
    back = [c.started + c.ms / 1000 for c in calls if c.ok and c.served == "up-a" and c.started >= restart]
    return Events(
        gateway=gateway,
        a_listening_after_s=round(listening - restart, 3) if listening is not None else None,
        a_serving_after_s=round(min(back) - restart, 3) if back else None,
        slowest_after_kill_ms=round(max(after_kill, default=0.0), 2),
        a_named_while_down=[
            [round(c.started - kill, 4), round(c.ms, 2)]
            for c in calls
            if c.ok and c.served == "up-a" and kill <= c.started < restart
        ],
    )


def run_gateway(
    gateway: str, command: str, upstream_kind: str, tmp: Path, duration: float, concurrency: int
) -> tuple[list[Phase], Events]:
    """Fresh upstreams and a fresh gateway; the three phases; everything stopped again."""
    upstreams = [
        Upstream(upstream_kind, port, tmp / f"{gateway}-{name}") for name, port in (("a", PORT_A), ("b", PORT_B))
    ]
    process = None
    try:
        for upstream in upstreams:
            upstream.start()
        for upstream in upstreams:
            upstream.wait_listening()
        if gateway == "meshgate":
            process, headers = start_meshgate_route(tmp)
            url = f"http://127.0.0.1:{MESHGATE_PORT}/v1/chat/completions"
        else:
            process, headers = start_litellm(command, tmp)
            url = f"http://127.0.0.1:{LITELLM_PORT}/v1/chat/completions"
        calls, marks = asyncio.run(load(gateway, url, headers, upstreams[0], duration, concurrency))
    finally:
        if process is not None:
            stop(process)
        for upstream in upstreams:
            upstream.stop()
    phases = summarize(gateway, calls, marks, duration)
    for phase in phases:
        shares = ", ".join(f"{k} {v}" for k, v in phase.served.items())
        print(
            f"{gateway:<9} {phase.phase:<10} calls {phase.calls:>6}  errors {phase.errors:>4}  "
            f"p50 {phase.p50_ms:.1f} ms  p99 {phase.p99_ms:.1f} ms  max {phase.max_ms:.1f} ms  [{shares}]",
            flush=True,
        )
        for error in phase.first_errors:
            print(f"    {error}", flush=True)
    return phases, events(gateway, calls, marks)


def table(results: Results) -> str:
    columns = ["gateway", "phase", "calls", "req/s", "errors", "p50 ms", "p99 ms", "max ms", "served A / B"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for p in results.phases:
        split = f"{p.served.get('up-a', 0):,} / {p.served.get('up-b', 0):,}"
        cells = [p.gateway, p.phase, f"{p.calls:,}", f"{p.rps:,.0f}", str(p.errors)]
        cells += [f"{p.p50_ms:.2f}", f"{p.p99_ms:.2f}", f"{p.max_ms:.2f}", split]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for e in results.events:
        serving = f"{e.a_serving_after_s:.2f} s" if e.a_serving_after_s is not None else "not within the phase"
        lines.append(
            f"{e.gateway}: slowest call started in the second after the kill {e.slowest_after_kill_ms:.1f} ms; "
            f"A listening {e.a_listening_after_s} s after its restart, serving again after {serving}."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=15, help="seconds per phase")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight")
    parser.add_argument("--litellm", default=shutil.which("litellm"), help="the litellm command (omit to skip)")
    parser.add_argument(
        "--upstream", choices=("nginx", "fake"), default=None, help="default: nginx when installed, else the fake"
    )
    parser.add_argument("--smoke", action="store_true", help="a short run for CI: 3 s phases, 4 calls in flight")
    parser.add_argument("--output", type=Path, default=None, help="JSON results file")
    args = parser.parse_args()
    if args.smoke:
        args.duration, args.concurrency = 3.0, 4
    upstream_kind = args.upstream
    if upstream_kind is None:
        upstream_kind = "nginx" if shutil.which("nginx") or Path("/usr/sbin/nginx").exists() else "fake"
    ensure_free(PORT_A, PORT_B, MESHGATE_PORT, LITELLM_PORT)

    versions = {"python": platform.python_version(), "meshgate": package_version(sys.executable, "meshgate")}
    if args.litellm:
        versions["litellm"] = package_version(str(Path(args.litellm).with_name("python")), "litellm")
    if upstream_kind == "nginx":
        versions["nginx"] = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True).stderr.strip()
    results = Results(
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=f"{os.cpu_count()} cores, {platform.machine()}, {platform.platform()}",
        versions=versions,
        settings={
            "duration_per_phase_s": args.duration,
            "concurrency": args.concurrency,
            "upstream": upstream_kind,
            "meshgate_route": MESH_YAML.format(a=PORT_A, b=PORT_B),
            "litellm_config": LITELLM_YAML.format(a=PORT_A, b=PORT_B, key="<key>", master="<key>")
            if args.litellm
            else None,
        },
    )
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-failover-"))
    try:
        gateways = ["meshgate"] + (["litellm"] if args.litellm else [])
        for gateway in gateways:
            phases, happened = run_gateway(gateway, args.litellm, upstream_kind, tmp, args.duration, args.concurrency)
            results.phases += phases
            results.events.append(happened)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(table(results))
    output = args.output or HERE / "results" / f"failover-{time.strftime('%Y%m%d-%H%M%S')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(asdict(results), indent=2))
    print(f"raw figures: {output}")


if __name__ == "__main__":
    main()
