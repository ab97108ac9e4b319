"""Many concurrent streams through meshgate: chunks delivered, stalls, time to first token.

    python bench/streaming.py --streams 100,1000

A paced upstream (meshgate's fake OpenAI server, `paced:20:20`: 20 chunks 20 ms apart) serves
N concurrent streams, once directly and once through `meshgate serve` (auth, rate limit, budget,
usage and audit on). For each stream it counts the content chunks (20 expected), the gaps between
consecutive chunks (a stall is a gap over twice the pacing, 40 ms) and the time to the first
chunk. Upstream, gateway and client share this machine's cores, so a stall may be any of the three;
the direct run shows what the upstream and client alone cause.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from harness import EVERY_CONTROL, create_key, start_meshgate, write_mesh

UPSTREAM_PORT, MESHGATE_PORT = 18085, 18086
PACING_MS, CHUNKS = 20, 20
STALL_MS = 2 * PACING_MS


@dataclass
class StreamResult:
    chunks: int
    ttft_ms: float
    max_gap_ms: float


async def one_stream(session: aiohttp.ClientSession, url: str, model: str, key: str) -> StreamResult:
    body = {"model": model, "messages": [{"role": "user", "content": "go"}], "stream": True}
    started = time.perf_counter()
    arrivals: list[float] = []
    async with session.post(url, json=body, headers={"authorization": f"Bearer {key}"}) as response:
        if response.status != 200:
            return StreamResult(0, float("nan"), float("nan"))
        async for line in response.content:
            if line.startswith(b"data: {") and b'"content": "tok' in line.replace(b'":"', b'": "'):
                arrivals.append(time.perf_counter())
    if not arrivals:
        return StreamResult(0, float("nan"), float("nan"))
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(arrivals)]
    return StreamResult(len(arrivals), (arrivals[0] - started) * 1000, max(gaps, default=0.0))


async def run(url: str, model: str, key: str, streams: int) -> list[StreamResult]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        return await asyncio.gather(*(one_stream(session, url, model, key) for _ in range(streams)))


def summary(name: str, streams: int, results: list[StreamResult]) -> dict[str, float | int | str]:
    ttfts = sorted(r.ttft_ms for r in results if r.chunks)
    return {
        "target": name,
        "streams": streams,
        "chunks": sum(r.chunks for r in results),
        "expected": streams * CHUNKS,
        "stalled_streams": sum(1 for r in results if r.chunks and r.max_gap_ms > STALL_MS),
        "max_gap_ms": round(max((r.max_gap_ms for r in results if r.chunks), default=0.0), 1),
        "ttft_p50_ms": round(statistics.median(ttfts), 1) if ttfts else float("nan"),
        "ttft_p99_ms": round(ttfts[int(len(ttfts) * 0.99) - 1], 1) if ttfts else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="100,1000")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-stream-bench-"))
    env = {**os.environ, "MESHGATE_DATA_DIR": str(tmp), "BENCH_UPSTREAM_KEY": "sk-unused"}
    upstream = subprocess.Popen(
        [sys.executable, "-m", "meshgate.testing.fake_openai", "--port", str(UPSTREAM_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    config = write_mesh(tmp, UPSTREAM_PORT, f"paced:{PACING_MS}:{CHUNKS}", name="paced")
    key = create_key(env, *EVERY_CONTROL)
    processes = [upstream]
    try:
        processes.append(start_meshgate(env, MESHGATE_PORT, "--config", str(config)))
        rows = []
        for streams in (int(s) for s in args.streams.split(",")):
            direct = asyncio.run(
                run(
                    f"http://127.0.0.1:{UPSTREAM_PORT}/v1/chat/completions",
                    f"paced:{PACING_MS}:{CHUNKS}",
                    "unused",
                    streams,
                )
            )
            rows.append(summary("upstream", streams, direct))
            through = asyncio.run(run(f"http://127.0.0.1:{MESHGATE_PORT}/v1/chat/completions", "paced", key, streams))
            rows.append(summary("meshgate", streams, through))
        columns = list(rows[0])
        print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
        for row in rows:
            print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(30)


if __name__ == "__main__":
    main()
