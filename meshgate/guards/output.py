"""Guards on the way back: what the model wrote is checked, masked, blocked or held, and the client's
own values come back in place of their placeholders.

A whole answer is checked at once. A stream is checked as it comes, in stretches: text is released
once a stretch is long enough to judge, up to a word boundary, holding back the last few dozen
characters so that a value split over chunks (an email, a phone number) is judged whole. With a
`review` rule the stream is held complete (the client gets the 202, nothing streamed).
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from meshgate.guards.engine import ActiveRule, Guards, Outcome
from meshgate.guards.findings import ScanContext
from meshgate.guards.messages import Text
from meshgate.guards.vault import StreamRestorer, Vault, mask

#: A stream's text is judged once this much waits, and this much is kept back for the next stretch.
STRETCH = 160
KEEP_BACK = 48

#: Called with an answer the rules decided (block, review): raises the refusal or the review hold.
Decide = Callable[[Outcome, dict[str, Any] | None], Awaitable[None]]


@dataclass
class _Choice:
    pending: str = ""
    restorer: StreamRestorer | None = None
    tools: dict[int, StreamRestorer] = field(default_factory=dict)


class OutputGuard:
    """One call's output transform (the pipeline's `call.output`)."""

    def __init__(
        self,
        guards: Guards,
        rules: dict[str, list[ActiveRule]],
        vault: Vault,
        system_prompt: str,
        decide: Decide,
        holds: bool,
        released: bool = False,
    ) -> None:
        self.guards = guards
        self.rules = rules
        self.vault = vault
        self.context = ScanContext("output", "output", system_prompt)
        self.decide = decide
        self.hold_stream = holds
        #: A call a reviewer approved: review rules flag instead of holding it again.
        self.review_as = "flag" if released else "review"

    # -- a whole answer -------------------------------------------------------------------------

    async def complete(self, result: dict[str, Any]) -> dict[str, Any]:
        """The answer as the client gets it: checked (block/review raise), masked, restored."""
        result = copy.deepcopy(result)  # the raw answer may be cached: never edit it
        choices = result.get("choices") or []
        texts = [str((c.get("message") or {}).get("content") or "") for c in choices]
        if self.rules:
            outcome = await self.guards.scan(
                [Text(t, "output") for t in texts], self.rules, self.context, self.review_as
            )
            spans = outcome.redactions()
            texts = [mask(text, spans.get(i, ())) for i, text in enumerate(texts)]
        else:
            outcome = Outcome()
        for choice, text in zip(choices, texts, strict=True):
            message = choice.get("message") or {}
            if message.get("content") is not None:
                message["content"] = self.vault.restore(text)
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                if isinstance(function.get("arguments"), str):
                    function["arguments"] = self.vault.restore(function["arguments"], json_string=True)
        await self.decide(outcome, result)
        return result

    # -- a stream -------------------------------------------------------------------------------

    def stream(self, chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        return self._held(chunks) if self.hold_stream else self._flowing(chunks)

    async def _held(self, chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        """The whole stream first, judged as one answer; then replayed, masked and restored."""
        collected = [chunk async for chunk in chunks]
        answer = assemble(collected)
        texts = [str((c.get("message") or {}).get("content") or "") for c in answer["choices"]]
        outcome = await self.guards.scan([Text(t, "output") for t in texts], self.rules, self.context, self.review_as)
        spans = outcome.redactions()
        final = [self.vault.restore(mask(text, spans.get(i, ()))) for i, text in enumerate(texts)]
        released = copy.deepcopy(answer)
        for choice, text in zip(released["choices"], final, strict=True):
            if choice["message"].get("content") is not None:
                choice["message"]["content"] = text
        await self.decide(outcome, released)
        # Replayed with each choice's whole (checked) text in its first content chunk.
        done: set[int] = set()
        for chunk in collected:
            chunk = copy.deepcopy(chunk)
            keep = True
            for choice in chunk.get("choices") or ():
                index = int(choice.get("index") or 0)
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    if index in done:
                        delta["content"] = ""
                        keep = _carries_more(chunk)
                    else:
                        done.add(index)
                        delta["content"] = final[index] if index < len(final) else delta["content"]
                self._restore_tools(choice)
            if keep:
                yield chunk

    async def _flowing(self, chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        states: dict[int, _Choice] = {}
        try:
            async for chunk in chunks:
                out = await self._transform(chunk, states)
                if out is not None:
                    yield out
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    async def _transform(self, chunk: dict[str, Any], states: dict[int, _Choice]) -> dict[str, Any] | None:
        choices = chunk.get("choices")
        if not choices:
            return chunk
        chunk = dict(chunk)
        chunk["choices"] = [dict(c) for c in choices]
        emptied = True
        for choice in chunk["choices"]:
            index = int(choice.get("index") or 0)
            state = states.setdefault(index, _Choice())
            delta = choice.get("delta")
            final = bool(choice.get("finish_reason"))
            if isinstance(delta, dict):
                delta = choice["delta"] = dict(delta)
                piece = delta.get("content")
                if isinstance(piece, str) or final:
                    state.pending += piece or ""
                    released = await self._release(state, final)
                    if isinstance(piece, str) or released:
                        delta["content"] = released
                self._restore_tools(choice, state)
                if delta.get("content") or any(k != "content" for k in delta):
                    emptied = False
            if final or choice.get("logprobs"):
                emptied = False
        if emptied and not chunk.get("usage"):
            return None  # nothing to say yet: the text is held for the next stretch
        return chunk

    async def _release(self, state: _Choice, final: bool) -> str:
        if state.restorer is None:
            state.restorer = StreamRestorer(self.vault)
        if not self.rules:
            text, state.pending = state.pending, ""
            return state.restorer.feed(text) + (state.restorer.finish() if final else "")
        if not final and len(state.pending) < STRETCH:
            return ""
        pending = state.pending
        outcome = await self.guards.scan(
            [Text(pending, "output")], self.rules, self.context, "block" if self.review_as == "review" else "flag"
        )
        await self.decide(outcome, None)
        spans = outcome.redactions().get(0, [])
        cut = len(pending)
        if not final:
            boundary = max(
                pending.rfind(" ", 0, len(pending) - KEEP_BACK), pending.rfind("\n", 0, len(pending) - KEEP_BACK)
            )
            cut = boundary + 1 if boundary >= 0 else 0
            for span in spans:
                if span.start < cut < span.end:
                    cut = span.start
        released = mask(pending[:cut], [s for s in spans if s.end <= cut])
        state.pending = pending[cut:]
        return state.restorer.feed(released) + (state.restorer.finish() if final else "")

    def _restore_tools(self, choice: dict[str, Any], state: _Choice | None = None) -> None:
        if not self.vault:
            return
        delta = choice.get("delta") or {}
        calls = delta.get("tool_calls")
        if not calls:
            return
        delta["tool_calls"] = calls = [dict(c) for c in calls]
        for position, call in enumerate(calls):
            function = call.get("function")
            if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
                continue
            call["function"] = function = dict(function)
            if state is None:
                function["arguments"] = self.vault.restore(function["arguments"], json_string=True)
                continue
            restorer = state.tools.setdefault(
                int(call.get("index", position)), StreamRestorer(self.vault, json_string=True)
            )
            function["arguments"] = restorer.feed(function["arguments"])
            if choice.get("finish_reason"):
                function["arguments"] += restorer.finish()


def _carries_more(chunk: dict[str, Any]) -> bool:
    if chunk.get("usage"):
        return True
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if choice.get("finish_reason") or any(k != "content" for k in delta) or delta.get("content"):
            return True
    return False


def assemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """A stream's chunks as one chat.completion (what a reviewer reads and a client fetches)."""
    first = chunks[0] if chunks else {}
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or ():
            index = int(choice.get("index") or 0)
            into = choices.setdefault(
                index, {"index": index, "message": {"role": "assistant", "content": None}, "finish_reason": None}
            )
            delta = choice.get("delta") or {}
            if delta.get("content"):
                into["message"]["content"] = (into["message"]["content"] or "") + delta["content"]
            for call in delta.get("tool_calls") or ():
                calls = into["message"].setdefault("tool_calls", [])
                position = int(call.get("index", len(calls)))
                while len(calls) <= position:
                    calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
                target = calls[position]
                target["id"] = call.get("id") or target["id"]
                function = call.get("function") or {}
                target["function"]["name"] += function.get("name") or ""
                target["function"]["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                into["finish_reason"] = choice["finish_reason"]
    result: dict[str, Any] = {
        "id": first.get("id", ""),
        "object": "chat.completion",
        "created": first.get("created", 0),
        "model": first.get("model", ""),
        "choices": [choices[i] for i in sorted(choices)],
    }
    if usage:
        result["usage"] = usage
    return result
