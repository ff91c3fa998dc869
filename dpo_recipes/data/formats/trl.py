"""TRL's own layouts, and the same layout under other projects' column and role names.

- ``plain``: `prompt`, `chosen`, `rejected` strings (NeMo-Aligner's `chosen_response` / `rejected_response` too).
  Stays strings, unless a `system` column is kept: then messages.
- ``conversational``: a prompt as messages (or a string taken as one user turn) and `chosen` / `rejected` as message
  lists, one message object, or a string taken as one assistant turn. TRL applies the chat template.
- ``sharegpt``: the same with LLaMA-Factory / MedicalGPT's `conversations` of {from, value} (human, gpt, system,
  function_call, observation), ColossalChat's `context` of {from, content}, turbo-alignment's `context` +
  `answer_w` / `answer_l`. A `tools` column is kept for the chat template.
"""

from __future__ import annotations

from dpo_recipes.data.formats.common import (Match, Pair, Reader, completion, first_column, first_value, is_message,
                                             is_messages, messages, missing_prompt_error, text, tools_json,
                                             with_system)
from dpo_recipes.data.readers import RawRows

CHOSEN = ("chosen", "chosen_response", "response_chosen", "answer_w")
REJECTED = ("rejected", "rejected_response", "response_rejected", "answer_l")
MESSAGE_PROMPTS = ("prompt", "conversations", "context")


def _answers(columns: list[str]) -> tuple[str | None, str | None]:
    return first_column(columns, CHOSEN), first_column(columns, REJECTED)


class Plain(Reader):
    names = ("plain",)
    layout = "prompt, chosen, rejected as strings"

    def detect(self, raw: RawRows, columns: list[str]) -> Match | None:
        chosen, rejected = _answers(columns)
        if "prompt" not in columns or not chosen or not rejected:
            return None
        values = [first_value(raw, c) for c in ("prompt", chosen)]
        if not all(v is None or isinstance(v, str) for v in values):
            return None
        return _match("plain", columns, "prompt", chosen, rejected, tools=False)

    def force(self, raw, columns, name):
        return _forced(raw, columns, name, "prompt" if "prompt" in columns else None, tools=False)

    def pair(self, row, at, match):
        c = match.columns
        p = text(row.get(c["prompt"]), at, c["prompt"])
        chosen, rejected = text(row.get(c["chosen"]), at, c["chosen"]), text(row.get(c["rejected"]), at, c["rejected"])
        if "system" in c:  # kept as the first message: the whole file becomes conversational
            p = with_system(messages(p, at, c["prompt"], "user"), row.get(c["system"]), at, c["system"])
            chosen, rejected = messages(chosen, at, c["chosen"], "assistant"), messages(rejected, at, c["rejected"],
                                                                                          "assistant")
        return Pair(p, chosen, rejected)


class Conversational(Reader):
    names = ("conversational", "sharegpt")
    layout = ("prompt (or conversations / context) as messages, chosen/rejected as messages, one message or strings; "
              "ShareGPT from/value accepted")

    def detect(self, raw: RawRows, columns: list[str]) -> Match | None:
        chosen, rejected = _answers(columns)
        prompt = first_column(columns, MESSAGE_PROMPTS)
        if not chosen or not rejected or not prompt:
            return None
        p, c = first_value(raw, prompt), first_value(raw, chosen)
        answer_is_message = is_message(c) or is_messages(c)
        if not (is_messages(p) or answer_is_message):
            return None
        if answer_is_message and isinstance(c, list) and c[0].get("role", c[0].get("from")) not in (
                "assistant", "gpt", "bot", "model", "function_call") and prompt == "prompt" and not is_messages(p):
            return None  # whole conversations in chosen/rejected: implicit_prompt
        sharegpt = prompt != "prompt" or (is_messages(p) and "from" in p[0]) or (isinstance(c, dict) and "from" in c)
        return _match("sharegpt" if sharegpt else "conversational", columns, prompt, chosen, rejected, tools=True)

    def force(self, raw, columns, name):
        return _forced(raw, columns, name, first_column(columns, MESSAGE_PROMPTS), tools=True)

    def pair(self, row, at, match):
        c = match.columns
        p = messages(row.get(c["prompt"]), at, c["prompt"], "user")
        if "system" in c:
            p = with_system(p, row.get(c["system"]), at, c["system"])
        chosen = completion(messages(row.get(c["chosen"]), at, c["chosen"], "assistant"), at, c["chosen"])
        rejected = completion(messages(row.get(c["rejected"]), at, c["rejected"], "assistant"), at, c["rejected"])
        tools = tools_json(row.get(c["tools"]), at, c["tools"]) if "tools" in c else None
        return Pair(p, chosen, rejected, issue="missing_prompt" if p is None else None, tools=tools)


def _match(name: str, columns: list[str], prompt: str, chosen: str, rejected: str, tools: bool) -> Match:
    """The columns read: the three parts, a `system` column, and (message layouts only) a `tools` column."""
    used = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if "system" in columns:
        used["system"] = "system"
    if tools and "tools" in columns:
        used["tools"] = "tools"
    return Match(name, used)


def _forced(raw: RawRows, columns: list[str], name: str, prompt: str | None, tools: bool) -> Match:
    """A forced TRL layout: the prompt column must exist; missing answer columns are left to the row checks."""
    if prompt is None:
        raise missing_prompt_error(raw, columns, name)
    chosen, rejected = _answers(columns)
    return _match(name, columns, prompt, chosen or "chosen", rejected or "rejected", tools)
