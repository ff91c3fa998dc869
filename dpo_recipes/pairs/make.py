"""`make_pairs`: answer the prompts in batches (resumably), score or check the answers, and pair them.

    result = make_pairs(model, tokenizer, load_prompts("prompts.jsonl"), mode="correction", verifier="numeric",
                        chosen_source="reference", work_file="out/pairs.work.jsonl")
    result.rows      # output rows: prompt, chosen, rejected, score_chosen, score_rejected
    result.counts    # prompts, answered, pairs, skipped {reason: n}, ... (pairs + sum(skipped) == prompts)

Batches are fixed chunks of the prompts to answer (`batch_size` prompts; best-of-n generates batch_size * k
sequences at once). Each finished batch is appended to the work file before the next starts; a rerun skips the
batches it holds, so a resumed run gives the rows of an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm import tqdm

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.pairs import build
from dpo_recipes.pairs.generate import generate, sample_seed
from dpo_recipes.pairs.prompts import PromptRow, as_prompt_rows
from dpo_recipes.pairs.scorers import build_scorer, weights_fingerprint
from dpo_recipes.pairs.verifiers import build_verifier
from dpo_recipes.pairs.workfile import WorkFile

MODES = ("correction", "best-of-n")
OUTPUT_FORMATS = ("auto", "conversational", "plain")
# One line per skip reason, for the message of an empty result.
SKIP_TEXT = {
    "no_reference": "prompts had no reference, which the check or the chosen source needs",
    "student_correct": "answers were correct",
    "empty_answer": "answers were empty",
    "teacher_fails_check": "teacher answers failed the check",
    "chosen_fails_check": "chosen answers (reference or rewrite) failed the check",
    "identical": "pairs had the same text on both sides",
    "too_few_answers": "prompts had fewer than two non-empty answers",
    "all_failed": "prompts had every answer failing the check",
    "all_passed": "prompts had every answer passing the check",
    "tie": "prompts had all answers scored the same",
    "below_margin": "pairs had a score gap below min_margin",
}
HINTS = {
    "student_correct": "harder prompts, or --mode best-of-n, find mistakes to correct",
    "all_passed": "harder prompts or a stricter check make some answers fail",
    "all_failed": "easier prompts, more samples (--k) or a teacher (--mode correction) give passing answers",
    "no_reference": "add a 'reference' to the rows, or use a check that needs none",
    "chosen_fails_check": "make the rewrite template or the reference pass the row's check",
    "teacher_fails_check": "use a stronger teacher or --chosen_source reference",
    "below_margin": "lower --min_margin",
}


@dataclass
class PairsResult:
    """The pairs (output rows, in prompt order), the counts of every skip reason, and the run's settings."""

    rows: list[dict]
    counts: dict
    settings: dict
    output_format: str
    timing: dict = field(default_factory=dict)

    def why_empty(self) -> str:
        """One line on why no pair was made (empty when some were)."""
        if self.rows:
            return ""
        n, skipped = self.counts["prompts"], {k: v for k, v in self.counts["skipped"].items() if v}
        if len(skipped) == 1:
            reason, count = next(iter(skipped.items()))
            line = f"all {count} {SKIP_TEXT[reason]}: no pair to make"
        else:
            parts = ", ".join(f"{v} {SKIP_TEXT[k]}" for k, v in sorted(skipped.items(), key=lambda kv: -kv[1]))
            line = f"no pair made from {n} prompts: {parts}"
        hint = HINTS.get(max(skipped, key=skipped.get)) if skipped else None
        return line + (f" ({hint})." if hint else ".")


