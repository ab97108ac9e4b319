"""Who may read a document: ACL strings, and the principal tokens of a caller.

An ACL is a comma-separated list of `public`, `team:<name>`, `user:<name>` and `group:<name>`
(`--acl team:hr,group:managers`). A caller reads a chunk when one of its tokens is in the chunk's
ACL: every key of the mesh holds `public`; a key holds `team:<its team>` and `user:<its name>`; an
OIDC caller holds `team:<team claim>`, `user:<subject>` and `group:<g>` for each group claim.

Admins manage banks but read only what an ACL grants them; reading everything is a separate,
explicit and audited request (`Readers.everyone()`).
"""

from __future__ import annotations

from meshgate.control.policy import Principal
from meshgate.knowledge.index.base import Readers

PUBLIC = "public"
KINDS = ("team", "user", "group")
MAX_ENTRIES = 64
MAX_NAME = 128


class AclError(ValueError):
    """An ACL string that does not parse; the message says which entry and why."""


def parse_acl(text: str | list[str] | tuple[str, ...] | None, default: tuple[str, ...] = (PUBLIC,)) -> tuple[str, ...]:
    """The normalised, sorted, de-duplicated tokens of an ACL (`default` when none is given)."""
    if text is None:
        return default
    entries = text.split(",") if isinstance(text, str) else list(text)
    tokens: set[str] = set()
    for raw in entries:
        if not isinstance(raw, str):
            raise AclError(f"ACL entry {raw!r} is not a string")
        entry = raw.strip()
        if not entry:
            continue
        if entry.lower() == PUBLIC:
            tokens.add(PUBLIC)
            continue
        kind, sep, name = entry.partition(":")
        kind, name = kind.strip().lower(), name.strip()
        if not sep or kind not in KINDS or not name:
            raise AclError(f"ACL entry {entry!r} is not public, team:<name>, user:<name> or group:<name>")
        if len(name) > MAX_NAME or any(ch in name for ch in ",\n\r\t"):
            raise AclError(f"ACL entry {entry!r}: the name is too long or holds a control character or comma")
        tokens.add(f"{kind}:{name}")
    if not tokens:
        raise AclError("the ACL is empty: give public or at least one team:, user: or group: entry")
    if len(tokens) > MAX_ENTRIES:
        raise AclError(f"the ACL has {len(tokens)} entries; at most {MAX_ENTRIES}")
    return tuple(sorted(tokens))


def format_acl(tokens: tuple[str, ...] | list[str]) -> str:
    return ",".join(tokens)


def readers_of(principal: Principal) -> Readers:
    """The tokens a caller reads with (never everything: see `Readers.everyone()`)."""
    tokens = {PUBLIC, f"user:{principal.key_name}"}
    if principal.team:
        tokens.add(f"team:{principal.team}")
    tokens.update(f"group:{group}" for group in principal.groups)
    return Readers(frozenset(tokens))
