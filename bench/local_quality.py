"""Answer quality of the local chat model through meshgate: extractive QA on a fixed XQuAD-en sample.

    python bench/local_quality.py                       # 200 questions, `local-chat`, embedded models
    python bench/local_quality.py --limit 3             # a smoke run: the first 3 of the same sample
    python bench/local_quality.py --config mesh.yaml --model my-model --json /tmp/quality.json --min-f1 0.55
    python bench/local_quality.py --split selection --prompt copied-cue   # choose prompts off the sample

A real `meshgate serve` (temporary data dir, one `app` key) answers 200 questions drawn once with a
fixed seed (`random.Random(2026).sample` over every (article, paragraph, question) of the file, in
file order) from XQuAD's English set (SQuAD v1.1 format: 48 articles, 240 paragraphs, 1190
questions). Each question is one streamed, greedy (`temperature: 0`) chat completion with the gold
paragraph in the prompt (`PROMPTS[DEFAULT_PROMPT]` below; chosen on other XQuAD questions), through
the OpenAI API with the key, one at a time after one warm-up request.

Choosing a prompt never looks at the sample: `--split selection` runs questions outside it (and
outside the 150 an earlier choice used), shuffled once with `SELECTION_SEED`; `--prompt NAME` picks
one of the named candidates in `PROMPTS`. Run each candidate there, make the best the default, then
run the sample once.

Measured per question: token F1 and exact match against the gold answers with the official SQuAD
v1.1 normalisation (lowercase, no punctuation, no articles a/an/the, single spaces), the best over
the gold answers; time to first token (request sent to first non-empty content delta); generation
tokens/s, (completion_tokens - 1) / (end - first token); prompt and completion tokens from the
usage chunk. Reported: mean F1 and EM over all questions (a failed request scores 0 and is
counted as a failure: HTTP errors, error events in the stream, streams cut short), median and p90
time to first token, median tokens/s, total prompt tokens and wall time. Progress goes to stderr,
a markdown table for bench/README.md to stdout; `--json` writes it all with every answer.
`--min-f1` makes the exit status 1 when the mean F1 is below it.

Data: XQuAD (Artetxe, Ruder and Yogatama, 2020; github.com/deepmind/xquad), English set
`xquad.en.json`, licensed CC BY-SA 4.0 (its LICENSE.txt sits next to it); read from
`../shared/data/xquad-en` beside this repository, or `--data`. Nothing of it is copied here.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import string
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from harness import create_key, ensure_free, start_meshgate

PORT = 18091
SEED = 2026
SAMPLE_SIZE = 200
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "xquad-en" / "xquad.en.json"

#: The 150 questions an earlier prompt choice was made on (`random.Random(11).sample` over the 990
#: questions outside the sample, in file order); the selection split leaves them out too, so that
#: the prompt chosen then has no head start over the candidates now.
EARLIER_SELECTION_SEED = 11
EARLIER_SELECTION_SIZE = 150
#: Shuffles the remaining questions (840 for the default sample) into the selection split.
SELECTION_SEED = 1201


@dataclass(frozen=True)
class Prompt:
    """One way of asking: a system and a user message (either may name `{context}` and `{question}`)
    and fields merged into every request (e.g. `stop`)."""

    system: str
    user: str
    extras: dict[str, Any] = field(default_factory=dict)

    def messages(self, context: str, question: str) -> list[dict[str, str]]:
        values = {"context": context, "question": question}
        return [
            {"role": "system", "content": self.system.format(**values)},
            {"role": "user", "content": self.user.format(**values)},
        ]


EXTRACT = (
    "You extract answers from a text. Output only the answer: the few words of the context that answer "
    "the question, copied exactly. Never write a sentence."
)
CONTEXT_AND_QUESTION = "Context:\n{context}\n\nQuestion: {question}\n"

#: The candidates. `span-cue` was chosen on the earlier 150 questions (F1 0.580 there, running each
#: candidate once: the plain "shortest span" instruction 0.557, either with three worked examples
#: 0.530-0.546, the question repeated before the context 0.433) and scored 0.531 on the sample.
#: On the first 200 of the selection split (bench/README.md): span-cue 0.592,
#: instruction-after-question 0.589, span-cue-stop-newline 0.588, copied-cue 0.568,
#: context-in-system 0.566, qwen-system 0.447.
PROMPTS: dict[str, Prompt] = {
    "span-cue": Prompt(EXTRACT, CONTEXT_AND_QUESTION + "Shortest answer span:"),
    # Cuts an answer that runs on past the span onto a new line.
    "span-cue-stop-newline": Prompt(EXTRACT, CONTEXT_AND_QUESTION + "Shortest answer span:", {"stop": ["\n"]}),
    "context-in-system": Prompt(EXTRACT + "\n\nContext:\n{context}", "Question: {question}\nShortest answer span:"),
    # The instruction restated right where the answer starts, after the question.
    "instruction-after-question": Prompt(
        EXTRACT, CONTEXT_AND_QUESTION + "Answer with the exact words from the context, at most a few words."
    ),
    # The system prompt Qwen2.5 was tuned with (its chat template's default), the task in the user turn.
    "qwen-system": Prompt(
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        "Answer the question from the context. Output only the few words of the context that answer it, "
        "copied exactly. Never write a sentence.\n\n" + CONTEXT_AND_QUESTION + "Shortest answer span:",
    ),
    "copied-cue": Prompt(EXTRACT, CONTEXT_AND_QUESTION + "Answer (copied from the context):"),
}
#: The prompt the sample is run with: the target is met (or not) with it, on data it was not chosen on.
DEFAULT_PROMPT = "span-cue"

#: Warm-up (loads the model's weights into the page cache, fills the prompt cache with the system prompt).
WARM_UP = {"context": "The lighthouse on the northern cape was built in 1874.", "question": "When was it built?"}


@dataclass
class Question:
    id: str
    title: str
    context: str
    question: str
    answers: list[str]


@dataclass
class Result:
    id: str
    question: str
    answers: list[str]
    prediction: str = ""
    f1: float = 0.0
    em: float = 0.0
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    seconds: float = 0.0
    error: str | None = None


# -- SQuAD v1.1 evaluation (as in the official evaluate-v1.1.py) ----------------------------------

PUNCTUATION = set(string.punctuation)
ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, drop articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def f1_score(prediction: str, truth: str) -> float:
    predicted, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = Counter(predicted) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def best_over(metric: Callable[[str, str], float], prediction: str, truths: list[str]) -> float:
    return max(metric(prediction, truth) for truth in truths)


# -- data -----------------------------------------------------------------------------------------


def load_questions(path: Path) -> list[Question]:
    """Every question of a SQuAD v1.1 file, in file order."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return [
        Question(qa["id"], article["title"], paragraph["context"], qa["question"], [a["text"] for a in qa["answers"]])
        for article in data["data"]
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    ]


