"""The two AWS wire pieces the bedrock provider writes by hand: SigV4 signing and event-stream framing.

SigV4 is checked against AWS's published signature test suite and against botocore's own signer;
the event-stream codec against AWS's published empty-message vector, every header type, frames split
at every byte, and corrupt CRCs.
"""

from __future__ import annotations

import datetime
import hashlib
import struct
import uuid
import zlib

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from meshgate.providers.aws_eventstream import EventMessage, EventStreamDecoder, EventStreamError, encode_message
from meshgate.providers.aws_sigv4 import Credentials, SigV4Signer, canonical_request, host_of, signature, uri_encode

#: The credentials, date, region and service of AWS's SigV4 test suite (aws-sig-v4-test-suite).
SUITE_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SUITE_DATE = "20150830T123600Z"
EMPTY_HASH = hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize(
    ("name", "method", "path", "query", "expected"),
    [
        ("get-vanilla", "GET", "/", "", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
        (
            "get-vanilla-query-order-key-case",
            "GET",
            "/",
            "Param2=value2&Param1=value1",
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        ),
        ("get-utf8", "GET", "/\u1234", "", "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"),
        ("post-vanilla", "POST", "/", "", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
        (
            "post-vanilla-query",
            "POST",
            "/",
            "Param1=value1",
            "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11",
        ),
    ],
)
def test_aws_sigv4_test_suite(name: str, method: str, path: str, query: str, expected: str) -> None:
    headers = {"Host": "example.amazonaws.com", "X-Amz-Date": SUITE_DATE}
    hex_signature, signed = signature(
        SUITE_SECRET, "us-east-1", "service", SUITE_DATE, method, path, query, headers, EMPTY_HASH
    )
    assert signed == "host;x-amz-date"
    assert hex_signature == expected, name


ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0"


@pytest.mark.parametrize("model_id", ["anthropic.claude-3-haiku-20240307-v1:0", ARN])
@pytest.mark.parametrize("token", [None, "FQoGZXIvYXdzEJr//////////wEaDOzyZ+tOKEN="])
def test_signer_matches_botocore(model_id: str, token: str | None) -> None:
    """meshgate's headers carry the signature botocore computes for the same request and instant."""
    url = f"https://bedrock-runtime.eu-west-3.amazonaws.com/model/{uri_encode(model_id)}/converse"
    body = b'{"messages":[{"role":"user","content":[{"text":"hi \\u00e9"}]}]}'
    now = datetime.datetime(2026, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)
    ours = SigV4Signer(Credentials("AKIDEXAMPLE", SUITE_SECRET, token), "eu-west-3", "bedrock").headers(
        "POST", url, body, now
    )
    assert ours["x-amz-date"] == "20260304T050607Z"
    assert ours["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()
    assert ours["host"] == "bedrock-runtime.eu-west-3.amazonaws.com"
    expected_names = "host;x-amz-content-sha256;x-amz-date" + (";x-amz-security-token" if token else "")
    assert f"SignedHeaders={expected_names}," in ours["authorization"]

    # botocore signs the same headers (it signs every header it is given, and adds the token itself).
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={"host": ours["host"], "x-amz-content-sha256": ours["x-amz-content-sha256"]},
    )
    request.context["timestamp"] = ours["x-amz-date"]
    auth = SigV4Auth(BotoCredentials("AKIDEXAMPLE", SUITE_SECRET, token), "bedrock", "eu-west-3")
    request.headers["X-Amz-Date"] = ours["x-amz-date"]
    if token:
        request.headers["X-Amz-Security-Token"] = token
    canonical = auth.canonical_request(request)
    to_sign = auth.string_to_sign(request, canonical)
    expected = auth.signature(to_sign, request)
    assert ours["authorization"].endswith(f"Signature={expected}")
    assert canonical == canonical_request("POST", request.url.split(".com", 1)[1], "", _signed(ours), _hash(body))[0]


def _signed(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != "authorization"}


def _hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def test_model_id_path_is_encoded_then_encoded_again_in_the_canonical_request() -> None:
    assert uri_encode(ARN) == (
        "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2F"
        "us.anthropic.claude-3-haiku-20240307-v1%3A0"
    )
    canonical, signed = canonical_request(
        "POST", f"/model/{uri_encode('m.x-v1:0')}/converse", "", {"Host": "h", "X-Amz-Date": SUITE_DATE}, EMPTY_HASH
    )
    assert canonical.split("\n")[:2] == ["POST", "/model/m.x-v1%253A0/converse"]
    assert signed == "host;x-amz-date"


def test_host_header_of_a_url() -> None:
    assert (
        host_of("https://bedrock-runtime.us-east-1.amazonaws.com/model/x") == "bedrock-runtime.us-east-1.amazonaws.com"
    )
    assert host_of("https://Example.com:443/") == "example.com"
    assert host_of("http://127.0.0.1:8123/model") == "127.0.0.1:8123"


# -- event stream ----------------------------------------------------------------------------------


def test_empty_message_vector() -> None:
    """AWS's published `empty_message` vector: 16 bytes, prelude CRC 0x05c248eb, message CRC 0x7d98c8ff."""
    encoded = encode_message({}, b"")
    assert encoded == bytes.fromhex("000000100000000005c248eb7d98c8ff")
    assert list(EventStreamDecoder().feed(encoded)) == [EventMessage({}, b"")]


def test_round_trip_of_every_header_type() -> None:
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    headers = {
        ":event-type": "contentBlockDelta",
        "yes": True,
        "no": False,
        "count": -7,
        "blob": b"\x00\x01\xff",
        "id": ident,
    }
    payload = b'{"contentBlockIndex":0,"delta":{"text":"h\xc3\xa9"}}'
    frame = encode_message(headers, payload)
    (decoded,) = list(EventStreamDecoder().feed(frame))
    assert decoded.headers == headers and decoded.payload == payload
    assert decoded.header(":event-type") == "contentBlockDelta"
    assert decoded.header("count") == "" and decoded.header("missing") == ""


def _raw_header(name: bytes, kind: int, value: bytes) -> bytes:
    return bytes([len(name)]) + name + bytes([kind]) + value


def test_decodes_the_integer_and_timestamp_header_types() -> None:
    raw = (
        _raw_header(b"b", 2, struct.pack(">b", -2))
        + _raw_header(b"s", 3, struct.pack(">h", 300))
        + _raw_header(b"l", 5, struct.pack(">q", 2**40))
        + _raw_header(b"t", 8, struct.pack(">q", 1700000000000))
    )
    total = 12 + len(raw) + 4
    prelude = struct.pack(">II", total, len(raw))
    head = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw
    (message,) = list(EventStreamDecoder().feed(head + struct.pack(">I", zlib.crc32(head))))
    assert message.headers == {"b": -2, "s": 300, "l": 2**40, "t": 1700000000000}


def test_frames_split_at_every_byte() -> None:
    frames = [encode_message({":event-type": f"e{i}"}, f'{{"n":{i}}}'.encode()) for i in range(3)]
    stream = b"".join(frames)
    decoder = EventStreamDecoder()
    seen: list[EventMessage] = []
    for i in range(len(stream)):
        seen += decoder.feed(stream[i : i + 1])
        if i < len(frames[0]) - 1:
            assert seen == [] and decoder.pending == i + 1
    assert [m.header(":event-type") for m in seen] == ["e0", "e1", "e2"]
    assert [m.payload for m in seen] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert decoder.pending == 0
    # Two frames and a half in one read: two out, the half kept.
    decoder = EventStreamDecoder()
    assert len(list(decoder.feed(stream[: len(frames[0]) + len(frames[1]) + 5]))) == 2
    assert decoder.pending == 5


def test_corrupt_frames_are_refused() -> None:
    frame = bytearray(encode_message({":event-type": "messageStop"}, b'{"stopReason":"end_turn"}'))
    bad_payload = bytes(frame[:-6]) + bytes([frame[-6] ^ 1]) + bytes(frame[-5:])
    with pytest.raises(EventStreamError, match="message CRC"):
        list(EventStreamDecoder().feed(bad_payload))
    bad_prelude = bytes([frame[0], frame[1], frame[2], frame[3] ^ 1]) + bytes(frame[4:])
    with pytest.raises(EventStreamError, match="prelude CRC"):
        list(EventStreamDecoder().feed(bad_prelude))
    # A prelude CRC is checked as soon as the prelude is in, before the rest arrives.
    with pytest.raises(EventStreamError, match="prelude CRC"):
        list(EventStreamDecoder().feed(bad_prelude[:12]))
    # Good messages before a corrupt one, in the same read, come out before the error.
    good = encode_message({":event-type": "messageStart"}, b"{}")
    messages = EventStreamDecoder().feed(good + bad_payload)
    assert next(messages).header(":event-type") == "messageStart"
    with pytest.raises(EventStreamError, match="message CRC"):
        next(messages)
    # Lengths out of bounds, with a valid prelude CRC.
    for total, headers_length in ((8, 0), (32 * 1024 * 1024, 0), (20, 10)):
        prelude = struct.pack(">II", total, headers_length)
        with pytest.raises(EventStreamError, match="bad lengths"):
            list(EventStreamDecoder().feed(prelude + struct.pack(">I", zlib.crc32(prelude))))
    # An unknown header type inside a frame whose CRCs are right.
    raw = _raw_header(b"x", 42, b"")
    prelude = struct.pack(">II", 12 + len(raw) + 4, len(raw))
    head = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw
    with pytest.raises(EventStreamError, match="unknown header type 42"):
        list(EventStreamDecoder().feed(head + struct.pack(">I", zlib.crc32(head))))
