"""Reversible redaction: placeholders out, the client's values back, also split over stream pieces."""

from __future__ import annotations

import json

from meshgate.guards.findings import Finding
from meshgate.guards.vault import StreamRestorer, Vault, mask, pending_placeholder_start


def find(text: str, value: str, kind: str) -> Finding:
    start = text.index(value)
    return Finding(kind, start, start + len(value), 0.9, "pii")


def test_same_value_same_placeholder_and_numbering_by_kind() -> None:
    text = "Mail ann@example.com or bob@example.com; again ann@example.com. Call Ann."
    vault = Vault()
    findings = [
        find(text, "ann@example.com", "email"),
        find(text, "bob@example.com", "email"),
        Finding("email", text.rindex("ann@example.com"), text.rindex("ann@example.com") + 15, 0.9, "pii"),
        find(text, "Ann.", "person"),
    ]
    out = vault.redact(text, findings)
    assert out == "Mail <EMAIL_1> or <EMAIL_2>; again <EMAIL_1>. Call <PERSON_1>"
    assert vault.restore(out) == text


def test_unknown_placeholders_stay_and_json_values_are_escaped() -> None:
    vault = Vault()
    vault.placeholder("person", 'Jo "JJ" Smith')
    assert vault.restore("<PERSON_1> and <PERSON_9>") == 'Jo "JJ" Smith and <PERSON_9>'
    arguments = '{"to": "<PERSON_1>"}'
    assert json.loads(vault.restore(arguments, json_string=True)) == {"to": 'Jo "JJ" Smith'}


def test_pending_placeholder_start_holds_only_what_may_become_one() -> None:
    assert pending_placeholder_start("write to <EMA") == len("write to ")
    assert pending_placeholder_start("write to <EMAIL_1") == len("write to ")
    assert pending_placeholder_start("write to <") == len("write to ")
    assert pending_placeholder_start("a <b> tag") == len("a <b> tag")
    assert pending_placeholder_start("x < 3") == len("x < 3")
    assert pending_placeholder_start("done <EMAIL_1>") == len("done <EMAIL_1>")


def test_stream_restorer_joins_a_placeholder_split_over_pieces() -> None:
    vault = Vault()
    vault.placeholder("email", "ann@example.com")
    restorer = StreamRestorer(vault)
    pieces = ["Write to <", "EMA", "IL", "_1", "> today", " <b>bold</b>"]
    out = [restorer.feed(p) for p in pieces] + [restorer.finish()]
    assert "".join(out) == "Write to ann@example.com today <b>bold</b>"
    assert out[1] == "" and out[2] == ""  # held while it could still be a placeholder


def test_stream_restorer_releases_a_held_tail_at_the_end() -> None:
    restorer = StreamRestorer(Vault())
    assert restorer.feed("value <EMAIL") == "value "
    assert restorer.finish() == "<EMAIL"


def test_mask_is_one_way() -> None:
    text = "reach me at ann@example.com"
    assert mask(text, [find(text, "ann@example.com", "email")]) == "reach me at [EMAIL]"
