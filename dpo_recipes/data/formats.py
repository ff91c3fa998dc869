"""Detect the preference-data format and normalize every row to prompt / chosen / rejected (+ scores).

Formats (`--format` forces one; otherwise the first row with a `chosen` value decides):

- ``plain``: `prompt`, `chosen`, `rejected` strings. Stays strings.
- ``conversational``: `prompt` (messages, or a string taken as one user turn) and `chosen` / `rejected`
  message lists (a string is taken as one assistant turn). Stays messages: TRL applies the chat template.
- ``implicit_prompt``: `chosen` and `rejected` are whole conversations (or whole texts) sharing a prefix; the
  prompt is that prefix, cut back to end on a non-assistant turn (or a word boundary for text). A `prompt`
  string column next to them (UltraFeedback-binarized) is ignored.
- ``hh_rlhf``: Anthropic HH transcripts, ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``; the prompt is the
  conversation before the last Assistant turn, turned into messages (user/assistant).

Scores (`score_chosen`, `score_rejected`, both or neither) ride along with any format.
Wrong types are structural errors (`DPORecipesError`); empty or missing values are left for the validators,
which count them (`issues` carries the row-level problems found while normalizing).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from dpo_recipes.data.readers import RawRows, type_name
from dpo_recipes.errors import DPORecipesError

FORMATS = ("plain", "conversational", "implicit_prompt", "hh_rlhf")
TARGET_COLUMNS = ("prompt", "chosen", "rejected", "score_chosen", "score_rejected")
# Columns that hold the prompt in other projects' layouts (ShareGPT, alpaca, orca, OpenAI). With one of them present,
# the shared beginning of two string answers is not the prompt: implicit_prompt would invent one ("Action:").
PROMPT_LIKE_COLUMNS = ("conversations", "messages", "question", "instruction", "input", "query", "history")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass
class Normalized:
    """Column-wise normalized rows, plus the text the validators look at.

    `*_text` hold the joined message contents for conversations (None when the field is missing);
    `issues[i]` is a rule name ('missing_prompt', 'prompt_mismatch') when normalizing row i already found it bad.
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
    issues: list = field(default_factory=list)
    ignored_columns: list = field(default_factory=list)


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
        if dst not in TARGET_COLUMNS:
            raise DPORecipesError(
                f"--column_map: target {dst!r} (from {src!r}) must be one of {', '.join(TARGET_COLUMNS)}.")
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

def _is_messages(value) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict)


def _is_hh(text: str) -> bool:
    return text.lstrip("\n").startswith("Human:") and "\n\nAssistant:" in text


def detect_format(raw: RawRows, columns: list[str], forced: str | None = None) -> str:
    """The format name for these rows; raise when required columns are absent from the whole file."""
    for col in ("chosen", "rejected"):
        if col not in columns:
            raise DPORecipesError(
                f"{raw.source}: required column {col!r} is absent from every row; columns: {', '.join(columns)}. "
                "Rename with --column_map 'SRC:chosen,SRC:rejected'.")
    if forced is not None:
        if forced not in FORMATS:
            raise DPORecipesError(f"--format {forced!r}: unknown format; choose one of {', '.join(FORMATS)}.")
        if forced in ("plain", "conversational") and "prompt" not in columns:
            raise DPORecipesError(
                f"{raw.source}: required column 'prompt' is absent from every row (format {forced}); columns: "
                f"{', '.join(columns)}. Map one with --column_map SRC:prompt"
                + ("." if _prompt_elsewhere(columns) else ", or use --format implicit_prompt."))
        if forced == "implicit_prompt":
            _refuse_invented_prompt(raw, columns)
        return forced
    i, chosen = next(((i, r["chosen"]) for i, r in enumerate(raw.rows) if r.get("chosen") not in (None, "", [])),
                     (0, None))
    prompt = next((r["prompt"] for r in raw.rows if r.get("prompt") not in (None, "", [])), None)
    if isinstance(chosen, str) or chosen is None:
        if "prompt" in columns:
            return "plain"
        if chosen is not None and _is_hh(chosen):
            return "hh_rlhf"
        elsewhere = _prompt_elsewhere(columns)
        raise DPORecipesError(
            f"{raw.source}: required column 'prompt' is absent from every row, and 'chosen' is not an HH-RLHF "
            f"transcript; columns: {', '.join(columns)}. "
            + (f"Column {elsewhere!r} seems to hold the prompt, in a layout this version does not read yet: convert "
               "the file to prompt/chosen/rejected." if elsewhere else
               "Map a prompt column with --column_map SRC:prompt, or pass --format implicit_prompt if "
               "chosen/rejected hold the whole text with a shared prompt prefix."))
    if isinstance(chosen, list):
        if not all(isinstance(m, dict) for m in chosen):
            raise DPORecipesError(f"{raw.source}: {raw.where(i)}: field 'chosen': expected text or a list of "
                                  "{role, content} messages, got a list of non-objects.")
        if isinstance(prompt, list):
            return "conversational"
        if chosen[0].get("role") != "assistant":
            return "implicit_prompt"  # whole conversations; a string prompt column (UltraFeedback) is redundant
        if prompt is None and "prompt" not in columns:
            raise DPORecipesError(
                f"{raw.source}: 'chosen' holds only assistant messages but no row has a 'prompt'; add the prompt "
                "messages or map a prompt column with --column_map SRC:prompt.")
        return "conversational"
    raise DPORecipesError(f"{raw.source}: {raw.where(i)}: field 'chosen': expected text or a list of messages, got "
                          f"{type_name(chosen)}.")


