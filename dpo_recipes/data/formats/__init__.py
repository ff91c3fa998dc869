"""Detect the preference-data format and normalize every row to prompt / chosen / rejected (+ scores, tools, anchor).

Each format family is a small reader (`common.Reader`: `detect` + `pair`) in its own module; detection walks
`READERS` in order and the first match wins; `--format NAME` forces one. A new format is one module, one entry here
and one test. Families, in detection order:

- `openai`: input {messages, tools}, preferred_output, non_preferred_output (OpenAI / Azure preference tuning).
- `ranked`: instruction (+ input, system, history), output = [best, ..., worst] (LLaMA-Factory, OpenAssistant).
- `labelled`: two responses and a label or votes (SHP, PKU-SafeRLHF, HelpSteer2, PandaLM, AlpacaEval).
- `question`: question (+ system, history) and two answers (orca_dpo_pairs, MedicalGPT, stack-exchange-paired).
- `conversational` / `sharegpt`: messages (TRL; ShareGPT from/value; ColossalChat; turbo-alignment).
- `plain`: prompt, chosen, rejected strings (TRL; NeMo-Aligner's chosen_response / rejected_response).
- `implicit_prompt`: whole conversations in chosen/rejected sharing the prompt (UltraFeedback-binarized).
- `hh_rlhf`: Anthropic HH transcripts.

Unpaired (KTO) data is recognized and refused with what to do. Scores (`score_chosen`, `score_rejected`, both or
neither) ride along with any format, as does a yes/no `anchor` column (pairs whose chosen answer is a general answer
to keep; see `RecipeDPOTrainer.anchor_coef`). Wrong types are structural errors (`DPORecipesError`, naming file, row and
field); empty or missing values are left for the validators, which count them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dpo_recipes.data.formats.common import (PROMPT_LIKE_COLUMNS, Match, Reader, RowRef, flag, joined,
                                             prompt_elsewhere, score)
from dpo_recipes.data.formats.hh_rlhf import HHRLHF
from dpo_recipes.data.formats.implicit import ImplicitPrompt
from dpo_recipes.data.formats.labelled import Labelled
from dpo_recipes.data.formats.openai import OpenAIPreference
from dpo_recipes.data.formats.qa import Question
from dpo_recipes.data.formats.ranked import Ranked
from dpo_recipes.data.formats.trl import Conversational, Plain
from dpo_recipes.data.formats.unpaired import unpaired_layout
from dpo_recipes.data.readers import RawRows
from dpo_recipes.errors import DPORecipesError

READERS: tuple[Reader, ...] = (OpenAIPreference(), Ranked(), Labelled(), Question(), Conversational(), Plain(),
                               ImplicitPrompt(), HHRLHF())
FORMATS = tuple(name for reader in READERS for name in reader.names)
TARGET_COLUMNS = ("prompt", "chosen", "rejected", "score_chosen", "score_rejected")

__all__ = ["FORMATS", "PROMPT_LIKE_COLUMNS", "READERS", "TARGET_COLUMNS", "Match", "Normalized", "apply_column_map",
           "detect_format", "normalize", "parse_column_map"]


@dataclass
class Normalized:
    """Column-wise normalized rows, plus the text the validators look at.

    `*_text` hold the joined message contents for conversations (None when the field is missing);
    `issues[i]` is a rule name ('missing_prompt', 'prompt_mismatch', 'no_winner') when reading row i already found it
    bad; `tools` is set when the file has a tools column.
    """

    format: str
    scored: bool
    prompt: list = field(default_factory=list)
    chosen: list = field(default_factory=list)
    rejected: list = field(default_factory=list)
    prompt_text: list = field(default_factory=list)
    chosen_text: list = field(default_factory=list)
    rejected_text: list = field(default_factory=list)
    score_chosen: list | None = None
    score_rejected: list | None = None
    tools: list | None = None
    anchor: list | None = None  # per row: an anchor pair (a general answer to keep), from an `anchor` column
    issues: list = field(default_factory=list)
    ignored_columns: list = field(default_factory=list)
    detected: str = ""
    notes: list = field(default_factory=list)


# --- column mapping ------------------------------------------------------------------------------------------------

def parse_column_map(column_map: str | dict | None) -> dict[str, str]:
    """'a:prompt,b:chosen' (or a dict) -> {'a': 'prompt', 'b': 'chosen'}; targets must be known columns."""
    if not column_map:
        return {}
    if isinstance(column_map, str):
        mapping = {}
        for item in column_map.split(","):
            if not item.strip():
                continue
            if ":" not in item:
                raise DPORecipesError(
                    f"--column_map: {item.strip()!r} is not 'source:target' (e.g. 'question:prompt').")
            src, dst = item.rsplit(":", 1)
            mapping[src.strip()] = dst.strip()
    else:
        mapping = dict(column_map)
    for src, dst in mapping.items():
        if dst not in TARGET_COLUMNS + ("system",):
            raise DPORecipesError(
                f"--column_map: target {dst!r} (from {src!r}) must be one of {', '.join(TARGET_COLUMNS)} or system.")
    if len(set(mapping.values())) != len(mapping):
        raise DPORecipesError(f"--column_map: two source columns map to the same target: {mapping}.")
    return mapping


def apply_column_map(raw: RawRows, mapping: dict[str, str]) -> list[str]:
    """Rename columns in place; return the set of columns seen (after renaming), in first-seen order."""
    columns: dict[str, None] = {}
    for row in raw.rows:
        for key in row:
            columns.setdefault(key, None)
    for src in mapping:
        if src not in columns:
            raise DPORecipesError(f"{raw.source}: --column_map names column {src!r}, which no row has; columns: "
                                  f"{', '.join(columns) or '(none)'}.")
    if mapping:
        for row in raw.rows:
            for src, dst in mapping.items():
                if src in row:
                    row[dst] = row.pop(src)
        columns = {mapping.get(c, c): None for c in columns}
    return list(columns)


# --- detection -----------------------------------------------------------------------------------------------------

def detect_format(raw: RawRows, columns: list[str], forced: str | None = None) -> Match:
    """How to read these rows: the first reader whose layout they have (or the forced format's)."""
    if forced is not None:
        reader = next((r for r in READERS if forced in r.names), None)
        if reader is None:
            raise DPORecipesError(f"--format {forced!r}: unknown format; choose one of {', '.join(FORMATS)}.")
        return reader.force(raw, columns, forced)
    for reader in READERS:
        match = reader.detect(raw, columns)
        if match is not None:
            return match
    raise DPORecipesError(_no_layout(raw, columns))


def _no_layout(raw: RawRows, columns: list[str]) -> str:
    """One line on why no reader matched, and what would make the file readable."""
    unpaired = unpaired_layout(raw, columns)
    if unpaired:
        return (f"{raw.source}: unpaired (KTO-style) data: each row is one answer with a desirable/undesirable label "
                f"({unpaired}), not a chosen/rejected pair for the same prompt. DPO, ORPO and SimPO need pairs; KTO "
                "learns from unpaired answers: recipes/kto.py --dataset_name THIS_FILE reads it as it is.")
    listed = ", ".join(columns)
    for col in ("chosen", "rejected"):
        if col not in columns:
            return (f"{raw.source}: required column {col!r} is absent from every row, and no known layout matches; "
                    f"columns: {listed}. Known layouts: {', '.join(FORMATS)} (docs/data.md); rename with "
                    "--column_map 'SRC:chosen,SRC:rejected' if yours is prompt/chosen/rejected under other names.")
    chosen = next((r["chosen"] for r in raw.rows if r.get("chosen") not in (None, "", [])), None)
    elsewhere = prompt_elsewhere(columns)
    if isinstance(chosen, str) or chosen is None:
        return (f"{raw.source}: required column 'prompt' is absent from every row, and 'chosen' is not an HH-RLHF "
                f"transcript; columns: {listed}. "
                + (f"Column {elsewhere!r} seems to hold the prompt, in a layout this version does not read: map it "
                   f"with --column_map {elsewhere}:prompt if it is plain text." if elsewhere else
                   "Map a prompt column with --column_map SRC:prompt, or pass --format implicit_prompt if "
                   "chosen/rejected hold the whole text with a shared prompt prefix."))
    if isinstance(chosen, list) and chosen and isinstance(chosen[0], dict):
        return (f"{raw.source}: 'chosen' holds only assistant messages but no row has a prompt; add the prompt "
                "messages or map a prompt column with --column_map SRC:prompt.")
    return f"{raw.source}: field 'chosen': expected text or a list of messages, got {type(chosen).__name__}."


# --- normalization -------------------------------------------------------------------------------------------------

def normalize(raw: RawRows, columns: list[str], match: Match) -> Normalized:
    """Normalize every row of `raw` (already column-mapped) the way `match` says."""
    reader = next(r for r in READERS if match.format in r.names)
    has = set(columns)
    own_scores = "scores" in match.columns
    scored = own_scores or "score_chosen" in has or "score_rejected" in has
    if scored and not own_scores and not {"score_chosen", "score_rejected"} <= has:
        missing = "score_rejected" if "score_chosen" in has else "score_chosen"
        raise DPORecipesError(f"{raw.source}: required column {missing!r} is absent from every row, but its pair "
                              "is present; scored data needs both score_chosen and score_rejected.")
    used = {part.split(".")[0].split("[")[0] for value in match.columns.values() for part in value.split(", ")}
    if scored and not own_scores:
        used |= {"score_chosen", "score_rejected"}
    if "anchor" in has:
        used.add("anchor")
    out = Normalized(format=match.format, scored=scored, ignored_columns=[c for c in columns if c not in used],
                     detected=match.describe(), notes=list(match.notes))
    if scored:
        out.score_chosen, out.score_rejected = [], []
    if "tools" in match.columns:
        out.tools = []
    if "anchor" in has:
        out.anchor = []
    for i, row in enumerate(raw.rows):
        at = RowRef(raw, i)
        pair = reader.pair(row, at, match)
        out.prompt.append(pair.prompt)
        out.chosen.append(pair.chosen)
        out.rejected.append(pair.rejected)
        out.prompt_text.append(joined(pair.prompt))
        ct, rt = pair.texts if pair.texts is not None else (joined(pair.chosen), joined(pair.rejected))
        out.chosen_text.append(ct)
        out.rejected_text.append(rt)
        out.issues.append(pair.issue)
        if out.tools is not None:
            out.tools.append(pair.tools)
        if out.anchor is not None:
            out.anchor.append(flag(row.get("anchor"), at, "anchor"))
        if scored and own_scores:
            out.score_chosen.append(pair.score_chosen)
            out.score_rejected.append(pair.score_rejected)
        elif scored:
            out.score_chosen.append(score(row.get("score_chosen"), at, "score_chosen"))
            out.score_rejected.append(score(row.get("score_rejected"), at, "score_rejected"))
    _check_one_kind(out, raw)
    return out


def _check_one_kind(out: Normalized, raw: RawRows) -> None:
    """Every row's prompt must be of one kind (all text or all messages): a dataset column has one type."""
    kinds = {isinstance(p, list) for p in out.prompt if p is not None and p != ""}
    if len(kinds) > 1:
        i = next(i for i, p in enumerate(out.prompt) if isinstance(p, str) and p)
        raise DPORecipesError(f"{raw.source}: {raw.where(i)}: field 'prompt': text here, messages in other rows; use "
                              "one kind throughout the file.")
