"""Validation of unpaired (KTO-style) rows: prompt, completion, label. The same counting as for pairs: every dropped
row is charged to one rule, and kept + sum(dropped) == total_rows."""

from __future__ import annotations

from dataclasses import asdict

from dpo_recipes.data.formats.unpaired import Unpaired, unpaired_texts
from dpo_recipes.data.lengths import char_length
from dpo_recipes.data.readers import RawRows
from dpo_recipes.data.validate import ALWAYS_DROPPED, RULES, ValidationConfig, ValidationReport, _key, tally


def validate_unpaired(rows: Unpaired, raw: RawRows, *, validation: str, config: ValidationConfig | None,
                      tokenizer=None, max_length: int | None = None,
                      drop_prompt_too_long: bool = False) -> tuple[list[int], ValidationReport]:
    """Rules for unpaired rows: missing_prompt, empty_field, too_short (a desirable answer against
    min_chosen_chars, an undesirable one against min_rejected_chars), duplicate; prompt_too_long in every mode."""
    cfg = config or ValidationConfig()
    prompt_text, answer_text = unpaired_texts(rows)
    n = len(rows.prompt)
    reason: list[str | None] = [None] * n
    detail: dict[int, str] = {}
    if validation != "off":
        seen: set = set()
        for i in range(n):
            answer = answer_text[i]
            if cfg.require_prompt and rows.issues[i] == "missing_prompt":
                reason[i] = "missing_prompt"
            elif cfg.drop_empty and (answer is None or not answer.strip()):
                reason[i] = "empty_field"
            else:
                minimum = cfg.min_chosen_chars if rows.label[i] else cfg.min_rejected_chars
                length = char_length(answer or "")
                if length < minimum:
                    reason[i] = "too_short"
                    detail[i] = f"{'desirable' if rows.label[i] else 'undesirable'} answer {length} chars (min {minimum})"
                elif cfg.drop_duplicates:
                    key = (_key(rows.prompt[i]), _key(rows.completion[i]), rows.label[i])
                    if key in seen:
                        reason[i] = "duplicate"
                    seen.add(key)
    if drop_prompt_too_long and max_length is not None and tokenizer is not None:
        from dpo_recipes.data.lengths import trainer_prompt_spans

        todo = [i for i in range(n) if (validation != "strict" or reason[i] is None) and rows.prompt[i]
                and rows.completion[i] is not None]
        spans = trainer_prompt_spans([rows.prompt[i] for i in todo], [rows.completion[i] for i in todo],
                                     [rows.completion[i] for i in todo], tokenizer)
        for i, (length, _) in zip(todo, spans):
            if length >= max_length:
                reason[i] = "prompt_too_long"
                detail[i] = f"prompt {length} tokens >= max_length {max_length}"
    flagged, examples = tally(reason, detail, raw, answer_text, [None] * n, cfg.examples_per_rule)
    if validation == "strict":
        keep = [i for i, why in enumerate(reason) if why is None]
        dropped = dict(flagged)
    else:
        keep = [i for i, why in enumerate(reason) if why not in ALWAYS_DROPPED]
        dropped = {rule: 0 for rule in RULES} | {rule: flagged[rule] for rule in ALWAYS_DROPPED}
    desirable = sum(rows.label[i] for i in keep)
    report = ValidationReport(
        source=raw.source, format="unpaired", scored=False, validation=validation, total_rows=n, kept=len(keep),
        dropped=dropped, flagged=flagged if validation != "off" else dict(dropped), examples=examples,
        ignored_columns=rows.ignored_columns, max_length=max_length, detected=rows.detected,
        notes=[f"unpaired rows kept: {desirable:,} desirable, {len(keep) - desirable:,} undesirable"],
        config=asdict(cfg))
    assert report.kept + sum(report.dropped.values()) == report.total_rows
    return keep, report
