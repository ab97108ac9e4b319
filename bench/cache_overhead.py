"""What routing and the cache's miss path cost meshgate, in CPU time per request (issue 13 §5).

    python bench/cache_overhead.py --duration 8 --rounds 3 --connections 32 [--prefill 15000]

Throughput on a shared 2-core machine moves with whatever else runs; the CPU time the gateway
process spends per request moves far less. So this starts one nginx upstream (a fixed chat
completion) and one `meshgate serve` per variant, all with every control on (the key of
bench/run.py: auth, RPM/TPM limits, a daily budget, a priced model, usage and audit records), and
drives each in turn with wrk at a fixed concurrency, every request a new deterministic prompt
(`temperature: 0`, a counter in it: each one a cache miss and a store when the cache is on). The
gateway's CPU seconds (utime + stime of its process tree, every thread included: the SQLite
writer's too) are read before and after each run:

- **plain**: `bench` is one flat model, no cache;
- **route**: `bench` is a two-deployment weighted route (50/50, both to the same nginx), no cache;
- **route+memory**: the route, `cache: {mode: exact, backend: memory}`;
- **route+sqlite**: the route, `cache: {mode: exact}` with the default backend (SQLite in the data dir).

Every wrk run (warm-up, pre-fill, each round) sends prompts of its own (a tag per run before the
counter), so that no run repeats an earlier one's and hits: every measured request is a miss.
`--prefill N` first sends N such requests to every gateway (unmeasured), so that the cache's file
holds N entries before the first round (its write cost grows with the file: read a figure with
its size).

Variants run interleaved round by round; the table has the medians and each one's CPU per request
against plain's (1.00 = no overhead; the issue's bound is throughput within 10%, i.e. about 1.11).

CPU per request still moves when the machine is crowded (a gateway starved of CPU serves fewer
requests per turn of its event loop, so each costs more). `--py-spy .venv/bin/py-spy` adds a
measure that does not: py-spy samples the gateway during each run, and the share of its samples
spent in meshgate/cache and meshgate/routing code (not counting the deployment's own call inside
the route, which a flat model makes too) is what routing and the cache cost, as a fraction of
the process's work; `share / (1 - share)` is the overhead against the same gateway without them.
A thread that is runnable but waiting for a core counts as busy to py-spy, so on a crowded
machine the SQLite writer's share moves a lot; with `--py-spy` the table also has that thread's
own CPU time per request (from /proc, its id found with `py-spy dump`), which does not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from harness import (
    EVERY_CONTROL,
    create_key,
    ensure_free,
    process_tree,
    start_meshgate,
    start_nginx,
    stop_all,
    write_mesh,
)
from run import COMPLETION, ROUTED_DEPLOYMENT, ROUTED_MESH, tagged, unique_wrk_script

HERE = Path(__file__).resolve().parent
#: Ports of their own, so that this runs beside bench/run.py.
UPSTREAM_PORT = 18280
FIRST_GATEWAY_PORT = 18281
#: The cache block's backend line(s) per variant (None: no cache). route+sqlite is the default
#: (`persist: on-hit`); route+sqlite-always writes every entry, as the SQLite backend did before.
CACHE_BLOCKS = {
    "plain": None,
    "route": None,
    "route+memory": "backend: memory",
    "route+sqlite": "backend: auto",
    "route+sqlite-always": "backend: auto\n  persist: always",
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process and its descendants (every thread counted)."""
    total = 0
    for one in process_tree(pid):
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLOCK_TICKS


def writer_threads(py_spy: str, pid: int) -> list[int]:
    """The ids of the gateway's SQLite writer threads, from a py-spy dump (Python 3.11 does not
    name its threads for the OS, so /proc cannot tell them apart)."""
    dump = subprocess.run([py_spy, "dump", "-p", str(pid)], capture_output=True, text=True).stdout
    return [int(tid) for tid in re.findall(r'^Thread (\d+) .*"meshgate-cache-write', dump, re.MULTILINE)]


def thread_seconds(pid: int, tids: list[int]) -> float:
    """utime + stime of some threads of `pid`: their own CPU time, whatever else ran meanwhile."""
    total = 0
    for tid in tids:
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def mesh_for(variant: str, tmp: Path) -> Path:
    base = f"http://127.0.0.1:{UPSTREAM_PORT}/v1"
    if variant == "plain":
        folder = tmp / variant
        folder.mkdir()
        return write_mesh(folder, UPSTREAM_PORT, "bench-model")
    text = ROUTED_MESH.format(
        first=ROUTED_DEPLOYMENT.format(name="bench-a", base=base),
        second=ROUTED_DEPLOYMENT.format(name="bench-b", base=base),
    )
    backend = CACHE_BLOCKS[variant]
    if backend is None:
        text = text.split("models:", 1)[1]
        text = "models:" + text
    else:
        text = text.replace("  ttl: 1h\n", f"  ttl: 1h\n  {backend}\n")
    path = tmp / f"{variant.replace('+', '-')}.yaml"
    path.write_text(text)
    return path


