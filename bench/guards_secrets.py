"""Secrets detection: meshgate's SecretsDetector against Yelp's detect-secrets on the same strings.

    pip install detect-secrets            # the peer, bench only (meshgate never imports it)
    python bench/guards_secrets.py [--samples 10] [--max-lines 20000]

Recall: fake keys of each provider format (random characters of the right alphabet and length,
valid CRC32 checksums for GitHub and npm tokens, a real JWT structure; seed 14) embedded in five
contexts (.env line, code, prose, JSON, YAML). A key counts as found when a finding overlaps it
(meshgate: also reported with the expected kind).

False positives: ordinary text that holds no secrets, as findings per 1,000 lines:
- code: Python stdlib modules that talk about passwords, tokens, keys and auth (listed in the JSON);
- docs: every *.md / *.rst under the venv's site-packages, except paths with "test" in them and lines
  with "EXAMPLE" (the documented fake keys of AWS docs, AKIAIOSFODNN7EXAMPLE and the like).
meshgate scans 4,000-character chunks (a prompt's size); detect-secrets scans the corpus as a file
(`scan_file`, default plugins and filters), and, on the first --adhoc-lines lines, line by line with
its ad-hoc `scan_line` (see DetectSecrets for why that one is apart).

Latency: one 4,000-character prompt (prose, code and one key), p50/p95 over 500 scans.

Writes bench/results/guards_secrets.json and prints a table.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import statistics
import string
import sys
import sysconfig
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshgate.guards.secrets import SecretsDetector, crc32_suffix

ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "-_"
HEX = "0123456789abcdef"
UPPER_NUM = string.ascii_uppercase + "234567"
RESULTS = Path(__file__).resolve().parent / "results" / "guards_secrets.json"

rng = random.Random(14)


def pick(alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def checksummed(prefix: str) -> str:
    body = pick(ALNUM, 30)
    return prefix + body + crc32_suffix(body)


def jwt() -> str:
    header = b64url(json.dumps({"alg": rng.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"}).encode())
    claims = {"sub": str(rng.randrange(10**9)), "iat": 1_700_000_000 + rng.randrange(10**7), "scope": "read write"}
    return f"{header}.{b64url(json.dumps(claims).encode())}.{b64url(rng.randbytes(rng.choice([32, 64, 256])))}"


def discord() -> str:
    user_id = str(rng.randrange(10**17, 10**19)).encode()
    return f"{b64url(user_id)}.{pick(URLSAFE, 6)}.{pick(URLSAFE, 27)}"


def private_key(label: str) -> str:
    body = "\n".join(pick(B64, 64) for _ in range(rng.randrange(6, 14)))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----"


# format label -> (expected kind, variable name for the contexts, generator)
FORMATS: dict[str, tuple[str, str, Callable[[], str]]] = {
    "aws_access_key": (
        "aws_access_key",
        "AWS_ACCESS_KEY_ID",
        lambda: rng.choice(["AKIA", "ASIA"]) + pick(UPPER_NUM, 16),
    ),
    "aws_secret_key": ("aws_secret_key", "AWS_SECRET_ACCESS_KEY", lambda: pick(B64, 40)),
    "github_classic": ("github_token", "GITHUB_TOKEN", lambda: checksummed(rng.choice(["ghp_", "gho_", "ghs_"]))),
    "github_fine_grained": ("github_token", "GH_TOKEN", lambda: f"github_pat_{pick(ALNUM, 22)}_{pick(ALNUM, 59)}"),
    "gitlab": ("gitlab_token", "GITLAB_TOKEN", lambda: "glpat-" + pick(URLSAFE, 20)),
    "slack_token": (
        "slack_token",
        "SLACK_BOT_TOKEN",
        lambda: (
            f"{rng.choice(['xoxb', 'xoxp'])}-{pick(string.digits, 12)}-{pick(string.digits, 13)}-" + pick(ALNUM, 24)
        ),
    ),
    "slack_webhook": (
        "slack_webhook",
        "SLACK_WEBHOOK_URL",
        lambda: f"https://hooks.slack.com/services/T{pick(UPPER_NUM, 8)}/B{pick(UPPER_NUM, 10)}/" + pick(ALNUM, 24),
    ),
    "stripe_live": ("stripe_key", "STRIPE_SECRET_KEY", lambda: rng.choice(["sk_live_", "rk_live_"]) + pick(ALNUM, 99)),
    "stripe_test": ("stripe_key", "STRIPE_KEY", lambda: "sk_test_" + pick(ALNUM, 24)),
    "openai_legacy": ("openai_api_key", "OPENAI_API_KEY", lambda: f"sk-{pick(ALNUM, 20)}T3BlbkFJ{pick(ALNUM, 20)}"),
    "openai_project": ("openai_api_key", "OPENAI_API_KEY", lambda: "sk-proj-" + pick(URLSAFE, 120) + pick(ALNUM, 4)),
    "anthropic": ("anthropic_api_key", "ANTHROPIC_API_KEY", lambda: "sk-ant-api03-" + pick(URLSAFE, 93) + "AA"),
    "google_api_key": ("google_api_key", "GOOGLE_API_KEY", lambda: "AIza" + pick(URLSAFE, 34) + pick(ALNUM, 1)),
    "azure_storage": (
        "azure_storage_key",
        "AZURE_STORAGE_CONNECTION_STRING",
        lambda: (
            "DefaultEndpointsProtocol=https;AccountName=acct"
            + pick(string.ascii_lowercase, 6)
            + ";AccountKey="
            + pick(B64, 86)
            + "==;EndpointSuffix=core.windows.net"
        ),
    ),
    "twilio": ("twilio_api_key", "TWILIO_API_KEY", lambda: "SK" + pick(HEX, 32)),
    "sendgrid": ("sendgrid_api_key", "SENDGRID_API_KEY", lambda: f"SG.{pick(URLSAFE, 22)}.{pick(URLSAFE, 43)}"),
    "npm": ("npm_token", "NPM_TOKEN", lambda: checksummed("npm_")),
    "pypi": ("pypi_token", "PYPI_TOKEN", lambda: "pypi-AgEIcHlwaS5vcmc" + pick(URLSAFE, 140)),
    "discord": ("discord_token", "DISCORD_TOKEN", discord),
    "telegram": (
        "telegram_bot_token",
        "TELEGRAM_BOT_TOKEN",
        lambda: str(rng.randrange(10**8, 10**10)) + ":AA" + pick(URLSAFE, 33),
    ),
    "mailgun": ("mailgun_api_key", "MAILGUN_API_KEY", lambda: "key-" + pick(HEX, 32)),
    "square": ("square_token", "SQUARE_ACCESS_TOKEN", lambda: "sq0atp-" + pick(URLSAFE, 22)),
    "shopify": ("shopify_token", "SHOPIFY_ACCESS_TOKEN", lambda: rng.choice(["shpat_", "shpss_"]) + pick(HEX, 32)),
    "heroku": ("heroku_api_key", "HEROKU_API_KEY", lambda: "HRKU-AA" + pick(URLSAFE, 58)),
    "digitalocean": ("digitalocean_token", "DIGITALOCEAN_TOKEN", lambda: "dop_v1_" + pick(HEX, 64)),
    "huggingface": ("huggingface_token", "HF_TOKEN", lambda: "hf_" + pick(string.ascii_letters, 34)),
    "private_key_rsa": ("private_key", "TLS_KEY", lambda: private_key("RSA PRIVATE KEY")),
    "private_key_openssh": ("private_key", "SSH_KEY", lambda: private_key("OPENSSH PRIVATE KEY")),
    "postgres_url": (
        "connection_string",
        "DATABASE_URL",
        lambda: f"postgresql://app:{pick(ALNUM, 16)}@db-{pick(HEX, 4)}.internal:5432/orders",
    ),
    "mysql_url": ("connection_string", "MYSQL_URL", lambda: f"mysql://root:{pick(ALNUM, 12)}@10.0.3.7:3306/shop"),
    "mongodb_srv_url": (
        "connection_string",
        "MONGO_URI",
        lambda: f"mongodb+srv://svc:{pick(ALNUM, 20)}@cluster0.{pick(HEX, 5)}.mongodb.net/app",
    ),
    "redis_url": ("connection_string", "REDIS_URL", lambda: f"redis://default:{pick(ALNUM, 24)}@cache:6379/0"),
    "amqp_url": ("connection_string", "BROKER_URL", lambda: f"amqps://worker:{pick(ALNUM, 16)}@mq.example.com/vhost"),
    "basic_auth_url": (
        "basic_auth_url",
        "REPO_URL",
        lambda: f"https://deploy:{pick(ALNUM, 14)}@git.example.com/team/repo.git",
    ),
    "jwt": ("jwt", "ACCESS_TOKEN", jwt),
    "password_high_entropy": ("high_entropy_string", "DB_PASSWORD", lambda: pick(ALNUM + "!#%&*", 20)),
}


def contexts(var: str, secret: str) -> Iterator[tuple[str, str, str]]:
    """(context name, text, the secret as it appears in the text)."""
    yield "env", f"# production settings\nDEBUG=false\n{var}={secret}\nLOG_LEVEL=info\n", secret
    code_name = var.lower()
    if "\n" in secret:
        yield "code", f'{code_name} = """{secret}"""\nclient = Client(key={code_name})\n', secret
    else:
        yield "code", f'def connect():\n    {code_name} = "{secret}"\n    return Client({code_name})\n', secret
    yield "prose", f"Hi! I set {var} to {secret} but every call fails with 401. Can you see why?\n", secret
    escaped = json.dumps(secret)[1:-1]
    yield "json", json.dumps({"service": "billing", var.lower(): secret, "retries": 3}, indent=2) + "\n", escaped
    if "\n" in secret:
        block = "\n".join("  " + line for line in secret.splitlines())
        yield "yaml", f"service: billing\n{var.lower()}: |\n{block}\nretries: 3\n", block.lstrip()
    else:
        yield "yaml", f"service: billing\n{var.lower()}: {secret}\nretries: 3\n", secret


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


# --- detect-secrets ------------------------------------------------------------------------------


class DetectSecrets:
    """detect-secrets 1.5 with its default plugins and filters.

    `scan` is its normal mode: the text written to a file whose suffix says what it is (.env, .py,
    .txt, .json, .yaml, .md), then `scan_file`. `scan_adhoc` is its ad-hoc string API, `scan_line`
    line by line, which turns on "eager search": its entropy plugins then report unquoted strings
    without their entropy limit (every word of a sentence), so it is reported apart, on fewer lines.
    """

    def __init__(self, workdir: Path) -> None:
        from detect_secrets.core.scan import scan_file, scan_line
        from detect_secrets.settings import default_settings

        self._settings = default_settings()
        self._settings.__enter__()
        self._scan_file = scan_file
        self._scan_line = scan_line
        self._workdir = workdir

    def write(self, text: str, suffix: str) -> Path:
        path = self._workdir / f"sample{suffix}"
        path.write_text(text, encoding="utf-8")
        return path

    def scan_path(self, path: Path) -> list[str]:
        return [s.secret_value or "" for s in self._scan_file(str(path))]

    def scan(self, text: str, suffix: str) -> list[str]:
        return self.scan_path(self.write(text, suffix))

    def scan_adhoc(self, text: str) -> list[str]:
        return [s.secret_value or "" for line in text.splitlines() for s in self._scan_line(line)]


def peer_found(values: list[str], secret: str) -> bool:
    """detect-secrets reports values, not offsets: a value inside the key (8+ characters, so a stray
    word does not count) or the key inside a value is a hit."""
    return any((len(v) >= 8 and v in secret) or (secret in v) for v in values)


SUFFIXES = {"env": ".env", "code": ".py", "prose": ".txt", "json": ".json", "yaml": ".yaml"}


# --- corpora -------------------------------------------------------------------------------------

STDLIB_MODULES = [
    "getpass.py",
    "netrc.py",
    "hmac.py",
    "secrets.py",
    "smtplib.py",
    "ftplib.py",
    "imaplib.py",
    "poplib.py",
    "ssl.py",
    "base64.py",
    "hashlib.py",
    "uuid.py",
    "http/client.py",
    "http/cookiejar.py",
    "http/server.py",
    "urllib/request.py",
    "urllib/parse.py",
    "email/utils.py",
    "email/message.py",
    "logging/handlers.py",
    "tokenize.py",
    "token.py",
    "asyncio/base_events.py",
    "asyncio/sslproto.py",
    "xmlrpc/client.py",
    "configparser.py",
    "shlex.py",
    "json/decoder.py",
    "json/encoder.py",
    "argparse.py",
    "subprocess.py",
]


def code_corpus(max_lines: int) -> tuple[list[str], list[str]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    lines: list[str] = []
    used: list[str] = []
    for name in STDLIB_MODULES:
        path = stdlib / name
        if path.exists() and len(lines) < max_lines:
            lines.extend(path.read_text(encoding="utf-8", errors="replace").splitlines())
            used.append(name)
    return lines[:max_lines], used


def docs_corpus(max_lines: int) -> tuple[list[str], list[str]]:
    site = Path(sysconfig.get_paths()["purelib"])
    paths = sorted(
        p for ext in ("*.md", "*.rst") for p in site.rglob(ext) if "test" not in str(p.relative_to(site)).lower()
    )
    lines: list[str] = []
    used: list[str] = []
    for path in paths:
        if len(lines) >= max_lines:
            break
        lines.extend(
            line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if "EXAMPLE" not in line
        )  # AWS-style documented fake keys (...EXAMPLEKEY) are fixtures
        used.append(str(path.relative_to(site)))
    return lines[:max_lines], used


def chunks(lines: list[str], size: int = 4000) -> Iterator[str]:
    chunk: list[str] = []
    length = 0
    for line in lines:
        if length + len(line) > size and chunk:
            yield "\n".join(chunk)
            chunk, length = [], 0
        chunk.append(line)
        length += len(line) + 1
    if chunk:
        yield "\n".join(chunk)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_recall(ours: SecretsDetector, peer: DetectSecrets | None, samples: int) -> dict[str, dict[str, float]]:
    recall: dict[str, dict[str, float]] = {}
    for label, (kind, var, make) in FORMATS.items():
        counts: Counter[str] = Counter()
        for _ in range(samples):
            for context, text, embedded in contexts(var, make()):
                start = text.index(embedded)
                span = (start, start + len(embedded))
                findings = [f for f in ours.detect(text) if overlaps((f.start, f.end), span)]
                counts["total"] += 1
                counts["meshgate"] += bool(findings)
                counts["meshgate_right_kind"] += any(f.kind == kind for f in findings)
                if peer is not None:
                    counts["detect_secrets"] += peer_found(peer.scan(text, SUFFIXES[context]), embedded)
                    counts["detect_secrets_adhoc"] += peer_found(peer.scan_adhoc(text), embedded)
        total = counts.pop("total")
        recall[label] = {name: round(n / total, 3) for name, n in counts.items()} | {"samples": total}
        for name in ("detect_secrets", "detect_secrets_adhoc") if peer is not None else ():
            recall[label].setdefault(name, 0.0)
    return recall


def measure_false_positives(
    ours: SecretsDetector, peer: DetectSecrets | None, max_lines: int, adhoc_lines: int
) -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    corpora = {"code": (code_corpus(max_lines), ".py"), "docs": (docs_corpus(max_lines), ".md")}
    for corpus, ((lines, files), suffix) in corpora.items():
        kinds: Counter[str] = Counter(f.kind for chunk in chunks(lines) for f in ours.detect(chunk))
        entry: dict[str, object] = {
            "lines": len(lines),
            "files": files if corpus == "code" else f"{len(files)} files under site-packages (*.md, *.rst, no 'test')",
            "meshgate_per_1000_lines": round(1000 * kinds.total() / max(1, len(lines)), 3),
            "meshgate_kinds": dict(kinds.most_common()),
        }
        if peer is not None:
            found = peer.scan("\n".join(lines), suffix)
            entry["detect_secrets_per_1000_lines"] = round(1000 * len(found) / max(1, len(lines)), 3)
            sample = lines[:adhoc_lines]
            adhoc = sum(len(peer.scan_adhoc(line)) for line in sample)
            entry["detect_secrets_adhoc_lines"] = len(sample)
            entry["detect_secrets_adhoc_per_1000_lines"] = round(1000 * adhoc / max(1, len(sample)), 3)
        results[corpus] = entry
    return results


def timed(scan: Callable[[], object], runs: int) -> dict[str, float]:
    """Wall-clock percentiles, and CPU-time ones: on a loaded machine (2 shared cores here) the wall
    tail is mostly time spent waiting for a core, which the CPU figures leave out."""
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(runs):
        started, started_cpu = time.perf_counter(), time.thread_time()
        scan()
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.thread_time() - started_cpu) * 1000)
    return {
        "p50_ms": round(statistics.median(wall), 3),
        "p95_ms": round(percentile(wall, 0.95), 3),
        "cpu_p50_ms": round(statistics.median(cpu), 3),
        "cpu_p95_ms": round(percentile(cpu, 0.95), 3),
        "runs": runs,
    }


def latency_prompt() -> str:
    """4,000 characters of docs prose and stdlib code with one GitHub token in the middle."""
    prose, _ = docs_corpus(400)
    code, _ = code_corpus(400)
    filler = "\n".join(prose[:40] + code[:60])
    return (filler[:1900] + f"\nmy key is {checksummed('ghp_')}\n" + filler[-2060:])[:4000]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10, help="keys per format and context")
    parser.add_argument("--max-lines", type=int, default=20_000, help="lines per false-positive corpus")
    parser.add_argument("--adhoc-lines", type=int, default=1_000, help="lines per corpus for scan_line (slow)")
    parser.add_argument("--latency-runs", type=int, default=500)
    args = parser.parse_args()

    ours = SecretsDetector()
    with tempfile.TemporaryDirectory() as workdir:
        try:
            import detect_secrets.__version__ as peer_module

            peer: DetectSecrets | None = DetectSecrets(Path(workdir))
            peer_version: str | None = peer_module.VERSION
        except ImportError:
            peer, peer_version = None, None
            print("detect-secrets not installed: meshgate only", file=sys.stderr)

        recall = measure_recall(ours, peer, args.samples)
        false_positives = measure_false_positives(ours, peer, args.max_lines, args.adhoc_lines)
        prompt = latency_prompt()
        latency = {"meshgate": timed(lambda: ours.detect(prompt), args.latency_runs)}
        if peer is not None:
            path = peer.write(prompt, ".txt")
            peer_runs = max(20, args.latency_runs // 10)
            latency["detect_secrets"] = timed(lambda: peer.scan_path(path), peer_runs)
            latency["detect_secrets_adhoc"] = timed(lambda: peer.scan_adhoc(prompt), peer_runs)

    result = {
        "prompt_chars": len(prompt),
        "seed": 14,
        "samples_per_format": args.samples * len(SUFFIXES),
        "detect_secrets_version": peer_version,
        "recall": recall,
        "false_positives": false_positives,
        "latency_4000_chars": latency,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)


def print_table(result: dict[str, Any]) -> None:
    recall: dict[str, dict[str, float]] = result["recall"]
    columns = ["meshgate", "meshgate_right_kind", "detect_secrets", "detect_secrets_adhoc"]
    print(f"{'recall':24} " + " ".join(f"{c:>20}" for c in columns))
    for label, row in [
        *recall.items(),
        ("mean", {c: statistics.mean(r.get(c, 0.0) for r in recall.values()) for c in columns}),
    ]:
        print(f"{label:24} " + " ".join(f"{row[c]:20.2f}" if c in row else f"{'-':>20}" for c in columns))
    for corpus, entry in result["false_positives"].items():
        print(
            f"false positives per 1,000 lines, {corpus} ({entry['lines']} lines): meshgate "
            f"{entry['meshgate_per_1000_lines']}, detect-secrets {entry.get('detect_secrets_per_1000_lines', '-')}, "
            f"detect-secrets scan_line {entry.get('detect_secrets_adhoc_per_1000_lines', '-')} "
            f"(first {entry.get('detect_secrets_adhoc_lines', '-')} lines)"
        )
    for name, row in result["latency_4000_chars"].items():
        print(
            f"latency {name}, {result['prompt_chars']}-char prompt: p50 {row['p50_ms']} ms, p95 {row['p95_ms']} ms "
            f"(CPU time p50 {row['cpu_p50_ms']} ms, p95 {row['cpu_p95_ms']} ms)"
        )


if __name__ == "__main__":
    main()
