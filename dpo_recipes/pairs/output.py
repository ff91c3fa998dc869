"""Write the pairs, read them back through the project's validators, and save the report and the summary.

For OUT = dir/name.jsonl the run's files are:

    dir/name.jsonl          the pairs (written atomically, only once every prompt is answered, never empty)
    dir/name.work.jsonl     the answers, appended per batch (kept: rerunning rebuilds the pairs from it)
    dir/name.report.json    `load_preference_data`'s validation report on the pairs
    dir/name.summary.json   settings, counts of every skip reason, timings, validation figures
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dpo_recipes.data import ValidationConfig, load_preference_data
from dpo_recipes.errors import DPORecipesError
from dpo_recipes.jsonio import write_json_atomic, write_jsonl_atomic
from dpo_recipes.pairs.make import PairsResult

# The rules the pairs are read back with: made pairs are often short ("42" against "41") and alike ("The answer is
# 42." against "The answer is 41."), which is what a correction pair is; emptiness, identity, score order and
# duplicates still apply. The summary also counts what the training recipes' default rules would drop.
PAIR_RULES = {"min_chosen_chars": 1, "min_rejected_chars": 1, "max_similarity": None}


@dataclass
class PairsPaths:
    out: Path
    work: Path
    report: Path
    summary: Path


def pairs_paths(out: str | Path) -> PairsPaths:
    """The run's files for the output OUT (it must end in .jsonl)."""
    out = Path(out).expanduser()
    if out.suffix != ".jsonl":
        raise DPORecipesError(f"--output_file {out}: the pairs are written as JSONL; give a name ending in .jsonl.")
    stem = out.with_suffix("")
    return PairsPaths(out, Path(f"{stem}.work.jsonl"), Path(f"{stem}.report.json"), Path(f"{stem}.summary.json"))


def check_output(paths: PairsPaths, overwrite: bool) -> None:
    """Before any model work: refuse to replace pairs that no resumable run of ours is behind, unless `overwrite`
    (which removes the earlier run's files)."""
    if overwrite:
        for path in (paths.out, paths.work, paths.report, paths.summary):
            path.unlink(missing_ok=True)
    elif paths.out.exists() and not paths.work.exists():
        raise DPORecipesError(f"{paths.out} exists and no work file of a run is beside it; pass --overwrite to make "
                              "the pairs again, or another --output_file.")


def save_pairs(result: PairsResult, out: str | Path, extra: dict | None = None):
    """Write the pairs, validate them as training would read them, save report and summary.

    Returns (summary dict, `ValidationReport`). `extra`: more keys for the summary (e.g. the recipe's arguments).
    An empty result writes only the summary and raises `DPORecipesError` with `result.why_empty()` (pairs an earlier
    run wrote to `out` are left, and the message says so).
    """
    paths = pairs_paths(out)
    summary = {"output_file": str(paths.out), "work_file": str(paths.work), **(extra or {}),
               "settings": result.settings, "output_format": result.output_format, "counts": result.counts,
               "timing": _timing(result.timing)}
    if not result.rows:
        summary["error"] = result.why_empty()
        write_json_atomic(paths.summary, summary)
        stale = f" {paths.out} is from an earlier run and was left as it was." if paths.out.exists() else ""
        raise DPORecipesError(summary["error"] + stale)
    write_jsonl_atomic(paths.out, result.rows)
    data = load_preference_data(str(paths.out), validation="strict", config=ValidationConfig(**PAIR_RULES), min_rows=0)
    data.report.save(paths.report)
    defaults = load_preference_data(str(paths.out), validation="warn", config=ValidationConfig(), min_rows=0).report
    summary["validation"] = {"report": str(paths.report), "kept": data.report.kept, "total": data.report.total_rows,
                             "dropped": {k: v for k, v in data.report.dropped.items() if v}, "rules": PAIR_RULES,
                             "training_defaults_would_drop": {k: v for k, v in defaults.flagged.items() if v}}
    write_json_atomic(paths.summary, summary)
    return summary, data.report


def _timing(stats: dict) -> dict:
    seconds = stats.get("generation_seconds", 0.0)
    timing = {k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()}
    if seconds > 0 and stats.get("sequences"):
        timing["answers_per_second"] = round(stats["sequences"] / seconds, 3)
        timing["new_tokens_per_second"] = round(stats.get("new_tokens", 0) / seconds, 1)
    return timing


def summary_text(summary: dict, report=None) -> str:
    """The one-screen summary a recipe prints: counts, skip reasons, validation, files."""
    c = summary["counts"]
    lines = [f"{c['pairs']} pairs from {c['prompts']} prompts ({summary['settings']['mode']}, "
             f"{summary['output_format']} format)"]
    if c.get("pass_rate") is not None:
        lines.append(f"  answers passing the check: {c['pass_rate']:.1%} of {c['answers']}")
    for reason, n in c["skipped"].items():
        if n:
            lines.append(f"  skipped {reason:<20}{n:>7}")
    t = summary["timing"]
    if t.get("answers_per_second"):
        lines.append(f"  generation: {t['sequences']} answers in {t['generation_seconds']:.1f} s "
                     f"({t['answers_per_second']:.2f} answers/s, {t['new_tokens_per_second']:.0f} new tokens/s)")
    if report is not None:
        lines.append(report.summary())
        would = summary["validation"]["training_defaults_would_drop"]
        if would:
            lines.append("  note: the training recipes' default rules (min_chosen_chars 50, min_rejected_chars 20, "
                         f"max_similarity 0.9) would drop {sum(would.values())} of these pairs "
                         f"({', '.join(f'{k} {v}' for k, v in would.items())}); train with min_chosen_chars: 1, "
                         "min_rejected_chars: 1, max_similarity: null")
    lines.append(f"pairs: {summary['output_file']}; summary, report and work file beside it")
    return "\n".join(lines)
