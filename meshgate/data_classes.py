"""Data classification: how sensitive a call's data is, and where each class may be sent.

Keys and teams carry a class; a request may raise its own with the `x-meshgate-data-class` header,
never lower it. Each deployment says where data goes (`hosting`); a route only uses the deployments
its call's class allows. The default policy can be changed in mesh.yaml (`data_classes:`).
"""

from __future__ import annotations

#: From least to most sensitive.
DATA_CLASSES: tuple[str, ...] = ("public", "internal", "confidential", "restricted")

#: Where a deployment sends data: this machine, a network the organisation controls, a cloud service.
HOSTINGS: tuple[str, ...] = ("local", "private", "cloud")

#: The class of a call whose key and team carry none.
DEFAULT_DATA_CLASS = "internal"

#: Which hostings each class may reach, unless mesh.yaml says otherwise.
DEFAULT_ALLOWED_HOSTING: dict[str, tuple[str, ...]] = {
    "public": ("local", "private", "cloud"),
    "internal": ("local", "private", "cloud"),
    "confidential": ("local", "private"),
    "restricted": ("local",),
}

_RANK = {name: index for index, name in enumerate(DATA_CLASSES)}


def is_data_class(value: str) -> bool:
    return value in _RANK


def stricter(*classes: str | None) -> str | None:
    """The most sensitive of the given classes (None where none is given)."""
    ranked = [c for c in classes if c is not None]
    return max(ranked, key=_RANK.__getitem__) if ranked else None


def data_class_problem(value: object) -> str | None:
    """Why `value` is not a data class, or None when it is one."""
    if isinstance(value, str) and value in _RANK:
        return None
    return f"{value!r} is not a data class (one of: {', '.join(DATA_CLASSES)})"
