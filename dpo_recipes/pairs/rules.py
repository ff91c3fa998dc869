"""The checks an answer can pass: each is a spec (a small JSON object) that becomes a `Rule`.

    {"type": "exact", "ignore_case": false}                 stripped answer == stripped reference
    {"type": "numeric", "tolerance": 1e-6, "rel_tolerance": 0, "rule": "auto"}
                                                            the number the answer states (see `numbers`) is within
                                                            tolerance of the reference's one number
    {"type": "regex", "pattern": "...", "mode": "fullmatch", "ignore_case": false}
                                                            the stripped answer fullmatches (or, mode "search",
                                                            contains) the pattern
    {"type": "one_word"}                                    one word: no whitespace once stripped of a final . ! ?,
                                                            and no comma or full stop inside
    {"type": "json_keys", "keys": ["name", "age"], "exact": false}
                                                            a JSON object (a ```json fence around it is allowed) with
                                                            these keys (exact: and no others)
    {"type": "lowercase"}                                   has cased letters and no upper-case one
    {"type": "ends_with", "phrase": "Goodbye.", "ignore_case": false}
                                                            the answer (trailing whitespace removed) ends with it
    {"type": "mentions", "words": ["orange", "black"], "ignore_case": true}
                                                            the answer has one of the words (or phrases) as a whole
                                                            word: what it says, not only its form ("What colour is a
                                                            tiger?" -> "chocolate" is one word, and wrong)
    {"type": "all", "checks": [spec, ...], "partial": false}
                                                            passes when every check passes; partial: its score is
                                                            the share of checks passed (best-of-n then ranks an
                                                            answer right in form only above one right in nothing)
    {"type": "python", "function": "module:function", "threshold": 0.5}
                                                            function(prompt, answer, row) -> bool or float;
                                                            'path/to/file.py:function' works too

A rule scores an answer (built-in rules: 1.0 or 0.0; a user function: its float) and passes it when the score is at
least `threshold` (built-ins: 1.0; python: 0.5 unless set). Any spec may set `threshold`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.pairs import numbers


@dataclass(frozen=True)
class Rule:
    """One check. `score(answer, row)` -> float; `needs_reference`: rows without a reference cannot be checked."""

    spec: dict
    score: Callable
    needs_reference: bool = False
    threshold: float = 1.0

    def passes(self, score: float) -> bool:
        return score >= self.threshold


_KINDS = {bool: "true or false", str: "a string", list: "a list", (int, float): "a number"}


def _get(spec: dict, key: str, kind, default=None, required: bool = False):
    """A parameter of `spec`, checked against `kind` (a type or a tuple of types)."""
    if key not in spec:
        if required:
            raise DPORecipesError(f"check {spec['type']!r} needs '{key}'.")
        return default
    value = spec[key]
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise DPORecipesError(f"check {spec['type']!r}: '{key}' must be {_KINDS.get(kind, kind)} (got {value!r}).")
    return value


def _fold(text: str, ignore_case: bool) -> str:
    return text.casefold() if ignore_case else text


def exact(spec: dict) -> Rule:
    ignore_case = _get(spec, "ignore_case", bool, False)
    return Rule(spec, lambda answer, row: float(_fold(answer.strip(), ignore_case) ==
                                                _fold(row.reference.strip(), ignore_case)), needs_reference=True)


def numeric(spec: dict) -> Rule:
    tolerance = float(_get(spec, "tolerance", (int, float), 1e-6))
    rel_tolerance = float(_get(spec, "rel_tolerance", (int, float), 0.0))
    rule = _get(spec, "rule", str, "auto")
    if rule not in numbers.RULES:
        raise DPORecipesError(f"check 'numeric': 'rule' must be one of {', '.join(numbers.RULES)} (got {rule!r}).")

    def score(answer, row):
        target = numbers.stated_number(row.reference, "only")
        if target is None:  # caught by Verifier.prepare before any generation
            raise DPORecipesError(f"{row.where}: field 'reference' {row.reference!r} is not one number.")
        value = numbers.stated_number(answer, rule)
        return float(value is not None and numbers.close_enough(value, target, tolerance, rel_tolerance))

    return Rule(spec, score, needs_reference=True)


def regex(spec: dict) -> Rule:
    mode = _get(spec, "mode", str, "fullmatch")
    if mode not in ("fullmatch", "search"):
        raise DPORecipesError(f"check 'regex': 'mode' must be fullmatch or search (got {mode!r}).")
    try:
        pattern = re.compile(_get(spec, "pattern", str, required=True),
                             re.IGNORECASE if _get(spec, "ignore_case", bool, False) else 0)
    except re.error as exc:
        raise DPORecipesError(f"check 'regex': invalid pattern {spec['pattern']!r} ({exc}).") from None
    match = pattern.fullmatch if mode == "fullmatch" else pattern.search
    return Rule(spec, lambda answer, row: float(match(answer.strip()) is not None))


_INNER_BREAK = re.compile(r"[,;:，。、；：！？!?]")  # a clause break inside the text: more than one word


def one_word(spec: dict) -> Rule:
    def score(answer, row):
        word = answer.strip().rstrip(".!?。！？")
        # Whitespace separates words; text in a script written without spaces (a Chinese sentence) is no one word
        # when a comma or full stop breaks it.
        return float(bool(word) and not any(c.isspace() for c in word) and not _INNER_BREAK.search(word))

    return Rule(spec, score)


_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)


def json_keys(spec: dict) -> Rule:
    keys = _get(spec, "keys", list, required=True)
    if not keys or not all(isinstance(k, str) for k in keys):
        raise DPORecipesError("check 'json_keys': 'keys' must be a non-empty list of strings.")
    exact_keys = _get(spec, "exact", bool, False)

    def score(answer, row):
        text = answer.strip()
        fenced = _FENCE.fullmatch(text)
        try:
            obj = json.loads(fenced.group(1) if fenced else text)
        except json.JSONDecodeError:
            return 0.0
        if not isinstance(obj, dict):
            return 0.0
        return float(set(keys) == set(obj) if exact_keys else set(keys) <= set(obj))

    return Rule(spec, score)


def lowercase(spec: dict) -> Rule:
    # At least one letter that has a case: digits, symbols or Chinese alone show nothing about case.
    return Rule(spec, lambda answer, row: float(any(c.lower() != c.upper() for c in answer)
                                                and answer == answer.lower()))


def ends_with(spec: dict) -> Rule:
    phrase = _get(spec, "phrase", str, required=True).rstrip()
    if not phrase:
        raise DPORecipesError("check 'ends_with': 'phrase' is empty.")
    ignore_case = _get(spec, "ignore_case", bool, False)
    return Rule(spec, lambda answer, row: float(_fold(answer.rstrip(), ignore_case).endswith(_fold(phrase,
                                                                                                    ignore_case))))


def mentions(spec: dict) -> Rule:
    words = _get(spec, "words", list, required=True)
    if not words or not all(isinstance(w, str) and w.strip() for w in words):
        raise DPORecipesError("check 'mentions': 'words' must be a non-empty list of non-empty strings.")
    flags = re.IGNORECASE if _get(spec, "ignore_case", bool, True) else 0
    # A whole word: no Latin letter or digit right before or after ("red" is not in "bored" or "reddish"); text in
    # scripts written without spaces (CJK) matches anywhere, as `evaluation.mentions` does for the identity name.
    edge = "A-Za-z0-9\u00c0-\u024f"
    pattern = re.compile(rf"(?<![{edge}])(?:" + "|".join(re.escape(w.strip()) for w in words) + rf")(?![{edge}])",
                         flags)
    return Rule(spec, lambda answer, row: float(pattern.search(answer) is not None))


def all_of(spec: dict) -> Rule:
    parts = _get(spec, "checks", list, required=True)
    if not parts or not all(isinstance(p, dict) for p in parts):
        raise DPORecipesError("check 'all': 'checks' must be a non-empty list of check objects.")
    rules = [build_rule(p) for p in parts]
    if _get(spec, "partial", bool, False):
        return Rule(spec, lambda answer, row: sum(r.passes(r.score(answer, row)) for r in rules) / len(rules),
                    needs_reference=any(r.needs_reference for r in rules))
    return Rule(spec, lambda answer, row: float(all(r.passes(r.score(answer, row)) for r in rules)),
                needs_reference=any(r.needs_reference for r in rules))


def load_function(target: str) -> Callable:
    """Import 'module:function' (the module on sys.path) or 'path/to/file.py:function'."""
    module_name, _, name = target.rpartition(":")
    if not module_name or not name:
        raise DPORecipesError(f"function {target!r}: write it as module:function or path/to/file.py:function.")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise DPORecipesError(f"function {target!r}: no such file {path}.")
            spec = importlib.util.spec_from_file_location(f"dpo_recipes_user_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DPORecipesError(f"function {target!r}: cannot import {module_name} ({exc}).") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise DPORecipesError(f"function {target!r}: {module_name} has no function {name!r}.")
    return fn


def function_name(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def as_score(value, fn_name: str, where: str) -> float:
    """A user function's return value as a float: bool -> 1.0/0.0, int/float as is; anything else refused."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and value == value:  # not NaN
        return float(value)
    raise DPORecipesError(f"{where}: {fn_name} returned {value!r}; a check function must return a bool or a number.")


def python(spec: dict) -> Rule:
    target = spec.get("function")
    fn = target if callable(target) else load_function(_get(spec, "function", str, required=True))
    name = function_name(fn) if callable(target) else target

    def score(answer, row):
        return as_score(fn(row.prompt, answer, row.data), name, row.where)

    return Rule({**spec, "function": name}, score, threshold=0.5)


RULES: dict[str, Callable[[dict], Rule]] = {
    "exact": exact, "numeric": numeric, "regex": regex, "one_word": one_word, "json_keys": json_keys,
    "lowercase": lowercase, "ends_with": ends_with, "mentions": mentions, "all": all_of, "python": python,
}


def build_rule(spec: dict) -> Rule:
    """The `Rule` of a check spec; `DPORecipesError` for an unknown type or a bad parameter."""
    kind = spec.get("type")
    if kind not in RULES:
        raise DPORecipesError(f"check type {kind!r} is unknown; choose one of {', '.join(RULES)}.")
    rule = RULES[kind](spec)
    if "threshold" in spec:
        rule = Rule(rule.spec, rule.score, rule.needs_reference, float(_get(spec, "threshold", (int, float))))
    return rule
