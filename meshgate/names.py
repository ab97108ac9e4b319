"""The one character set for names that meshgate addresses: teams, keys, models (mesh.yaml) and,
later, knowledge banks.

A name must fit unchanged in a URL path segment (`PATCH /admin/teams/{name}`), a grant
(`model:NAME:use`, split on `:`), an allow-list pattern (`*` and `?` are wildcards) and a log line.
So: 1 to 64 ASCII letters, digits, `.`, `_` and `-`, starting with a letter or digit. It imports
nothing of meshgate, so every layer (config, control, the API) can use it.
"""

from __future__ import annotations

import re

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
NAME_MAX = 64
NAME_RULE = "use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
_NAME = re.compile(NAME_PATTERN)


def valid_name(name: object) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def name_problem(kind: str, name: object) -> str | None:
    """Why `name` cannot name a `kind` ("team name", "model name", ...), or None if it can."""
    return None if valid_name(name) else f"{kind} {name!r} is not valid: {NAME_RULE}"
