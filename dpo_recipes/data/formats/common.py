"""What every format reader shares: the reader interface, field parsers that name the row and field on error, and
the message normalization (roles and content parts from other projects' layouts to TRL's {role, content})."""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from dpo_recipes.data.readers import RawRows, type_name
from dpo_recipes.errors import DPORecipesError

# Role names used by other projects -> TRL's roles. ShareGPT (LLaMA-Factory, MedicalGPT): human/gpt/system/
# function_call/observation; turbo-alignment: bot; Gemini-style: model. A function call is the assistant's turn, an
# observation is the tool's answer.
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "bot": "assistant",
         "model": "assistant", "chatbot": "assistant", "system": "system", "function_call": "assistant",
         "tool": "tool", "observation": "tool", "function": "tool", "ipython": "tool"}


# Columns that hold the prompt in other projects' layouts (ShareGPT, alpaca, orca, OpenAI). With one of them present,
# the shared beginning of two string answers is not the prompt: implicit_prompt would invent one ("Action:").
PROMPT_LIKE_COLUMNS = ("conversations", "messages", "question", "instruction", "input", "query", "history", "context",
                       "system")


def prompt_elsewhere(columns: list[str]) -> str | None:
    return next((c for c in columns if c.lower() in PROMPT_LIKE_COLUMNS), None)


def missing_prompt_error(raw: RawRows, columns: list[str], name: str) -> DPORecipesError:
    return DPORecipesError(
        f"{raw.source}: required column 'prompt' is absent from every row (format {name}); columns: "
        f"{', '.join(columns)}. Map one with --column_map SRC:prompt"
        + ("." if prompt_elsewhere(columns) else ", or use --format implicit_prompt."))


@dataclass
class Pair:
    """One normalized row. `issue`: a rule name when reading the row already found it bad (counted, not raised)."""

    prompt: object
    chosen: object
    rejected: object
    issue: str | None = None
    score_chosen: float | None = None
    score_rejected: float | None = None
    tools: str | None = None  # JSON tool schemas for the chat template (kept only when the file has a tools column)
    texts: tuple | None = None  # (chosen, rejected) text for the rules when not the joined messages (HH answers)


@dataclass
class Match:
    """How a reader reads this file: its format name, the columns it reads (by their part), and notes for the
    report (e.g. 'paired best against worst of 4 ranked outputs')."""

    format: str
    columns: dict[str, str]
    notes: list[str] = field(default_factory=list)
    options: dict = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.format} (" + ", ".join(f"{part}: {col}" for part, col in self.columns.items()) + ")"


class Reader(ABC):
    """A format family. `detect` looks at the column names and a few rows and returns a Match (or None); `pair`
    normalizes one row. Readers are tried in `formats.READERS` order; the first match wins."""

    names: tuple[str, ...] = ()    # format names this reader answers to (--format)
    layout = ""                   # one line for the docs and errors

    @abstractmethod
    def detect(self, raw: RawRows, columns: list[str]) -> Match | None:
        """How this reader would read the file, or None when the file is not its layout."""

    def force(self, raw: RawRows, columns: list[str], name: str) -> Match:
        """The Match when the user forces this format; raises when the file cannot be read that way."""
        match = self.detect(raw, columns)
        if match is None:
            raise DPORecipesError(f"{raw.source}: --format {name}: the columns ({', '.join(columns)}) are not "
                                  f"this layout: {self.layout}.")
        match.format = name
        return match

    @abstractmethod
    def pair(self, row: dict, at: RowRef, match: Match) -> Pair:
        """One row as a Pair; structural errors raise, naming the row and field (`at.fail`)."""


class RowRef:
    """Names a row and field in error messages."""

    __slots__ = ("raw", "i")

    def __init__(self, raw: RawRows, i: int):
        self.raw, self.i = raw, i

    def fail(self, fieldname: str, what: str) -> DPORecipesError:
        return DPORecipesError(f"{self.raw.source}: {self.raw.where(self.i)}: field {fieldname!r}: {what}")


def first_value(raw: RawRows, column: str, limit: int = 200):
    """The first non-empty value of `column` in the first `limit` rows (None if none)."""
    for row in raw.rows[:limit]:
        value = row.get(column)
        if value not in (None, "", [], {}):
            return value
    return None


def first_column(columns: list[str], candidates: tuple[str, ...]) -> str | None:
    return next((c for c in candidates if c in columns), None)


def is_message(value) -> bool:
    return isinstance(value, dict) and ("role" in value or "from" in value)


def is_messages(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value) and is_message(value[0])


def text(value, at: RowRef, name: str):
    """A text field: str, or None when missing. Anything else is a structural error."""
    if value is None or isinstance(value, str):
        return value
    hint = " (this looks conversational: pass --format conversational)" if isinstance(value, list) else ""
    raise at.fail(name, f"expected text, got {type_name(value)}{hint}.")


