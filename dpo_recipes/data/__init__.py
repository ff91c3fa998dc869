"""Preference data in, honestly: read any supported source, normalize it, validate it, and say what was dropped.

    from dpo_recipes.data import load_preference_data, ValidationConfig
    result = load_preference_data("pairs.jsonl", validation="strict")
    result.dataset   # datasets.Dataset: prompt, chosen, rejected (+ score_chosen, score_rejected, anchor)
    result.report    # ValidationReport: .summary(), .to_dict(), .save(path)

Modules: `readers` (files, gzip, save_to_disk, hub), `formats` (detect + normalize), `validate` (rules + report),
`lengths` (token counts), `audit` (length bias).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dpo_recipes.data.formats import FORMATS, apply_column_map, detect_format, normalize, parse_column_map
from dpo_recipes.data.lengths import TOKEN_COLUMNS
from dpo_recipes.data.readers import read_rows
from dpo_recipes.data.validate import MODES, RULES, ValidationConfig, ValidationReport, run_rules

from dpo_recipes.errors import DPORecipesError

if TYPE_CHECKING:  # datasets is imported lazily by the readers; only the annotation needs the name here
    import datasets

# The file name recipes save the validation report under, inside output_dir.
REPORT_FILENAME = "data_validation.json"

__all__ = ["FORMATS", "MODES", "REPORT_FILENAME", "RULES", "PreferenceData", "ValidationConfig", "ValidationReport",
           "load_preference_data"]


@dataclass
class PreferenceData:
    """The normalized, validated dataset and the report of what validation did."""

    dataset: datasets.Dataset
    report: ValidationReport
    eval_dataset: datasets.Dataset | None = None  # held-out pairs, set by the recipe (run.load_eval_data)
    eval_report: ValidationReport | None = None   # validation of a separate eval source


def load_preference_data(source: str, *, split: str = "train", data_format: str | None = None,
                         column_map: str | dict | None = None, validation: str = "strict",
                         config: ValidationConfig | None = None, tokenizer=None,
                         max_length: int | None = None, min_rows: int = 1,
                         drop_prompt_too_long: bool = False, allow_unpaired: bool = False,
                         keep_token_ids: bool = False) -> PreferenceData:
    """Read `source`, normalize it to prompt/chosen/rejected (+ scores), and apply the row rules.

    `source`: a .jsonl/.json/.csv/.parquet file (optionally .gz), a `save_to_disk` folder, or a hub id.
    `data_format`: force one of `FORMATS` instead of detecting it. `column_map`: 'src:dst,...' or a dict.
    `validation`: strict (drop failing rows) | warn (keep, report) | off (no row rules).
    `tokenizer` / `max_length` (tokens, prompt + completion as in DPOConfig): enable the token-based minimum
    lengths and the count of pairs that will be truncated. `drop_prompt_too_long`: also drop (and count) the pairs
    the trainer would drop because their prompt fills `max_length` (recipes set it). `allow_unpaired` (KTO): read
    unpaired data (one answer and a desirable/undesirable label a row) as prompt / completion / label instead of
    refusing it. `keep_token_ids` (with `tokenizer`): keep the ids validation measured, TRL's tokenization of every
    kept pair, as the columns `prompt_ids` / `chosen_ids` / `rejected_ids`, which RecipeDPOTrainer then uses instead
    of tokenizing again.

    Raises `DPORecipesError` for structural problems (unreadable file, bad syntax, wrong types, missing
    columns, no rows), and when fewer than `min_rows` rows are kept (0 disables; the CLI's `validate` uses 0).
    """
    import datasets

    if validation not in MODES:
        raise DPORecipesError(f"--validation {validation!r}: choose one of {', '.join(MODES)}.")
    mapping = parse_column_map(column_map)
    raw = read_rows(source, split=split)
    columns = apply_column_map(raw, mapping)
    if allow_unpaired and data_format is None:
        from dpo_recipes.data.formats.unpaired import read_unpaired
        from dpo_recipes.data.unpaired import validate_unpaired

        rows = read_unpaired(raw, columns)
        if rows is not None:
            keep, report = validate_unpaired(rows, raw, validation=validation, config=config, tokenizer=tokenizer,
                                             max_length=max_length, drop_prompt_too_long=drop_prompt_too_long)
            if len(keep) < min_rows:
                raise DPORecipesError(_too_few_rows(source, len(keep), min_rows, report))
            return PreferenceData(dataset=datasets.Dataset.from_dict({
                "prompt": [rows.prompt[i] for i in keep], "completion": [rows.completion[i] for i in keep],
                "label": [rows.label[i] for i in keep]}), report=report)
    match = detect_format(raw, columns, data_format)
    norm = normalize(raw, columns, match)
    tokens: dict = {}
    keep, report = run_rules(norm, raw, validation=validation, config=config, tokenizer=tokenizer,
                             max_length=max_length, drop_prompt_too_long=drop_prompt_too_long, tokens_out=tokens)
    if len(keep) < min_rows:
        raise DPORecipesError(_too_few_rows(source, len(keep), min_rows, report))
    data = {"prompt": [norm.prompt[i] for i in keep], "chosen": [norm.chosen[i] for i in keep],
            "rejected": [norm.rejected[i] for i in keep]}
    if norm.scored:
        data["score_chosen"] = [norm.score_chosen[i] for i in keep]
        data["score_rejected"] = [norm.score_rejected[i] for i in keep]
    if norm.tools is not None:  # JSON tool schemas: DPOTrainer passes them to the chat template
        data["tools"] = [norm.tools[i] for i in keep]
    if norm.anchor is not None:  # which pairs hold a general answer the anchor term keeps (trainer.anchor_coef)
        data["anchor"] = [norm.anchor[i] for i in keep]
    dataset = datasets.Dataset.from_dict(data)
    if keep_token_ids and tokens:
        dataset = _with_token_ids(dataset, keep, tokens)
    return PreferenceData(dataset=dataset, report=report)


def _with_token_ids(dataset, keep: list[int], tokens: dict):
    """`dataset` with the measured ids of its rows beside it, when every kept row was measured (else as it is)."""
    import datasets

    position = {row: k for k, row in enumerate(tokens["rows"])}
    if any(i not in position for i in keep):
        return dataset
    ids = tokens["table"].select(list(TOKEN_COLUMNS)).take([position[i] for i in keep])
    return datasets.concatenate_datasets([dataset, datasets.Dataset(ids)], axis=1)


def _too_few_rows(source: str, kept: int, min_rows: int, report: ValidationReport) -> str:
    """One line: how many rows are left, what dropped them, and what to change."""
    drops = sorted(((n, rule) for rule, n in report.dropped.items() if n), reverse=True)
    why = ", ".join(f"{rule} {n}" for n, rule in drops) or "none dropped"
    hints = []
    if report.dropped.get("prompt_too_long"):
        hints.append(f"raise --max_length (now {report.max_length} tokens; the prompt alone must fit with room for "
                     "the answer)")
    if any(n for rule, n in report.dropped.items() if rule != "prompt_too_long"):
        hints.append("fix the data or relax the rule thresholds (--min_chosen_chars, --max_similarity, ...), or use "
                     "--validation warn")
    return (f"{source}: only {kept} of {report.total_rows} rows pass validation (need {min_rows}); dropped: {why}. "
            f"{'; '.join(hints).capitalize() or 'Check the data'}.")
