"""General answers through the rounds: does teaching a task change what the model says where the task was not asked?

Before round 0 the model answers the general prompts greedily (its base answers); after each round it answers them
again, and the answers are measured against the base ones with the main job's checks (`dpo_recipes.watch.evaluation`):

- `degenerate_after`: answers that loop (`is_degenerate`), next to `degenerate_before`;
- `unchanged_rate`: answers the same in substance (`same_substance`);
- `format_leaks`: answers that newly pass a form the rounds train (`form_checks`: the one-word, lowercase, ends-with,
  JSON and regex parts of the training prompts' checks). "Describe a cat in one sentence." answered "Orange." or
  "... DONE" is the trained format showing up where nobody asked for it, as a name leak is for an identity run;
- `identity_leaks`: answers naming `identity_name`, when one is set;
- `kl_per_token`: `general_kl`, the mean per-token KL to the adapter-disabled model on the base answers: the base with
  `--reference fixed`, the previous round's policy with `--reference previous` (`kl_to`).
"""

from __future__ import annotations

from dpo_recipes.pairs.rules import Rule, build_rule
from dpo_recipes.watch.evaluation import compare, general_kl, generate_answers, score_answers

FORM_TYPES = ("one_word", "lowercase", "ends_with", "json_keys", "regex")


def form_label(spec: dict) -> str:
    """A short name of a form check for reports: 'ends_with DONE', 'json_keys item,colour', 'lowercase'."""
    detail = spec.get("phrase") or ",".join(spec.get("keys", [])) or spec.get("pattern") or ""
    return f"{spec['type']} {detail}".strip()


def form_checks(rows) -> dict[str, Rule]:
    """The distinct form checks among `rows`' own checks (parts of an `all` check included), by `form_label`."""
    specs: dict[str, dict] = {}
    for row in rows:
        check = row.check or {}
        parts = check.get("checks", []) if check.get("type") == "all" else [check]
        for part in parts:
            if isinstance(part, dict) and part.get("type") in FORM_TYPES:
                specs.setdefault(form_label(part), part)
    return {label: build_rule(spec) for label, spec in sorted(specs.items())}


class GeneralWatch:
    """The base answers to the general prompts, and `measure(model)` of a later policy against them."""

    def __init__(self, model, tokenizer, prompts: list[str], forms: dict[str, Rule], *, identity_name: str | None,
                 kl_to: str, max_new_tokens: int = 64, batch_size: int = 16, repetition_penalty: float = 1.0):
        self.tokenizer, self.forms, self.identity_name, self.kl_to = tokenizer, forms, identity_name, kl_to
        self.generation = dict(max_new_tokens=max_new_tokens, batch_size=batch_size,
                               repetition_penalty=repetition_penalty)
        self.prompts = [{"prompt": p, "kind": "general"} for p in prompts]
        self.before = self._answers(model)
        self.before_forms = self._passing(self.before.answers)

    def _answers(self, model):
        answers = generate_answers(model, self.tokenizer, [p["prompt"] for p in self.prompts], **self.generation)
        return score_answers(self.prompts, answers, self.identity_name)

    def _passing(self, answers: list[str]) -> dict[str, list[bool]]:
        return {label: [rule.passes(rule.score(a, None)) for a in answers] for label, rule in self.forms.items()}

    def baseline(self) -> dict:
        """Round 0's figures: the base answers' loops and the forms they already pass."""
        return {"prompts": len(self.prompts), "degenerate": len(self.before.degenerate),
                "passing_forms": {label: sum(flags) for label, flags in self.before_forms.items()}}

    def measure(self, model) -> tuple[dict, list[dict]]:
        """(figures, one row per prompt with its base and current answer and what flags it)."""
        after = self._answers(model)
        figures = compare(self.before, after)
        now = self._passing(after.answers)
        leaks = {label: [i for i, (was, is_) in enumerate(zip(self.before_forms[label], now[label])) if is_ and not was]
                 for label in self.forms}
        result = {
            "unchanged_rate": figures["general_unchanged_rate"],
            "degenerate_before": figures["degenerate_answers_before"],
            "degenerate_after": figures["degenerate_answers_after"],
            "format_leaks": {label: len(rows) for label, rows in leaks.items()},
            "format_leaks_total": len({i for rows in leaks.values() for i in rows}),
            "identity_leaks": len(after.leaks) if self.identity_name else None,
            "kl_per_token": general_kl(model, self.tokenizer, self.before),
            "kl_to": self.kl_to,
        }
        rows = [{"prompt": p["prompt"], "before": self.before.answers[i], "after": after.answers[i],
                 "degenerate": i in after.degenerate, "identity_leak": i in after.leaks,
                 "format_leaks": [label for label, hit in leaks.items() if i in hit]}
                for i, p in enumerate(self.prompts)]
        return result, rows

