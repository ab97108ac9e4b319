"""multipart/form-data bodies, parsed in a worker thread (the parse grows with the upload).

The body is read first under the route's byte limit; then `python-multipart` (the parser Starlette
uses) splits it into parts. Files come back as bytes with their file name and content type, plain
fields as strings. Malformed bodies are a 400 naming the problem.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header

from meshgate.errors import InvalidRequest

MAX_PARTS = 1000


@dataclass
class UploadedFile:
    field: str
    filename: str
    content_type: str | None
    data: bytes


@dataclass
class FormData:
    files: list[UploadedFile] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)


def boundary_of(content_type_header: str) -> bytes:
    kind, options = parse_options_header(content_type_header)
    if kind != b"multipart/form-data":
        raise InvalidRequest("Expected multipart/form-data.", code="invalid_multipart")
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidRequest("The multipart/form-data content type has no boundary.", code="invalid_multipart")
    return boundary


def parse_form(body: bytes, boundary: bytes) -> FormData:
    form = FormData()
    headers: dict[bytes, bytes] = {}
    header_field = bytearray()
    header_value = bytearray()
    data = bytearray()
    parts = 0

    def on_part_begin() -> None:
        nonlocal parts
        parts += 1
        if parts > MAX_PARTS:
            raise InvalidRequest(f"The form has more than {MAX_PARTS} parts.", code="invalid_multipart")
        headers.clear()
        data.clear()

    def on_header_field(chunk: bytes, start: int, end: int) -> None:
        header_field.extend(chunk[start:end])

    def on_header_value(chunk: bytes, start: int, end: int) -> None:
        header_value.extend(chunk[start:end])

    def on_header_end() -> None:
        headers[bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_part_data(chunk: bytes, start: int, end: int) -> None:
        data.extend(chunk[start:end])

    def on_part_end() -> None:
        _, options = parse_options_header(headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if filename is not None:
            content_type = headers.get(b"content-type")
            form.files.append(
                UploadedFile(
                    name,
                    filename.decode("utf-8", "replace"),
                    content_type.decode("latin-1") if content_type else None,
                    bytes(data),
                )
            )
        else:
            form.fields[name] = bytes(data).decode("utf-8", "replace")

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except InvalidRequest:
        raise
    except Exception as exc:
        raise InvalidRequest(f"The multipart/form-data body is malformed ({exc}).", code="invalid_multipart") from None
    return form


async def read_form(body: bytes, content_type_header: str) -> FormData:
    boundary = boundary_of(content_type_header)
    return await asyncio.to_thread(parse_form, body, boundary)
