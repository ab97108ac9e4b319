"""OpenAI's Responses API (`POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`) on top of
the chat pipeline.

Each request is translated into a chat completion request (`instructions` as the first system
message, input items as messages, function tools as tools) and runs through the same pipeline as
/v1/chat/completions, with the same steps (auth, limits, budgets, capability checks, usage). The
answer is shaped into a `response` object, or streamed as the Responses API's typed events
(`response.created` ... `response.output_text.delta` ... `response.completed`).

Responses are stored (unless `store: false`) per key, in memory and in the database (see
store/responses.py), so that `previous_response_id` can continue a conversation, after a restart
and on another replica too.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import Struct
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshgate.api.bodies import decode_request, validation_error
from meshgate.api.calls import new_call, runtime_of, unless_disconnected
from meshgate.api.responses import JSONBytesResponse, clip, encode_json
from meshgate.api.sse import EventStreamResponse, SSEWriter
from meshgate.errors import InternalError, InvalidRequest, MeshError, UnsupportedParameter
from meshgate.protocol import ChatCompletionRequest
from meshgate.store.responses import ResponseStore

if TYPE_CHECKING:
    from meshgate.gateway.pipeline import Call

log = logging.getLogger("meshgate.api")


class ResponseNotFound(MeshError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"
    kind = "not_found"


class ResponsesRequest(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """POST /v1/responses: every field of the SDK's `ResponseCreateParams`. Those meshgate cannot
    honour are refused (400 `unsupported_parameter`) when given, never silently dropped."""

    model: str
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    truncation: str | None = None
    include: list[str] | None = None
    background: bool | None = None
    # Hints, passed on as in chat completions.
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    service_tier: str | None = None
    # Not supported: refused when given.
    access_programs: Any = None
    background_options: Any = None
    context_management: Any = None
    conversation: Any = None
    image: Any = None
    max_tool_calls: Any = None
    moderation: Any = None
    prompt: Any = None
    top_logprobs: Any = None


_REFUSED_WHEN_GIVEN = (
    "access_programs",
    "background_options",
    "context_management",
    "conversation",
    "image",
    "max_tool_calls",
    "moderation",
    "prompt",
    "top_logprobs",
)


def _unsupported(param: str, what: str) -> UnsupportedParameter:
    return UnsupportedParameter(f"Unsupported parameter: '{param}': {what}", param=param)


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


# -- request translation ---------------------------------------------------------------------------


def _text_of(content: Any, path: str) -> str:
    """The text of an assistant message's or a tool output's content: a string, or text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"Invalid value for '{path}': expected a string or a list of parts.", param=path)
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("output_text", "input_text", "text"):
            kind = part.get("type") if isinstance(part, dict) else None
            raise _unsupported(f"{path}[{j}].type", f"content parts of type {kind!r} are not supported here.")
        texts.append(str(part.get("text") or ""))
    return "".join(texts)


def _user_parts(content: Any, path: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"Invalid value for '{path}': expected a string or a list of parts.", param=path)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise InvalidRequest(f"Invalid value for '{path}[{j}]': expected an object.", param=f"{path}[{j}]")
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            parts.append({"type": "text", "text": part.get("text")})
        elif kind == "input_image" and part.get("image_url"):
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail") is not None:
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            file = {k: part[k] for k in ("file_id", "file_data", "filename") if part.get(k) is not None}
            parts.append({"type": "file", "file": file})
        else:
            raise _unsupported(f"{path}[{j}].type", f"content parts of type {kind!r} are not supported.")
    return parts


def _input_messages(given: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The input as chat messages. Consecutive function calls become one assistant message's tool calls."""
    if given is None:
        return []
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(given):
        path = f"input[{i}]"
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role == "assistant":
                messages.append({"role": "assistant", "content": _text_of(item.get("content"), f"{path}.content")})
            elif role in ("system", "developer"):
                messages.append({"role": role, "content": _text_of(item.get("content"), f"{path}.content")})
            elif role == "user":
                messages.append({"role": "user", "content": _user_parts(item.get("content"), f"{path}.content")})
            else:
                raise InvalidRequest(
                    f"Invalid value for '{path}.role': {clip(str(role), 40)!r}; "
                    "expected user, assistant, system or developer.",
                    param=f"{path}.role",
                    code="invalid_value",
                )
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments")},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # from the item before: one turn
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item.get("call_id"),
                    "content": _text_of(item.get("output"), f"{path}.output"),
                }
            )
        else:
            raise _unsupported(f"{path}.type", f"input items of type {clip(str(kind), 40)!r} are not supported.")
    return messages


