"""Every field of the official `openai` SDK's request types is accepted, as the SDK sends it.

The list of fields is derived from the installed SDK, so a release that adds a field fails here
rather than in a user's call. Behaviour is checked through the real SDK over a socket: null for
every optional field, hints passed on to the upstream, what a model cannot do refused by name,
and an answer sent back as the SDK returned it (`message.model_dump()`).
"""

from __future__ import annotations

import collections.abc
import types
import typing
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal, NotRequired, Required, Union, get_args, get_origin, get_type_hints

import httpx
import msgspec
import msgspec.inspect as mi
import openai
import pydantic
import pytest
from openai.types import embedding_create_params
from openai.types.chat import ChatCompletionMessage, completion_create_params
from typing_extensions import is_typeddict

from meshgate.protocol import AssistantMessage, ChatCompletionRequest, EmbeddingRequest
from meshgate.providers.base import ProviderContext
from meshgate.providers.openai_compatible import Capabilities, OpenAICompatibleChat, OpenAICompatibleConfig
from meshgate.testing.fake_openai import FakeOpenAI
from tests.conftest import AppClient, make_runtime

# -- the SDK's types against our structs -------------------------------------------------------

_LISTS = (list, collections.abc.Iterable, collections.abc.Sequence)


def _strip(hint: Any) -> Any:
    """The type inside Annotated / Required / NotRequired."""
    while get_origin(hint) in (typing.Annotated, Required, NotRequired):
        hint = get_args(hint)[0]
    return hint


def _members(hint: Any) -> list[Any]:
    hint = _strip(hint)
    if get_origin(hint) in (Union, types.UnionType):
        return [m for arg in get_args(hint) for m in _members(arg)]
    return [hint]


def _ours(info: mi.Type) -> list[mi.Type]:
    if isinstance(info, mi.UnionType):
        return [m for t in info.types for m in _ours(t)]
    return [info]


def _is_list(hint: Any) -> bool:
    origin = get_origin(hint)
    return origin in _LISTS or getattr(origin, "__name__", "") == "SequenceNotStr"


def _is_model(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, pydantic.BaseModel)


def _fields(sdk: Any) -> dict[str, tuple[Any, bool]]:
    """Field name -> (type, required) of a TypedDict or of a pydantic model of the SDK."""
    if _is_model(sdk):
        # Dumps carry every field (null when unset), so each one must be accepted as the model types it.
        return {name: (field.annotation, field.is_required()) for name, field in sdk.model_fields.items()}
    result = {}
    for name, hint in get_type_hints(sdk, include_extras=True).items():
        origin = get_origin(hint)
        required = origin is Required or (sdk.__total__ and origin is not NotRequired)
        result[name] = (hint, required)
    return result


def _pick_struct(sdk: Any, ours: list[mi.Type]) -> mi.StructType | None:
    structs = [t for t in ours if isinstance(t, mi.StructType)]
    untagged = [s for s in structs if s.tag_field is None]
    fields = _fields(sdk)
    for struct in structs:
        if struct.tag_field is not None and struct.tag_field in fields:
            values = [v for m in _members(fields[struct.tag_field][0]) for v in get_args(m)]
            if struct.tag in values:
                return struct
    return untagged[0] if len(untagged) == 1 else None


