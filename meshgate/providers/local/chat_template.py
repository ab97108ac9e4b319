"""A GGUF's own chat template (Jinja, as Hugging Face tokenizers ship it), rendered in a sandbox.

The template comes from the model file, so it is untrusted input: it runs in Jinja's immutable
sandbox (no attribute access to Python internals, no mutation of what we pass in), with the few
helpers Hugging Face's renderer provides (`raise_exception`, `strftime_now`, `tojson`).
"""

from __future__ import annotations

import json
import time
from typing import Any

from jinja2 import BaseLoader, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateRefusal(Exception):
    """The template refused the conversation (its `raise_exception`), e.g. roles out of order."""


def _raise(message: str) -> None:
    raise TemplateRefusal(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    # Hugging Face's `tojson` keeps non-ASCII text as is (Jinja's own escapes it for HTML).
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        environment = ImmutableSandboxedEnvironment(
            loader=BaseLoader(), trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False
        )
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise
        environment.globals["strftime_now"] = lambda fmt: time.strftime(fmt)
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        try:
            self._template = environment.from_string(source)
        except TemplateError as exc:
            raise ValueError(f"the chat template does not compile: {exc}") from None

    def render(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """The prompt text for `messages` (dicts with `role` and `content`), ending with the opening
        of the assistant's turn. Raises TemplateRefusal when the template rejects the conversation."""
        try:
            return self._template.render(
                messages=messages,
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateRefusal:
            raise
        except TemplateError as exc:
            raise TemplateRefusal(f"the model's chat template failed: {exc}") from None