def _chat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    result = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise _unsupported(
                f"tools[{i}].type",
                f"only function tools are supported, not {clip(str(tool.get('type')), 40)!r}.",
            )
        function = {k: v for k, v in tool.items() if k != "type" and v is not None}
        result.append({"type": "function", "function": function})
    return result


def _chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    if choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise _unsupported("tool_choice", f"tool_choice of type {clip(str(choice.get('type')), 40)!r} is not supported.")


def _response_format(text: dict[str, Any]) -> dict[str, Any] | None:
    form = text.get("format")
    if not form or form.get("type") == "text":
        return None
    if form.get("type") == "json_object":
        return {"type": "json_object"}
    if form.get("type") == "json_schema":
        schema = {k: v for k, v in form.items() if k != "type" and v is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise _unsupported("text.format.type", f"{clip(str(form.get('type')), 40)!r} is not supported.")


def _check_supported(body: ResponsesRequest) -> None:
    for name in _REFUSED_WHEN_GIVEN:
        if getattr(body, name) is not None:
            raise _unsupported(name, "meshgate does not support it.")
    if body.background:
        raise _unsupported("background", "background responses are not supported.")
    if body.include:
        raise _unsupported("include", "no extra output data can be included.")
    if body.truncation not in (None, "disabled"):
        raise _unsupported("truncation", "only `disabled` is supported.")


def _chat_request(
    body: ResponsesRequest, history: list[dict[str, Any]]
) -> tuple[ChatCompletionRequest, list[dict[str, Any]]]:
    """The chat request, and the conversation to store (history and new input, without instructions)."""
    _check_supported(body)
    conversation = history + _input_messages(body.input)
    if not conversation:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    messages = ([{"role": "system", "content": body.instructions}] if body.instructions else []) + conversation
    chat: dict[str, Any] = {"model": body.model, "messages": messages}
    if body.max_output_tokens is not None:
        chat["max_completion_tokens"] = body.max_output_tokens
    for name in ("temperature", "top_p", "parallel_tool_calls", "metadata", "user", "safety_identifier"):
        if getattr(body, name) is not None:
            chat[name] = getattr(body, name)
    for name in ("prompt_cache_key", "prompt_cache_retention", "prompt_cache_options", "service_tier"):
        if getattr(body, name) is not None:
            chat[name] = getattr(body, name)
    if body.tools:
        chat["tools"] = _chat_tools(body.tools)
    if body.tool_choice is not None:
        chat["tool_choice"] = _chat_tool_choice(body.tool_choice)
    if body.text:
        form = _response_format(body.text)
        if form is not None:
            chat["response_format"] = form
        if body.text.get("verbosity") is not None:
            chat["verbosity"] = body.text["verbosity"]
    if body.reasoning and body.reasoning.get("effort") is not None:
        chat["reasoning_effort"] = body.reasoning["effort"]
    if body.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    try:
        return msgspec.convert(chat, ChatCompletionRequest), conversation
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None


# -- response shaping ------------------------------------------------------------------------------


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _skeleton(body: ResponsesRequest, response_id: str, created: int) -> dict[str, Any]:
    """The response object before its output: what `response.created` carries."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "model": body.model,
        "output": [],
        "parallel_tool_calls": body.parallel_tool_calls if body.parallel_tool_calls is not None else True,
        "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": (body.reasoning or {}).get("effort"), "summary": None},
        "store": body.store is not False,
        "temperature": body.temperature,
        "text": body.text or {"format": {"type": "text"}},
        "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
        "tools": body.tools or [],
        "top_p": body.top_p,
        "truncation": body.truncation or "disabled",
        "usage": None,
        "user": body.user,
        "metadata": body.metadata or {},
    }


def _finish(response: dict[str, Any], finish_reason: str | None, usage: dict[str, Any]) -> None:
    response["usage"] = usage
    if finish_reason in ("length", "content_filter"):
        response["status"] = "incomplete"
        reason = "max_output_tokens" if finish_reason == "length" else "content_filter"
        response["incomplete_details"] = {"reason": reason}
    else:
        response["status"] = "completed"


def _message_item(item_id: str, parts: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": parts}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _function_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def _output_items(message: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    parts = []
    if message.get("content"):
        parts.append(_text_part(str(message["content"])))
    if message.get("refusal"):
        parts.append({"type": "refusal", "refusal": str(message["refusal"])})
    tool_calls = message.get("tool_calls") or []
    if parts or not tool_calls:
        items.append(_message_item(_new_id("msg_"), parts or [_text_part("")]))
    for call in tool_calls:
        function = call.get("function") or {}
        items.append(
            _function_item(
                _new_id("fc_"), str(call.get("id")), str(function.get("name")), str(function.get("arguments") or "")
            )
        )
    return items


def _assistant_message(output: list[dict[str, Any]]) -> dict[str, Any]:
    """The output as the assistant chat message stored for a continuation."""
    text = "".join(part.get("text", "") for item in output if item["type"] == "message" for part in item["content"])
    calls = [
        {"id": item["call_id"], "type": "function", "function": {"name": item["name"], "arguments": item["arguments"]}}
        for item in output
        if item["type"] == "function_call"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    return message


# -- streaming -------------------------------------------------------------------------------------


class _EventStream:
    """Turns chat chunks into the Responses API's events, numbered, and keeps the output for the end."""

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response
        self.seq = 0
        self.began = False
        self.output: list[dict[str, Any]] = []  # items in output order, updated as they grow
        self.open: dict[str, Any] | None = None  # the item still receiving deltas
        self.part: dict[str, Any] | None = None  # its open content part (messages)
        self.tool_items: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None

    def event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + encode_json(data) + b"\n\n"

    def _begin(self, out: list[bytes]) -> None:
        if not self.began:
            self.began = True
            out.append(self.event("response.created", response=self.response))
            out.append(self.event("response.in_progress", response=self.response))

    def _open_item(self, item: dict[str, Any], out: list[bytes]) -> None:
        self._close_item(out)
        self.open = item
        self.output.append(item)
        out.append(self.event("response.output_item.added", output_index=len(self.output) - 1, item=item))

    def _close_part(self, out: list[bytes]) -> None:
        part, item = self.part, self.open
        if part is None or item is None:
            return
        index = dict(item_id=item["id"], output_index=len(self.output) - 1, content_index=len(item["content"]) - 1)
        if part["type"] == "output_text":
            out.append(self.event("response.output_text.done", **index, text=part["text"], logprobs=[]))
        else:
            out.append(self.event("response.refusal.done", **index, refusal=part["refusal"]))
        out.append(self.event("response.content_part.done", **index, part=part))
        self.part = None

    def _close_item(self, out: list[bytes]) -> None:
        item = self.open
        if item is None:
            return
        output_index = len(self.output) - 1
        if item["type"] == "message":
            self._close_part(out)
        else:
            out.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=output_index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
        item["status"] = "completed"
        out.append(self.event("response.output_item.done", output_index=output_index, item=item))
        self.open = None

    def _text(self, kind: str, delta: str, out: list[bytes]) -> None:
        item = self.open
        if item is None or item["type"] != "message":
            item = _message_item(_new_id("msg_"), [], status="in_progress")
            self._open_item(item, out)
        if self.part is None or self.part["type"] != kind:
            self._close_part(out)
            self.part = _text_part("") if kind == "output_text" else {"type": "refusal", "refusal": ""}
            item["content"].append(self.part)
            index = dict(item_id=item["id"], output_index=len(self.output) - 1, content_index=len(item["content"]) - 1)
            out.append(self.event("response.content_part.added", **index, part=dict(self.part)))
        index = dict(item_id=item["id"], output_index=len(self.output) - 1, content_index=len(item["content"]) - 1)
        if kind == "output_text":
            self.part["text"] += delta
            out.append(self.event("response.output_text.delta", **index, delta=delta, logprobs=[]))
        else:
            self.part["refusal"] += delta
            out.append(self.event("response.refusal.delta", **index, delta=delta))

    def _tool_call(self, call: dict[str, Any], out: list[bytes]) -> None:
        position = int(call.get("index") or 0)
        function = call.get("function") or {}
        item = self.tool_items.get(position)
        if item is None:
            call_id, name = str(call.get("id") or _new_id("call_")), str(function.get("name") or "")
            item = _function_item(_new_id("fc_"), call_id, name, "", "in_progress")
            self.tool_items[position] = item
            self._open_item(item, out)
        elif item is not self.open:
            return  # a late delta of a call already closed: cannot happen with OpenAI's streams
        if function.get("arguments"):
            item["arguments"] += function["arguments"]
            out.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=len(self.output) - 1,
                    delta=function["arguments"],
                )
            )

    def encode(self, chunk: dict[str, Any]) -> bytes | None:
        out: list[bytes] = []
        self._begin(out)
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self._text("output_text", str(delta["content"]), out)
            if delta.get("refusal"):
                self._text("refusal", str(delta["refusal"]), out)
            for call in delta.get("tool_calls") or ():
                self._tool_call(call, out)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return b"".join(out) or None

    def end(self, usage: dict[str, Any]) -> bytes:
        out: list[bytes] = []
        self._begin(out)
        self._close_item(out)
        if not self.output:  # no output at all: still one (empty) message, as OpenAI answers
            self._text("output_text", "", out)
            self._close_item(out)
        self.response["output"] = self.output
        _finish(self.response, self.finish_reason, usage)
        kind = "response.completed" if self.response["status"] == "completed" else "response.incomplete"
        out.append(self.event(kind, response=self.response))
        return b"".join(out)

    def fail(self, call: Call) -> Callable[[Exception], bytes]:
        def failure(error: Exception) -> bytes:
            if isinstance(error, MeshError):
                log.warning("stream %s failed: %s (%s)", call.request_id, clip(error.message), error.kind)
            else:
                log.error("stream %s failed unexpectedly", call.request_id, exc_info=error)
                error = InternalError(call.request_id)
            body = error.body()["error"]
            out = [self.event("error", code=body["code"], message=body["message"], param=body["param"])]
            self.response["status"] = "failed"
            self.response["output"] = self.output
            self.response["error"] = {"code": body["code"] or error.kind, "message": body["message"]}
            out.append(self.event("response.failed", response=self.response))
            return b"".join(out)

        return failure


