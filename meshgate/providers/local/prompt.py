"""Chat prompt formats for local models: turns of (role, text) rendered into one prompt string.

Roles are `system`, `user` and `assistant`. A format without a system role folds system text into
the first user turn, as the model's own chat template does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptFormat:
    turn: str  # with {role} and {text}
    roles: dict[str, str]
    generation_prefix: str  # opens the assistant's turn
    system_role: bool


PROMPT_FORMATS: dict[str, PromptFormat] = {
    "gemma": PromptFormat(
        turn="<start_of_turn>{role}\n{text}<end_of_turn>\n",
        roles={"user": "user", "assistant": "model"},
        generation_prefix="<start_of_turn>model\n",
        system_role=False,
    ),
    "chatml": PromptFormat(
        turn="<|im_start|>{role}\n{text}<|im_end|>\n",
        roles={"system": "system", "user": "user", "assistant": "assistant"},
        generation_prefix="<|im_start|>assistant\n",
        system_role=True,
    ),
    "plain": PromptFormat(
        turn="{role}: {text}\n\n",
        roles={"system": "System", "user": "User", "assistant": "Assistant"},
        generation_prefix="Assistant:",
        system_role=True,
    ),
}


def render_prompt(fmt: PromptFormat, turns: list[tuple[str, str]]) -> str:
    pending_system: list[str] = []
    parts: list[str] = []
    for role, text in turns:
        if role == "system" and not fmt.system_role:
            pending_system.append(text)
            continue
        if role == "user" and pending_system:
            text = "\n\n".join([*pending_system, text])
            pending_system = []
        parts.append(fmt.turn.format(role=fmt.roles[role], text=text))
    if pending_system:  # only system turns: they become the user's turn
        parts.append(fmt.turn.format(role=fmt.roles["user"], text="\n\n".join(pending_system)))
    parts.append(fmt.generation_prefix)
    return "".join(parts)