def check_settings(prompts, *, mode: str = "correction", verifier=None, scorer="verifier", k: int = 4,
                   temperature: float = 0.8, top_p: float = 0.95, seed: int = 0, batch_size: int = 8,
                   max_new_tokens: int = 128, chosen_source: str = "reference", rewrite_template: str | None = None,
                   teacher_model=None, min_margin: float = 0.0, output_format: str = "auto"):
    """Everything that can be refused before a model is loaded: the settings, and every row's check and reference.

    Takes `make_pairs`' settings (`teacher_model` may be a path here). Returns (rows, verifier or None).
    """
    if mode not in MODES:
        raise DPORecipesError(f"--mode {mode!r}: choose one of {', '.join(MODES)}.")
    if output_format not in OUTPUT_FORMATS:
        raise DPORecipesError(f"--output_format {output_format!r}: choose one of {', '.join(OUTPUT_FORMATS)}.")
    if batch_size < 1 or max_new_tokens < 1:
        raise DPORecipesError("--batch_size and --max_new_tokens must be at least 1.")
    if mode == "correction":
        if chosen_source not in build.CHOSEN_SOURCES:
            raise DPORecipesError(f"--chosen_source {chosen_source!r}: choose one of "
                                  f"{', '.join(build.CHOSEN_SOURCES)}.")
        if chosen_source == "teacher" and teacher_model is None:
            raise DPORecipesError("--chosen_source teacher needs a teacher: pass --teacher_model FOLDER.")
        if chosen_source == "rewrite":
            if not rewrite_template:
                raise DPORecipesError("--chosen_source rewrite needs --rewrite_template, e.g. 'The answer is "
                                      "{reference}.'.")
            try:
                rewrite_template.format(reference="x")
            except (KeyError, IndexError, ValueError) as exc:
                raise DPORecipesError(f"--rewrite_template {rewrite_template!r}: only {{reference}} can be filled "
                                      f"in ({exc!r}); write literal braces as {{{{ and }}}}.") from None
    else:
        if k < 2:
            raise DPORecipesError(f"--k {k}: best-of-n needs at least 2 samples a prompt.")
        if not temperature > 0:
            raise DPORecipesError(f"--temperature {temperature}: best-of-n samples, so it must be above 0.")
        if not 0 < top_p <= 1:
            raise DPORecipesError(f"--top_p {top_p}: use a value in (0, 1].")
        if min_margin < 0:
            raise DPORecipesError(f"--min_margin {min_margin}: use a gap of 0 or more.")
    rows = as_prompt_rows(prompts)
    if not rows:
        raise DPORecipesError("No prompts to answer.")
    if output_format != "auto":
        resolve_output_format(output_format, None, rows)
    needs_verifier = mode == "correction" or scorer == "verifier"
    verifier = build_verifier(verifier) if needs_verifier or verifier is not None else None
    if verifier is not None:
        verifier.prepare(rows)
    return rows, verifier


def resolve_output_format(output_format: str, tokenizer, rows: list[PromptRow]) -> str:
    """'auto': conversational when the tokenizer has a chat template (the answers were made through it, and TRL
    applies it only to conversational data), else plain. Plain needs prompts of one user turn."""
    fmt = output_format
    if fmt == "auto":
        fmt = "conversational" if getattr(tokenizer, "chat_template", None) else "plain"
    if fmt == "plain":
        for row in rows:
            if not isinstance(row.prompt, str) and len(row.prompt) > 1:
                raise DPORecipesError(f"{row.where}: a prompt of {len(row.prompt)} messages cannot be written as a "
                                      "plain string; use --output_format conversational.")
    return fmt


def _answer_batch(batch, mode, model, tokenizer, verifier, scorer, settings, teacher, stats) -> list[dict]:
    """Records for one batch of prompts: answers with their scores (and teacher answers where needed)."""
    gen = dict(max_new_tokens=settings["max_new_tokens"], stats=stats)
    if mode == "correction":
        answers = generate(model, tokenizer, [r.prompt for r in batch], wheres=[r.where for r in batch], **gen)
        records = []
        for row, answer in zip(batch, answers):
            score, passed = verifier.verdict(row, answer)
            records.append({"i": row.index, "h": row.key, "answer": answer, "score": score, "passed": passed})
        failed = [(row, rec) for row, rec in zip(batch, records) if not rec["passed"]]
        if teacher is not None and failed:
            t_model, t_tokenizer = teacher
            t_answers = generate(t_model, t_tokenizer, [r.prompt for r, _ in failed],
                                 wheres=[r.where for r, _ in failed], **gen)
            for (row, rec), answer in zip(failed, t_answers):
                rec["teacher_score"], rec["teacher_passed"] = verifier.verdict(row, answer)
                rec["teacher"] = answer
        return records
    k = settings["k"]
    flat = [row for row in batch for _ in range(k)]
    seeds = [sample_seed(settings["seed"], row.index, j) for row in batch for j in range(k)]
    answers = generate(model, tokenizer, [r.prompt for r in flat], wheres=[r.where for r in flat], seeds=seeds,
                       temperature=settings["temperature"], top_p=settings["top_p"], **gen)
    start = time.perf_counter()
    scores, passed = scorer(flat, answers)
    stats["scoring_seconds"] = stats.get("scoring_seconds", 0.0) + time.perf_counter() - start
    records = []
    for n, row in enumerate(batch):
        part = slice(n * k, (n + 1) * k)
        record = {"i": row.index, "h": row.key, "answers": answers[part], "scores": scores[part]}
        if passed is not None:
            record["passed"] = passed[part]
        records.append(record)
    return records


