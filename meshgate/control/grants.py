"""Grants: an object type, a name pattern and an action, e.g. `model:gpt-*:use` or `admin:keys:write`.

Later object types (`knowledge:hr-*`, `app:*`) need no new mechanism: a check names its object
type, the object's name and the action, and any grant whose three parts match allows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase


@dataclass(frozen=True)
class Grant:
    object_type: str
    pattern: str
    action: str = "use"

    @classmethod
    def parse(cls, text: str) -> Grant:
        parts = text.strip().split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"grant {text!r} is not type:pattern[:action], e.g. model:gpt-*:use")
        return cls(*parts) if len(parts) == 3 else cls(parts[0], parts[1])

    def allows(self, object_type: str, name: str, action: str) -> bool:
        return (
            fnmatchcase(object_type, self.object_type)
            and fnmatchcase(name, self.pattern)
            and fnmatchcase(action, self.action)
        )

    def __str__(self) -> str:
        return f"{self.object_type}:{self.pattern}:{self.action}"


ROLES: dict[str, tuple[Grant, ...]] = {
    "admin": (Grant("*", "*", "*"),),
    "developer": (
        Grant("model", "*", "use"),
        Grant("knowledge", "*", "use"),
        Grant("app", "*", "use"),
        Grant("metrics", "*", "read"),
        # The guards' detectors as a service (/v1/guards/scan, /v1/moderations).
        Grant("guard", "*", "use"),
    ),
    "app": (
        Grant("model", "*", "use"),
        Grant("knowledge", "*", "use"),
        Grant("app", "*", "use"),
        Grant("guard", "*", "use"),
    ),
    # Reviewers work the guards' review queue (`review:<guard>:read|decide`, through /admin/reviews)
    # and call no model: a reviewer key cannot be used to run what it reviews.
    "reviewer": (
        Grant("review", "*", "read"),
        Grant("review", "*", "decide"),
        Grant("admin", "reviews", "read"),
        Grant("admin", "reviews", "write"),
    ),
}


def allowed(grants: tuple[Grant, ...], object_type: str, name: str, action: str) -> bool:
    return any(grant.allows(object_type, name, action) for grant in grants)


def matches_any(patterns: tuple[str, ...], name: str) -> bool:
    """An allow-list of name patterns; empty means no restriction."""
    return not patterns or any(fnmatchcase(name, pattern) for pattern in patterns)
