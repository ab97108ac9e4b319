"""A fake Amazon Bedrock runtime API: a real HTTP server on loopback, for tests.

It speaks Bedrock's documented wire format: `POST /model/{modelId}/converse`, `/converse-stream` and
`/invoke`, the model id percent-encoded in the path (an ARN's `/` as `%2F`, a version's `:` as `%3A`).
Every request must be signed with SigV4 for service `bedrock` in the fake's region (the fake recomputes
the signature from the bytes it received, as AWS does, and answers a wrong one with 403
InvalidSignatureException) or carry the fake's Bedrock API key as a bearer token. Errors are
`{"message": ...}` bodies with the type in `x-amzn-ErrorType` and an `x-amzn-RequestId`, at the status
Bedrock documents for the type. Streams are `application/vnd.amazon.eventstream` frames (messageStart,
contentBlockStart, contentBlockDelta, contentBlockStop, messageStop, metadata, each JSON payload with
Bedrock's `p` padding), written in pieces that split frames. Like the real API it checks the request's
shape: roles alternate starting with user, text blocks are not blank, every toolUse is answered by a
toolResult of the same id in the next turn, and toolUse/toolResult blocks need a toolConfig.

The model id (its last `/` segment, without a `:N` version) picks the behaviour:

    echo...              answers "echo: <last user text>", honouring maxTokens (words) and stopSequences;
                         after tool results it answers "results: <their texts>"
    tool-NAME            answers "Let me check." and two toolUse calls of NAME (TOOL_INPUTS), streamed in pieces
    fail-TYPE            answers the AWS error TYPE (e.g. ThrottlingException) with its documented status
    streamfail-TYPE      streams a little text, then an exception frame of TYPE
    guardrail, filtered  answers stopReason guardrail_intervened / content_filtered
    cached               as echo, with 5 cacheReadInputTokens in the usage
    cut                  streams a little text, then half a frame, then closes
    corrupt              streams a frame whose message CRC is wrong
    hang                 streams a little text, then waits until the client hangs up (counted in `disconnects`)
    amazon.titan-embed-text-v2, amazon.titan-embed-text-v1, cohere.embed-*  embeddings through /invoke

Use `FakeBedrock()` as a context manager: it serves from a background thread and records requests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import hashlib
import hmac
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from meshgate.providers.aws_eventstream import HeaderValue, encode_message
from meshgate.providers.aws_sigv4 import ALGORITHM, signature
from meshgate.testing.fake_server import FakeServer, FakeState

SERVICE = "bedrock"

#: The HTTP status Bedrock documents for each error type.
ERROR_STATUSES = {
    "AccessDeniedException": 403,
    "ResourceNotFoundException": 404,
    "ValidationException": 400,
    "ThrottlingException": 429,
    "ServiceQuotaExceededException": 400,
    "ServiceUnavailableException": 503,
    "ModelNotReadyException": 429,
    "ModelTimeoutException": 408,
    "ModelErrorException": 424,
    "ModelStreamErrorException": 424,
    "InternalServerException": 500,
    "UnrecognizedClientException": 403,
    "InvalidSignatureException": 403,
    "IncompleteSignatureException": 400,
    "MissingAuthenticationTokenException": 403,
}

SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
    "Access Key and signing method. Consult the service documentation for details."
)

#: The inputs of the fake's two tool calls.
TOOL_INPUTS = [
    {"city": "Paris, France", "units": "celsius", "note": 'say "hi" \u00e9'},
    {"city": "Rome", "days": [1, 2]},
]

#: Converse's top-level request fields.
CONVERSE_FIELDS = {
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "guardrailConfig",
    "additionalModelRequestFields",
    "additionalModelResponseFieldPaths",
    "promptVariables",
    "requestMetadata",
    "performanceConfig",
    "serviceTier",
    "outputConfig",
    "projectIdentifier",
}
INFERENCE_FIELDS = {"maxTokens", "temperature", "topP", "stopSequences"}
BLOCK_TYPES = {"text", "image", "document", "video", "toolUse", "toolResult", "guardContent", "reasoningContent"}


def json_pieces(value: Any, size: int = 7) -> list[str]:
    text = json.dumps(value)
    return [text[i : i + size] for i in range(0, len(text), size)]


@dataclass
class Recorded:
    #: The path as received, still percent-encoded.
    raw_path: str
    model_id: str
    action: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class BedrockState(FakeState):
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    api_key: str | None = None
    #: Streams whose client hung up while the fake was still writing (behaviour `hang`).
    disconnects: int = 0
    #: Every Converse answer sent (streamed ones too), in order.
    answers: list[dict[str, Any]] = field(default_factory=list)


class AwsError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message


def error_response(kind: str, message: str) -> web.Response:
    return web.json_response(
        {"message": message},
        status=ERROR_STATUSES.get(kind, 400),
        headers={
            "x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/",
            "x-amzn-RequestId": str(uuid.uuid4()),
        },
    )


# -- authentication --------------------------------------------------------------------------------


def _authenticate(state: BedrockState, request: web.Request, body: bytes) -> None:
    authorization = request.headers.get("authorization", "")
    if authorization.startswith("Bearer "):
        if state.api_key is None or not hmac.compare_digest(authorization[7:], state.api_key):
            raise AwsError("UnrecognizedClientException", "The security token included in the request is invalid.")
        return
    if not authorization.startswith(ALGORITHM + " "):
        raise AwsError("MissingAuthenticationTokenException", "Missing Authentication Token")
    fields: dict[str, str] = {}
    for part in authorization[len(ALGORITHM) + 1 :].split(","):
        name, _, value = part.strip().partition("=")
        fields[name] = value
    credential, signed, claimed = fields.get("Credential"), fields.get("SignedHeaders"), fields.get("Signature")
    amz_date = request.headers.get("x-amz-date", "")
    if not credential or not signed or not claimed or not re.fullmatch(r"\d{8}T\d{6}Z", amz_date):
        raise AwsError(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'Signature', 'SignedHeaders' and an X-Amz-Date.",
        )
    key_id, _, credential_scope = credential.partition("/")
    if state.access_key_id is None or key_id != state.access_key_id:
        raise AwsError("UnrecognizedClientException", "The security token included in the request is invalid.")
    if credential_scope != f"{amz_date[:8]}/{state.region}/{SERVICE}/aws4_request":
        raise AwsError("InvalidSignatureException", f"Credential should be scoped to {state.region}/{SERVICE}.")
    names = signed.split(";")
    if "host" not in names or "x-amz-date" not in names or names != sorted(names):
        raise AwsError("InvalidSignatureException", "host and x-amz-date must be signed, in order.")
    if state.session_token is not None and (
        "x-amz-security-token" not in names or request.headers.get("x-amz-security-token") != state.session_token
    ):
        raise AwsError("UnrecognizedClientException", "The security token included in the request is invalid.")
    moment = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    if abs((datetime.datetime.now(datetime.UTC) - moment).total_seconds()) > 300:
        raise AwsError("InvalidSignatureException", "Signature expired: the request time is too skewed.")
    headers = {name: request.headers.get(name, "") for name in names}
    raw_path, _, raw_query = request.raw_path.partition("?")
    expected, _ = signature(
        state.secret_access_key or "",
        state.region,
        SERVICE,
        amz_date,
        request.method,
        raw_path,
        raw_query,
        headers,
        hashlib.sha256(body).hexdigest(),  # what AWS hashes: the body it received
    )
    if not hmac.compare_digest(expected, claimed):
        raise AwsError("InvalidSignatureException", SIGNATURE_MISMATCH)


# -- Converse --------------------------------------------------------------------------------------


def _check_converse(body: dict[str, Any]) -> None:
    """What the real API would reject in a Converse request, raised as a ValidationException."""

    def invalid(message: str) -> AwsError:
        return AwsError("ValidationException", message)

    unknown = set(body) - CONVERSE_FIELDS
    if unknown:
        raise invalid(f"Unexpected field(s): {', '.join(sorted(unknown))}")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("The messages field is required and must not be empty.")
    if set(body.get("inferenceConfig") or {}) - INFERENCE_FIELDS:
        raise invalid("Unexpected field in inferenceConfig")
    for index, block in enumerate(body.get("system") or ()):
        if set(block) != {"text"} or not str(block["text"]).strip():
            raise invalid(f"system.{index}: a system block must be a non-blank text")
    pending: set[str] = set()
    uses_tools = False
    for index, message in enumerate(messages):
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise invalid(f"messages.{index}.role must be user or assistant")
        if role != ("user" if index % 2 == 0 else "assistant"):
            raise invalid(
                "A conversation must start with a user message and alternate between user and assistant roles."
            )
        blocks = message.get("content")
        if not isinstance(blocks, list) or not blocks:
            raise invalid(f"messages.{index}.content must be a non-empty list")
        for position, block in enumerate(blocks):
            where = f"messages.{index}.content.{position}"
            if not isinstance(block, dict) or len(block) != 1 or next(iter(block)) not in BLOCK_TYPES:
                raise invalid(f"{where}: a content block has exactly one member")
            if "text" in block and not str(block["text"]).strip():
                raise invalid(f"The text field in the ContentBlock object at {where} is blank.")
            if "image" in block:
                image = block["image"]
                if image.get("format") not in ("png", "jpeg", "gif", "webp"):
                    raise invalid(f"{where}.image.format: invalid")
                try:
                    base64.b64decode(image["source"]["bytes"], validate=True)
                except (KeyError, TypeError, binascii.Error):
                    raise invalid(f"{where}.image.source.bytes: invalid base64") from None
            if "toolUse" in block or "toolResult" in block:
                uses_tools = True
        results = {b["toolResult"].get("toolUseId") for b in blocks if "toolResult" in b}
        if pending and (role != "user" or not pending <= results):
            raise invalid(
                f"Expected toolResult blocks at messages.{index}.content for the following Ids: "
                f"{', '.join(sorted(pending))}"
            )
        if results - pending:
            raise invalid(f"messages.{index}: toolResult blocks answer no toolUse of the previous turn")
        pending = {b["toolUse"].get("toolUseId") for b in blocks if "toolUse" in b} if role == "assistant" else set()
        if role == "assistant" and any(not isinstance(b.get("toolUse", {}).get("input", {}), dict) for b in blocks):
            raise invalid(f"messages.{index}: toolUse input must be an object")
    tool_config = body.get("toolConfig")
    if uses_tools and not tool_config:
        raise invalid("The toolConfig field must be defined when using toolUse and toolResult content blocks.")
    if tool_config is not None:
        tools = tool_config.get("tools")
        if not isinstance(tools, list) or not tools:
            raise invalid("toolConfig.tools must not be empty")
        for tool in tools:
            spec = tool.get("toolSpec") or {}
            if not spec.get("name") or not isinstance((spec.get("inputSchema") or {}).get("json"), dict):
                raise invalid("toolConfig.tools: each toolSpec needs a name and inputSchema.json")
        choice = tool_config.get("toolChoice")
        if choice is not None and (len(choice) != 1 or next(iter(choice)) not in ("auto", "any", "tool")):
            raise invalid("toolConfig.toolChoice must be one of auto, any, tool")


def _texts(blocks: list[dict[str, Any]]) -> list[str]:
    return [str(b["text"]) for b in blocks if "text" in b]


def _answer(behaviour: str, arg: str, body: dict[str, Any]) -> dict[str, Any]:
    """The Converse response for a valid request."""
    messages = body["messages"]
    words_in = sum(len(t["text"].split()) for t in body.get("system") or ())
    for message in messages:
        words_in += len(" ".join(_texts(message["content"])).split()) + 3
    last = messages[-1]["content"]
    results = [b["toolResult"] for b in last if "toolResult" in b]
    stop_reason = "end_turn"
    content: list[dict[str, Any]]
    if behaviour == "tool" and not results:
        content = [{"text": "Let me check."}]
        for tool_input in TOOL_INPUTS:
            use = {"toolUseId": "tooluse_" + uuid.uuid4().hex[:22], "name": arg, "input": tool_input}
            content.append({"toolUse": use})
        stop_reason, output_tokens = "tool_use", 9
    else:
        if results:
            text = "results: " + " | ".join(" ".join(_texts(r.get("content") or [])) for r in results)
        else:
            text = "echo: " + " ".join(_texts(last))
        for sequence in (body.get("inferenceConfig") or {}).get("stopSequences") or ():
            if sequence in text:
                text, stop_reason = text[: text.index(sequence)], "stop_sequence"
        words = text.split(" ")
        limit = (body.get("inferenceConfig") or {}).get("maxTokens")
        if isinstance(limit, int) and len(words) > limit:
            words, stop_reason = words[:limit], "max_tokens"
        if behaviour == "guardrail":
            words, stop_reason = ["Sorry,", "the", "model", "cannot", "answer."], "guardrail_intervened"
        elif behaviour == "filtered":
            words, stop_reason = ["Filtered."], "content_filtered"
        content = [{"text": " ".join(words)}]
        output_tokens = len(words)
    usage = {"inputTokens": words_in, "outputTokens": output_tokens, "totalTokens": words_in + output_tokens}
    if behaviour == "cached":
        usage["cacheReadInputTokens"] = 5
        usage["totalTokens"] += 5
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop_reason,
        "usage": usage,
        "metrics": {"latencyMs": 42},
    }


def event_frame(event: str, payload: dict[str, Any]) -> bytes:
    # Bedrock pads every event with a `p` field of varying length so sizes do not reveal the tokens.
    padded = {**payload, "p": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"[: 3 + len(event) % 7]}
    headers: dict[str, HeaderValue] = {
        ":event-type": event,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode_message(headers, json.dumps(padded).encode())


def exception_frame(kind: str, message: str) -> bytes:
    headers: dict[str, HeaderValue] = {
        ":exception-type": kind[:1].lower() + kind[1:],
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_message(headers, json.dumps({"message": message}).encode())


def stream_frames(answer: dict[str, Any]) -> list[bytes]:
    """The ConverseStream events of a Converse answer."""
    frames = [event_frame("messageStart", {"role": "assistant"})]
    for index, block in enumerate(answer["output"]["message"]["content"]):
        if "text" in block:
            for position, word in enumerate(block["text"].split(" ")):
                piece = word if position == 0 else " " + word
                frames.append(event_frame("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": piece}}))
        else:
            use = block["toolUse"]
            start = {"toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}
            frames.append(event_frame("contentBlockStart", {"contentBlockIndex": index, "start": start}))
            for piece in json_pieces(use["input"]):
                delta = {"toolUse": {"input": piece}}
                frames.append(event_frame("contentBlockDelta", {"contentBlockIndex": index, "delta": delta}))
        frames.append(event_frame("contentBlockStop", {"contentBlockIndex": index}))
    frames.append(event_frame("messageStop", {"stopReason": answer["stopReason"]}))
    frames.append(event_frame("metadata", {"usage": answer["usage"], "metrics": answer["metrics"]}))
    return frames


# -- InvokeModel (embeddings) ----------------------------------------------------------------------


def fake_vector(text: str, size: int) -> list[float]:
    """A deterministic vector: element i is len(text) + i."""
    return [float(len(text) + i) for i in range(size)]


def _invoke(model_id: str, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The InvokeModel answer of an embedding model and its input token count."""
    if ".titan-embed-text-v2" in "." + model_id:
        if set(body) - {"inputText", "dimensions", "normalize", "embeddingTypes"}:
            raise AwsError("ValidationException", "Malformed input request: extraneous key")
        text = body.get("inputText")
        size = body.get("dimensions", 1024)
        if not isinstance(text, str) or not text:
            raise AwsError("ValidationException", "Malformed input request: inputText required")
        if size not in (256, 512, 1024):
            raise AwsError("ValidationException", "Malformed input request: dimensions must be 256, 512 or 1024")
        tokens = len(text.split())
        return {"embedding": fake_vector(text, size), "inputTextTokenCount": tokens}, tokens
    if ".titan-embed-text-v1" in "." + model_id:
        if set(body) != {"inputText"}:
            raise AwsError("ValidationException", "Malformed input request: only inputText")
        tokens = len(body["inputText"].split())
        return {"embedding": fake_vector(body["inputText"], 1536), "inputTextTokenCount": tokens}, tokens
    if ".cohere.embed-" in "." + model_id:
        texts = body.get("texts")
        if not isinstance(texts, list) or not 1 <= len(texts) <= 96 or body.get("input_type") is None:
            raise AwsError("ValidationException", "Malformed input request: texts (1..96) and input_type required")
        answer = {
            "id": str(uuid.uuid4()),
            "embeddings": [fake_vector(text, 1024) for text in texts],
            "texts": texts,
            "response_type": "embeddings_floats",
        }
        return answer, sum(len(text.split()) for text in texts)
    raise AwsError("ValidationException", f"The model {model_id} does not support InvokeModel embeddings here.")


