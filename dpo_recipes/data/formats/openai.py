"""``openai``: OpenAI / Azure OpenAI preference fine-tuning JSONL: `input` {messages, tools?}, `preferred_output` and
`non_preferred_output` as assistant message lists."""

from __future__ import annotations

from dpo_recipes.data.formats.common import (Match, Pair, Reader, completion, first_value, messages, tools_json)
from dpo_recipes.data.readers import RawRows, type_name


class OpenAIPreference(Reader):
    names = ("openai",)
    layout = "input {messages, tools}, preferred_output, non_preferred_output"

    def detect(self, raw: RawRows, columns: list[str]) -> Match | None:
        if {"input", "preferred_output", "non_preferred_output"} <= set(columns) and \
                isinstance(first_value(raw, "input"), dict):
            return Match("openai", {"prompt": "input.messages", "chosen": "preferred_output",
                                    "rejected": "non_preferred_output"})
        return None

    def pair(self, row, at, match):
        source = row.get("input")
        if source is not None and not isinstance(source, dict):
            raise at.fail("input", f"expected an object with 'messages', got {type_name(source)}.")
        source = source or {}
        prompt = messages(source.get("messages"), at, "input.messages", "user")
        chosen = completion(messages(row.get("preferred_output"), at, "preferred_output", "assistant"), at,
                            "preferred_output")
        rejected = completion(messages(row.get("non_preferred_output"), at, "non_preferred_output", "assistant"), at,
                              "non_preferred_output")
        tools = tools_json(source.get("tools"), at, "input.tools")
        return Pair(prompt, chosen, rejected, issue=None if prompt else "missing_prompt", tools=tools)
