"""The verifier of a run: its default check (`--verifier`) and each row's own `check`, which replaces it.

    verifier = build_verifier("numeric")                       # or a spec dict, "module:function", a callable
    verifier.prepare(rows)                                     # every row's check and reference, before any model
    score, passed = verifier.verdict(row, "The answer is 42.")

`--verifier` takes a check type with no required parameter ("exact", "numeric", "one_word", "lowercase"), a JSON
object (`'{"type": "numeric", "tolerance": 0.01}'`), a user function ("module:function", "file.py:function"), or
"none": then every row must carry its own `check`. Rule specs: `dpo_recipes.pairs.rules`.
"""

from __future__ import annotations

import json

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.pairs import numbers
from dpo_recipes.pairs.prompts import PromptRow
from dpo_recipes.pairs.rules import Rule, build_rule


def parse_spec(value) -> dict | None:
    """A `--verifier` value (string, dict or callable) as a check spec; None for 'none' / None."""
    if value is None or isinstance(value, dict):
        return value
    if callable(value):
        return {"type": "python", "function": value}
    text = str(value).strip()
    if text.lower() in ("", "none", "null"):
        return None
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DPORecipesError(f"--verifier {text}: invalid JSON ({exc.msg}).") from None
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
            raise DPORecipesError(f"--verifier {text}: a check object needs a 'type'.")
        return spec
    if ":" in text:
        return {"type": "python", "function": text}
    return {"type": text}


class Verifier:
    """Checks answers row by row: the row's own `check` when it has one, else the default spec."""

    def __init__(self, spec: dict | None):
        self.spec = spec
        self.default: Rule | None = build_rule(spec) if spec is not None else None
        self._rules: dict[str, Rule] = {}

    def rule_for(self, row: PromptRow) -> Rule:
        if row.check is None:
            if self.default is None:
                raise DPORecipesError(f"{row.where}: the row has no 'check' and no --verifier is set; give either.")
            return self.default
        key = json.dumps(row.check, sort_keys=True)
        if key not in self._rules:
            try:
                self._rules[key] = build_rule(row.check)
            except DPORecipesError as exc:
                raise DPORecipesError(f"{row.where}: field 'check': {exc}") from None
        return self._rules[key]

    def can_check(self, row: PromptRow) -> bool:
        """False when the row's check compares with a reference and the row has none."""
        return row.reference is not None or not self.rule_for(row).needs_reference

    def prepare(self, rows: list[PromptRow]) -> None:
        """Build every row's check and read every numeric reference now, so a bad row fails before model work."""
        for row in rows:
            rule = self.rule_for(row)
            if row.reference is not None and _has_numeric(rule.spec) and \
                    numbers.stated_number(row.reference, "only") is None:
                raise DPORecipesError(f"{row.where}: field 'reference' {row.reference!r} is not one number, which the "
                                      "numeric check needs.")

    def verdict(self, row: PromptRow, answer: str) -> tuple[float, bool]:
        """The answer's score and whether it passes the row's check."""
        rule = self.rule_for(row)
        score = rule.score(answer, row)
        return score, rule.passes(score)

    def score(self, row: PromptRow, answer: str) -> float:
        return self.verdict(row, answer)[0]

    def passes(self, row: PromptRow, answer: str) -> bool:
        return self.verdict(row, answer)[1]

    def describe(self) -> dict | None:
        """The default spec as JSON-able data (a work file's header compares it)."""
        return None if self.default is None else self.default.spec


def _has_numeric(spec: dict) -> bool:
    return spec.get("type") == "numeric" or any(_has_numeric(s) for s in spec.get("checks", []) if isinstance(s, dict))


def build_verifier(spec=None) -> Verifier:
    """A `Verifier` from a `--verifier` value (see `parse_spec`), or a `Verifier` as it is."""
    return spec if isinstance(spec, Verifier) else Verifier(parse_spec(spec))
