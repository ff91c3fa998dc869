"""``ranked``: alpaca-style ranked completions, as LLaMA-Factory's pairwise and OpenAssistant ranking data: `instruction`
(+ `input`, `system`, `history`) and `output` = [best, ..., worst]. The pair is the best against the worst; the
report says so, and how many rows ranked more than two."""

from __future__ import annotations

from dpo_recipes.data.formats.common import (Match, Pair, Reader, first_value, history_messages, text, with_system)
from dpo_recipes.data.readers import RawRows, type_name


def alpaca_prompt(row: dict, at, columns: dict) -> list[dict] | None:
    """instruction + "\\n" + input (as LLaMA-Factory joins them) after the history, with the system prompt first."""
    instruction = text(row.get(columns["prompt"]), at, columns["prompt"])
    extra = text(row.get(columns["input"]), at, columns["input"]) if "input" in columns else None
    query = "\n".join(part for part in (instruction, extra) if part and part.strip())
    if not query.strip():
        return None
    history = history_messages(row.get(columns["history"]), at, columns["history"]) if "history" in columns else []
    prompt = [*history, {"role": "user", "content": query}]
    return with_system(prompt, row.get(columns["system"]), at, columns["system"]) if "system" in columns else prompt


class Ranked(Reader):
    names = ("ranked",)
    layout = "instruction (+ input, system, history) and output = [best, ..., worst]"

    def detect(self, raw: RawRows, columns: list[str]) -> Match | None:
        output = first_value(raw, "output")
        if "instruction" not in columns or not (isinstance(output, list) and output
                                               and all(isinstance(o, str) for o in output)):
            return None
        used = {"prompt": "instruction", "chosen": "output[0]", "rejected": "output[-1]"}
        used.update({part: part for part in ("input", "system", "history") if part in columns})
        more = sum(1 for row in raw.rows if isinstance(row.get("output"), list) and len(row["output"]) > 2)
        notes = ["ranked outputs: each pair is the first (best) output against the last (worst)"
                 + (f"; {more} rows ranked more than two" if more else "")]
        return Match("ranked", used, notes)

    def pair(self, row, at, match):
        prompt = alpaca_prompt(row, at, match.columns)
        outputs = row.get("output")
        if outputs is None:
            return Pair(prompt, None, None, issue=None if prompt else "missing_prompt")
        if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
            raise at.fail("output", f"expected a list of ranked answers (best first), got {type_name(outputs)}.")
        if len(outputs) < 2:
            raise at.fail("output", f"expected at least two ranked answers, got {len(outputs)}.")
        chosen, rejected = [{"role": "assistant", "content": outputs[0]}], [{"role": "assistant",
                                                                              "content": outputs[-1]}]
        return Pair(prompt, chosen, rejected, issue=None if prompt else "missing_prompt")