class Walk:
    """Compare an SDK type with the msgspec type meshgate decodes it into; collect what is refused."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.checked: list[str] = []
        self._seen: set[tuple[Any, Any]] = set()

    def type(self, hint: Any, info: mi.Type, path: str) -> None:
        ours = _ours(info)
        if any(isinstance(t, mi.AnyType) for t in ours):
            return
        takes_dict = any(isinstance(t, mi.DictType) for t in ours)
        for member in _members(hint):
            if member is type(None):
                if not any(isinstance(t, mi.NoneType) for t in ours):
                    self.problems.append(f"{path}: null is refused")
            elif is_typeddict(member) or _is_model(member):
                struct = _pick_struct(member, ours)
                if struct is not None:
                    self.struct(member, struct, path)
                elif not takes_dict:
                    self.problems.append(f"{path}: an object ({member.__qualname__}) is refused")
            elif _is_list(member):
                items = [t.item_type for t in ours if isinstance(t, mi.ListType)]
                if not items:
                    self.problems.append(f"{path}: a list is refused")
                for item in items:
                    self.type(get_args(member)[0], item, path + "[]")
            elif get_origin(member) is Literal:
                accepted = {v for t in ours if isinstance(t, mi.LiteralType) for v in t.values}
                for value in get_args(member):
                    kind = {str: mi.StrType, bool: mi.BoolType, int: mi.IntType}[type(value)]
                    if value not in accepted and not any(isinstance(t, kind) for t in ours):
                        self.problems.append(f"{path}: the value {value!r} is refused")
            elif (get_origin(member) is dict or member is dict) and not takes_dict:
                self.problems.append(f"{path}: an object is refused")

    def struct(self, sdk: Any, struct: mi.StructType, path: str) -> None:
        if (sdk, struct.cls) in self._seen:
            return
        self._seen.add((sdk, struct.cls))
        ours = {field.encode_name: field for field in struct.fields}
        for name, (hint, required) in _fields(sdk).items():
            where = f"{path}.{name}" if path else name
            if name == struct.tag_field:
                continue
            self.checked.append(where)
            field = ours.get(name)
            if field is None:
                self.problems.append(
                    f"{where}: not a field of {struct.cls.__name__} (new in the SDK's {sdk.__qualname__})"
                )
                continue
            if field.required and not required:
                self.problems.append(f"{where}: optional in the SDK, required by {struct.cls.__name__}")
            self.type(hint, field.type, where)


def walk(sdk: Any, ours: type[msgspec.Struct]) -> Walk:
    result = Walk()
    info = mi.type_info(ours)
    assert isinstance(info, mi.StructType)
    result.struct(sdk, info, "")
    return result


def _assistant_struct() -> mi.StructType:
    info = mi.type_info(AssistantMessage)
    assert isinstance(info, mi.StructType)
    return info


@pytest.mark.parametrize(
    ("sdk", "ours"),
    [
        (completion_create_params.CompletionCreateParamsNonStreaming, ChatCompletionRequest),
        (completion_create_params.CompletionCreateParamsStreaming, ChatCompletionRequest),
        (embedding_create_params.EmbeddingCreateParams, EmbeddingRequest),
    ],
    ids=["chat", "chat-stream", "embeddings"],
)
def test_every_sdk_request_field_is_accepted(sdk: Any, ours: type[msgspec.Struct]) -> None:
    result = walk(sdk, ours)
    assert not result.problems, f"openai {openai.__version__} sends what meshgate refuses:\n" + "\n".join(
        result.problems
    )


def test_the_walk_reaches_messages_parts_and_tools() -> None:
    """The derived list is not trivially empty: it goes through the message, part and tool unions."""
    checked = set(walk(completion_create_params.CompletionCreateParamsBase, ChatCompletionRequest).checked)
    assert {
        "messages[].content[].prompt_cache_breakpoint",  # text part (system/developer/user/tool)
        "messages[].content[].image_url.detail",
        "messages[].content[].input_audio.format",
        "messages[].content[].file.file_id",
        "messages[].audio.id",
        "messages[].function_call.arguments",
        "messages[].tool_calls[].custom.input",
        "messages[].tool_calls[].function.arguments",
        "stream_options.include_obfuscation",
        "tools[].custom",
        "tools[].function.strict",
        "functions[].parameters",
        "prompt_cache_key",
        "web_search_options",
    } <= checked


class OldStreamOptions(msgspec.Struct, forbid_unknown_fields=True):
    include_usage: bool = False


class OldRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A request struct as it was before the SDK grew fields."""

    model: str
    messages: list[dict[str, Any]]
    stream_options: OldStreamOptions | None = None


def test_the_walk_finds_what_is_missing() -> None:
    """The check itself can fail: a struct without the SDK's newer fields is reported field by field."""
    problems = "\n".join(walk(completion_create_params.CompletionCreateParamsBase, OldRequest).problems)
    assert "stream_options.include_obfuscation: not a field of OldStreamOptions" in problems
    assert "prompt_cache_key: not a field of OldRequest" in problems
    assert "messages[]" not in problems  # dicts take anything


def test_every_field_of_an_sdk_answer_is_accepted_back() -> None:
    """`ChatCompletionMessage` (the SDK's response type) against our assistant message."""
    result = Walk()
    result.struct(ChatCompletionMessage, _assistant_struct(), "messages[]")
    assert "messages[].annotations" in result.checked
    assert not result.problems, "\n".join(result.problems)


# -- behaviour through the real SDK ------------------------------------------------------------

HI = [{"role": "user", "content": "hi"}]
OPTIONAL_CHAT_FIELDS = sorted(
    name for name, (_, required) in _fields(completion_create_params.CompletionCreateParamsBase).items() if not required
)


@pytest.fixture()
async def sdk(proxy_url: str, proxy_client: AppClient) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=proxy_url + "/v1", api_key=proxy_client.key or "unused", max_retries=0)
    yield client
    await client.close()


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