def make_pairs(model, tokenizer, prompts, *, mode: str = "correction", verifier=None, scorer="verifier", k: int = 4,
               temperature: float = 0.8, top_p: float = 0.95, seed: int = 0, batch_size: int = 8,
               max_new_tokens: int = 128, chosen_source: str = "reference", rewrite_template: str | None = None,
               teacher_model=None, teacher_tokenizer=None, min_margin: float = 0.0, output_format: str = "auto",
               work_file=None, overwrite: bool = False, model_name: str | None = None,
               teacher_name: str | None = None, progress: bool = True,
               on_batch: Callable[[int, int], None] | None = None) -> PairsResult:
    """Make preference pairs from `prompts` (`PromptRow`s, row dicts or strings) with `model` as the student.

    mode 'correction': one greedy answer a prompt, checked by `verifier`; a failing one is rejected against the
    teacher's answer, the reference, or `rewrite_template` (`chosen_source`). mode 'best-of-n': `k` answers a prompt
    sampled with `temperature` / `top_p` (seeded per prompt index and sample from `seed`), scored by `scorer`
    ('verifier', a reward-model folder, 'module:function' or a callable); the best and worst make the pair when their
    gap is at least `min_margin`. `max_new_tokens`: tokens per answer. `work_file`: where answers are appended per
    batch so a rerun resumes (None: kept in memory only); a work file made with other settings is refused unless
    `overwrite`. `on_batch(done_batches, done_prompts)` is called after each batch is on disk. `output_format`:
    auto | conversational | plain (see `resolve_output_format`).
    """
    rows, verifier = check_settings(
        prompts, mode=mode, verifier=verifier, scorer=scorer, k=k, temperature=temperature, top_p=top_p, seed=seed,
        batch_size=batch_size, max_new_tokens=max_new_tokens, chosen_source=chosen_source,
        rewrite_template=rewrite_template, teacher_model=teacher_model, min_margin=min_margin,
        output_format=output_format)
    fmt = resolve_output_format(output_format, tokenizer, rows)
    scorer = build_scorer(scorer, verifier, batch_size=batch_size) if mode == "best-of-n" else None
    teacher = (teacher_model, teacher_tokenizer or tokenizer) if mode == "correction" and \
        chosen_source == "teacher" else None

    if mode == "correction":
        needs_reference = chosen_source in ("reference", "rewrite")
        eligible = [r for r in rows if verifier.can_check(r) and (r.reference is not None or not needs_reference)]
    else:
        eligible = [r for r in rows if scorer.can_score(r)]
    settings = {
        "mode": mode, "model": model_name or getattr(model, "name_or_path", None),
        "model_fingerprint": weights_fingerprint(model), "max_new_tokens": max_new_tokens, "batch_size": batch_size,
        "verifier": verifier.describe() if verifier is not None else None,
        **({"chosen_source": chosen_source,
            "teacher": (teacher_name or getattr(teacher_model, "name_or_path", None)) if teacher else None,
            "teacher_fingerprint": weights_fingerprint(teacher_model) if teacher else None}
           if mode == "correction" else
           {"k": k, "seed": seed, "temperature": temperature, "top_p": top_p, "scorer": scorer.describe()}),
    }
    with WorkFile(work_file, settings, overwrite=overwrite) as work:
        work.check_rows({r.index: r for r in rows})
        stats: dict = {}
        batches = [eligible[s:s + batch_size] for s in range(0, len(eligible), batch_size)]
        done = sum(r.index in work.records for r in eligible)
        start = time.perf_counter()
        with tqdm(total=len(eligible), initial=done, unit="prompt", desc=f"{mode} answers", disable=not progress,
                  dynamic_ncols=True) as bar:
            for number, batch in enumerate(batches, 1):
                todo = [r for r in batch if r.index not in work.records]
                if not todo:
                    continue
                work.append(_answer_batch(todo, mode, model, tokenizer, verifier, scorer, settings, teacher, stats))
                bar.update(len(todo))
                if on_batch is not None:
                    on_batch(number, sum(r.index in work.records for r in eligible))
    stats["generation_seconds"] = time.perf_counter() - start - stats.get("scoring_seconds", 0.0)
    return _pair_up(rows, eligible, work.records, mode, chosen_source, rewrite_template, verifier, min_margin, fmt,
                    settings, stats)


def _pair_up(rows, eligible, records, mode, chosen_source, template, verifier, min_margin, fmt, settings,
             stats) -> PairsResult:
    reasons = build.CORRECTION_SKIPS if mode == "correction" else build.BEST_OF_N_SKIPS
    skipped = dict.fromkeys(reasons, 0)
    skipped["no_reference"] = len(rows) - len(eligible)
    out, empty_samples, samples, passed_samples = [], 0, 0, 0
    for row in eligible:
        record = records[row.index]
        if mode == "correction":
            pair, reason = build.correction_pair(row, record, chosen_source, template, verifier)
            samples += 1
            passed_samples += bool(record["passed"])
        else:
            pair, reason = build.best_of_n_pair(record, min_margin)
            samples += len(record["answers"])
            empty_samples += sum(not a.strip() for a in record["answers"])
            passed_samples += sum(record.get("passed") or [])
        if pair is None:
            skipped[reason] += 1
        else:
            out.append(build.output_row(row, pair, fmt))
    counts = {"prompts": len(rows), "answered": len(eligible), "pairs": len(out), "skipped": skipped,
              "answers": samples,
              "pass_rate": passed_samples / samples if samples and (mode == "correction" or settings.get(
                  "scorer", {}).get("type") == "verifier") else None}
    if mode == "best-of-n":
        counts["empty_samples"] = empty_samples
    return PairsResult(rows=out, counts=counts, settings=settings, output_format=fmt, timing=stats)