def wrk_count(url: str, script: Path, connections: int, duration: int) -> tuple[int, float, float, int]:
    """Requests done, req/s, p99 ms and errors of one wrk run."""
    out = subprocess.run(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)", out, re.MULTILINE)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)] if p99 else 0.0
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors += sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    return done, rps, p99_ms, errors


def sampled_share(samples: Path) -> tuple[float, float]:
    """From py-spy's raw output: the share of busy samples in meshgate/cache and in meshgate/routing."""
    total = cache = routing = 0
    for line in samples.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        if frames[-1].startswith("_worker (concurrent/futures/thread.py") and "_WorkItem" not in stack:
            continue  # an idle pool thread, waiting for work
        n = int(count)
        total += n
        _, inside, rest = stack.partition("answer (meshgate/routing/router.py")
        if inside and ";" in rest:
            continue  # in the deployment's own call: what a flat model does too
        if "meshgate/cache/" in stack:
            cache += n
        elif "meshgate/routing/" in stack:
            routing += n
    return cache / max(total, 1), routing / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--variants", default=",".join(CACHE_BLOCKS), help=f"some of {', '.join(CACHE_BLOCKS)}")
    parser.add_argument("--output", type=Path, default=None, help="JSON results file")
    parser.add_argument("--py-spy", default="", help="py-spy's path: also sample where each gateway spends its time")
    parser.add_argument(
        "--no-sampling",
        action="store_true",
        help="with --py-spy, only find the SQLite writer thread (py-spy's sampling costs every thread CPU)",
    )
    parser.add_argument("--samples", type=Path, default=None, help="keep py-spy's raw samples in this folder")
    parser.add_argument(
        "--prefill", type=int, default=0, help="requests (new entries) sent to each gateway before the rounds"
    )
    parser.add_argument("--keep", action="store_true", help="leave the gateways up (print their pids) for a profiler")
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = set(variants) - set(CACHE_BLOCKS)
    if unknown:
        raise SystemExit(f"unknown variants: {', '.join(sorted(unknown))}")
    ports = {variant: FIRST_GATEWAY_PORT + i for i, variant in enumerate(variants)}
    ensure_free(UPSTREAM_PORT, *ports.values())

    tmp = Path(tempfile.mkdtemp(prefix="meshgate-cache-overhead-"))
    processes: dict[str, subprocess.Popen[bytes]] = {}
    runs: list[dict[str, object]] = []
    try:
        processes["upstream"] = start_nginx(tmp, UPSTREAM_PORT, COMPLETION)
        scripts: dict[str, str] = {}

        def script_file(variant: str, tag: str) -> Path:
            path = tmp / f"{variant.replace('+', '-')}-{tag}.lua"
            path.write_text(tagged(scripts[variant], tag))
            return path

        for variant in variants:
            env = {
                **os.environ,
                "BENCH_UPSTREAM_KEY": "sk-upstream",
                "MESHGATE_DATA_DIR": str(tmp / f"data-{variant.replace('+', '-')}"),
            }
            key = create_key(env, *EVERY_CONTROL)
            processes[variant] = start_meshgate(env, ports[variant], "--config", str(mesh_for(variant, tmp)))
            scripts[variant] = unique_wrk_script({"Authorization": f"Bearer {key}"})
            # Warm up (imports, connections, the SQLite file): not measured.
            wrk_count(f"http://127.0.0.1:{ports[variant]}/v1/chat/completions", script_file(variant, "w"), 4, 1)
        for variant in variants if args.prefill else ():
            sent, part = 0, 0
            while sent < args.prefill:
                part += 1
                url = f"http://127.0.0.1:{ports[variant]}/v1/chat/completions"
                sent += wrk_count(url, script_file(variant, f"p{part}"), args.connections, 3)[0]
            print(f"pre-filled {variant}: {sent} requests", flush=True)
        writers = {v: writer_threads(args.py_spy, processes[v].pid) if args.py_spy else [] for v in variants}
        if args.keep:
            print(json.dumps({v: processes[v].pid for v in variants}), flush=True)
        for round_index in range(args.rounds):
            for variant in variants:
                pid = processes[variant].pid
                before, writer_before = cpu_seconds(pid), thread_seconds(pid, writers[variant])
                sampler = None
                if args.py_spy and not args.no_sampling:
                    samples = (args.samples or tmp) / f"samples-{variant.replace('+', '-')}-{round_index}.txt"
                    samples.parent.mkdir(parents=True, exist_ok=True)
                    command = [args.py_spy, "record", "-p", str(pid), "-d", str(max(1, args.duration - 2))]
                    command += ["-r", "250", "--format", "raw", "--threads", "-o", str(samples)]
                    sampler = subprocess.Popen(
                        command,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                done, rps, p99, errors = wrk_count(
                    f"http://127.0.0.1:{ports[variant]}/v1/chat/completions",
                    script_file(variant, f"r{round_index + 1}"),
                    args.connections,
                    args.duration,
                )
                time.sleep(0.3)  # the last batch of stores is written (50 ms batches) and counted
                used = cpu_seconds(pid) - before
                writer_us = (thread_seconds(pid, writers[variant]) - writer_before) / max(done, 1) * 1e6
                cpu_us = used / max(done, 1) * 1e6
                run: dict[str, object] = {"variant": variant, "round": round_index + 1, "requests": done, "rps": rps}
                run |= {"p99_ms": p99, "cpu_us_per_request": round(cpu_us, 1), "errors": errors}
                if writers[variant]:
                    run["writer_cpu_us_per_request"] = round(writer_us, 1)
                sampled = ""
                if sampler is not None:
                    sampler.wait(30)
                    cache_share, routing_share = sampled_share(samples)
                    run |= {"cache_share": round(cache_share, 4), "routing_share": round(routing_share, 4)}
                    sampled = f"  sampled: cache {cache_share:.1%} routing {routing_share:.1%}"
                if writers[variant]:
                    sampled += f"  SQLite writer {writer_us:.1f} CPU-us/req"
                runs.append(run)
                print(
                    f"round {round_index + 1} {variant:<13} {done:>7} req  {rps:>7.0f} req/s  p99 {p99:7.2f} ms  "
                    f"{cpu_us:7.1f} CPU-us/req  errors {errors}{sampled}",
                    flush=True,
                )
        print(table(runs, variants))
        output = args.output or HERE / "results" / f"cache-overhead-{time.strftime('%Y%m%d-%H%M%S')}.json"
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(
            json.dumps({"connections": args.connections, "prefill": args.prefill, "runs": runs}, indent=2)
        )
        print(f"raw figures: {output}")
        if args.keep:
            input("gateways up; press Enter to stop them ")
    finally:
        stop_all(processes.values())
        shutil.rmtree(tmp, ignore_errors=True)


def table(runs: list[dict[str, object]], variants: list[str]) -> str:
    """Medians per variant, and CPU per request and req/s against plain's."""
    medians: dict[str, tuple[float, float, float]] = {}
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant]
        medians[variant] = (
            statistics.median(float(r["cpu_us_per_request"]) for r in mine),  # type: ignore[arg-type]
            statistics.median(float(r["rps"]) for r in mine),  # type: ignore[arg-type]
            statistics.median(float(r["p99_ms"]) for r in mine),  # type: ignore[arg-type]
        )
    plain = medians.get("plain")
    sampled = any("cache_share" in r for r in runs)
    writer = any("writer_cpu_us_per_request" in r for r in runs)
    lines = [
        "| variant | CPU-us/req | vs plain | req/s | req/s vs plain | p99 ms |"
        + (" sampled cache + routing |" * sampled)
        + (" SQLite writer CPU-us/req |" * writer),
        "|---|---|---|---|---|---|" + "---|" * sampled + "---|" * writer,
    ]
    for variant, (cpu, rps, p99) in medians.items():
        cpu_ratio = f"{cpu / plain[0]:.2f}" if plain else ""
        rps_ratio = f"{rps / plain[1]:.2f}" if plain else ""
        line = f"| {variant} | {cpu:.0f} | {cpu_ratio} | {rps:,.0f} | {rps_ratio} | {p99:.1f} |"
        if sampled:
            mine = [r for r in runs if r["variant"] == variant]
            share = statistics.mean(float(r["cache_share"]) + float(r["routing_share"]) for r in mine)  # type: ignore[arg-type]
            line += f" {share:.1%} |"
        if writer:
            mine = [r for r in runs if r["variant"] == variant and "writer_cpu_us_per_request" in r]
            line += f" {statistics.median(float(r['writer_cpu_us_per_request']) for r in mine):.1f} |" if mine else " |"  # type: ignore[arg-type]
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
