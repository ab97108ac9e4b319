"""The capability check: a request asks only for what its model's profile says it can do.

Anything else is a 400 that names the parameter; nothing is silently dropped. This reads the
profile only, so a new provider gets the right checks by declaring its profile.

Fields that do not change what a correct answer is (caching keys and breakpoints, `verbosity`,
`reasoning_effort`, `service_tier`, `prediction`, `safety_identifier`, `user`, `metadata`, `store`,
`modalities: ["text"]`, `stream_options.include_obfuscation`, names, the annotations of an answer
sent back) are hints: checked here by nobody, ignored by local models, passed on to upstreams.
"""

from __future__ import annotations

from meshgate.errors import ContextLengthExceeded, MeshError, UnsupportedParameter
from meshgate.gateway.pipeline import ORDER_CHECK_CAPABILITIES, Call, Step
from meshgate.protocol import (
    AssistantMessage,
    AudioPart,
    ChatCompletionRequest,
    EmbeddingRequest,
    FilePart,
    FunctionMessage,
    ImagePart,
    ToolMessage,
    UserMessage,
)
from meshgate.providers.base import CapabilityProfile

#: `call.notes` key set (to the error's kind) by a step that refuses a call before it goes upstream:
#: this check, authorization, rate limits, budgets. Such a call cost nothing: the budget step's `after`
#: clears the pipeline's estimate of its tokens, and its usage row is marked refused (budgets rebuilt
#: from usage leave it out). Defined here, the lowest layer the control and observe steps share.
REFUSED = "refused"


def refused(call: Call, error: MeshError) -> MeshError:
    """Mark `call` as refused before it went upstream (see REFUSED); returns the error to raise."""
    call.notes[REFUSED] = error.kind
    return error


def _refuse(model: str, what: str, param: str) -> UnsupportedParameter:
    return UnsupportedParameter(f"The model `{model}` does not support {what}.", param=param)


def check_chat(request: ChatCompletionRequest, profile: CapabilityProfile) -> None:
    model = request.model
    if request.stream and not profile.streaming:
        raise _refuse(model, "streaming", "stream")
    if request.n is not None and request.n > profile.max_choices:
        raise _refuse(model, f"n={request.n} (at most {profile.max_choices} choice per request)", "n")
    if request.stream_options is not None and not request.stream:
        raise UnsupportedParameter("stream_options is only allowed when stream is true.", param="stream_options")
    if (request.tools or request.tool_choice is not None) and not profile.tools:
        raise _refuse(model, "tools", "tools")
    if request.parallel_tool_calls is not None and not profile.tools:
        raise _refuse(model, "tools", "parallel_tool_calls")
    if not profile.custom_tools:
        for index, tool in enumerate(request.tools or ()):
            if tool.type == "custom":
                raise _refuse(model, "custom tools", f"tools[{index}]")
        if isinstance(request.tool_choice, dict) and request.tool_choice.get("type") == "custom":
            raise _refuse(model, "custom tools", "tool_choice")
    if request.functions and not profile.functions:
        raise _refuse(model, "the deprecated `functions` (send `tools`)", "functions")
    if request.function_call is not None and not profile.functions:
        raise _refuse(model, "the deprecated `function_call` (send `tool_choice`)", "function_call")
    if request.audio is not None and not profile.audio_output:
        raise _refuse(model, "audio output", "audio")
    if request.modalities and "audio" in request.modalities and not profile.audio_output:
        raise _refuse(model, "audio output", "modalities")
    if request.web_search_options is not None and not profile.web_search:
        raise _refuse(model, "web search", "web_search_options")
    if request.moderation is not None and not profile.moderation:
        raise _refuse(model, "moderation", "moderation")
    if request.response_format is not None and request.response_format.type != "text" and not profile.json_mode:
        raise _refuse(model, f"response_format {request.response_format.type}", "response_format")
    if (request.logprobs or request.top_logprobs is not None) and not profile.logprobs:
        raise _refuse(model, "logprobs", "logprobs")
    if request.logit_bias and not profile.logit_bias:
        raise _refuse(model, "logit_bias", "logit_bias")
    if (request.presence_penalty or request.frequency_penalty) and not profile.penalties:
        raise _refuse(model, "presence or frequency penalties", "presence_penalty")
    if request.seed is not None and not profile.seed:
        raise _refuse(model, "seed", "seed")
    if len(request.stop_list) > profile.max_stop_sequences:
        raise UnsupportedParameter(
            f"The model `{model}` accepts at most {profile.max_stop_sequences} stop sequences.", param="stop"
        )
    _check_output_limit(request, profile)
    for index, message in enumerate(request.messages):
        if isinstance(message, ToolMessage) and not profile.tools:
            raise _refuse(model, "tool messages", f"messages[{index}]")
        if isinstance(message, FunctionMessage) and not profile.functions:
            raise _refuse(model, "messages of the deprecated role `function` (send `tool`)", f"messages[{index}]")
        if isinstance(message, AssistantMessage):
            _check_assistant(model, message, index, profile)
        if isinstance(message, UserMessage) and not isinstance(message.content, str):
            for part_index, part in enumerate(message.content):
                param = f"messages[{index}].content[{part_index}]"
                if isinstance(part, ImagePart) and not profile.vision:
                    raise _refuse(model, "image input (it is a text model)", param)
                if isinstance(part, AudioPart) and not profile.audio:
                    raise _refuse(model, "audio input", param)
                if isinstance(part, FilePart):
                    raise _refuse(model, "file input", param)