async def _refused(call: typing.Awaitable[Any]) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as caught:
        await call
    return caught.value


def test_the_optional_fields_are_derived() -> None:
    assert {"audio", "prompt_cache_key", "safety_identifier", "verbosity", "web_search_options"} <= set(
        OPTIONAL_CHAT_FIELDS
    )
    assert "messages" not in OPTIONAL_CHAT_FIELDS and "model" not in OPTIONAL_CHAT_FIELDS


@pytest.mark.parametrize("field", OPTIONAL_CHAT_FIELDS)
async def test_each_optional_field_takes_null(sdk: openai.AsyncOpenAI, fake_upstream: FakeOpenAI, field: str) -> None:
    before = len(fake_upstream.requests)
    result = await sdk.chat.completions.create(model="bench", messages=HI, **{field: None})
    assert result.choices[0].message.content == "echo: hi"
    assert len(fake_upstream.requests) == before + 1
    if field != "stream":  # the gateway always says whether it wants a stream
        assert field not in fake_upstream.requests[-1].body  # null is "not given": nothing to pass on


HINTS: dict[str, Any] = {
    "prompt_cache_key": "tenant-42",
    "prompt_cache_retention": "24h",
    "prompt_cache_options": {"mode": "implicit", "ttl": "30m"},
    "safety_identifier": "5f0c2e1d",
    "modalities": ["text"],
    "verbosity": "low",
    "reasoning_effort": "low",
    "service_tier": "auto",
    "prediction": {"type": "content", "content": "echo: hi"},
    "store": False,
    "metadata": {"team": "search"},
    "user": "user-7",
}


@pytest.mark.parametrize("field", sorted(HINTS))
async def test_hints_are_accepted_and_passed_on(sdk: openai.AsyncOpenAI, fake_upstream: FakeOpenAI, field: str) -> None:
    result = await sdk.chat.completions.create(model="bench", messages=HI, **{field: HINTS[field]})
    assert result.choices[0].message.content == "echo: hi"
    assert fake_upstream.requests[-1].body[field] == HINTS[field]


async def test_stream_hints_are_passed_on(sdk: openai.AsyncOpenAI, fake_upstream: FakeOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model="bench",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hi", "prompt_cache_breakpoint": {"mode": "explicit", "ttl": "30m"}}
                ],
            }
        ],
        stream=True,
        stream_options={"include_usage": True, "include_obfuscation": False},
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert text == "echo: hi" and usage is not None
    sent = fake_upstream.requests[-1].body
    assert sent["stream_options"] == {"include_usage": True, "include_obfuscation": False}
    assert sent["messages"][0]["content"][0]["prompt_cache_breakpoint"] == {"mode": "explicit", "ttl": "30m"}


async def test_an_answer_goes_back_as_the_sdk_returned_it(sdk: openai.AsyncOpenAI, fake_upstream: FakeOpenAI) -> None:
    first = await sdk.chat.completions.create(model="bench", messages=HI)
    reply = first.choices[0].message.model_dump()
    assert {"annotations", "audio", "function_call", "refusal", "tool_calls"} <= set(reply)
    second = await sdk.chat.completions.create(
        model="bench", messages=[*HI, reply, {"role": "user", "content": "again"}]
    )
    assert second.choices[0].message.content == "echo: again"
    assert fake_upstream.requests[-1].body["messages"][1] == {"role": "assistant", "content": "echo: hi"}


async def test_a_full_answer_goes_back_without_its_response_only_fields(
    sdk: openai.AsyncOpenAI, fake_upstream: FakeOpenAI
) -> None:
    """Citations and tool calls, as the SDK parses them from OpenAI, sent back as the next turn."""
    answer = ChatCompletionMessage.model_validate(
        {
            "role": "assistant",
            "content": "See the docs.",
            "refusal": None,
            "annotations": [
                {
                    "type": "url_citation",
                    "url_citation": {"start_index": 0, "end_index": 3, "title": "Docs", "url": "https://x.test"},
                }
            ],
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        }
    )
    messages: list[Any] = [
        *HI,
        answer.model_dump(),
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        {"role": "user", "content": "and?"},
    ]
    result = await sdk.chat.completions.create(model="bench", messages=messages)
    assert result.choices[0].message.content == "echo: and?"
    assert fake_upstream.requests[-1].body["messages"][1] == {
        "role": "assistant",
        "content": "See the docs.",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }


CUSTOM_TOOL = {"type": "custom", "custom": {"name": "grep", "description": "search", "format": {"type": "text"}}}
FUNCTION_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}

