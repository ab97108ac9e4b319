"""A short run of the benchmark harness, so that bench/ keeps working between full runs.

It asserts what a shared, noisy machine cannot blur: no errors, no lost chunk, every stream
completed, and throughput ratios with generous bounds. Never an absolute time. The tools come
from Debian (nginx-light, wrk, golang-go); without them the tests skip, unless
MESHGATE_BENCH_SMOKE=required (set by .ci/run, which installs them) turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[1] / "bench"


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]
    if not missing:
        return
    message = f"{', '.join(missing)} missing: apt-get install nginx-light wrk golang-go"
    if os.environ.get("MESHGATE_BENCH_SMOKE") == "required":
        pytest.fail(message)
    pytest.skip(message)


def run_bench(script: str, output: Path, *args: str) -> Any:
    subprocess.run(
        [sys.executable, str(BENCH / script), "--output", str(output), *args], check=True, timeout=600, cwd=BENCH
    )
    return json.loads(output.read_text())


def test_gateway_benchmark_smoke(tmp_path: Path) -> None:
    need("nginx", "wrk")
    results = run_bench("run.py", tmp_path / "gateway.json", "--duration", "2", "--rounds", "1", "--connections", "8")
    runs = {run["target"]: run for run in results["runs"]}
    assert set(runs) == {"upstream", "meshgate"}
    assert runs["meshgate"]["errors"] == 0
    # nginx returning a constant is the ceiling; a gateway doing real work per call is far below it,
    # but not by more than this (measured: about 1/40; the bound leaves room for a loaded machine).
    assert runs["meshgate"]["rps"] > runs["upstream"]["rps"] / 1000
    assert results["peak_rss_mb"]["meshgate"] > 0


def test_streaming_benchmark_smoke(tmp_path: Path) -> None:
    need("go")
    results = run_bench(
        "streaming.py", tmp_path / "streaming.json", "--streams", "50", "--chunks", "10", "--ramp", "0.2"
    )
    by_target = {run["target"]: run for run in results["runs"]}
    for target in ("upstream", "meshgate"):
        run = by_target[target]
        assert run["errors"] == 0, run["first_errors"]
        assert run["completed"] == 50
        assert run["lost"] == 0
        assert run["chunks"] == 50 * 10
        assert run["max_concurrent"] > 1


def test_soak_benchmark_smoke(tmp_path: Path) -> None:
    need("nginx", "wrk")
    results = run_bench("soak.py", tmp_path / "soak.json", "--requests", "2000")
    assert results["errors"] == 0
    assert results["requests"] >= 1000  # at least 10 s of load: far more on any machine that runs it
    assert results["rss_start_mb"] > 0 and results["rss_end_mb"] > 0


def test_failover_benchmark_smoke(tmp_path: Path) -> None:
    need("nginx")
    # LiteLLM runs too when `litellm` is on PATH (like run.py's peers); only meshgate's side is asserted.
    results = run_bench("failover.py", tmp_path / "failover.json", "--smoke")
    phases = {(p["gateway"], p["phase"]): p for p in results["phases"]}
    for phase in ("steady", "killed", "restarted"):
        mine = phases[("meshgate", phase)]
        assert mine["calls"] > 0
        assert mine["errors"] == 0, mine["first_errors"]
    assert set(phases[("meshgate", "steady")]["served"]) == {"up-a", "up-b"}
    killed = phases[("meshgate", "killed")]["served"]
    # A was down: only a call still in flight when it came back (4 at most, --smoke's concurrency) can name it.
    assert killed["up-b"] > 0 and killed.get("up-a", 0) <= 4
    for (gateway, _), phase in phases.items():
        if gateway != "meshgate":
            assert phase["calls"] > 0


def test_local_quality_benchmark_smoke(tmp_path: Path) -> None:
    data = BENCH.parents[1] / "shared" / "data" / "xquad-en" / "xquad.en.json"
    if not data.is_file():
        pytest.skip(f"{data} missing (XQuAD-en, github.com/deepmind/xquad)")
    results = run_bench("local_quality.py", tmp_path / "quality.json", "--limit", "2", "--port", "18191")
    summary = results["summary"]
    assert summary["questions"] == 2
    assert summary["failures"] == 0, [r["error"] for r in results["results"]]
    assert 0 <= summary["f1"] <= 1 and 0 <= summary["em"] <= summary["f1"]
    for answer in results["results"]:
        assert answer["prompt_tokens"] > 0 and answer["completion_tokens"] > 0
