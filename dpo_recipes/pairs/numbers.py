"""The number an answer states: the rule of the numeric check, and why it refuses to guess.

An answer states a number when one of these holds, tried in order (rule "auto", the default):

1. it has an answer marker ("the answer is", "answer:", "####", "\\boxed{"): the number after the last marker, up
   to the end of that sentence, when that stretch holds exactly one value ("The answer is 42." -> 42; "The answer
   is not 5, it is 7." -> none: two values after the marker);
2. otherwise, it has an equation: the result of the last one, when every number after its '=' has that one value
   ("6 * 7 = 42" -> 42; "20 + 30 = 50, 50 + 29 = 79" -> 79; "51 + 29 = 80, plus 5 is 85" -> none);
3. otherwise every number in it has the same value ("42", "42.0", "It is 42, yes 42." -> 42);
4. otherwise it states none: "I got 42, or maybe 41" fails the check rather than being read by a guess.
Rule "last" takes the last number instead ("42, not 41" -> 41); rule "only" skips markers and equations and needs a
single value. The one guess "auto" makes: "x = 5, y = 7" states 7 (the last equation's result).

What counts as a number: an optional sign (-, +, or U+2212; a '-' right after a digit or letter is a hyphen: "3-5"
is 3 and 5), an optional currency sign ($ EUR GBP), digits with optional thousands commas in groups of three
("1,234"), an optional decimal part ("42.0", ".5"), an optional exponent ("1e3"), or a fraction of integers
("3/4" -> 0.75). A trailing "%" is dropped ("50%" -> 50, not 0.5). Letters may follow (units: "10km" -> 10) but not
precede ("v2", "CO2" hold no number). A run of digits, commas and points that fits none of these forms ("3,14",
"1.2.3", "12,3456") is unclear: an answer holding one states no number under "auto" and "only". Number words
("forty-two") are not read.
"""

from __future__ import annotations

import math
import re

RULES = ("auto", "last", "only")

# A candidate run: sign, currency, then digits/commas/points, an optional exponent or fraction, an optional '%'.
_RUN = re.compile(r"(?<![\w.,])(?P<sign>(?<![\w)])[-+\u2212])?[$\u20ac\u00a3]?(?P<body>\.?\d[\d,.]*)"
                  r"(?P<exp>[eE][-+]?\d+)?(?P<frac>/\d+)?%?")
_PLAIN = re.compile(r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+")
_MARKER = re.compile(r"answer\s*(?:is|:|=)|####|\\boxed\{", re.IGNORECASE)
_EQUALS = re.compile(r"(?<![=<>!])=(?!=)")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")
UNCLEAR = None  # the value of a run that looks numeric but fits no accepted form


def find_numbers(text: str) -> list[float | None]:
    """Every number in `text`, in order; `None` for an unclear run (see the module docstring)."""
    values: list[float | None] = []
    for m in _RUN.finditer(text):
        body = m["body"].rstrip(".,")  # sentence punctuation after the number: "42." and "42,"
        if m["frac"] and m["exp"] is None and body.isdigit():
            denominator = int(m["frac"][1:])
            value = int(body) / denominator if denominator else None
        elif _PLAIN.fullmatch(body) and not (m["frac"] or body != m["body"] and m["exp"]):
            value = float(body.replace(",", "") + (m["exp"] or ""))
        else:
            value = UNCLEAR
        if value is not None and m["sign"] in ("-", "\u2212"):
            value = -value
        if value is not None and not math.isfinite(value):
            value = UNCLEAR
        values.append(value)
    return values


def _single(values: list[float | None]) -> float | None:
    """The one value all numbers share, or None (none, several, or an unclear one)."""
    if not values or any(v is None for v in values):
        return None
    return values[0] if all(v == values[0] for v in values) else None


def stated_number(text: str, rule: str = "auto") -> float | None:
    """The number `text` states under `rule` ('auto', 'last', 'only'), or None when it states none unambiguously."""
    if rule not in RULES:
        raise ValueError(f"number rule {rule!r}: choose one of {', '.join(RULES)}")
    if rule == "last":
        values = find_numbers(text)
        return values[-1] if values else None
    if rule == "auto":
        markers = list(_MARKER.finditer(text))
        if markers:
            tail = text[markers[-1].end():]
            end = _SENTENCE_END.search(tail)
            return _single(find_numbers(tail[:end.start()] if end else tail))
        equals = list(_EQUALS.finditer(text))
        if equals:
            return _single(find_numbers(text[equals[-1].end():]))
    return _single(find_numbers(text))


def close_enough(value: float, target: float, tolerance: float = 1e-6, rel_tolerance: float = 0.0) -> bool:
    """|value - target| <= max(tolerance, rel_tolerance * |target|): absolute and relative tolerance, in the
    answer's own units."""
    return abs(value - target) <= max(tolerance, rel_tolerance * abs(target))