#: Fields the `bench` model (an openai-compatible upstream with the default capabilities) cannot honour.
CAPABILITIES: list[tuple[str, dict[str, Any], str]] = [
    ("audio", {"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"]}, "audio"),
    ("modalities", {"modalities": ["text", "audio"]}, "modalities"),
    ("functions", {"functions": [FUNCTION_TOOL["function"]]}, "functions"),
    ("function_call", {"function_call": "auto"}, "function_call"),
    ("web_search_options", {"web_search_options": {"search_context_size": "low"}}, "web_search_options"),
    ("moderation", {"moderation": {"model": "omni-moderation-latest"}}, "moderation"),
    ("custom-tool", {"tools": [FUNCTION_TOOL, CUSTOM_TOOL]}, "tools[1]"),
    (
        "custom-tool-choice",
        {"tools": [FUNCTION_TOOL], "tool_choice": {"type": "custom", "custom": {"name": "grep"}}},
        "tool_choice",
    ),
    (
        "function-message",
        {"messages": [*HI, {"role": "function", "name": "f", "content": "42"}]},
        "messages[1]",
    ),
    (
        "assistant-function_call",
        {"messages": [*HI, {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}}]},
        "messages[1].function_call",
    ),
    (
        "assistant-audio",
        {"messages": [*HI, {"role": "assistant", "content": None, "audio": {"id": "audio_1"}}]},
        "messages[1].audio",
    ),
    (
        "assistant-custom-call",
        {
            "messages": [
                *HI,
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c1", "type": "custom", "custom": {"name": "grep", "input": "x"}}],
                },
            ]
        },
        "messages[1].tool_calls[0]",
    ),
]


@pytest.mark.parametrize(("extra", "param"), [(e, p) for _, e, p in CAPABILITIES], ids=[c[0] for c in CAPABILITIES])
async def test_what_the_model_cannot_do_is_refused_by_name(
    sdk: openai.AsyncOpenAI, fake_upstream: FakeOpenAI, extra: dict[str, Any], param: str
) -> None:
    before = len(fake_upstream.requests)
    kwargs = {"model": "bench", "messages": HI, **extra}
    error = await _refused(sdk.chat.completions.create(**kwargs))
    assert error.status_code == 400
    assert error.code == "unsupported_parameter" and error.param == param, error.body
    assert len(fake_upstream.requests) == before  # refused before any upstream call


async def test_a_tool_of_one_type_needs_its_own_body(sdk: openai.AsyncOpenAI) -> None:
    bad = {"type": "custom", "function": FUNCTION_TOOL["function"]}
    error = await _refused(sdk.chat.completions.create(model="bench", messages=HI, tools=[bad]))
    assert error.code == "invalid_value" and error.param == "tools[0]"
    assert "`custom`" in error.message


@pytest.mark.parametrize(
    ("stream_usage", "expected"),
    [(True, {"include_usage": True, "include_obfuscation": False}), (False, {"include_obfuscation": False})],
)
def test_stream_options_sent_upstream(tmp_path: Path, stream_usage: bool, expected: dict[str, bool]) -> None:
    """The client's include_obfuscation passes on; include_usage is the gateway's own business."""
    config = OpenAICompatibleConfig(
        name="x",
        provider="openai-compatible",
        model="m",
        base_url="http://127.0.0.1:9/v1",
        capabilities=Capabilities(stream_usage=stream_usage),
    )
    model = OpenAICompatibleChat(config, ProviderContext(data_dir=tmp_path))
    request = msgspec.json.decode(
        b'{"model": "x", "messages": [{"role": "user", "content": "hi"}], "stream": true,'
        b' "stream_options": {"include_usage": false, "include_obfuscation": false}}',
        type=ChatCompletionRequest,
    )
    assert model._payload(request, stream=True)["stream_options"] == expected
    assert "stream_options" not in model._payload(request, stream=False)


# -- a model that declares what OpenAI serves ---------------------------------------------------

CAPABLE_YAML = """
models:
  - name: capable
    provider: openai-compatible
    model: echo
    base_url: {base_url}
    api_key: ${{TEST_UPSTREAM_KEY}}
    capabilities: {{audio_output: true, functions: true, custom_tools: true, web_search: true, moderation: true}}
"""


@pytest.fixture(scope="module")
async def capable(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeOpenAI) -> AsyncIterator[AppClient]:
    runtime = make_runtime(
        Path(tmp_path_factory.mktemp("capable")), CAPABLE_YAML.format(base_url=fake_upstream.base_url)
    )
    client = await AppClient.started(runtime)
    yield client
    await client.http.aclose()
    await runtime.stop()


