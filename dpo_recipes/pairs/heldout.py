"""A held-out score: the share of prompts whose greedy answer passes the verifier (an iterative run's yardstick)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tqdm import tqdm

from dpo_recipes.pairs.generate import generate
from dpo_recipes.pairs.prompts import as_prompt_rows
from dpo_recipes.pairs.verifiers import build_verifier


@dataclass
class HeldoutScore:
    """`score`: passed / checked (None when no prompt could be checked); `results`: one dict a checked prompt
    (index, where, answer, score, passed); `unchecked`: prompts without the reference their check needs."""

    score: float | None
    passed: int
    checked: int
    unchecked: int
    results: list[dict] = field(default_factory=list)

    def __float__(self) -> float:
        return float("nan") if self.score is None else self.score


def heldout_score(model, tokenizer, prompts, verifier, *, max_new_tokens: int = 128, batch_size: int = 8,
                  progress: bool = False) -> HeldoutScore:
    """Answer `prompts` greedily (batched, `max_new_tokens` tokens at most) and check each answer with `verifier`
    (a spec, a callable or a `Verifier`; rows' own `check` apply)."""
    rows = as_prompt_rows(prompts)
    verifier = build_verifier(verifier)
    verifier.prepare(rows)
    checked = [r for r in rows if verifier.can_check(r)]
    results = []
    for start in tqdm(range(0, len(checked), batch_size), desc="held-out answers", disable=not progress):
        batch = checked[start:start + batch_size]
        answers = generate(model, tokenizer, [r.prompt for r in batch], wheres=[r.where for r in batch],
                           max_new_tokens=max_new_tokens)
        for row, answer in zip(batch, answers):
            score, passed = verifier.verdict(row, answer)
            results.append({"index": row.index, "where": row.where, "answer": answer, "score": score,
                            "passed": passed})
    passed = sum(r["passed"] for r in results)
    return HeldoutScore(score=passed / len(results) if results else None, passed=passed, checked=len(results),
                        unchecked=len(rows) - len(checked), results=results)