# -- routes ----------------------------------------------------------------------------------------


def _store(request: Request) -> ResponseStore:
    """The runtime's store: in memory, and on its database once started."""
    return runtime_of(request).responses


def _owner(request: Request) -> str:
    principal = getattr(request.state, "principal", None)
    return str(getattr(principal, "key_id", "anonymous"))


def _not_found(response_id: str, param: str | None = None) -> ResponseNotFound:
    return ResponseNotFound(f"Response with id '{clip(response_id, 80)}' not found.", param=param)


async def create_response(request: Request) -> Response:
    runtime = runtime_of(request)
    body = await decode_request(request, ResponsesRequest, runtime.settings.max_body_bytes)
    store, owner = _store(request), _owner(request)
    history: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        previous = await store.get(owner, body.previous_response_id)
        if previous is None:
            raise _not_found(body.previous_response_id, "previous_response_id")
        history = previous.messages
    chat, conversation = _chat_request(body, history)
    call = new_call(request, "chat.completions", chat)
    response = _skeleton(body, _new_id("resp_"), int(time.time()))

    def keep(output: list[dict[str, Any]]) -> None:
        if body.store is not False:
            store.put(owner, response, [*conversation, _assistant_message(output)])

    if not body.stream:
        result = await unless_disconnected(request, runtime.pipeline.complete(call))
        choice = (result.get("choices") or [{}])[0]
        response["output"] = _output_items(choice.get("message") or {})
        usage = result.get("usage") or {}
        prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        _finish(response, choice.get("finish_reason"), _usage(prompt, completion))
        keep(response["output"])
        return JSONBytesResponse(response, headers=call.response_headers)

    events = _EventStream(response)

    async def produce(writer: SSEWriter) -> None:
        await runtime.pipeline.stream(call, writer)
        writer.write(events.end(_usage(call.prompt_tokens, call.completion_tokens)))
        keep(events.output)

    return EventStreamResponse(  # type: ignore[return-value]
        produce, events.encode, events.fail(call), b"", headers=call.response_headers
    )


async def get_response(request: Request) -> Response:
    entry = await _store(request).get(_owner(request), request.path_params["response_id"])
    if entry is None:
        raise _not_found(request.path_params["response_id"])
    return JSONBytesResponse(entry.response)


async def delete_response(request: Request) -> Response:
    response_id = request.path_params["response_id"]
    if not await _store(request).delete(_owner(request), response_id):
        raise _not_found(response_id)
    return JSONBytesResponse({"id": response_id, "object": "response.deleted", "deleted": True})


ROUTES = [
    Route("/v1/responses", create_response, methods=["POST"]),
    Route("/v1/responses/{response_id}", get_response, methods=["GET"]),
    Route("/v1/responses/{response_id}", delete_response, methods=["DELETE"]),
]