@pytest.mark.parametrize(("extra", "param"), [(e, p) for _, e, p in CAPABILITIES], ids=[c[0] for c in CAPABILITIES])
async def test_a_model_that_declares_them_gets_them(
    capable: AppClient, fake_upstream: FakeOpenAI, extra: dict[str, Any], param: str
) -> None:
    response = await capable.http.post("/v1/chat/completions", json={"model": "capable", "messages": HI, **extra})
    assert response.status_code == 200, response.text
    sent = fake_upstream.requests[-1].body
    for key, value in extra.items():
        assert sent[key] == _without_nulls(value)


async def test_an_audio_answer_goes_back_with_its_id_only(capable: AppClient, fake_upstream: FakeOpenAI) -> None:
    answer = ChatCompletionMessage.model_validate(
        {
            "role": "assistant",
            "content": None,
            "audio": {"id": "audio_1", "data": "UklGRg==", "expires_at": 1_900_000_000, "transcript": "hello"},
        }
    )
    body = {"model": "capable", "messages": [*HI, answer.model_dump(), {"role": "user", "content": "more"}]}
    response = await capable.http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert fake_upstream.requests[-1].body["messages"][1] == {"role": "assistant", "audio": {"id": "audio_1"}}


# -- embeddings --------------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["", ["a", ""]], ids=["string", "in-a-list"])
async def test_an_empty_text_is_not_embedded(sdk: openai.AsyncOpenAI, fake_upstream: FakeOpenAI, given: Any) -> None:
    before = len(fake_upstream.requests)
    error = await _refused(sdk.embeddings.create(model="remote-embed", input=given))
    assert error.status_code == 400
    assert error.type == "invalid_request_error"
    assert error.code == "invalid_value" and error.param == "input"
    assert len(fake_upstream.requests) == before


@pytest.mark.parametrize("field", ["dimensions", "encoding_format", "user"])
async def test_optional_embedding_fields_take_null(sdk: openai.AsyncOpenAI, field: str) -> None:
    result = await sdk.embeddings.create(model="remote-embed", input=["a", "b"], **{field: None})
    assert [len(row.embedding) for row in result.data] == [8, 8]
    assert isinstance(result.data[0].embedding[0], float)


async def test_the_wrong_kind_of_model_is_named_with_the_right_article(sdk: openai.AsyncOpenAI) -> None:
    error = await _refused(sdk.embeddings.create(model="bench", input="x"))
    assert "is not an embedding model" in error.message and error.param == "model"
    error = await _refused(sdk.chat.completions.create(model="remote-embed", messages=HI))
    assert "is not a chat model" in error.message


# -- LangChain -------------------------------------------------------------------------------


@pytest.fixture()
def langchain_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    yield


async def test_langchain_chat_and_embeddings(
    proxy_url: str, proxy_client: AppClient, fake_upstream: FakeOpenAI, langchain_env: None
) -> None:
    """docs/clients.md's LangChain settings, end to end (offline: no tiktoken download)."""
    langchain_openai = pytest.importorskip("langchain_openai")
    key = proxy_client.key or "unused"
    # Our own HTTP client: LangChain's default one is cached per base URL and shared by every
    # ChatOpenAI of the process, so closing it would break the next test that uses LangChain.
    http = httpx.AsyncClient(timeout=30)
    chat = langchain_openai.ChatOpenAI(
        model="bench", base_url=proxy_url + "/v1", api_key=key, max_retries=0, http_async_client=http
    )
    embeddings = langchain_openai.OpenAIEmbeddings(
        model="remote-embed",
        base_url=proxy_url + "/v1",
        api_key=key,
        check_embedding_ctx_length=False,
        max_retries=0,
        http_async_client=http,
    )
    try:
        answer = await chat.ainvoke("hello there")
        assert answer.content == "echo: hello there"
        # The answer goes back as the next turn (LangChain builds the assistant message itself).
        again = await chat.ainvoke([("user", "hello there"), answer, ("user", "once more")])
        assert again.content == "echo: once more"
        pieces = [chunk.content async for chunk in chat.astream("stream this")]
        assert "".join(pieces) == "echo: stream this" and len(pieces) > 2
        vectors = await embeddings.aembed_documents(["a cat", "a dog"])
        assert [len(v) for v in vectors] == [8, 8]
        assert fake_upstream.requests[-1].body["input"] == ["a cat", "a dog"]  # texts, not tiktoken ids
        assert len(await embeddings.aembed_query("a cat")) == 8
    finally:
        await http.aclose()