def sample(questions: list[Question], seed: int, size: int = SAMPLE_SIZE) -> list[Question]:
    """The fixed sample, in drawing order (`--limit N` runs its first N)."""
    return random.Random(seed).sample(questions, min(size, len(questions)))


def selection_split(questions: list[Question], sample_seed: int) -> list[Question]:
    """Every question outside the sample and the earlier 150, shuffled with `SELECTION_SEED` (`--limit N`
    runs its first N, so a shorter run is a prefix of a longer one)."""
    in_sample = {q.id for q in sample(questions, sample_seed)}
    others = [q for q in questions if q.id not in in_sample]
    earlier = random.Random(EARLIER_SELECTION_SEED).sample(others, min(EARLIER_SELECTION_SIZE, len(others)))
    used = {q.id for q in earlier}
    pool = [q for q in others if q.id not in used]
    random.Random(SELECTION_SEED).shuffle(pool)
    return pool


# -- requests -------------------------------------------------------------------------------------


def ask(client: httpx.Client, model: str, prompt: Prompt, question: Question, max_tokens: int) -> Result:
    """One streamed greedy completion; a failure is recorded in the result, never raised."""
    result = Result(question.id, question.question, question.answers)
    body = {
        **prompt.extras,
        "model": model,
        "messages": prompt.messages(question.context, question.question),
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    parts: list[str] = []
    usage: dict[str, Any] | None = None
    done = False
    started = time.perf_counter()
    first: float | None = None
    try:
        with client.stream("POST", "/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                result.error = f"HTTP {response.status_code}: {response.text[:300]}"
            else:
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        result.error = f"error event: {json.dumps(chunk['error'])[:300]}"
                        break
                    for choice in chunk.get("choices") or []:
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            if first is None:
                                first = time.perf_counter()
                            parts.append(content)
                        result.finish_reason = choice.get("finish_reason") or result.finish_reason
                    usage = chunk.get("usage") or usage
    except (httpx.HTTPError, json.JSONDecodeError) as error:
        result.error = f"{type(error).__name__}: {error}"
    end = time.perf_counter()
    result.seconds = end - started
    result.prediction = "".join(parts).strip()
    if result.error is None and not done:
        result.error = "stream ended without [DONE]"
    if result.error is None and usage is None:
        result.error = "no usage chunk"
    if result.error is not None:
        return result
    assert usage is not None
    result.prompt_tokens = usage.get("prompt_tokens")
    result.completion_tokens = usage.get("completion_tokens")
    if first is not None:
        result.ttft_ms = (first - started) * 1000
        if result.completion_tokens and result.completion_tokens > 1 and end > first:
            result.tokens_per_s = (result.completion_tokens - 1) / (end - first)
    result.f1 = best_over(f1_score, result.prediction, question.answers)
    result.em = best_over(exact_match, result.prediction, question.answers)
    return result


# -- report ---------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float | None:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(results: list[Result], wall_s: float) -> dict[str, Any]:
    ttfts = [r.ttft_ms for r in results if r.ttft_ms is not None]
    speeds = [r.tokens_per_s for r in results if r.tokens_per_s is not None]
    count = len(results)
    return {
        "questions": count,
        "f1": sum(r.f1 for r in results) / count if count else 0.0,
        "em": sum(r.em for r in results) / count if count else 0.0,
        "ttft_ms_p50": percentile(ttfts, 0.5),
        "ttft_ms_p90": percentile(ttfts, 0.9),
        "tokens_per_s_p50": statistics.median(speeds) if speeds else None,
        "prompt_tokens": sum(r.prompt_tokens or 0 for r in results),
        "completion_tokens": sum(r.completion_tokens or 0 for r in results),
        "empty_answers": sum(1 for r in results if r.error is None and not r.prediction),
        "wall_s": wall_s,
        "failures": sum(1 for r in results if r.error is not None),
    }


def number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def table(model: str, summaries: dict[str, dict[str, Any]]) -> str:
    """One row per prompt; `wall s` is the run's wall time shared evenly between the prompts."""
    columns = ["model", "prompt", "questions", "F1", "EM", "TTFT p50 ms", "TTFT p90 ms", "tokens/s p50"]
    columns += ["prompt tokens", "wall s", "failures"]
    rows = [
        f"| {model} | {prompt} | {summary['questions']} | {summary['f1']:.3f} | {summary['em']:.3f} | "
        f"{number(summary['ttft_ms_p50'], 0)} | {number(summary['ttft_ms_p90'], 0)} | "
        f"{number(summary['tokens_per_s_p50'], 1)} | {summary['prompt_tokens']:,} | {summary['wall_s']:.0f} | "
        f"{summary['failures']} |"
        for prompt, summary in summaries.items()
    ]
    return "\n".join([f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}", *rows])


def progress(done: int, total: int, results: dict[str, list[Result]], started: float) -> None:
    elapsed = time.perf_counter() - started
    eta = elapsed / done * (total - done)
    scores = []
    for name, answers in results.items():
        f1 = sum(r.f1 for r in answers) / len(answers)
        em = sum(r.em for r in answers) / len(answers)
        failures = sum(1 for r in answers if r.error is not None)
        scores.append(f"{name} F1 {f1:.3f} EM {em:.3f}" + (f" failures {failures}" if failures else ""))
    last = next(iter(results.values()))[-1]
    detail = f"error: {last.error}" if last.error else f"{last.prediction[:60]!r} (gold {last.answers[0][:40]!r})"
    line = f"[{done}/{total}] {'; '.join(scores)} | ETA {eta // 60:.0f}m{eta % 60:02.0f}s"
    print(line + (f" | {detail}" if len(results) == 1 else ""), file=sys.stderr, flush=True)


def model_info(client: httpx.Client, model: str) -> dict[str, Any] | None:
    """What /v1/models says of the model (its description, the GGUF file), for the JSON record."""
    try:
        response = client.get("/models")
        for entry in response.json().get("data", []):
            if entry.get("id") == model:
                return dict(entry)
    except (httpx.HTTPError, ValueError):
        pass
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="local-chat", help="model name as clients use it (default local-chat)")
    parser.add_argument("--config", help="a mesh.yaml passed to `meshgate serve` (default: the embedded models)")
    parser.add_argument("--data", type=Path, default=DATA, help=f"XQuAD-en file (default {DATA})")
    parser.add_argument("--seed", type=int, default=SEED, help=f"seed of the fixed sample (default {SEED})")
    parser.add_argument(
        "--split",
        choices=["sample", "selection"],
        default="sample",
        help=f"sample: the fixed {SAMPLE_SIZE} questions the target is measured on (default); selection: "
        f"questions outside it, to choose a prompt on (first {SAMPLE_SIZE} unless --limit)",
    )
    parser.add_argument(
        "--limit", type=int, help=f"run only the first N questions of the split (at most {SAMPLE_SIZE} of the sample)"
    )
    parser.add_argument(
        "--prompt",
        nargs="+",
        choices=list(PROMPTS),
        default=[DEFAULT_PROMPT],
        help=f"named prompts (default {DEFAULT_PROMPT}); several are asked in turn on each question, so that "
        f"an interrupted comparison still has as many answers of each: {', '.join(PROMPTS)}",
    )
    parser.add_argument("--max-tokens", type=int, default=48, help="max_tokens of each answer (default 48)")
    parser.add_argument("--port", type=int, default=PORT, help=f"port of meshgate (default {PORT})")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per request (default 300)")
    parser.add_argument("--json", "--output", type=Path, help="write the summary and every answer here")
    parser.add_argument("--min-f1", type=float, help="exit with status 1 when the mean F1 is below this")
    args = parser.parse_args()

    if not args.data.is_file():
        raise SystemExit(f"{args.data} not found: pass the XQuAD-en file (xquad.en.json) with --data")
    every = load_questions(args.data)
    split = sample(every, args.seed) if args.split == "sample" else selection_split(every, args.seed)
    questions = split[: args.limit or SAMPLE_SIZE]
    prompts = {name: PROMPTS[name] for name in args.prompt}
    ensure_free(args.port)
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-quality-bench-"))
    env = {**os.environ, "MESHGATE_DATA_DIR": str(tmp)}
    options = ["--config", str(Path(args.config).resolve())] if args.config else []
    key = create_key(env)
    print(
        f"{len(questions)} questions of the {args.split} split, prompts {', '.join(prompts)}; "
        f"starting meshgate on port {args.port} (data dir {tmp})",
        file=sys.stderr,
        flush=True,
    )
    # A `kill` (as well as Ctrl+C) stops after the current request and still reports what ran.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server = start_meshgate(env, args.port, *options)
    results: dict[str, list[Result]] = {name: [] for name in prompts}
    stopped = False
    try:
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{args.port}/v1",
            headers={"authorization": f"Bearer {key}"},
            timeout=args.timeout,
        )
        info = model_info(client, args.model)
        warm_up = Question("warm-up", "", WARM_UP["context"], WARM_UP["question"], ["1874"])
        warm = ask(client, args.model, next(iter(prompts.values())), warm_up, 8)
        if warm.error:
            print(f"warm-up failed: {warm.error}", file=sys.stderr, flush=True)
            if server.poll() is not None:
                raise SystemExit(f"meshgate exited (status {server.returncode}) during the warm-up")
        started = time.perf_counter()
        try:
            for index, question in enumerate(questions, 1):
                for name, prompt in prompts.items():
                    result = ask(client, args.model, prompt, question, args.max_tokens)
                    results[name].append(result)
                    if result.error and server.poll() is not None:
                        print(f"meshgate exited (status {server.returncode}): stopping", file=sys.stderr, flush=True)
                        stopped = True
                        break
                if stopped:
                    break
                progress(index, len(questions), results, started)
        except KeyboardInterrupt:
            print("interrupted: the figures are of the questions every prompt answered", file=sys.stderr)
        wall = time.perf_counter() - started
        client.close()
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)

    answered = min(len(r) for r in results.values())  # an interrupted round counts for none of them
    summaries = {name: summarize(answers[:answered], wall / len(prompts)) for name, answers in results.items()}
    print(table(args.model, summaries))
    if args.json:
        settings = {
            "model": args.model,
            "model_info": info,
            "config": args.config,
            "data": str(args.data),
            "seed": args.seed,
            "sample_size": SAMPLE_SIZE,
            "split": args.split,
            "selection_seed": SELECTION_SEED if args.split == "selection" else None,
            "limit": args.limit,
            "max_tokens": args.max_tokens,
        }
        records = {
            name: {
                "prompt": name,
                "system_prompt": prompt.system,
                "user_prompt": prompt.user,
                "request_extras": prompt.extras,
                "summary": summaries[name],
                "results": [asdict(r) for r in results[name][:answered]],
            }
            for name, prompt in prompts.items()
        }
        if len(records) == 1:  # the shape of a single run, as bench/results/quality-20261201.json has it
            (record,) = records.values()
            document = {"summary": record.pop("summary"), "settings": {**settings, **record}}
            document["results"] = document["settings"].pop("results")
        else:
            document = {"settings": settings, "prompts": records}
        args.json.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    if stopped:
        sys.exit(1)
    worst = min(summary["f1"] for summary in summaries.values())
    if args.min_f1 is not None and worst < args.min_f1:
        print(f"mean F1 {worst:.3f} is below --min-f1 {args.min_f1}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
