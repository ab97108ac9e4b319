"""The audit step: every model call, with who, which model, which policies ran and the decision."""

from __future__ import annotations

from typing import Any

from meshgate.gateway.pipeline import Call, Step
from meshgate.observe.audit import AuditEvent, AuditWriter
from meshgate.observe.redact import redact
from meshgate.observe.usage import guards_summary
from meshgate.protocol import ChatCompletionRequest, message_text


class AuditStep(Step):
    name = "audit"
    order = 2  # outermost but for metrics: `after` sees the final outcome

    def __init__(self, writer: AuditWriter, content_policy: str) -> None:
        self.writer = writer
        self.content_policy = content_policy

    def _content(self, call: Call) -> dict[str, Any] | None:
        if self.content_policy == "off":
            return None
        request = call.request
        if isinstance(request, ChatCompletionRequest):
            prompt: Any = [
                {"role": m.__struct_config__.tag, "content": message_text(m.content)} for m in request.messages
            ]
        else:
            prompt = request.inputs()
        content = {"prompt": prompt, "response": call.response_text}
        return redact(content) if self.content_policy == "redacted" else content

    async def after(self, call: Call) -> None:
        principal = call.principal
        refused = call.error is not None and call.status in (401, 403, 429)
        self.writer.submit(
            AuditEvent(
                event="model.call",
                actor=principal.key_id if principal is not None else "anonymous",
                subject=call.model_name,
                detail={
                    "request_id": call.request_id,
                    "team": principal.team if principal is not None else None,
                    "endpoint": call.endpoint,
                    "policies": call.policies,
                    "decision": "refused" if refused else "allowed",
                    "status": call.status,
                    "error": call.error.kind if call.error is not None else None,
                    "prompt_tokens": call.prompt_tokens,
                    "completion_tokens": call.completion_tokens,
                    "cost_usd": round(call.cost_usd, 9),
                    "deployment": call.ctx.deployment,
                    "data_class": call.ctx.data_class,
                    "failovers": [{"deployment": d, "reason": r} for d, r in call.ctx.failovers],
                    "cache": call.cache,
                    # What guards found: kinds, actions and counts, never values.
                    "guards": guards_summary(call.notes.get("guards")),
                },
                content=self._content(call),
                ts=call.started_wall,
            )
        )
