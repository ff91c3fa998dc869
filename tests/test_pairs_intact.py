"""dpo_recipes.pairs.intact: the general answers' checks through the rounds, on given answers (no model)."""

from __future__ import annotations

from dpo_recipes.pairs import intact
from dpo_recipes.pairs.prompts import as_prompt_rows


def test_form_checks_are_the_form_parts_of_the_training_checks_once_each():
    rows = as_prompt_rows([
        {"prompt": "a", "check": {"type": "all", "checks": [{"type": "one_word"},
                                                            {"type": "mentions", "words": ["red"]}]}},
        {"prompt": "b", "check": {"type": "all", "checks": [{"type": "one_word"},
                                                            {"type": "mentions", "words": ["blue"]}]}},
        {"prompt": "c", "check": {"type": "ends_with", "phrase": "DONE"}},
        {"prompt": "d", "check": {"type": "numeric"}, "reference": "4"},
        {"prompt": "e"}])
    assert list(intact.form_checks(rows)) == ["ends_with DONE", "one_word"]  # content and numeric checks are not forms


def test_a_leak_is_a_general_answer_that_newly_passes_a_trained_form(monkeypatch):
    answers = iter([
        ["The sky is blue because of scattering.", "Paris.", "a b c d a b c d a b c d a b c d", "Hello there."],
        ["The sky is blue because of scattering.", "Paris.", "Fine now.", "Hello there. DONE"],
    ])
    monkeypatch.setattr(intact, "generate_answers", lambda *a, **k: next(answers))
    monkeypatch.setattr(intact, "general_kl", lambda *a, **k: 0.25)
    forms = intact.form_checks(as_prompt_rows([{"prompt": "x", "check": {"type": "all", "checks": [
        {"type": "one_word"}, {"type": "ends_with", "phrase": "DONE"}]}}]))
    watch = intact.GeneralWatch(None, None, ["p1", "p2", "p3", "p4"], forms, identity_name="Athene", kl_to="base")
    assert watch.baseline() == {"prompts": 4, "degenerate": 1, "passing_forms": {"ends_with DONE": 0, "one_word": 1}}
    figures, rows = watch.measure(None)
    # "Paris." was one word before: not a leak; "Fine now." is two words; "... DONE" is new
    assert figures["format_leaks"] == {"ends_with DONE": 1, "one_word": 0} and figures["format_leaks_total"] == 1
    assert figures["degenerate_before"] == 1 and figures["degenerate_after"] == 0
    assert figures["unchanged_rate"] == 0.75 and figures["kl_per_token"] == 0.25 and figures["identity_leaks"] == 0
    assert rows[3]["format_leaks"] == ["ends_with DONE"] and rows[1]["format_leaks"] == []
