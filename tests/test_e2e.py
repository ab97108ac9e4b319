"""End to end: a real `meshgate serve` process, driven with the official `openai` SDK."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from meshgate.control.ratelimit import current_window
from meshgate.providers.local.packaged import DEFAULT_CHAT_MODEL, assemble
from meshgate.settings import default_model_cache
from meshgate.testing.fake_openai import FakeOpenAI
from tests.conftest import UPSTREAM_KEY, free_port

pytestmark = pytest.mark.slow


def create_key(env: dict[str, str], *args: str, team: str = "e2e", role: str = "admin") -> str:
    """`meshgate keys create`, as an operator bootstraps an installation."""
    result = subprocess.run(
        [sys.executable, "-m", "meshgate", "keys", "create", "--team", team, "--role", role, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    key = result.stdout.strip()
    assert key.startswith("mg-") and "not shown again" in result.stderr
    return key


class ServerProcess:
    def __init__(self, args: list[str], env: dict[str, str], port: int) -> None:
        self.port = port
        self.output: list[str] = []
        self.key = ""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshgate", "serve", "--port", str(port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("server exited:\n" + "".join(self.output))
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("server not ready:\n" + "".join(self.output))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def auth(server: ServerProcess) -> dict[str, str]:
    return {"authorization": f"Bearer {server.key}"}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(required_key=UPSTREAM_KEY) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake: FakeOpenAI) -> Iterator[ServerProcess]:
    """`meshgate serve` on the embedded defaults plus one upstream model, as a user would run it."""
    tmp = tmp_path_factory.mktemp("e2e")
    config = tmp / "mesh.yaml"
    config.write_text(
        f"""
models:
  - name: local-chat
    provider: local-llama
  - name: local-embed
    provider: local-embedding
  - name: bench
    provider: openai-compatible
    model: echo
    base_url: {fake.base_url}
    api_key: ${{BENCH_UPSTREAM_KEY}}
    price: {{input: 2.5, output: 10.0}}
  - name: slow
    provider: openai-compatible
    model: "slow:1.5"
    base_url: {fake.base_url}
    api_key: ${{BENCH_UPSTREAM_KEY}}
