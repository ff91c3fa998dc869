"""Row rules over normalized preference data, and the report that counts every row each rule drops.

Each row is charged to the first rule it fails, in `RULES` order, so `kept + sum(dropped) == total_rows`.
Modes: ``strict`` drops failing rows; ``warn`` keeps every row and reports what strict would drop (`flagged`);
``off`` runs no row rule (structural checks in the readers and formats still apply).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dpo_recipes.data.formats import Normalized
from dpo_recipes.jsonio import write_json_atomic
from dpo_recipes.data.lengths import char_length, count_tokens
from dpo_recipes.data.readers import RawRows
from dpo_recipes.errors import DPORecipesError

MODES = ("strict", "warn", "off")
# Order matters: a row is charged to the first rule it fails. Cheap, certain rules first; duplicates last so a
# duplicate is only counted as one when its first copy is kept.
RULES = ("missing_prompt", "prompt_mismatch", "no_winner", "empty_field", "missing_score", "identical", "too_short",
         "score_order", "too_similar", "duplicate", "truncated", "prompt_too_long")
# Counted, never dropped: with a tokenizer, pairs whose prompt tokens alone are not a prefix of prompt + answer tokens.
BOUNDARY_HELP = ("the prompt's tokens alone are not a prefix of prompt + answer tokens (the answer's first token merges "
                 "with the prompt's end, or the template renders the prompt differently alone): TRL trains from their "
                 "common prefix, on a context the model does not see when it answers")
# Dropped in every validation mode: a pair without a winner, or without a completion token left to train on.
ALWAYS_DROPPED = ("no_winner", "prompt_too_long")
RULE_HELP = {
    "missing_prompt": "no prompt (null, empty, or no shared prefix / Human turn to take it from)",
    "prompt_mismatch": "HH-RLHF chosen and rejected transcripts differ before the last Assistant turn",
    "prompt_boundary": BOUNDARY_HELP,
    "no_winner": "two labelled responses with a tie or no label: neither can be the chosen one",
    "empty_field": "chosen or rejected missing, empty or whitespace-only",
    "missing_score": "score_chosen or score_rejected missing or NaN",
    "identical": "chosen == rejected after whitespace normalization",
    "too_short": "chosen or rejected shorter than the minimum (chars, or tokens if set)",
    "score_order": "score_chosen <= score_rejected (ODPO needs s_w > s_l)",
    "too_similar": "chosen/rejected similarity above the maximum (rapidfuzz Indel ratio)",
    "duplicate": "exact duplicate of an earlier kept pair (prompt, chosen, rejected)",
    "truncated": "prompt + longer completion exceeds max_length tokens (dropped only with drop_truncated)",
    "prompt_too_long": "the prompt alone fills max_length tokens: no completion token is left to learn from "
                       "(DPOTrainer and KTOTrainer drop such pairs, ORPO and CPO would train on an empty answer), so "
                       "it is dropped in every validation mode",
}


@dataclass
class ValidationConfig:
    """Thresholds of the row rules. Lengths are in characters of the stripped text (joined message contents for
    conversations) unless the token minimums are set, which need a tokenizer."""

    min_chosen_chars: int = 50
    min_rejected_chars: int = 20
    min_chosen_tokens: int | None = None
    min_rejected_tokens: int | None = None
    max_similarity: float | None = 0.9  # drop when similarity > this; None disables; 0..1
    drop_identical: bool = True
    drop_duplicates: bool = True
    drop_empty: bool = True
    require_prompt: bool = True
    require_score_order: bool = True
    drop_truncated: bool = False
    examples_per_rule: int = 3
    workers: int = 1  # rapidfuzz threads for the similarity filter; -1 = all cores

    def __post_init__(self):
        if self.max_similarity is not None and not 0.0 <= self.max_similarity <= 1.0:
            raise DPORecipesError(f"max_similarity must be between 0 and 1 (got {self.max_similarity}).")
        for name in ("min_chosen_chars", "min_rejected_chars", "min_chosen_tokens", "min_rejected_tokens"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise DPORecipesError(f"{name} must be >= 0 (got {value}).")


@dataclass
class ValidationReport:
    """What validation saw and did. `dropped` has every rule (0 included); `flagged` is what strict would drop."""

    source: str
    format: str
    scored: bool
    validation: str
    total_rows: int
    kept: int
    dropped: dict[str, int]
    flagged: dict[str, int]
    warnings: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[dict]] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)
    detected: str = ""  # the format and the columns it was read from, e.g. "sharegpt (prompt: conversations, ...)"
    max_length: int | None = None
    notes: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON atomically (a temporary file renamed into place)."""
        return write_json_atomic(path, self.to_dict())

    def summary(self) -> str:
        """A one-screen human summary."""
        kind = self.format + (" + scores" if self.scored else "")
        pct = 100.0 * self.kept / self.total_rows if self.total_rows else 0.0
        lines = [f"{self.source}: {kind}, {self.total_rows:,} rows, validation {self.validation}"]
        if self.detected:
            lines.append(f"  read as {self.detected}")
        # outside strict mode the rules that drop in every mode get lines of their own
        always = {rule: self.dropped.get(rule, 0) for rule in ALWAYS_DROPPED} if self.validation != "strict" else {}
        if self.validation == "off":
            lines.append(f"  kept {self.kept:,} (row rules off)")
        else:
            counts = dict(self.dropped if self.validation == "strict" else self.flagged)
            for rule, n in always.items():
                counts[rule] -= n
            verb = "dropped" if self.validation == "strict" else "would drop (kept: warn mode)"
            lines.append(f"  kept {self.kept:,} ({pct:.1f}%), {verb} {sum(counts.values()):,}")
            for rule in RULES:
                if counts.get(rule):
                    where = ", ".join(e["where"] for e in self.examples.get(rule, []))
                    lines.append(f"    {rule:<16}{counts[rule]:>9,}   e.g. {where}")
            if counts.get("score_order"):
                lines.append("    (score_order: ties and inversions of score_chosen/score_rejected; when the scores "
                             "are not what you train on, keep them with allow_score_ties: true / --allow-score-ties)")
        if always.get("no_winner"):
            lines.append(f"  dropped {always['no_winner']:,} labelled pairs with no winner (a tie or no label), in "
                         "every mode")
        if always.get("prompt_too_long"):
            where = ", ".join(e["where"] for e in self.examples.get("prompt_too_long", []))
            lines.append(f"  dropped {always['prompt_too_long']:,} whose prompt fills max_length={self.max_length} "
                         f"tokens (no answer token left to train on; dropped in every mode), e.g. {where}")
        if self.warnings.get("truncated"):
            where = ", ".join(e["where"] for e in self.examples.get("truncated", []))
            lines.append(f"  warning: {self.warnings['truncated']:,} kept pairs exceed max_length={self.max_length} "
                         f"tokens and will be truncated (e.g. {where}); drop them with drop_truncated")
        if self.warnings.get("prompt_boundary"):
            where = ", ".join(e["where"] for e in self.examples.get("prompt_boundary", []))
            lines.append(f"  warning: {self.warnings['prompt_boundary']:,} kept pairs: {BOUNDARY_HELP} (e.g. {where}); "
                         "`dpo-recipes show --tokenizer` shows the rendered text")
        if self.ignored_columns:
            lines.append(f"  ignored columns: {', '.join(self.ignored_columns[:8])}"
                         + (" ..." if len(self.ignored_columns) > 8 else ""))
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _ws(text: str) -> str:
    return " ".join(text.split())


