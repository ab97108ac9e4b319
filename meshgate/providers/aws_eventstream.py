"""AWS's binary event-stream framing (`application/vnd.amazon.eventstream`): a decoder and an encoder.

A message is: total length (4 bytes, big-endian), headers length (4), CRC32 of those 8 bytes (4),
the headers, the payload, and the CRC32 of everything before it (4). A header is its name's length
(1 byte), the name, a type byte and a value: 0 true, 1 false, 2 int8, 3 int16, 4 int32, 5 int64,
6 bytes and 7 string (each with a 2-byte length), 8 timestamp (int64 ms), 9 uuid (16 bytes).

`EventStreamDecoder.feed` takes bytes as they arrive, in pieces of any size, and yields the messages
they complete; a CRC that does not match or a length out of bounds raises `EventStreamError`.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

PRELUDE = 12
#: Prelude and message CRC: the smallest message (no headers, empty payload).
MIN_MESSAGE = PRELUDE + 4
#: The largest message AWS sends (the SDKs refuse anything larger).
MAX_MESSAGE = 16 * 1024 * 1024
MAX_HEADERS = 128 * 1024

HeaderValue = bool | int | bytes | str | uuid.UUID


class EventStreamError(ValueError):
    """The bytes are not a valid event stream (a CRC mismatch, a bad length or header)."""


@dataclass(frozen=True)
class EventMessage:
    headers: dict[str, HeaderValue] = field(default_factory=dict)
    payload: bytes = b""

    def header(self, name: str) -> str:
        value = self.headers.get(name)
        return value if isinstance(value, str) else ""


def _crc(data: bytes | bytearray | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _parse_headers(data: bytes) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    position = 0
    try:
        while position < len(data):
            name_length = data[position]
            position += 1
            name = data[position : position + name_length].decode("utf-8")
            position += name_length
            kind = data[position]
            position += 1
            value: HeaderValue
            if kind in (0, 1):
                value = kind == 0
            elif kind in (2, 3, 4, 5, 8):
                fmt = {2: ">b", 3: ">h", 4: ">i", 5: ">q", 8: ">q"}[kind]
                size = struct.calcsize(fmt)
                (value,) = struct.unpack_from(fmt, data, position)
                position += size
            elif kind in (6, 7):
                (length,) = struct.unpack_from(">H", data, position)
                position += 2
                raw = data[position : position + length]
                if len(raw) != length:
                    raise EventStreamError("a header value runs past the headers")
                position += length
                value = raw if kind == 6 else raw.decode("utf-8")
            elif kind == 9:
                raw = data[position : position + 16]
                if len(raw) != 16:
                    raise EventStreamError("a uuid header runs past the headers")
                value = uuid.UUID(bytes=raw)
                position += 16
            else:
                raise EventStreamError(f"unknown header type {kind}")
            if len(name) != name_length or position > len(data):
                raise EventStreamError("a header runs past the headers")
            headers[name] = value
    except (IndexError, struct.error, UnicodeDecodeError):
        raise EventStreamError("malformed headers") from None
    return headers


class EventStreamDecoder:
    """Messages out of bytes fed in pieces of any size."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message held."""
        return len(self._buffer)

    def feed(self, data: bytes) -> Iterator[EventMessage]:
        """The messages completed by `data`, in order; iterate to the end. A corrupt message raises
        when it is reached, after the good ones before it."""
        self._buffer += data
        return self._messages()

    def _messages(self) -> Iterator[EventMessage]:
        while len(self._buffer) >= PRELUDE:
            total, headers_length, prelude_crc = struct.unpack_from(">III", self._buffer, 0)
            if _crc(bytes(self._buffer[:8])) != prelude_crc:
                raise EventStreamError("prelude CRC mismatch")
            if not MIN_MESSAGE <= total <= MAX_MESSAGE or headers_length > min(MAX_HEADERS, total - MIN_MESSAGE):
                raise EventStreamError(f"bad lengths (total {total}, headers {headers_length})")
            if len(self._buffer) < total:
                return
            frame = bytes(self._buffer[:total])
            del self._buffer[:total]
            (message_crc,) = struct.unpack_from(">I", frame, total - 4)
            if _crc(frame[: total - 4]) != message_crc:
                raise EventStreamError("message CRC mismatch")
            headers = _parse_headers(frame[PRELUDE : PRELUDE + headers_length])
            yield EventMessage(headers, frame[PRELUDE + headers_length : total - 4])


def _encode_header(name: str, value: HeaderValue) -> bytes:
    raw_name = name.encode("utf-8")
    out = struct.pack(">B", len(raw_name)) + raw_name
    if isinstance(value, bool):
        return out + struct.pack(">B", 0 if value else 1)
    if isinstance(value, int):
        return out + struct.pack(">Bi", 4, value)
    if isinstance(value, uuid.UUID):
        return out + struct.pack(">B", 9) + value.bytes
    raw, kind = (value, 6) if isinstance(value, bytes) else (value.encode("utf-8"), 7)
    return out + struct.pack(">BH", kind, len(raw)) + raw


def encode_message(headers: dict[str, HeaderValue], payload: bytes) -> bytes:
    """One message: strings as type 7, bytes as 6, ints as int32, bools, uuids."""
    encoded_headers = b"".join(_encode_header(name, value) for name, value in headers.items())
    total = PRELUDE + len(encoded_headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded_headers))
    head = prelude + struct.pack(">I", _crc(prelude)) + encoded_headers + payload
    return head + struct.pack(">I", _crc(head))