"""
    )
    env = {**os.environ, "BENCH_UPSTREAM_KEY": UPSTREAM_KEY, "MESHGATE_DATA_DIR": str(tmp / "data")}
    key = create_key(env)
    proc = ServerProcess(["--config", str(config)], env, free_port())
    proc.key = key
    proc.wait_ready()
    yield proc
    proc.stop()


@pytest.fixture()
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=server.key, max_retries=0)


def test_banner_names_url_and_models(server: ServerProcess) -> None:
    text = "".join(server.output)
    assert f"http://127.0.0.1:{server.port}/v1" in text
    assert "local-chat" in text and "local-embed" in text and "bench" in text


def test_chat_with_the_sdk(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(
        model="local-chat", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    assert result.choices[0].message.role == "assistant"
    assert result.usage is not None and 1 <= result.usage.completion_tokens <= 8
    proxied = client.chat.completions.create(model="bench", messages=[{"role": "user", "content": "hi"}])
    assert proxied.choices[0].message.content == "echo: hi"


def test_streaming_with_the_sdk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="local-chat",
        messages=[{"role": "user", "content": "Tell me a story."}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert pieces, "no tokens streamed"
    assert usage is not None and usage.completion_tokens >= len(pieces) - 1


def test_embeddings_with_the_sdk(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="local-embed", input=["a cat", "a kitten", "a tax form"])
    vectors = [row.embedding for row in result.data]
    assert len(vectors) == 3 and len(vectors[0]) == 384
    dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))  # noqa: E731
    assert dot(vectors[0], vectors[1]) > dot(vectors[0], vectors[2])
    assert result.usage.prompt_tokens > 0
    # The SDK asks for base64 by default when numpy is around; check float explicitly too.
    floats = client.embeddings.create(model="local-embed", input="a cat", encoding_format="float")
    assert abs(floats.data[0].embedding[0] - vectors[0][0]) < 1e-5


def test_models_with_the_sdk(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"local-chat", "local-embed", "bench"} <= ids
    assert client.models.retrieve("local-embed").id == "local-embed"


def test_errors_with_the_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="local-chat", messages=[{"role": "user", "content": "x"}], n=3)
    assert bad.value.body["param"] == "n"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="local-chat", messages=[{"role": "user", "content": "x"}], extra_body={"bogus": 1}
        )


def test_hang_up_mid_stream_does_not_hold_up_the_next_request(server: ServerProcess) -> None:
    body = {
        "model": "local-chat",
        "messages": [{"role": "user", "content": "Write a long essay."}],
        "max_tokens": 3000,
        "stream": True,
        "logit_bias": {"1": -100, "106": -100, "105": -100},
    }
    with (
        httpx.Client(timeout=30, headers=auth(server)) as http,
        http.stream("POST", server.base_url + "/chat/completions", json=body) as r,
    ):
        arrivals: list[float] = []
        for line in r.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.monotonic())
            if len(arrivals) >= 5:
                break  # hang up with ~3000 tokens (a minute or more of work) still to go
    # What finishing the abandoned answer would take at the pace this machine showed just now (a
    # loaded machine is slower at both): the next call must not wait for it.
    per_token = (arrivals[-1] - arrivals[1]) / 3
    abandoned_work = per_token * (3000 - len(arrivals))
    started = time.monotonic()
    with httpx.Client(timeout=max(60.0, abandoned_work), headers=auth(server)) as http:
        response = http.post(
            server.base_url + "/chat/completions",
            json={"model": "local-chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        )
    assert response.status_code == 200
    assert time.monotonic() - started < max(10.0, abandoned_work / 4)


def test_sigterm_finishes_in_flight_requests(tmp_path: Path, fake: FakeOpenAI) -> None:
    config = tmp_path / "mesh.yaml"
    config.write_text(
        "models:\n  - name: slow\n    provider: openai-compatible\n    model: 'slow:1.5'\n"
        f"    base_url: {fake.base_url}\n"
        "    api_key: ${BENCH_UPSTREAM_KEY}\n"
    )
    env = {**os.environ, "BENCH_UPSTREAM_KEY": UPSTREAM_KEY}
    # --no-auth on loopback: the local-use switch (with a warning) works for a whole server.
    proc = ServerProcess(["--config", str(config), "--data-dir", str(tmp_path / "d"), "--no-auth"], env, free_port())
    proc.wait_ready(60)
    assert "authentication is OFF" in "".join(proc.output)
    result: dict[str, int] = {}

    def call() -> None:
        response = httpx.post(
            proc.base_url + "/chat/completions",
            timeout=30,
            json={"model": "slow", "messages": [{"role": "user", "content": "x"}]},
        )
        result["status"] = response.status_code

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.5)
    proc.proc.send_signal(signal.SIGTERM)
    worker.join(30)
    assert result.get("status") == 200
    assert proc.proc.wait(30) == 0
    assert (tmp_path / "d" / "meshgate.db").exists()


def test_bad_config_fails_with_file_and_field(tmp_path: Path) -> None:
    config = tmp_path / "mesh.yaml"
    config.write_text("models:\n  - name: x\n    provider: openai-compatible\n    model: m\n    base_url: ftp://a\n")
    result = subprocess.run(
        [sys.executable, "-m", "meshgate", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{config}: models[0].base_url" in result.stderr


def test_no_config_serves_the_embedded_defaults(tmp_path: Path) -> None:
    """The README: `meshgate serve` with no mesh.yaml in an empty directory, then a key made with the
    CLI while it runs works on the very next request and gets an English answer from `local-chat`,
    and a revoked one stops within 2 seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHGATE_")}
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshgate", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        server = ServerProcess.__new__(ServerProcess)
        server.port, server.proc, server.output = port, proc, []
        server.wait_ready()
        models_url = f"http://127.0.0.1:{port}/v1/models"
        assert httpx.get(models_url).status_code == 401
        result = subprocess.run(
            [sys.executable, "-m", "meshgate", "keys", "create", "--team", "me", "--name", "mine"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        headers = {"authorization": f"Bearer {result.stdout.strip()}"}
        # The README's curl, pasted in the same breath as the key was made: no second to wait.
        hello = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            headers=headers,
            json={"model": "local-chat", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 20},
            timeout=60,
        )
        assert hello.status_code == 200, hello.text
        answer = hello.json()["choices"][0]["message"]["content"].lower()
        assert any(word in answer for word in ("hello", "hi", "help", "assist")), answer
        ids = {m["id"] for m in httpx.get(models_url, headers=headers).json()["data"]}
        assert ids == {"local-chat", "local-embed"}
        assert (tmp_path / ".meshgate" / "meshgate.db").is_file()
        subprocess.run(
            [sys.executable, "-m", "meshgate", "keys", "revoke", "mine"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=60,
            check=True,
        )
        revoked = time.monotonic()
        while httpx.get(models_url, headers=headers).status_code == 200:
            assert time.monotonic() - revoked < 2, "a revoked key still worked after 2 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0


def serve_until_exit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshgate", "serve", "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_a_truncated_chat_model_stops_startup_naming_the_file(tmp_path: Path) -> None:
    default = assemble(DEFAULT_CHAT_MODEL, default_model_cache())
    cut = tmp_path / "cut.gguf"
    with default.open("rb") as source, cut.open("wb") as out:
        out.write(source.read(50_000_000))
    result = serve_until_exit("--data-dir", str(tmp_path / "d"), "--chat-model", str(cut))
    assert result.returncode != 0
    assert f"meshgate cannot start: model `local-chat` (local-llama) failed to start: {cut}: the file is truncated" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_a_default_model_with_the_wrong_hash_stops_startup(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    impostor = cache / DEFAULT_CHAT_MODEL.file_name
    with impostor.open("wb") as handle:  # the right size, the wrong bytes
        handle.truncate(DEFAULT_CHAT_MODEL.size)
    env = {**os.environ, "MESHGATE_MODEL_CACHE": str(cache)}
    result = serve_until_exit("--data-dir", str(tmp_path / "d"), env=env)
    assert result.returncode != 0
    assert f"{impostor}: sha256 is " in result.stderr and f"expected {DEFAULT_CHAT_MODEL.sha256}" in result.stderr
    assert "refusing to load it" in result.stderr


def test_chat_model_flag_serves_any_gguf_under_its_name(tmp_path: Path) -> None:
    gguf = assemble(DEFAULT_CHAT_MODEL, default_model_cache())
    env = {**os.environ, "MESHGATE_DATA_DIR": str(tmp_path / "d")}
    server = ServerProcess(["--no-auth", "--chat-model", str(gguf), "--chat-model-name", "team-qwen"], env, free_port())
    try:
        server.wait_ready()
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
        assert {m.id for m in client.models.list()} == {"team-qwen", "local-embed"}
        reply = client.chat.completions.create(
            model="team-qwen",
            messages=[{"role": "user", "content": "What is the capital of Italy? One word."}],
            max_tokens=8,
            temperature=0,
        )
        assert "rome" in (reply.choices[0].message.content or "").lower()
    finally:
        assert server.stop() == 0


def test_two_servers_sharing_redis_admit_exactly_the_keys_rpm(tmp_path: Path, fake: FakeOpenAI) -> None:
    config = tmp_path / "mesh.yaml"
    config.write_text(
        f"models:\n  - name: bench\n    provider: openai-compatible\n    model: echo\n    base_url: {fake.base_url}\n"
        "    api_key: ${BENCH_UPSTREAM_KEY}\n"
    )
    env = {**os.environ, "BENCH_UPSTREAM_KEY": UPSTREAM_KEY, "MESHGATE_DATA_DIR": str(tmp_path / "data")}
    key = create_key(env, "--rpm", "9", role="app")
    args = ["--config", str(config), "--redis-url", "redis://127.0.0.1:6379/0"]
    servers = [ServerProcess(args, env, free_port()), ServerProcess(args, env, free_port())]
    try:
        for server in servers:
            server.wait_ready(60)
        _, left = current_window()
        if left < 8:
            time.sleep(left + 0.1)
        body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}
        statuses: list[int] = []

        def hammer(server: ServerProcess) -> None:
            with httpx.Client(timeout=30, headers={"authorization": f"Bearer {key}"}) as http:
                for _ in range(10):
                    statuses.append(http.post(server.base_url + "/chat/completions", json=body).status_code)

        threads = [threading.Thread(target=hammer, args=(s,)) for s in servers for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(statuses) == 40
        assert statuses.count(200) == 9 and statuses.count(429) == 31
    finally:
        for server in servers:
            server.stop()


def test_workers_share_limits_through_redis(tmp_path: Path, fake: FakeOpenAI) -> None:
    config = tmp_path / "mesh.yaml"
    config.write_text(
        f"models:\n  - name: bench\n    provider: openai-compatible\n    model: echo\n    base_url: {fake.base_url}\n"
        "    api_key: ${BENCH_UPSTREAM_KEY}\n    price: {input: 1.0, output: 1.0}\n"
    )
    env = {**os.environ, "BENCH_UPSTREAM_KEY": UPSTREAM_KEY, "MESHGATE_DATA_DIR": str(tmp_path / "data")}
    refused = subprocess.run(
        [sys.executable, "-m", "meshgate", "serve", "--config", str(config), "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "--redis-url" in refused.stderr
    key = create_key(env, "--rpm", "7", role="app")
    server = ServerProcess(
        ["--config", str(config), "--workers", "2", "--redis-url", "redis://127.0.0.1:6379/0"], env, free_port()
    )
    try:
        server.wait_ready(90)
        assert "serving with 2 workers" in "".join(server.output)
        _, left = current_window()
        if left < 8:
            time.sleep(left + 0.1)
        body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}
        statuses: list[int] = []

        def hammer() -> None:
            with httpx.Client(timeout=30, headers={"authorization": f"Bearer {key}"}) as http:
                for _ in range(8):
                    statuses.append(http.post(server.base_url + "/chat/completions", json=body).status_code)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert statuses.count(200) == 7 and statuses.count(429) == 25
    finally:
        assert server.stop() == 0
    assert (tmp_path / "data" / "audit.key").is_file()
