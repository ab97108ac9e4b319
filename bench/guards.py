"""Guards: what each detector costs per call, and every guard figure in one place.

    python bench/guards.py              # latency here, then the detector benches, one after another
    python bench/guards.py --only cost  # latency only

Cost: the guards' added time per call for a prompt of about 1,000 tokens (4,000 characters of
ordinary prose with an email, a phone number and a key in it), measured through the engine the
pipeline step uses (`Guards.scan_sync` over the request's texts, rules merged as for a call):
- patterns: `pii` without NER, `secrets`, a custom regex (what a cheap egress guard runs);
- full: `pii` with spaCy's NER, `secrets`, `injection`, `moderation` (the issue's cloud-egress input).
p50 and p95 over --runs scans after a warm-up (models loaded). The gateway's throughput with
cloud-egress on, as a ratio of the plain gateway, is `python bench/run.py --guards`.

The detector benches (figures each: see their docstrings): bench/guards_pii.py (PII precision,
recall and F2 against Presidio), bench/guards_secrets.py (recall per provider format, false
positives against detect-secrets), bench/guards_classifiers.py (injection TPR at FPR <= 2%, ROC-AUC,
other sources, moderation). Results: bench/results/guards*.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meshgate.guards.config import DetectorSpec, GuardPolicy  # noqa: E402
from meshgate.guards.engine import Guards  # noqa: E402
from meshgate.guards.findings import ScanContext  # noqa: E402
from meshgate.guards.messages import Text  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "guards_cost.json"

PARAGRAPH = (
    "Our quarterly planning meeting covered the roadmap for the payments service, the migration of "
    "the reporting jobs to the new cluster and the hiring plan for the second half of the year. The "
    "team agreed that the checkout latency budget stays at two hundred milliseconds and that every "
    "new endpoint ships with dashboards and alerts before it takes traffic. "
)


def prompt() -> str:
    text = ""
    while len(text) < 3800:
        text += PARAGRAPH
    return (
        text[:1800]
        + " Please send the summary to maria.gonzalez@example.com or call +44 20 7946 0958. "
        + text[1800:3700]
        + " The staging key is AKIAIOSFODNN7EXAMPL3, rotate it tomorrow."
    )


def measure(guards: Guards, texts: list[Text], runs: int) -> dict[str, float]:
    plan = guards.plan_for("m", ["cloud"], "t", "k", "k", "developer")
    assert plan is not None
    context = ScanContext("input", "user", "")
    for _ in range(3):
        guards.scan_sync(texts, plan.input, context)
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        guards.scan_sync(texts, plan.input, context)
        times.append((time.perf_counter() - began) * 1000)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 3),
        "p95_ms": round(times[int(len(times) * 0.95) - 1], 3),
        "runs": runs,
    }


def cost(runs: int) -> dict[str, Any]:
    texts = [Text("You are a helpful assistant for the finance team.", "system"), Text(prompt(), "user")]
    patterns = Guards(
        [
            GuardPolicy.model_validate(
                {"name": "patterns", "input": {"pii-patterns": "redact", "secrets": "block", "codenames": "review"}}
            )
        ],
        [
            DetectorSpec.model_validate({"name": "pii-patterns", "kind": "pii", "ner": False}),
            DetectorSpec.model_validate({"name": "codenames", "kind": "regex", "pattern": "Project (Heron|Falcon)"}),
        ],
    )
    full = Guards(
        [
            GuardPolicy.model_validate(
                {
                    "name": "cloud-egress",
                    "input": {"pii": "redact", "secrets": "block", "injection": "block", "moderation": "flag"},
                }
            )
        ]
    )
    figures = {
        "prompt_chars": len(texts[1].text),
        "patterns": measure(patterns, texts, runs),
        "full": measure(full, texts, max(20, runs // 5)),
    }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["cost", "all"], default="all")
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args()
    figures = cost(args.runs)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"guards' added time per call, {figures['prompt_chars']}-character prompt:")
    for name in ("patterns", "full"):
        f = figures[name]
        print(f"  {name:9s} p50 {f['p50_ms']:7.2f} ms   p95 {f['p95_ms']:7.2f} ms   ({f['runs']} runs)")
    if args.only == "all":
        for script in ("guards_pii.py", "guards_secrets.py", "guards_classifiers.py"):
            print(f"\n== bench/{script}", flush=True)
            subprocess.run([sys.executable, str(ROOT / "bench" / script)], check=False)


if __name__ == "__main__":
    main()
