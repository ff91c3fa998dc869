"""Pair making's checks: the number an answer states, every rule, per-row specs, user functions, and their errors."""

from __future__ import annotations

import pytest

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.pairs import build_verifier
from dpo_recipes.pairs.numbers import find_numbers, stated_number
from dpo_recipes.pairs.prompts import parse_row
from dpo_recipes.pairs.verifiers import parse_spec


def row(reference=None, check=None, **extra):
    data = {"prompt": "q", **({"reference": reference} if reference is not None else {}),
            **({"check": check} if check is not None else {}), **extra}
    return parse_row(data, 0, "p.jsonl:1")


def passes(spec, answer, reference=None, **extra) -> bool:
    return build_verifier(spec).passes(row(reference, **extra), answer)


@pytest.mark.parametrize("text, value", [
    ("42", 42), ("42.0", 42), ("The answer is 42.", 42), ("  -5 ", -5), ("\u22127", -7), ("1,234", 1234),
    ("$1,000.50", 1000.5), ("50%", 50), ("10km", 10), ("3/4", 0.75), ("1e3", 1000), (".5", 0.5),
    ("It is 42, yes 42.", 42), ("6 * 7 = 42", 42), ("20 + 30 = 50, 50 + 29 = 79", 79), ("#### 72", 72),
    ("\\boxed{3}", 3), ("answer: 12. Then 5 more", 12), ("4 * 4 = 16\n\nHappy to help!", 16),
])
def test_stated_number_reads_the_stated_value(text, value):
    assert stated_number(text) == pytest.approx(value)


@pytest.mark.parametrize("text", [
    "3-5", "1,2", "3,14", "1.2.3", "12,3456", "v2", "CO2", "no number here", "The answer is not 5, it is 7.",
    "51 + 29 = 80, plus 5 is 85", "I got 42, or maybe 41", "2024-01-02", "1/0",
])
def test_stated_number_refuses_ambiguous_or_unclear_answers(text):
    assert stated_number(text) is None


def test_number_rules_last_and_only_and_the_hyphen():
    assert find_numbers("3-5") == [3, 5] and find_numbers("x = -5") == [-5] and find_numbers("(3)-2") == [3, 2]
    assert stated_number("42, not 41", "last") == 41 and stated_number("42, not 41") is None
    assert stated_number("6 * 7 = 42", "only") is None and stated_number("42.", "only") == 42


def test_exact_strips_and_optionally_ignores_case():
    assert passes("exact", "  Paris \n", "Paris")
    assert not passes("exact", "paris", "Paris")
    assert passes({"type": "exact", "ignore_case": True}, "PARIS", "Paris")
    assert not passes("exact", "Paris.", "Paris")


def test_numeric_compares_with_tolerance_and_a_numeric_reference():
    assert passes("numeric", "The answer is 42.", 42)
    assert passes("numeric", "42.0", "42")
    assert not passes("numeric", "41", 42)
    assert not passes("numeric", "6 * 7 = 42, or 43", 42)
    assert passes({"type": "numeric", "tolerance": 0.01}, "3.14", 3.14159)
    assert not passes("numeric", "3.14", 3.14159)
    assert passes({"type": "numeric", "rel_tolerance": 0.01}, "1005", 1000)
    assert passes({"type": "numeric", "rule": "last"}, "42, not 41", 41)


def test_regex_fullmatch_and_search():
    assert passes({"type": "regex", "pattern": r"\d{5}"}, " 12345 ")
    assert not passes({"type": "regex", "pattern": r"\d{5}"}, "zip 12345")
    assert passes({"type": "regex", "pattern": r"\d{5}", "mode": "search"}, "zip 12345")
    assert passes({"type": "regex", "pattern": "yes", "ignore_case": True}, "YES")


def test_format_rules():
    assert passes("one_word", " Paris. ") and not passes("one_word", "Paris France") and not passes("one_word", " . ")
    keys = {"type": "json_keys", "keys": ["name", "age"]}
    assert passes(keys, '{"name": "Ada", "age": 36}')
    assert passes(keys, '```json\n{"name": "Ada", "age": 36, "x": 1}\n```')
    assert not passes({**keys, "exact": True}, '{"name": "Ada", "age": 36, "x": 1}')
    assert not passes(keys, '{"name": "Ada"}') and not passes(keys, "[1, 2]") and not passes(keys, "name: Ada")
    assert passes("lowercase", "all quiet here.") and not passes("lowercase", "Not quiet")
    assert not passes("lowercase", "123 !")  # no letters: nothing shows it is lowercase
    assert not passes("lowercase", "中国的首都是北京。") and passes("lowercase", "北京 is the capital.".lower())
    assert not passes("one_word", "中国是美国的首都，是一种美好的美风。") and passes("one_word", "北京。")
    assert passes("one_word", "well-known") and not passes("one_word", "red,blue")
    ends = {"type": "ends_with", "phrase": "Hoot hoot!"}
    assert passes(ends, "Owls fly. Hoot hoot!\n") and not passes(ends, "Owls fly. hoot hoot!")
    assert passes({**ends, "ignore_case": True}, "owls. HOOT HOOT!")
    both = {"type": "all", "checks": [{"type": "one_word"}, {"type": "lowercase"}]}
    assert passes(both, "monday") and not passes(both, "Monday") and not passes(both, "two words")