def _check_output_limit(request: ChatCompletionRequest, profile: CapabilityProfile) -> None:
    """max_tokens / max_completion_tokens within what the model can generate: its output limit, else
    its context window (the prompt takes part of it too, but is not tokenized yet)."""
    limit = request.output_limit
    if limit is None:
        return
    param = "max_tokens" if request.max_completion_tokens is None else "max_completion_tokens"
    if profile.max_output_tokens is not None and limit > profile.max_output_tokens:
        raise UnsupportedParameter(
            f"The model `{request.model}` generates at most {profile.max_output_tokens} tokens per request "
            f"({param} is {limit}).",
            param=param,
        )
    if profile.context_window is not None and limit > profile.context_window:
        raise ContextLengthExceeded(
            f"The model `{request.model}` has a context window of {profile.context_window} tokens; "
            f"{param} ({limit}) cannot exceed it.",
            param=param,
        )


def _check_assistant(model: str, message: AssistantMessage, index: int, profile: CapabilityProfile) -> None:
    if message.tool_calls and not profile.tools:
        raise _refuse(model, "tool calls", f"messages[{index}].tool_calls")
    for call_index, tool_call in enumerate(message.tool_calls or ()):
        if tool_call.type == "custom" and not profile.custom_tools:
            raise _refuse(model, "custom tools", f"messages[{index}].tool_calls[{call_index}]")
    if message.function_call is not None and not profile.functions:
        raise _refuse(model, "the deprecated `function_call`", f"messages[{index}].function_call")
    if message.audio is not None and not profile.audio_output:
        raise _refuse(model, "audio replies", f"messages[{index}].audio")


def check_embeddings(request: EmbeddingRequest, profile: CapabilityProfile) -> None:
    model = request.model
    dimensions = request.dimensions
    fixed_size = not profile.embedding_shortening
    if dimensions is not None and dimensions != profile.embedding_dimensions and fixed_size:
        raise _refuse(
            model,
            f"dimensions={dimensions} (its vectors have {profile.embedding_dimensions})",
            "dimensions",
        )
    size = profile.embedding_dimensions
    if dimensions is not None and size is not None and dimensions > size:
        raise UnsupportedParameter(
            f"The model `{model}` makes vectors of {size} dimensions; dimensions={dimensions} cannot exceed it.",
            param="dimensions",
        )
    if request.is_token_input and not profile.embedding_token_input:
        raise _refuse(model, "token arrays as input; send text", "input")


class CapabilityCheck(Step):
    name = "check-capabilities"
    order = ORDER_CHECK_CAPABILITIES

    async def before(self, call: Call) -> None:
        assert call.model is not None
        try:
            if isinstance(call.request, ChatCompletionRequest):
                check_chat(call.request, call.model.profile)
            else:
                check_embeddings(call.request, call.model.profile)
        except MeshError as exc:
            refused(call, exc)  # nothing went upstream: the call costs nothing
            raise
