"""``question``: a question column and two answer columns, with an optional `system` column and alpaca-style
`history` ([[user, assistant], ...]): Intel orca_dpo_pairs (system, question, chosen, rejected), MedicalGPT's
reward data (system, history, question, response_chosen, response_rejected), stack-exchange-paired (question,
response_j = the better answer, response_k). Read as messages: the system prompt stays the first message."""

from __future__ import annotations

from dpo_recipes.data.formats.common import (Match, Pair, Reader, first_column, first_value, history_messages, text,
                                             with_system)
from dpo_recipes.data.readers import RawRows

QUESTION = ("question", "query")
CHOSEN = ("chosen", "response_chosen", "chosen_response", "response_j")
REJECTED = ("rejected", "response_rejected", "rejected_response", "response_k")


class Question(Reader):
    names = ("question",)
    layout = "question (+ system, history) and chosen/rejected answers as strings"

    def detect(self, raw: RawRows, columns: list[str]) -> Match | None:
        question = first_column(columns, QUESTION)
        chosen, rejected = first_column(columns, CHOSEN), first_column(columns, REJECTED)
        if "prompt" in columns or not (question and chosen and rejected):
            return None
        if not all(isinstance(first_value(raw, c), (str, type(None))) for c in (question, chosen, rejected)):
            return None
        used = {"prompt": question, "chosen": chosen, "rejected": rejected}
        used.update({part: part for part in ("system", "history") if part in columns})
        return Match("question", used)

    def pair(self, row, at, match):
        c = match.columns
        question = text(row.get(c["prompt"]), at, c["prompt"])
        prompt = None
        if question is not None and question.strip():
            history = history_messages(row.get(c["history"]), at, c["history"]) if "history" in c else []
            prompt = [*history, {"role": "user", "content": question}]
            if "system" in c:
                prompt = with_system(prompt, row.get(c["system"]), at, c["system"])
        chosen, rejected = text(row.get(c["chosen"]), at, c["chosen"]), text(row.get(c["rejected"]), at,
                                                                             c["rejected"])
        return Pair(prompt, _assistant(chosen), _assistant(rejected), issue=None if prompt else "missing_prompt")


def _assistant(answer: str | None):
    return None if answer is None else [{"role": "assistant", "content": answer}]