def _preview(value, limit: int = 80) -> str:
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    text = _ws(text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _key(value):
    """Hashable, exact form of a field for duplicate detection."""
    if isinstance(value, list):
        return tuple((m["role"], m["content"]) for m in value)
    return value


def _similar(chosen: list[str], rejected: list[str], threshold: float, workers: int) -> list[float]:
    """Indel similarity (0..1) per pair; values at or below `threshold` may come back as 0 (early exit)."""
    from rapidfuzz import process
    from rapidfuzz.distance import Indel

    import numpy as np

    if not chosen:
        return []
    scores = process.cpdist(chosen, rejected, scorer=Indel.normalized_similarity, score_cutoff=threshold,
                            dtype=np.float64, workers=workers)
    return scores.tolist()


def tally(reason: list, detail: dict, raw: RawRows, chosen_text: list, rejected_text: list,
          per_rule: int) -> tuple[dict[str, int], dict[str, list[dict]]]:
    """Rows charged to each rule, and the first `per_rule` examples of each ('_truncated_kept' rows are examples of
    `truncated` but not charged: they are kept)."""
    flagged = {rule: 0 for rule in RULES}
    examples: dict[str, list[dict]] = {}
    for i, why in enumerate(reason):
        if why is None:
            continue
        rule = "truncated" if why == "_truncated_kept" else why
        if why != "_truncated_kept":
            flagged[rule] += 1
        ex = examples.setdefault(rule, [])
        if len(ex) < per_rule:
            ex.append(_example(i, detail, raw, chosen_text, rejected_text, rule))
    return flagged, examples


def _example(i: int, detail: dict, raw: RawRows, chosen_text: list, rejected_text: list, rule: str) -> dict:
    return {"row": i + 1, "where": raw.where(i), "detail": detail.get(i, RULE_HELP[rule]),
            "chosen": _preview(chosen_text[i]), "rejected": _preview(rejected_text[i])}


def run_rules(norm: Normalized, raw: RawRows, *, validation: str = "strict", config: ValidationConfig | None = None,
              tokenizer=None, max_length: int | None = None, drop_prompt_too_long: bool = False,
              tokens_out: dict | None = None) -> tuple[list[int], ValidationReport]:
    """Apply the rules; return (indices of rows to keep, report).

    `drop_prompt_too_long` (with `tokenizer` and `max_length`): drop, in every mode, the pairs whose prompt alone
    fills `max_length` as TRL's trainer counts it, since the trainer would drop them itself without a word; the
    report then counts exactly the pairs that train.

    With a tokenizer the pairs are tokenized once, as TRL's DPOTrainer will (`lengths.trl_token_ids`): truncation,
    the prompt boundary and prompt_too_long are all measured on those ids. `tokens_out` (a dict): receives them,
    `rows` (row indices) and `table` (the ids, one table row per index), for the trainer to reuse.
    """
    if validation not in MODES:
        raise DPORecipesError(f"--validation {validation!r}: choose one of {', '.join(MODES)}.")
    cfg = config or ValidationConfig()
    n = len(norm.chosen)
    # a labelled pair without a winner is no pair at all: dropped in every mode, before any rule
    reason: list[str | None] = ["no_winner" if issue == "no_winner" else None for issue in norm.issues]
    detail: dict[int, str] = {}
    notes: list[str] = []
    warnings: dict[str, int] = {}
    use_tokens = cfg.min_chosen_tokens is not None or cfg.min_rejected_tokens is not None
    if use_tokens and tokenizer is None and validation != "off":
        raise DPORecipesError("min_chosen_tokens / min_rejected_tokens need a tokenizer (pass --tokenizer).")

    if validation != "off":
        ct, rt, pt = norm.chosen_text, norm.rejected_text, norm.prompt_text
        sc, sr = norm.score_chosen, norm.score_rejected
        min_c, min_r = cfg.min_chosen_chars, cfg.min_rejected_chars
        cws: list[str] = [""] * n
        rws: list[str] = [""] * n
        for i in range(n):
            if reason[i] is not None:
                continue
            issue = norm.issues[i]
            c, r, p = ct[i], rt[i], pt[i]
            if cfg.require_prompt and (issue == "missing_prompt" or p is None or not p.strip()):
                reason[i] = "missing_prompt"
                continue
            if cfg.require_prompt and issue == "prompt_mismatch":
                reason[i] = "prompt_mismatch"
                continue
            if cfg.drop_empty and (c is None or r is None or not c.strip() or not r.strip()):
                reason[i] = "empty_field"
                continue
            c, r = c or "", r or ""
            if norm.scored and (sc[i] is None or sr[i] is None):
                reason[i] = "missing_score"
                continue
            cw, rw = _ws(c), _ws(r)
            if cfg.drop_identical and cw == rw:
                reason[i] = "identical"
                continue
            lc, lr = char_length(c), char_length(r)
            if lc < min_c or lr < min_r:
                reason[i] = "too_short"
                detail[i] = f"chosen {lc} chars (min {min_c}), rejected {lr} chars (min {min_r}; CJK x3)"
                continue
            if norm.scored and cfg.require_score_order and not sc[i] > sr[i]:
                reason[i] = "score_order"
                detail[i] = f"score_chosen {sc[i]:g} <= score_rejected {sr[i]:g}"
                continue
            cws[i], rws[i] = cw, rw

        if use_tokens:
            todo = [i for i in range(n) if reason[i] is None]
            tc = count_tokens([ct[i] for i in todo], tokenizer)
            tr = count_tokens([rt[i] for i in todo], tokenizer)
            mc, mr = cfg.min_chosen_tokens or 0, cfg.min_rejected_tokens or 0
            for i, a, b in zip(todo, tc, tr):
                if a < mc or b < mr:
                    reason[i] = "too_short"
                    detail[i] = f"chosen {a} tokens (min {mc}), rejected {b} tokens (min {mr})"

        if cfg.max_similarity is not None and cfg.max_similarity < 1.0:
            todo = [i for i in range(n) if reason[i] is None]
            sims = _similar([cws[i] for i in todo], [rws[i] for i in todo], cfg.max_similarity, cfg.workers)
            for i, s in zip(todo, sims):
                if s > cfg.max_similarity:
                    reason[i] = "too_similar"
                    detail[i] = f"similarity {s:.3f} > {cfg.max_similarity}"
        del cws, rws

        if cfg.drop_duplicates:
            seen: dict[tuple, int] = {}
            for i in range(n):
                if reason[i] is None:
                    key = (_key(norm.prompt[i]), _key(norm.chosen[i]), _key(norm.rejected[i]))
                    first = seen.setdefault(key, i)
                    if first != i:
                        reason[i] = "duplicate"
                        detail[i] = f"same pair as {raw.where(first)}"

        if max_length is not None and tokenizer is None:
            notes.append(f"truncation at max_length={max_length} not counted: no tokenizer given")

    measured, table = [], None
    if tokenizer is not None and (validation != "off" or (drop_prompt_too_long and max_length is not None)):
        from dpo_recipes.data.lengths import trl_token_ids

        # strict keeps only rows that passed every rule; warn and off keep every row, so every row is measured
        kept_now = [i for i in range(n) if reason[i] != "no_winner" and (validation != "strict" or reason[i] is None)]
        measured = [i for i in kept_now
                    if norm.prompt[i] and norm.chosen[i] is not None and norm.rejected[i] is not None]
        table = trl_token_ids([norm.prompt[i] for i in measured], [norm.chosen[i] for i in measured],
                              [norm.rejected[i] for i in measured], tokenizer,
                              [norm.tools[i] for i in measured] if norm.tools is not None else None)
    lengths = _token_lengths(table)

    if validation != "off" and max_length is not None and tokenizer is not None:
        count = 0
        for k, i in enumerate(measured):
            if reason[i] is not None:
                continue
            prompt, completion = lengths["prompt"][k], max(lengths["chosen"][k], lengths["rejected"][k])
            if prompt + completion > max_length:
                count += 1
                detail[i] = f"prompt {prompt} + completion {completion} = {prompt + completion} tokens > {max_length}"
                reason[i] = "truncated" if cfg.drop_truncated else "_truncated_kept"
        warnings["truncated"] = 0 if cfg.drop_truncated else count

    def still_kept(i: int) -> bool:  # strict: passed every rule so far; warn and off keep every measured row
        return validation != "strict" or reason[i] in (None, "_truncated_kept")

    if drop_prompt_too_long and max_length is not None:
        for k, i in enumerate(measured):
            if lengths["prompt"][k] >= max_length and still_kept(i):
                if reason[i] == "_truncated_kept":
                    warnings["truncated"] -= 1
                reason[i] = "prompt_too_long"
                detail[i] = f"prompt {lengths['prompt'][k]} tokens >= max_length {max_length}"
    boundary = [i for k, i in enumerate(measured) if lengths["prompt"][k] < lengths["alone"][k] and still_kept(i)]

    flagged, examples = tally(reason, detail, raw, norm.chosen_text, norm.rejected_text, cfg.examples_per_rule)
    boundary = [i for i in boundary if reason[i] != "prompt_too_long"]  # measured on kept rows; this one is not
    if boundary:
        warnings["prompt_boundary"] = len(boundary)
        examples["prompt_boundary"] = [_example(i, {}, raw, norm.chosen_text, norm.rejected_text, "prompt_boundary")
                                       for i in boundary[:cfg.examples_per_rule]]
    if validation == "strict":
        keep = [i for i, why in enumerate(reason) if why is None or why == "_truncated_kept"]
        dropped = dict(flagged)
    else:  # warn and off keep every row, except those the trainer would drop anyway
        keep = [i for i, why in enumerate(reason) if why not in ALWAYS_DROPPED]
        dropped = {rule: 0 for rule in RULES} | {rule: flagged[rule] for rule in ALWAYS_DROPPED}
    if validation == "off":
        flagged = dict(dropped)
    report = ValidationReport(
        source=raw.source, format=norm.format, scored=norm.scored, validation=validation, total_rows=n,
        kept=len(keep), dropped=dropped, flagged=flagged,
        warnings=warnings, examples=examples, ignored_columns=norm.ignored_columns, max_length=max_length,
        notes=[*norm.notes, *notes], detected=norm.detected, config=asdict(cfg))
    assert report.kept + sum(report.dropped.values()) == report.total_rows
    if tokens_out is not None and table is not None:
        tokens_out.update(rows=measured, table=table)
    return keep, report


def _token_lengths(table) -> dict[str, list[int]]:
    """Token counts per measured row: prompt / chosen / rejected as TRL trains them, and the prompt tokenized alone."""
    if table is None:
        return {"prompt": [], "chosen": [], "rejected": [], "alone": []}
    import pyarrow.compute as pc

    return {"prompt": pc.list_value_length(table.column("prompt_ids")).to_pylist(),
            "chosen": pc.list_value_length(table.column("chosen_ids")).to_pylist(),
            "rejected": pc.list_value_length(table.column("rejected_ids")).to_pylist(),
            "alone": table.column("prompt_alone").to_pylist()}