# -- the app ---------------------------------------------------------------------------------------


def _behaviour(model_id: str) -> tuple[str, str]:
    name = re.sub(r":\d+$", "", model_id.rsplit("/", 1)[-1])
    behaviour, _, arg = name.partition("-")
    return behaviour, arg


def build_fake_app(state: BedrockState) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        raw_path = request.raw_path.partition("?")[0]
        segments = raw_path.split("/")
        if len(segments) != 4 or segments[1] != "model" or segments[3] not in ("converse", "converse-stream", "invoke"):
            return error_response("UnknownOperationException", "Unknown operation")
        model_id, action = unquote(segments[2]), segments[3]
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        state.requests.append(Recorded(raw_path, model_id, action, dict(request.headers), body))
        try:
            _authenticate(state, request, raw)
            if not isinstance(body, dict):
                raise AwsError("SerializationException", "Start of structure or map found where not expected.")
            behaviour, arg = _behaviour(model_id)
            if behaviour == "fail":
                raise AwsError(arg, f"fake failure {arg}")
            if action == "invoke":
                answer, tokens = _invoke(model_id, body)
                headers = {"x-amzn-RequestId": str(uuid.uuid4()), "X-Amzn-Bedrock-Input-Token-Count": str(tokens)}
                return web.json_response(answer, headers=headers)
            _check_converse(body)
        except AwsError as error:
            return error_response(error.kind, error.message)
        answer = _answer(behaviour, arg, body)
        state.answers.append(answer)
        request_id = str(uuid.uuid4())
        if action == "converse":
            return web.json_response(answer, headers={"x-amzn-RequestId": request_id})
        response = web.StreamResponse(
            headers={"content-type": "application/vnd.amazon.eventstream", "x-amzn-RequestId": request_id}
        )
        await response.prepare(request)
        frames = stream_frames(answer)
        for position, frame in enumerate(frames):
            if position == 2 and behaviour in ("streamfail", "cut", "corrupt", "hang"):
                if behaviour == "streamfail":
                    await response.write(exception_frame(arg, f"fake stream failure {arg}"))
                elif behaviour == "cut":
                    await response.write(frame[: len(frame) // 2])
                elif behaviour == "corrupt":
                    await response.write(frame[:-6] + bytes([frame[-6] ^ 0xFF]) + frame[-5:])
                else:
                    await _hang(state, request)
                    return response
                await response.write_eof()
                return response
            # Each frame goes out in two writes, so that the client sees frames split across reads.
            await response.write(frame[:9])
            await asyncio.sleep(0)
            await response.write(frame[9:])
        await response.write_eof()
        return response

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/{tail:.*}", handle)
    return app


async def _hang(state: BedrockState, request: web.Request) -> None:
    """Wait (at most 10 s) until the client closes the connection."""
    for _ in range(200):
        transport = request.transport
        if transport is None or transport.is_closing():
            state.disconnects += 1
            return
        await asyncio.sleep(0.05)


class FakeBedrock(FakeServer):
    """The fake served from a background thread: `with FakeBedrock(...) as fake: fake.base_url`."""

    thread_name = "fake-bedrock"

    def __init__(
        self,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        api_key: str | None = None,
    ) -> None:
        super().__init__()
        self.bedrock = BedrockState(
            region=region,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            session_token=session_token,
            api_key=api_key,
        )
        self.state = self.bedrock

    def build_app(self) -> web.Application:
        return build_fake_app(self.bedrock)

    @property
    def requests(self) -> list[Recorded]:
        return self.bedrock.requests

    @property
    def answers(self) -> list[dict[str, Any]]:
        return self.bedrock.answers

    @property
    def disconnects(self) -> int:
        return self.bedrock.disconnects
