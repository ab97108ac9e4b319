"""Stored responses of the Responses API (`previous_response_id`, `GET /v1/responses/{id}`).

In memory, per process, bounded by count and by bytes: the least recently used response goes first.
Each entry belongs to the key that made it; a lookup by another key finds nothing (a 404, the same
as an unknown id), so ids never leak across keys. A restart, or another meshgate replica, does not
know the responses of this one.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from meshgate.api.responses import encode_json

#: At most this many responses are kept...
MAX_RESPONSES = 10_000
#: ...and at most this many bytes of them (their JSON size), all keys together.
MAX_BYTES = 64 * 1024 * 1024


@dataclass
class StoredResponse:
    owner: str
    #: The conversation up to and including this response, as chat messages (no instructions).
    messages: list[dict[str, Any]]
    #: The response object as it was returned.
    response: dict[str, Any]
    size: int


class ResponseStore:
    def __init__(self, max_responses: int = MAX_RESPONSES, max_bytes: int = MAX_BYTES) -> None:
        self.max_responses, self.max_bytes = max_responses, max_bytes
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, owner: str, response: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        size = len(encode_json(messages)) + len(encode_json(response))
        if size > self.max_bytes:
            return  # larger than the whole store: not kept (a later continuation is a 404)
        self.delete(owner, str(response["id"]))
        self._entries[str(response["id"])] = StoredResponse(owner, messages, response, size)
        self.bytes += size
        while len(self._entries) > self.max_responses or self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.size

    def get(self, owner: str, response_id: str) -> StoredResponse | None:
        entry = self._entries.get(response_id)
        if entry is None or entry.owner != owner:
            return None
        self._entries.move_to_end(response_id)
        return entry

    def delete(self, owner: str, response_id: str) -> bool:
        entry = self._entries.get(response_id)
        if entry is None or entry.owner != owner:
            return False
        del self._entries[response_id]
        self.bytes -= entry.size
        return True
