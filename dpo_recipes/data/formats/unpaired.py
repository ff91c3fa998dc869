"""Unpaired (KTO-style) layouts: one answer per row with a desirable/undesirable label.

DPO recipes refuse them in one line that says what the file is; `recipes/kto.py` reads them as TRL's unpaired format
(prompt, completion, label). Layouts, by (answer column, label column):
- TRL / ColossalChat: `prompt` (text or messages), `completion` (text, one message or messages), `label`.
- LLaMA-Factory: `messages` (the last assistant turn is the completion, the turns before it the prompt), `label`.
- LLaMA-Factory alpaca: `instruction` (+ `input`), `output`, `tag`.
- turbo-alignment: `context` (messages, role 'bot' = assistant), `answer` (one message), `is_desirable`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dpo_recipes.data.formats.common import RowRef, completion, joined, messages, text, with_system
from dpo_recipes.data.formats.ranked import alpaca_prompt
from dpo_recipes.data.readers import RawRows, type_name

# (answer column, label column, prompt column) of the layouts seen in public projects
UNPAIRED = (("completion", "label", "prompt"), ("messages", "label", None), ("output", "tag", "instruction"),
            ("answer", "is_desirable", "context"), ("output", "label", "instruction"),
            ("response", "label", "prompt"))


def _layout(raw: RawRows, columns: list[str]):
    have = set(columns)
    if "chosen" in have and "rejected" in have:
        return None
    for answer, label, prompt in UNPAIRED:
        if {answer, label} <= have and (prompt is None or prompt in have):
            values = [row.get(label) for row in raw.rows[:50] if row.get(label) is not None]
            if values and all(isinstance(v, bool) or v in (0, 1) for v in values):
                return answer, label, prompt
    return None


def unpaired_layout(raw: RawRows, columns: list[str]) -> str | None:
    """'columns completion + label' when the rows are unpaired examples with a boolean label, else None."""
    layout = _layout(raw, columns)
    return None if layout is None else f"columns {layout[0]} + {layout[1]}"


@dataclass
class Unpaired:
    """Column-wise unpaired rows: prompt, completion, label (True: desirable), plus what reading each row found."""

    detected: str
    prompt: list = field(default_factory=list)
    completion: list = field(default_factory=list)
    label: list = field(default_factory=list)
    issues: list = field(default_factory=list)
    ignored_columns: list = field(default_factory=list)


def read_unpaired(raw: RawRows, columns: list[str]) -> Unpaired | None:
    """The rows as prompt / completion / label, or None when the file is not an unpaired layout."""
    layout = _layout(raw, columns)
    if layout is None:
        return None
    answer, label, prompt_col = layout
    used = {answer, label, prompt_col, "input", "system"} - {None}
    out = Unpaired(detected=f"unpaired (prompt: {prompt_col or answer + '[:-1]'}, completion: "
                            f"{answer + '[-1]' if prompt_col is None else answer}, label: {label})",
                   ignored_columns=[c for c in columns if c not in used])
    alpaca_columns = {"prompt": prompt_col, **({"input": "input"} if "input" in columns else {})}
    for i, row in enumerate(raw.rows):
        at = RowRef(raw, i)
        flag = row.get(label)
        if not (isinstance(flag, bool) or flag in (0, 1)):
            raise at.fail(label, f"expected true or false, got {type_name(flag)} ({str(flag)[:20]!r}).")
        if prompt_col is None:  # LLaMA-Factory: the conversation ends with the judged answer
            turns = messages(row.get(answer), at, answer, "user") or []
            prompt, answer_msgs = turns[:-1], completion(turns[-1:], at, answer)
        elif answer == "output":  # alpaca
            prompt = alpaca_prompt(row, at, alpaca_columns) or []
            answer_msgs = messages(text(row.get(answer), at, answer), at, answer, "assistant")
        else:
            prompt = messages(row.get(prompt_col), at, prompt_col, "user") or []
            answer_msgs = completion(messages(row.get(answer), at, answer, "assistant"), at, answer)
        prompt = with_system(prompt, row.get("system"), at, "system")
        out.prompt.append(prompt)
        out.completion.append(answer_msgs)
        out.label.append(bool(flag))
        out.issues.append(None if prompt and any(m["role"] == "user" for m in prompt) else "missing_prompt")
    return out


def unpaired_texts(rows: Unpaired) -> tuple[list, list]:
    return [joined(p) for p in rows.prompt], [joined(c) for c in rows.completion]
