"""``labelled``: two responses and a label (or votes) saying which is better. The winner comes from the label, never
from column order; ties and missing labels are counted (rule `no_winner`) and dropped.

Layouts (the first whose columns are all present):
- SHP: history (the post), human_ref_A, human_ref_B, labels (1: A is preferred), score_A / score_B.
- PKU-SafeRLHF: prompt, response_0, response_1, better_response_id (0 or 1).
- HelpSteer2-preference: prompt, response_1, response_2, preference_strength (< 0: response_1, > 0: response_2).
- PandaLM: instruction (+ input), response1, response2, annotator1..3 votes (1, 2; 0 = tie): the majority wins.
- AlpacaEval annotations: instruction, output_1, output_2, preference (1 or 2; anything else is a tie).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from dpo_recipes.data.formats.common import Match, Pair, Reader, text
from dpo_recipes.data.formats.ranked import alpaca_prompt
from dpo_recipes.data.readers import RawRows, type_name


def _number(value, at, name):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise at.fail(name, f"expected a number, got {type_name(value)} ({str(value)[:40]!r}).")
    return float(value)


def _shp(row, at):
    label = _number(row.get("labels"), at, "labels")
    return None if label is None else ("a" if label == 1 else "b" if label == 0 else "tie")


def _pku(row, at):
    label = _number(row.get("better_response_id"), at, "better_response_id")
    return None if label is None else ("a" if label == 0 else "b" if label == 1 else "tie")


def _helpsteer(row, at):
    strength = _number(row.get("preference_strength"), at, "preference_strength")
    return None if strength is None else ("a" if strength < 0 else "b" if strength > 0 else "tie")


def _votes(row, at, columns):
    votes = [_number(row.get(c), at, c) for c in columns]
    votes = [v for v in votes if v is not None]
    if not votes:
        return None
    a, b = votes.count(1), votes.count(2)
    return "a" if a > max(b, votes.count(0)) else "b" if b > max(a, votes.count(0)) else "tie"


def _alpaca_eval(row, at):
    preference = _number(row.get("preference"), at, "preference")
    return None if preference is None else ("a" if preference == 1 else "b" if preference == 2 else "tie")


@dataclass
class Layout:
    name: str
    prompt: str
    responses: tuple[str, str]
    label: tuple[str, ...]
    winner: Callable
    scores: tuple[str, str] | None = None


LAYOUTS = (
    Layout("SHP", "history", ("human_ref_A", "human_ref_B"), ("labels",), _shp, ("score_A", "score_B")),
    Layout("PKU-SafeRLHF", "prompt", ("response_0", "response_1"), ("better_response_id",), _pku),
    Layout("HelpSteer2", "prompt", ("response_1", "response_2"), ("preference_strength",), _helpsteer),
    Layout("PandaLM", "instruction", ("response1", "response2"), ("annotator1",), None),
    Layout("AlpacaEval", "instruction", ("output_1", "output_2"), ("preference",), _alpaca_eval),
)


class Labelled(Reader):
    names = ("labelled",)
    layout = "two responses and a label or votes naming the better one (SHP, PKU-SafeRLHF, HelpSteer2, PandaLM, ...)"

    def detect(self, raw: RawRows, columns: list[str]) -> Match | None:
        have = set(columns)
        for layout in LAYOUTS:
            if {layout.prompt, *layout.responses, *layout.label} <= have:
                used = {"prompt": layout.prompt, "response_a": layout.responses[0],
                        "response_b": layout.responses[1]}
                votes = sorted(c for c in columns if c.startswith("annotator") and c[9:].isdigit())
                label = votes if layout.winner is None else list(layout.label)
                used["label"] = ", ".join(label)
                if layout.prompt == "instruction" and "input" in have:
                    used["input"] = "input"
                if layout.scores and set(layout.scores) <= have:
                    used["scores"] = ", ".join(layout.scores)
                return Match("labelled", used, [f"labelled ({layout.name}): the winner is taken from "
                                                f"{', '.join(label)}; ties and missing labels are dropped as "
                                                "no_winner"], {"layout": layout, "votes": votes})
        return None

    def pair(self, row, at, match):
        layout, c = match.options["layout"], match.columns
        if layout.prompt == "instruction":
            prompt = alpaca_prompt(row, at, c)
        else:
            question = text(row.get(layout.prompt), at, layout.prompt)
            prompt = [{"role": "user", "content": question}] if question and question.strip() else None
        winner = _votes(row, at, match.options["votes"]) if layout.winner is None else layout.winner(row, at)
        a, b = (text(row.get(col), at, col) for col in layout.responses)
        answers = {"a": a, "b": b}
        if winner not in ("a", "b"):  # tie or no label: kept in column order, counted as no_winner
            chosen, rejected = a, b
        else:
            chosen, rejected = answers[winner], answers["b" if winner == "a" else "a"]
        pair = Pair(prompt, _turn(chosen), _turn(rejected),
                    issue="missing_prompt" if not prompt else None if winner in ("a", "b") else "no_winner")
        if "scores" in c and winner in ("a", "b"):
            sa, sb = (_number(row.get(col), at, col) for col in layout.scores)
            pair.score_chosen, pair.score_rejected = (sa, sb) if winner == "a" else (sb, sa)
        return pair


def _turn(answer):
    return None if answer is None else [{"role": "assistant", "content": answer}]
