"""``hh_rlhf``: Anthropic HH transcripts, "\\n\\nHuman: ...\\n\\nAssistant: ..." in `chosen` and `rejected`; the
prompt is the conversation before the last Assistant turn, turned into messages (user/assistant)."""

from __future__ import annotations

import re

from dpo_recipes.data.formats.common import Match, Pair, Reader, first_value, text
from dpo_recipes.data.readers import RawRows

_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def is_hh(value) -> bool:
    return isinstance(value, str) and value.lstrip("\n").startswith("Human:") and "\n\nAssistant:" in value


class HHRLHF(Reader):
    names = ("hh_rlhf",)
    layout = 'chosen and rejected are "\\n\\nHuman: ... \\n\\nAssistant: ..." transcripts'

    def detect(self, raw: RawRows, columns: list[str]) -> Match | None:
        if "chosen" in columns and "rejected" in columns and "prompt" not in columns \
                and is_hh(first_value(raw, "chosen")):
            return Match("hh_rlhf", {"chosen": "chosen", "rejected": "rejected"})
        return None

    def force(self, raw, columns, name):
        return Match(name, {"chosen": "chosen", "rejected": "rejected"})

    def pair(self, row, at, match):
        c0 = text(row.get("chosen"), at, "chosen")
        r0 = text(row.get("rejected"), at, "rejected")
        pc, cc = split_hh(c0) if c0 else (None, None)
        pr, rc = split_hh(r0) if r0 else (None, None)
        issue = None
        if pc is None or pr is None or not pc.strip():
            issue, p = "missing_prompt", []
        elif pc != pr:
            issue, p = "prompt_mismatch", hh_messages(pc)
        else:
            p = hh_messages(pc)
            if not any(m["role"] == "user" for m in p):
                issue = "missing_prompt"
        chosen = [{"role": "assistant", "content": cc if cc is not None else (c0 or "")}]
        rejected = [{"role": "assistant", "content": rc if rc is not None else (r0 or "")}]
        return Pair(p, chosen, rejected, issue, texts=(cc, rc))  # rules read the answers (None: no Assistant turn)


def split_hh(transcript: str):
    """(prompt_text, completion) at the last Assistant turn, or (None, None) if there is none."""
    idx = transcript.rfind("\n\nAssistant:")
    if idx < 0:
        return None, None
    answer = transcript[idx + len("\n\nAssistant:"):]
    return transcript[:idx], answer[1:] if answer.startswith(" ") else answer


def hh_messages(prompt_text: str) -> list:
    parts = _TURN.split("\n\n" + prompt_text.lstrip("\n"))
    # parts = [leading, role, content, role, content, ...]
    return [{"role": _ROLES[parts[j]], "content": parts[j + 1].strip()} for j in range(1, len(parts) - 1, 2)]
