"""``implicit_prompt``: `chosen` and `rejected` are whole conversations (or whole texts) sharing a prefix; the prompt
is that prefix, cut back to end on a non-assistant turn (or a word boundary for text). A `prompt` string column next
to them (UltraFeedback-binarized) is ignored. LLaMA-Factory's v1 `chosen_messages` / `rejected_messages` too.

On string answers the shared beginning is only a guess at the prompt, so it is never taken when another column
holds the real prompt (it would invent prompts such as "Action:")."""

from __future__ import annotations

from dpo_recipes.data.formats.common import (Match, Pair, Reader, first_column, first_value, is_messages, messages,
                                             prompt_elsewhere)
from dpo_recipes.data.readers import RawRows
from dpo_recipes.errors import DPORecipesError

CHOSEN = ("chosen", "chosen_messages")
REJECTED = ("rejected", "rejected_messages")


class ImplicitPrompt(Reader):
    names = ("implicit_prompt",)
    layout = "chosen and rejected hold the whole conversation, prompt included (a shared prefix)"

    def detect(self, raw: RawRows, columns: list[str]) -> Match | None:
        chosen, rejected = first_column(columns, CHOSEN), first_column(columns, REJECTED)
        if not chosen or not rejected:
            return None
        value = first_value(raw, chosen)
        if not is_messages(value) or value[0].get("role", value[0].get("from")) in ("assistant", "gpt"):
            return None  # string answers only when forced; assistant-only answers need a prompt column
        return Match("implicit_prompt", {"chosen": chosen, "rejected": rejected})

    def force(self, raw, columns, name):
        chosen, rejected = first_column(columns, CHOSEN), first_column(columns, REJECTED)
        first = first_value(raw, chosen) if chosen else None
        elsewhere = prompt_elsewhere(columns)
        if elsewhere and isinstance(first, str):
            raise DPORecipesError(
                f"{raw.source}: --format implicit_prompt would take the shared beginning of the two answers as the "
                f"prompt, but column {elsewhere!r} holds the real one; it is read without --format (or map it with "
                "--column_map if it is plain text).")
        return Match(name, {"chosen": chosen or "chosen", "rejected": rejected or "rejected"})

    def pair(self, row, at, match):
        c = match.columns
        c0, r0 = row.get(c["chosen"]), row.get(c["rejected"])
        if isinstance(c0, str) and isinstance(r0, str):
            k = common_prefix_text(c0, r0)
            p, chosen, rejected = c0[:k], c0[k:], r0[k:]
            if p.endswith(" "):
                p, chosen, rejected = p[:-1], " " + chosen, " " + rejected
        else:
            c0 = messages(c0, at, c["chosen"], "assistant")
            r0 = messages(r0, at, c["rejected"], "assistant")
            if c0 is None or r0 is None:
                p, chosen, rejected = None, c0, r0
            else:
                k = common_prefix_messages(c0, r0)
                p, chosen, rejected = c0[:k], c0[k:], r0[k:]
        return Pair(p, chosen, rejected, issue=None if p else "missing_prompt")


def common_prefix_messages(a: list, b: list) -> int:
    k = 0
    for x, y in zip(a, b):
        if x != y:
            break
        k += 1
    while k > 0 and a[k - 1]["role"] == "assistant":
        k -= 1  # the prompt ends on the turn the completions answer
    return k


def common_prefix_text(a: str, b: str) -> int:
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