def _prompt_elsewhere(columns: list[str]) -> str | None:
    return next((c for c in columns if c.lower() in PROMPT_LIKE_COLUMNS or c.lower() == "system"), None)


def _refuse_invented_prompt(raw: RawRows, columns: list[str]) -> None:
    """implicit_prompt on string answers takes their shared beginning as the prompt: refuse when the real prompt
    is in another column, where that beginning is only a coincidence of the two answers."""
    elsewhere = _prompt_elsewhere(columns)
    first = next((r.get("chosen") for r in raw.rows if r.get("chosen") not in (None, "", [])), None)
    if elsewhere and isinstance(first, str):
        raise DPORecipesError(
            f"{raw.source}: --format implicit_prompt would take the shared beginning of the two answers as the "
            f"prompt, but column {elsewhere!r} holds the real one; convert the file to prompt/chosen/rejected "
            "(or map that column with --column_map if it is plain text).")


# --- per-row normalization -----------------------------------------------------------------------------------------

class _Row:
    """Names a row and field in error messages."""

    __slots__ = ("raw", "i")

    def __init__(self, raw: RawRows, i: int):
        self.raw, self.i = raw, i

    def fail(self, fieldname: str, what: str) -> DPORecipesError:
        return DPORecipesError(f"{self.raw.source}: {self.raw.where(self.i)}: field {fieldname!r}: {what}")


def _text(value, at: _Row, name: str):
    """A text field: str, or None when missing. Anything else is a structural error."""
    if value is None or isinstance(value, str):
        return value
    hint = " (this looks conversational: pass --format conversational)" if isinstance(value, list) else ""
    raise at.fail(name, f"expected text, got {type_name(value)}{hint}.")


def _content(value, at: _Row, name: str, j: int) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts: [{"type": "text", "text": ...}]
        texts = []
        for part in value:
            is_text = isinstance(part, dict) and part.get("type", "text") == "text"
            if not (is_text and isinstance(part.get("text"), str)):
                raise at.fail(name, f"message {j + 1}: content parts must be text ({{'type': 'text', 'text': ...}}); "
                                    "images and other media are not supported.")
            texts.append(part["text"])
        return "".join(texts)
    raise at.fail(name, f"message {j + 1}: 'content' must be text, got {type_name(value)}.")


def _messages(value, at: _Row, name: str, wrap_role: str):
    """A message list (role + content only), a string wrapped as one `wrap_role` turn, or None when missing."""
    if value is None:
        return None
    if isinstance(value, str):
        return [{"role": wrap_role, "content": value}] if value.strip() else []
    if not isinstance(value, list):
        raise at.fail(name, f"expected a list of {{role, content}} messages, got {type_name(value)}.")
    out = []
    for j, m in enumerate(value):
        if not isinstance(m, dict):
            raise at.fail(name, f"message {j + 1} must be an object with 'role' and 'content', got {type_name(m)}.")
        role = m.get("role")
        if not isinstance(role, str) or not role:
            hint = ("; ShareGPT-style 'from'/'value' messages must be converted to 'role'/'content'"
                    if "from" in m else "")
            raise at.fail(name, f"message {j + 1} has no 'role' (expected 'system', 'user' or 'assistant'){hint}.")
        out.append({"role": role, "content": _content(m.get("content"), at, name, j)})
    return out


def _joined(messages) -> str | None:
    if messages is None:
        return None
    return "\n".join(m["content"] for m in messages)