def content(value, at: RowRef, name: str, j: int) -> str:
    """A message's content: text, or text content parts {'type': 'text', 'text' | 'value': ...}."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if isinstance(part, str):
                texts.append(part)
                continue
            kind = part.get("type", "text") if isinstance(part, dict) else None
            body = part.get("text", part.get("value")) if isinstance(part, dict) else None
            if kind != "text":
                raise at.fail(name, f"message {j + 1}: a content part of type {kind!r}: only text parts are read "
                                    "(images and other media are not supported).")
            if not isinstance(body, str):
                raise at.fail(name, f"message {j + 1}: a text content part needs 'text' (or 'value') as a string.")
            texts.append(body)
        return "".join(texts)
    raise at.fail(name, f"message {j + 1}: 'content' must be text, got {type_name(value)}.")


def message(m, at: RowRef, name: str, j: int) -> dict:
    """One message as {role, content}: 'role' or 'from', 'content' or 'value', other projects' role names mapped."""
    if not isinstance(m, dict):
        raise at.fail(name, f"message {j + 1} must be an object with 'role' and 'content', got {type_name(m)}.")
    role = m.get("role", m.get("from"))
    if not isinstance(role, str) or not role:
        raise at.fail(name, f"message {j + 1} has no 'role' (or ShareGPT 'from'): expected system, user or "
                            "assistant.")
    mapped = ROLES.get(role.lower())
    if mapped is None:
        raise at.fail(name, f"message {j + 1}: unknown role {role!r}; known: {', '.join(sorted(ROLES))}.")
    body = m["content"] if "content" in m else m.get("value")
    return {"role": mapped, "content": content(body, at, name, j)}


def messages(value, at: RowRef, name: str, wrap_role: str):
    """A message list, a single message object, or a string wrapped as one `wrap_role` turn; None when missing."""
    if value is None:
        return None
    if isinstance(value, str):
        return [{"role": wrap_role, "content": value}] if value.strip() else []
    if isinstance(value, dict):
        return [message(value, at, name, 0)]
    if not isinstance(value, list):
        raise at.fail(name, f"expected a list of {{role, content}} messages, got {type_name(value)}.")
    return [message(m, at, name, j) for j, m in enumerate(value)]


def completion(msgs: list[dict] | None, at: RowRef, name: str) -> list[dict] | None:
    """A completion after an explicit prompt: the model's answer, so its last message must be the assistant's."""
    if msgs and msgs[-1]["role"] != "assistant":
        raise at.fail(name, f"the completion ends with a {msgs[-1]['role']!r} message; it must end with the "
                            "'assistant' answer (is the prompt inside it, or are the roles swapped?).")
    return msgs


def with_system(prompt: list[dict] | None, system, at: RowRef, column: str) -> list[dict] | None:
    """Keep a system prompt from its own column as the first message (unless the prompt already has one)."""
    system = text(system, at, column)
    if prompt is None or not system or not system.strip() or (prompt and prompt[0]["role"] == "system"):
        return prompt
    return [{"role": "system", "content": system}, *prompt]


def history_messages(value, at: RowRef, name: str) -> list[dict]:
    """alpaca/MedicalGPT `history`: [[user, assistant], ...] turns before the question."""
    if value in (None, ""):
        return []
    if not isinstance(value, list):
        raise at.fail(name, f"expected a list of [user, assistant] turns, got {type_name(value)}.")
    out = []
    for j, turn in enumerate(value):
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
            raise at.fail(name, f"turn {j + 1} must be [user text, assistant text].")
        out += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    return out


def joined(msgs) -> str | None:
    if msgs is None:
        return None
    if isinstance(msgs, str):
        return msgs
    return "\n".join(m["content"] for m in msgs)


def score(value, at: RowRef, name: str):
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


def flag(value, at: RowRef, name: str) -> bool:
    """A yes/no column such as `anchor`: JSON true/false (absent or null is false); in CSV also true/false/1/0/empty.
    Anything else is refused rather than read as a guess ("no", 2, "maybe")."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and at.raw.kind == "csv" and value.strip().lower() in ("", "true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise at.fail(name, f"expected true or false, got {type_name(value)} ({str(value)[:40]!r}).")


def tools_json(value, at: RowRef, name: str) -> str | None:
    """A tools column as the JSON string TRL's DPOTrainer passes to the chat template (it json-loads strings)."""
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError as exc:
            raise at.fail(name, f"tools must be JSON ({exc.msg}).") from None
        return value
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False)
    raise at.fail(name, f"expected a JSON list of tool schemas, got {type_name(value)}.")
