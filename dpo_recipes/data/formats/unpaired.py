"""Unpaired (KTO-style) layouts: one answer per row with a desirable/undesirable label. Recognized so that a DPO run
says what the file is, instead of asking for columns it cannot have."""

from __future__ import annotations

from dpo_recipes.data.readers import RawRows

# (answer column, label column) pairs of the layouts seen in public projects: TRL / LLaMA-Factory / ColossalChat
# (completion or messages + label), LLaMA-Factory alpaca (output + tag), turbo-alignment (answer + is_desirable).
UNPAIRED = (("completion", "label"), ("messages", "label"), ("output", "tag"), ("answer", "is_desirable"),
            ("output", "label"), ("response", "label"))


def unpaired_layout(raw: RawRows, columns: list[str]) -> str | None:
    """'columns completion + label' when the rows are unpaired examples with a boolean label, else None."""
    have = set(columns)
    if "chosen" in have and "rejected" in have:
        return None
    for answer, label in UNPAIRED:
        if {answer, label} <= have:
            values = [row.get(label) for row in raw.rows[:50] if row.get(label) is not None]
            if values and all(isinstance(v, bool) or v in (0, 1) for v in values):
                return f"columns {answer} + {label}"
    return None
