"""Soak: many requests through meshgate with every control on; memory at start and end, errors.

    python bench/soak.py --requests 200000

The same fixed nginx upstream and request as bench/run.py. After a warm-up of 10,000 requests
(caches, pools and counters reach their working size), the resident memory of the meshgate
process is read, then wrk runs at 32 connections until at least `--requests` more have been
served, and the memory is read again.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from harness import EVERY_CONTROL, create_key, ensure_free, start_meshgate, start_nginx, write_mesh
from run import BODY, COMPLETION, MESHGATE_PORT, UPSTREAM_PORT, wrk_errors, wrk_script

HERE = Path(__file__).resolve().parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def wrk_requests(url: str, script: Path, seconds: int) -> tuple[int, int, float]:
    out = subprocess.run(
        ["wrk", "-t", "2", "-c", "32", "-d", f"{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    served = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = wrk_errors(out)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return served, errors, rps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--output", type=Path, default=None, help="JSON results file")
    args = parser.parse_args()
    ensure_free(UPSTREAM_PORT, MESHGATE_PORT)
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-soak-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(start_nginx(tmp, UPSTREAM_PORT, COMPLETION))
        env = {**os.environ, "BENCH_UPSTREAM_KEY": "sk-upstream", "MESHGATE_DATA_DIR": str(tmp / "meshgate")}
        key = create_key(env, *EVERY_CONTROL)
        config = write_mesh(tmp, UPSTREAM_PORT, "bench-model")
        server = start_meshgate(env, MESHGATE_PORT, "--config", str(config))
        processes.append(server)
        script = tmp / "soak.lua"
        script.write_text(wrk_script(json.dumps(BODY), {"Authorization": f"Bearer {key}"}))
        url = f"http://127.0.0.1:{MESHGATE_PORT}/v1/chat/completions"
        warm, warm_errors, rps = wrk_requests(url, script, max(3, int(10_000 / 1500)))
        start_rss = rss_mb(server.pid)
        served, errors, elapsed = 0, 0, 0.0
        while served < args.requests:  # the warm-up's rate only estimates how long that takes
            seconds = max(10, int((args.requests - served) / max(rps, 1) * 1.1))
            more, more_errors, rps = wrk_requests(url, script, seconds)
            served, errors, elapsed = served + more, errors + more_errors, elapsed + seconds
        rps = served / elapsed
        end_rss = rss_mb(server.pid)
        growth = (end_rss - start_rss) / start_rss
        print(
            f"| warm-up requests | soak requests | req/s | errors | RSS start MB | RSS end MB | growth |\n"
            f"|---|---|---|---|---|---|---|\n"
            f"| {warm:,} | {served:,} | {rps:,.0f} | {errors + warm_errors} | {start_rss:.1f} | {end_rss:.1f} | "
            f"{growth:+.1%} |"
        )
        output = args.output or HERE / "results" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
        output.parent.mkdir(parents=True, exist_ok=True)
        figures = {"warmup_requests": warm, "requests": served, "rps": rps, "errors": errors + warm_errors}
        output.write_text(json.dumps({**figures, "rss_start_mb": start_rss, "rss_end_mb": end_rss, "growth": growth}))
        print(f"raw figures: {output}")
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
