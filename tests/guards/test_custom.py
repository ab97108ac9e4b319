"""Custom detectors from mesh.yaml specs: the regex and words forms, context scoring, validation."""

from __future__ import annotations

import pytest

from meshgate.guards.custom import DEFAULT_CONTEXT_SCORE, DEFAULT_SCORE, build_custom_detector


def spans(detector_spec: dict[str, object], text: str) -> list[tuple[str, str, int, int, float]]:
    detector = build_custom_detector(detector_spec)
    return [(f.kind, f.detector, f.start, f.end, f.score) for f in detector.detect(text)]


def test_regex_form() -> None:
    text = "Status of Project Heron and project falcon."
    assert spans({"name": "codenames", "kind": "regex", "pattern": "Project (Heron|Falcon)"}, text) == [
        ("codenames", "codenames", 10, 23, DEFAULT_SCORE)
    ]


def test_regex_flags_and_score() -> None:
    text = "Status of Project Heron and project falcon."
    spec = {
        "name": "codenames",
        "kind": "regex",
        "pattern": "Project (Heron|Falcon)",
        "flags": ["ignorecase"],
        "score": 0.75,
    }
    assert spans(spec, text) == [("codenames", "codenames", 10, 23, 0.75), ("codenames", "codenames", 28, 42, 0.75)]


def test_words_form_matches_whole_words_only() -> None:
    spec = {"name": "products", "kind": "words", "words": ["Heron", "C++"], "ignore_case": True}
    text = "heron, Herons, HERON. We use C++ and C++11."
    assert [(s, e) for _, _, s, e, _ in spans(spec, text)] == [(0, 5), (15, 20), (29, 32)]


def test_words_case_sensitive() -> None:
    spec = {"name": "products", "kind": "words", "words": ["Heron"], "ignore_case": False}
    assert [(s, e) for _, _, s, e, _ in spans(spec, "heron Heron")] == [(6, 11)]


def test_context_words_raise_the_score() -> None:
    spec = {
        "name": "products",
        "kind": "words",
        "words": ["Heron"],
        "context": ["launch", "roadmap"],
        "context_window": 20,
    }
    near = "The Heron launch is in May."
    far = "Heron." + " " * 40 + "The launch is in May."
    assert spans(spec, near)[0][4] == DEFAULT_CONTEXT_SCORE
    assert spans(spec, far)[0][4] == DEFAULT_SCORE


def test_context_word_inside_the_match_does_not_count() -> None:
    spec = {"name": "codenames", "kind": "regex", "pattern": "Launch Heron", "context": ["launch"]}
    assert spans(spec, "Launch Heron")[0][4] == DEFAULT_SCORE


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "regex", "pattern": "x"}, "'name'"),
        ({"name": "Bad Name", "kind": "regex", "pattern": "x"}, "'name'"),
        ({"name": "x", "kind": "glob", "pattern": "x"}, "'kind'"),
        ({"name": "x", "kind": "regex"}, "'pattern'"),
        ({"name": "x", "kind": "regex", "pattern": "(unclosed"}, "not a valid regex"),
        ({"name": "x", "kind": "regex", "pattern": "(a+)+b"}, "catastrophically"),
        ({"name": "x", "kind": "regex", "pattern": r"(\w*\s?)*$"}, "catastrophically"),
        ({"name": "x", "kind": "regex", "pattern": "x", "flags": ["verbose"]}, "'flags'"),
        ({"name": "x", "kind": "regex", "pattern": "x", "score": 1.5}, "'score'"),
        ({"name": "x", "kind": "regex", "pattern": "x", "score": True}, "'score'"),
        ({"name": "x", "kind": "words", "words": []}, "'words'"),
        ({"name": "x", "kind": "words", "words": ["a", ""]}, "'words'"),
        ({"name": "x", "kind": "words", "words": ["a"], "ignore_case": "yes"}, "'ignore_case'"),
        ({"name": "x", "kind": "words", "words": ["a"], "context": ["b"], "context_window": 0}, "'context_window'"),
        ({"name": "x", "kind": "words", "words": ["a"], "context_window": 10}, "'context'"),
        ({"name": "x", "kind": "words", "words": ["a"], "pattern": "b"}, "unknown field"),
    ],
)
def test_validation_names_the_field(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_custom_detector(spec)


def test_text_length_is_bounded() -> None:
    detector = build_custom_detector({"name": "x", "kind": "regex", "pattern": "needle", "max_text_chars": 100})
    assert detector.detect("needle" + " " * 200 + "needle") != []
    assert [f.start for f in detector.detect(" " * 200 + "needle")] == []


@pytest.mark.parametrize("pattern", [r"(\d{2})+", r"(a+){3}", r"(\+\d)+-x", r"(?:ab)+c+"])
def test_fixed_counts_and_escaped_pluses_are_not_rejected(pattern: str) -> None:
    assert build_custom_detector({"name": "x", "kind": "regex", "pattern": pattern}).name == "x"