def _score(value, at: _Row, name: str):
    if value is None or isinstance(value, bool):
        if isinstance(value, bool):
            raise at.fail(name, "expected a number, got a boolean.")
        return None
    if isinstance(value, (int, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, str) and at.raw.kind == "csv":
        if not value.strip():
            return None
        try:
            return float(value)
        except ValueError:
            pass
    raise at.fail(name, f"expected a number, got {type_name(value)} ({str(value)[:40]!r}).")


def _common_prefix_messages(a: list, b: list) -> int:
    k = 0
    for x, y in zip(a, b):
        if x != y:
            break
        k += 1
    while k > 0 and a[k - 1]["role"] == "assistant":
        k -= 1  # the prompt ends on the turn the completions answer
    return k


def _common_prefix_text(a: str, b: str) -> int:
    k = 0
    for x, y in zip(a, b):
        if x != y:
            break
        k += 1
    if k < min(len(a), len(b)) or len(a) != len(b):
        cut = max(a.rfind(" ", 0, k), a.rfind("\n", 0, k))
        if 0 < k and not a[k - 1].isspace() and cut >= 0:
            k = cut + 1  # do not split a word between prompt and completion
    return k


def _split_hh(text: str):
    """(prompt_text, completion) at the last Assistant turn, or (None, None) if there is none."""
    idx = text.rfind("\n\nAssistant:")
    if idx < 0:
        return None, None
    completion = text[idx + len("\n\nAssistant:"):]
    return text[:idx], completion[1:] if completion.startswith(" ") else completion


def _hh_messages(prompt_text: str) -> list:
    parts = _HH_TURN.split("\n\n" + prompt_text.lstrip("\n"))
    # parts = [leading, role, content, role, content, ...]
    return [{"role": _HH_ROLES[parts[j]], "content": parts[j + 1].strip()} for j in range(1, len(parts) - 1, 2)]


def _completion(messages: list[dict] | None, at: _Row, name: str) -> list[dict] | None:
    """A completion after an explicit prompt: the model's answer, so its last message must be the assistant's."""
    if messages and messages[-1]["role"] != "assistant":
        raise at.fail(name, f"the completion ends with a {messages[-1]['role']!r} message; it must end with the "
                            "'assistant' answer (is the prompt inside it, or are the roles swapped?).")
    return messages


def normalize(raw: RawRows, columns: list[str], fmt: str) -> Normalized:
    """Normalize every row of `raw` (already column-mapped) to format `fmt`."""
    has = set(columns)
    scored = "score_chosen" in has or "score_rejected" in has
    if scored and not {"score_chosen", "score_rejected"} <= has:
        missing = "score_rejected" if "score_chosen" in has else "score_chosen"
        raise DPORecipesError(f"{raw.source}: required column {missing!r} is absent from every row, but its pair "
                              "is present; scored data needs both score_chosen and score_rejected.")
    out = Normalized(format=fmt, scored=scored, ignored_columns=[c for c in columns if c not in TARGET_COLUMNS])
    if scored:
        out.score_chosen, out.score_rejected = [], []
    conv_prompt_missing = fmt == "conversational"
    for i, row in enumerate(raw.rows):
        at = _Row(raw, i)
        issue = None
        if fmt == "plain":
            p = _text(row.get("prompt"), at, "prompt")
            c = _text(row.get("chosen"), at, "chosen")
            r = _text(row.get("rejected"), at, "rejected")
            pt, ct, rt = p, c, r
        elif fmt == "conversational":
            p = _messages(row.get("prompt"), at, "prompt", "user")
            c = _completion(_messages(row.get("chosen"), at, "chosen", "assistant"), at, "chosen")
            r = _completion(_messages(row.get("rejected"), at, "rejected", "assistant"), at, "rejected")
            pt, ct, rt = _joined(p), _joined(c), _joined(r)
        elif fmt == "implicit_prompt":
            c0, r0 = row.get("chosen"), row.get("rejected")
            if isinstance(c0, str) and isinstance(r0, str):
                k = _common_prefix_text(c0, r0)
                p, c, r = c0[:k], c0[k:], r0[k:]
                if p.endswith(" "):
                    p, c, r = p[:-1], " " + c, " " + r
                pt, ct, rt = p, c, r
            else:
                c0 = _messages(c0, at, "chosen", "assistant")
                r0 = _messages(r0, at, "rejected", "assistant")
                if c0 is None or r0 is None:
                    p, c, r = None, c0, r0
                else:
                    k = _common_prefix_messages(c0, r0)
                    p, c, r = c0[:k], c0[k:], r0[k:]
                pt, ct, rt = _joined(p), _joined(c), _joined(r)
            if not p:
                issue = "missing_prompt"
        else:  # hh_rlhf
            c0 = _text(row.get("chosen"), at, "chosen")
            r0 = _text(row.get("rejected"), at, "rejected")
            pc, cc = _split_hh(c0) if c0 else (None, None)
            pr, rc = _split_hh(r0) if r0 else (None, None)
            if pc is None or pr is None or not pc.strip():
                issue = "missing_prompt"
                p = []
            elif pc != pr:
                issue = "prompt_mismatch"
                p = _hh_messages(pc)
            else:
                p = _hh_messages(pc)
                if not any(m["role"] == "user" for m in p):
                    issue = "missing_prompt"
            c = [{"role": "assistant", "content": cc if cc is not None else (c0 or "")}]
            r = [{"role": "assistant", "content": rc if rc is not None else (r0 or "")}]
            pt, ct, rt = _joined(p), cc, rc
        if conv_prompt_missing and p is None:
            issue = "missing_prompt"
        out.prompt.append(p)
        out.chosen.append(c)
        out.rejected.append(r)
        out.prompt_text.append(pt)
        out.chosen_text.append(ct)
        out.rejected_text.append(rt)
        out.issues.append(issue)
        if scored:
            out.score_chosen.append(_score(row.get("score_chosen"), at, "score_chosen"))
            out.score_rejected.append(_score(row.get("score_rejected"), at, "score_rejected"))
    return out
