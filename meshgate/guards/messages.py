"""The texts of a chat request, where each came from, and the request with some of them rewritten.

`texts_of` and `rewrite` walk the request in the same order, so a redaction found for the n-th text
is written back into the n-th text: message contents and their text parts, assistant tool-call
arguments (JSON strings), tool and function results. Images, audio and files are not text; they pass
as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from msgspec import structs

from meshgate.guards.findings import Source
from meshgate.protocol import (
    AssistantMessage,
    ChatCompletionRequest,
    DeveloperMessage,
    FunctionCall,
    Message,
    SystemMessage,
    TextPart,
    UserMessage,
)


@dataclass(frozen=True, slots=True)
class Text:
    text: str
    source: Source
    #: True for tool-call arguments: a JSON document, where restored values must be escaped.
    json: bool = False


def _source(message: Message) -> Source:
    if isinstance(message, SystemMessage | DeveloperMessage):
        return "system"
    if isinstance(message, UserMessage):
        return "user"
    if isinstance(message, AssistantMessage):
        return "assistant"
    return "tool"  # ToolMessage, FunctionMessage


def _walk(request: ChatCompletionRequest, edit: Callable[[Text], str | None]) -> list[Message] | None:
    """Call `edit` on every text in order; where it returns a new text, rebuild that message.
    Returns the new message list, or None when nothing changed."""
    changed = False
    messages: list[Message] = []
    for message in request.messages:
        source = _source(message)
        updates: dict[str, Any] = {}
        content = getattr(message, "content", None)
        if isinstance(content, str):
            new = edit(Text(content, source))
            if new is not None:
                updates["content"] = new
        elif isinstance(content, list):
            parts: list[Any] = []
            for part in content:
                if isinstance(part, TextPart):
                    new = edit(Text(part.text, source))
                    parts.append(part if new is None else structs.replace(part, text=new))
                else:
                    parts.append(part)
            if any(a is not b for a, b in zip(parts, content, strict=True)):
                updates["content"] = parts
        if isinstance(message, AssistantMessage):
            if message.tool_calls:
                calls = []
                for call in message.tool_calls:
                    function = call.function
                    new = edit(Text(function.arguments, "assistant", json=True)) if function is not None else None
                    calls.append(
                        call
                        if new is None or function is None
                        else structs.replace(call, function=FunctionCall(function.name, new))
                    )
                if any(a is not b for a, b in zip(calls, message.tool_calls, strict=True)):
                    updates["tool_calls"] = calls
            if message.function_call is not None:
                new = edit(Text(message.function_call.arguments, "assistant", json=True))
                if new is not None:
                    updates["function_call"] = FunctionCall(message.function_call.name, new)
        if updates:
            changed = True
            messages.append(structs.replace(message, **updates))
        else:
            messages.append(message)
    return messages if changed else None


def texts_of(request: ChatCompletionRequest) -> list[Text]:
    found: list[Text] = []

    def take(text: Text) -> None:
        found.append(text)

    _walk(request, take)
    return found


def rewrite(request: ChatCompletionRequest, replacements: dict[int, str]) -> ChatCompletionRequest:
    """The request with the n-th text (in `texts_of` order) replaced by `replacements[n]`."""
    counter = iter(range(1 << 62))

    def edit(_text: Text) -> str | None:
        return replacements.get(next(counter))

    messages = _walk(request, edit)
    return request if messages is None else structs.replace(request, messages=messages)