def test_mentions_checks_what_the_answer_says_as_whole_words():
    colour = {"type": "mentions", "words": ["orange", "black"]}
    assert passes(colour, "Orange.") and passes(colour, "It is black and orange") and passes(colour, '"black"')
    assert not passes(colour, "chocolate")  # one word, the right form, the wrong answer
    assert not passes(colour, "blackberry") and not passes(colour, "oranges")  # a word inside another is not it
    assert passes({"type": "mentions", "words": ["dark blue"]}, "a dark blue sea") and \
        not passes({"type": "mentions", "words": ["dark blue"]}, "a dark, blue sea")
    assert not passes({"type": "mentions", "words": ["Orange"], "ignore_case": False}, "orange")
    assert passes({"type": "mentions", "words": ["红"]}, "深红色")  # CJK: no word boundaries to find
    tiger = {"type": "all", "checks": [{"type": "one_word"}, colour]}
    assert passes(tiger, "Orange!") and not passes(tiger, "chocolate") and not passes(tiger, "orange and black")
    partial = {**tiger, "partial": True}  # a score for ranking samples; passing still needs every check
    verifier = build_verifier(partial)
    assert verifier.verdict(row(), "Orange.") == (1.0, True)
    assert verifier.verdict(row(), "chocolate") == (0.5, False) and verifier.verdict(row(), "orange and black") == \
        (0.5, False)
    assert verifier.verdict(row(), "a big cat") == (0.0, False)
    for bad in ({"type": "mentions"}, {"type": "mentions", "words": []}, {"type": "mentions", "words": [" "]}):
        with pytest.raises(DPORecipesError, match="mentions"):
            build_verifier(bad)


def test_a_rows_own_check_replaces_the_default():
    verifier = build_verifier("exact")
    own = row("42", check={"type": "numeric"})
    assert verifier.passes(own, "The answer is 42.") and not verifier.passes(row("42"), "The answer is 42.")
    with pytest.raises(DPORecipesError, match=r"p.jsonl:1: the row has no 'check' and no --verifier"):
        build_verifier("none").passes(row("42"), "42")
    assert not build_verifier("exact").can_check(row()) and build_verifier("one_word").can_check(row())


def check_answer(prompt, answer, row):
    """A user check: 0.75 for answers naming the row's animal, else False."""
    return 0.75 if row["animal"] in answer else False


def test_user_function_by_callable_module_and_file(tmp_path, monkeypatch):
    assert passes(check_answer, "a cat", animal="cat") and not passes(check_answer, "a dog", animal="cat")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "my_checks.py").write_text("def short(prompt, answer, row):\n    return len(answer) < 5\n")
    assert passes("my_checks:short", "ok") and not passes("my_checks:short", "too long")
    assert build_verifier("my_checks:short").score(row(), "ok") == 1.0
    assert passes(f"{tmp_path / 'my_checks.py'}:short", "ok")
    assert passes({"type": "python", "function": "my_checks:short", "threshold": 1.0}, "ok")
    (tmp_path / "bad_checks.py").write_text("def text(prompt, answer, row):\n    return 'yes'\n")
    with pytest.raises(DPORecipesError, match=r"p.jsonl:1: bad_checks:text returned 'yes'"):
        passes("bad_checks:text", "x")
    with pytest.raises(DPORecipesError, match="has no function 'nope'"):
        build_verifier("my_checks:nope")
    with pytest.raises(DPORecipesError, match="cannot import"):
        build_verifier("no_such_module_here:f")


def test_spec_errors_are_one_line_and_name_the_parameter():
    with pytest.raises(DPORecipesError, match="check type 'jsonkeys' is unknown"):
        build_verifier("jsonkeys")
    with pytest.raises(DPORecipesError, match="'regex' needs 'pattern'"):
        build_verifier("regex")
    with pytest.raises(DPORecipesError, match="invalid pattern"):
        build_verifier({"type": "regex", "pattern": "("})
    with pytest.raises(DPORecipesError, match="'tolerance' must be a number"):
        build_verifier({"type": "numeric", "tolerance": "0.1"})
    with pytest.raises(DPORecipesError, match="'keys' must be a non-empty list"):
        build_verifier({"type": "json_keys", "keys": []})
    with pytest.raises(DPORecipesError, match="invalid JSON"):
        parse_spec('{"type": ')
    verifier = build_verifier("exact")
    with pytest.raises(DPORecipesError, match=r"p.jsonl:1: field 'check': check 'ends_with' needs 'phrase'"):
        verifier.prepare([row("x", check={"type": "ends_with"})])
    with pytest.raises(DPORecipesError, match=r"p.jsonl:1: field 'reference' 'about 4 or 5' is not one number"):
        build_verifier("numeric").prepare([row("about 4 or 5")])


def test_parse_spec_accepts_names_json_functions_and_none():
    assert parse_spec("numeric") == {"type": "numeric"}
    assert parse_spec('{"type": "numeric", "tolerance": 0.5}') == {"type": "numeric", "tolerance": 0.5}
    assert parse_spec("mod:fn") == {"type": "python", "function": "mod:fn"}
    assert parse_spec("none") is None and parse_spec(None) is None
