"""What a finished run left in its output_dir, read for plotting: Trainer's log history (metrics.jsonl) as series,
the before/after answers' lengths (eval_answers.jsonl), the recipe (run_record.json) and a title (summary.json)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from dpo_recipes.errors import DPORecipesError


def series(log_history: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """Every numeric metric of Trainer's log_history as (optimizer steps, values), in log order.

    Eval metrics keep their `eval_` names. Rows without a step, and the final totals row (train_runtime, train_loss),
    are left out; null, NaN and infinite values become NaN, which a line plot draws as a gap."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for row in log_history:
        if not isinstance(row, dict) or "train_runtime" in row or not _is_number(row.get("step")):
            continue
        for key, value in row.items():
            if key in ("step", "epoch") or not (value is None or _is_number(value)):
                continue
            value = math.nan if value is None or not math.isfinite(value) else float(value)
            steps, values = out.setdefault(key, ([], []))
            steps.append(float(row["step"]))
            values.append(value)
    return out


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a .jsonl file ({} for a blank line); DPORecipesError naming a line that is not one."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines(): U+2028 may sit inside a string
    except (OSError, UnicodeDecodeError) as exc:
        raise DPORecipesError(f"{path}: cannot read it ({exc}).") from None
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError as exc:
            raise DPORecipesError(f"{path} line {number}: not JSON ({exc.msg}).") from None
        if not isinstance(row, dict):
            raise DPORecipesError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}.")
        rows.append(row)
    return rows


def answer_lengths(path: str | os.PathLike) -> dict[str, tuple[float, float]]:
    """Mean answer length in words (whitespace-separated) per prompt kind, as (before, after) training, from
    eval_answers.jsonl. Rows without a text `before` and `after` are left out; {} when the file is absent."""
    path = Path(path)
    if not path.is_file():
        return {}
    sums: dict[str, list[float]] = {}
    for row in _read_jsonl(path):
        if isinstance(row.get("before"), str) and isinstance(row.get("after"), str):
            total = sums.setdefault(str(row.get("kind", "all")), [0, 0, 0])
            for i, words in enumerate((len(row["before"].split()), len(row["after"].split()), 1)):
                total[i] += words
    order = sorted(sums, key=lambda kind: ({"identity": 0, "general": 1}.get(kind, 2), kind))
    return {kind: (sums[kind][0] / sums[kind][2], sums[kind][1] / sums[kind][2]) for kind in order}


def load_run(run_dir: str | os.PathLike, label: str | None = None) -> dict:
    """A run folder's data: label, series (see `series`), eval answer lengths (words) and a title from summary.json.

    Raises DPORecipesError when it has no metrics.jsonl or the file is not JSON lines."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        what = ("a file, not a run folder" if run_dir.is_file() else "no such folder" if not run_dir.is_dir()
                else "no metrics.jsonl in it")
        raise DPORecipesError(f"{run_dir}: {what}; pass a run's output_dir (metrics.jsonl is written when training "
                              "ends).")
    data = {"label": label or run_dir.name, "series": series(_read_jsonl(metrics)), "lengths": {}, "notes": []}
    try:
        data["lengths"] = answer_lengths(run_dir / "eval_answers.jsonl")
    except DPORecipesError as exc:  # the curves are still worth drawing
        data["notes"].append(f"lengths ({exc})")
    data["title"] = _title(run_dir)
    data["recipe"] = _recipe(run_dir)
    return data


def _recipe(run_dir: Path) -> str | None:
    """The recipe that wrote the run (its run_record.json), or None."""
    try:
        return json.loads((run_dir / "run_record.json").read_text()).get("recipe")
    except (OSError, ValueError, AttributeError):
        return None


def _title(run_dir: Path) -> str:
    """'FOLDER: preset, model, dataset' from summary.json; the folder name alone when it is absent or unreadable."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        parts = [summary.get("preset"), Path(str(summary.get("model") or "")).name, summary.get("dataset")]
    except (OSError, ValueError, AttributeError):
        parts = []
    details = ", ".join(str(p) for p in parts if p)
    return f"{run_dir.name}: {details}" if details else run_dir.name
