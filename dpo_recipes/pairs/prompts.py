"""The prompts file of pair making: one JSON object a line, read into `PromptRow`s with errors naming file:line.

    {"prompt": "What is 6 * 7?", "reference": "42"}
    {"prompt": [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital?"}],
     "reference": "Paris", "check": {"type": "exact", "ignore_case": true}}
    {"prompt": "Give a name and an age as JSON.", "check": {"type": "json_keys", "keys": ["name", "age"]}}

- `prompt` (required): a non-empty string (one user turn) or a list of {role, content} messages (roles system, user,
  assistant) ending with a user turn.
- `reference` (optional): the right answer, a string or a number (kept as its JSON text: 42 -> "42"). Exact and
  numeric checks compare against it; `--chosen_source reference` / `rewrite` make the chosen answer from it.
- `check` (optional): this row's own check, an object with a `type` (see `dpo_recipes.pairs.rules`); it replaces
  the run's `--verifier` for this row, so one file can mix tasks.
- any other field is kept and passed to a user function (`module:function`) in `row`.

Blank lines are skipped. A row's index (0-based, counting rows, not lines) seeds its sampling and keys it in the work
file together with a hash of the whole row, so an edited row is never mistaken for the one answered before.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from dpo_recipes.errors import DPORecipesError

ROLES = ("system", "user", "assistant")


@dataclass
class PromptRow:
    """One prompt to answer. `data` is the whole row as read; `where` names it in messages ("file:line")."""

    index: int
    prompt: str | list[dict]
    reference: str | None = None
    check: dict | None = None
    data: dict = field(default_factory=dict)
    where: str = ""

    @property
    def key(self) -> str:
        """A hash of the whole row (16 hex characters): with `index`, the row's key in the work file."""
        text = json.dumps(self.data, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    @property
    def messages(self) -> list[dict]:
        """The prompt as chat messages (a string is one user turn)."""
        return [{"role": "user", "content": self.prompt}] if isinstance(self.prompt, str) else self.prompt


def _is_messages(value) -> bool:
    return (isinstance(value, list) and len(value) > 0
            and all(isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in value)
            and value[-1]["role"] == "user")


def parse_row(obj, index: int, where: str) -> PromptRow:
    """Check one row's fields and make it a `PromptRow`; `DPORecipesError` naming `where` and the field otherwise."""
    if isinstance(obj, str):
        obj = {"prompt": obj}
    if not isinstance(obj, dict):
        raise DPORecipesError(f"{where}: each row must be a JSON object with a 'prompt' field.")
    prompt = obj.get("prompt")
    if not ((isinstance(prompt, str) and prompt.strip()) or _is_messages(prompt)):
        raise DPORecipesError(f"{where}: field 'prompt' must be a non-empty string or a list of {{role, content}} "
                              f"messages (roles {', '.join(ROLES)}) ending with a user turn.")
    reference = obj.get("reference")
    if isinstance(reference, bool) or not (reference is None or isinstance(reference, (str, int, float))):
        raise DPORecipesError(f"{where}: field 'reference' must be a string or a number.")
    if isinstance(reference, (int, float)):
        reference = json.dumps(reference)
    if isinstance(reference, str) and not reference.strip():
        raise DPORecipesError(f"{where}: field 'reference' is empty; leave it out when the row has none.")
    check = obj.get("check")
    if check is not None and not (isinstance(check, dict) and isinstance(check.get("type"), str)):
        raise DPORecipesError(f"{where}: field 'check' must be an object with a 'type', e.g. {{\"type\": \"exact\"}}.")
    return PromptRow(index=index, prompt=prompt, reference=reference, check=check, data=obj, where=where)


def load_prompts(path: str, max_prompts: int | None = None) -> list[PromptRow]:
    """Read a JSONL prompts file (see the module docstring); the first `max_prompts` rows when set."""
    rows: list[PromptRow] = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if max_prompts is not None and len(rows) >= max_prompts:
                    break
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DPORecipesError(f"{path}:{number}: invalid JSON ({exc.msg}).") from None
                rows.append(parse_row(obj, len(rows), f"{path}:{number}"))
    except OSError as exc:
        raise DPORecipesError(f"{path}: cannot read the prompts file ({exc.strerror}).") from None
    if not rows:
        raise DPORecipesError(f"{path}: no prompts (one JSON object a line, each with a 'prompt').")
    return rows


def as_prompt_rows(prompts) -> list[PromptRow]:
    """`PromptRow`s as they are; dicts (rows as in the file) or strings (bare prompts) checked and wrapped."""
    return [p if isinstance(p, PromptRow) else parse_row(p, i, f"prompts[{i}]") for i, p in enumerate(prompts)]
