"""From recorded answers to pairs: pure functions, no model. Every prompt ends as a pair or one counted skip reason.

Correction (one greedy student answer a prompt): a passing answer makes no pair (`student_correct`); a failing one
is the rejected answer, and the chosen one comes from the teacher (which must pass the check:
`teacher_fails_check`), the reference, or the rewrite template over the reference (`chosen_fails_check` when they
do not pass it either: e.g. the template "The answer is {reference}." under an exact check).

Best-of-n (k sampled answers a prompt): empty answers are left out (counted as `empty_samples`); of the rest the
highest-scored is chosen and the lowest-scored rejected (the first in sample order among equals; the rejected one is
preferably a text other than the chosen). Skipped, in this order: fewer than two answers (`too_few_answers`), best ==
worst score with every answer failing (`all_failed`) or passing (`all_passed`) the verifier, or with another score
(`tie`), a score gap below `min_margin` (`below_margin`), and the same text on both sides (`identical`).
"""

from __future__ import annotations

from dpo_recipes.pairs.prompts import PromptRow

CORRECTION_SKIPS = ("no_reference", "student_correct", "empty_answer", "teacher_fails_check", "chosen_fails_check",
                    "identical")
BEST_OF_N_SKIPS = ("no_reference", "too_few_answers", "all_failed", "all_passed", "tie", "below_margin", "identical")
CHOSEN_SOURCES = ("reference", "teacher", "rewrite")


def rewrite(template: str, row: PromptRow) -> str:
    """The chosen answer of `--chosen_source rewrite`: the template with {reference} filled in."""
    return template.format(reference=row.reference)


def correction_pair(row: PromptRow, record: dict, chosen_source: str, template: str | None,
                    verifier) -> tuple[dict | None, str | None]:
    """(pair, None) or (None, skip reason) for one prompt's student record."""
    if record["passed"]:
        return None, "student_correct"
    rejected = record["answer"]
    if chosen_source == "teacher":
        if not record.get("teacher_passed"):
            return None, "teacher_fails_check"
        chosen, score = record["teacher"], record["teacher_score"]
    else:
        chosen = row.reference if chosen_source == "reference" else rewrite(template, row)
        score, passed = verifier.verdict(row, chosen)
        if not passed:
            return None, "chosen_fails_check"
    if not chosen.strip() or not rejected.strip():
        return None, "empty_answer"
    if chosen.strip() == rejected.strip():
        return None, "identical"
    return {"chosen": chosen.strip(), "rejected": rejected, "score_chosen": score,
            "score_rejected": record["score"]}, None


def best_of_n_pair(record: dict, min_margin: float = 0.0) -> tuple[dict | None, str | None]:
    """(pair, None) or (None, skip reason) for one prompt's k scored answers."""
    answers, scores = record["answers"], record["scores"]
    passed = record.get("passed")
    keep = [j for j, a in enumerate(answers) if a.strip()]
    if len(keep) < 2:
        return None, "too_few_answers"
    best = max(keep, key=lambda j: (scores[j], -j))
    low = min(scores[j] for j in keep)
    if scores[best] == low:
        if passed is not None and not any(passed[j] for j in keep):
            return None, "all_failed"
        if passed is not None and all(passed[j] for j in keep):
            return None, "all_passed"
        return None, "tie"
    if scores[best] - low < min_margin:
        return None, "below_margin"
    lows = [j for j in keep if scores[j] == low]
    worst = next((j for j in lows if answers[j].strip() != answers[best].strip()), lows[0])
    if answers[worst].strip() == answers[best].strip():
        return None, "identical"
    return {"chosen": answers[best], "rejected": answers[worst], "score_chosen": scores[best],
            "score_rejected": scores[worst]}, None


def output_row(row: PromptRow, pair: dict, output_format: str) -> dict:
    """A pair in the project's plain (strings) or conversational (messages) format, with its two scores."""
    if output_format == "conversational":
        prompt = row.messages
        chosen = [{"role": "assistant", "content": pair["chosen"]}]
        rejected = [{"role": "assistant", "content": pair["rejected"]}]
    else:
        prompt = row.prompt if isinstance(row.prompt, str) else row.prompt[0]["content"]
        chosen, rejected = pair["chosen"], pair["rejected"]
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "score_chosen": pair["score_chosen"],
            "score_rejected": pair["score_rejected"]}
