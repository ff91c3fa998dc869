"""The pre-flight's value types: a finding (level, setting, value, where the value came from, why, the fix), the
setup the rules read (the three argument objects and where each value came from), and the report."""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

# error: the recipe or TRL refuses to start with it; ignored: accepted but without effect (dropped or overridden);
# risky: takes effect, but deprecated, outside published ranges, or likely to hurt; note: for reading, never a warning.
LEVELS = ("error", "ignored", "risky", "note")

# How each recipe parses its arguments (recipes/*.py, `parse()`): its trainer's config class, the variant whose loss
# settings replace a DPO preset's (loss_presets.VARIANT_PRESETS), and the recipe's own default preset. Data, because
# the recipes are scripts, not importable modules.
RECIPES = {
    "dpo_lora": {"config": ("trl", "DPOConfig"), "variant": None, "preset": None},
    "dpo_full": {"config": ("trl", "DPOConfig"), "variant": None, "preset": "full-gpu"},
    "orpo": {"config": ("trl.experimental.orpo", "ORPOConfig"), "variant": "orpo", "preset": None},
    "simpo": {"config": ("trl.experimental.cpo", "CPOConfig"), "variant": "simpo", "preset": None},
    "kto": {"config": ("trl", "KTOConfig"), "variant": "kto", "preset": None},
}
SAMPLE = 500  # pairs whose token lengths are measured (a seeded sample of larger data): ~0.5 s of tokenizing


@dataclass
class Finding:
    """One thing the check found. `value` is the resolved value; `source` where it came from ('yaml:FILE', 'cli',
    'preset:NAME', 'hardware', 'recipe', 'default', or '-' for facts about the setup)."""

    level: str
    setting: str
    value: Any
    source: str
    reason: str
    fix: str = ""

    def line(self, width: int | None = None) -> str:
        """'ignored padding_free = True (yaml): reason Fix: ...', wrapped to `width` columns with a hanging indent."""
        import textwrap

        from dpo_recipes.watch.tracking import redact

        value = repr(redact({self.setting: self.value})[self.setting])  # a token in model_init_kwargs is not printed
        value = value if len(value) <= 60 else value[:57] + "..."
        source = "yaml" if self.source.startswith("yaml:") else self.source  # the report's header names the file
        fix = f" Fix: {self.fix}" if self.fix else ""
        text = f"{self.level:7} {self.setting} = {value} ({source}): {self.reason}{fix}"
        return textwrap.fill(text, width, subsequent_indent=" " * 8) if width else text


@dataclass
class Setup:
    """What the rules read: the parsed arguments, facts about the model (None: its config.json could not be read)
    and the data's token lengths (None: no data given)."""

    recipe: str
    recipe_args: Any
    args: Any
    model_args: Any
    model: dict | None = None
    data: dict | None = None

    @property
    def sources(self) -> dict:
        return getattr(self.recipe_args, "value_sources", None) or {}

    @property
    def trainer(self) -> str:
        """Which TRL trainer the recipe runs: dpo, kto, orpo or cpo."""
        return {"dpo_lora": "dpo", "dpo_full": "dpo", "simpo": "cpo"}.get(self.recipe, self.recipe)

    @property
    def loss_types(self) -> list[str]:
        if self.trainer == "orpo":
            return ["orpo"]
        loss = getattr(self.args, "loss_type", "sigmoid")
        return [loss] if isinstance(loss, str) else list(loss)

    @property
    def peft(self) -> bool:
        return bool(self.model_args.use_peft)

    @property
    def on_cpu(self) -> bool:
        import torch

        return bool(getattr(self.args, "use_cpu", False)) or not torch.cuda.is_available()

    @property
    def zero_stage(self) -> int | None:
        """The DeepSpeed ZeRO stage `accelerate launch` asked for, else None."""
        from dpo_recipes.train.distributed import deepspeed_requested

        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        return int(stage) if deepspeed_requested() and stage and stage.isdigit() else None

    @property
    def reference(self) -> str:
        """How the reference log-probs are obtained: none (ORPO, SimPO), precomputed, adapter (LoRA: the base with the
        adapter disabled) or copy (a second model TRL loads from the same path)."""
        if self.trainer in ("orpo", "cpo"):
            return "none"
        if getattr(self.args, "precompute_ref_log_probs", False):
            return "precomputed"
        return "adapter" if self.peft else "copy"

    def _owner(self, name: str):
        for obj in (self.args, self.model_args, self.recipe_args):
            if any(f.name == name for f in fields(obj)):
                return obj
        return None

    def value(self, name: str):
        owner = self._owner(name)
        return getattr(owner, name, None) if owner is not None else None

    def source(self, name: str) -> str:
        return self.sources.get(name, "-")

    def configured(self, name: str) -> bool:
        """The setting was given by a preset, the YAML or the command line (not left at its dataclass default). Without
        value sources (arguments built in code), a value other than the default counts as given."""
        if name in self.sources:
            return self.sources[name] != "default"
        owner = self._owner(name)
        if owner is None:
            return False
        f = next(f for f in fields(owner) if f.name == name)
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None)
        return getattr(owner, name) != default

    def find(self, level: str, name: str, reason: str, fix: str = "", value=MISSING) -> Finding:
        return Finding(level, name, self.value(name) if value is MISSING else value, self.source(name), reason, fix)


@dataclass
class PreflightReport:
    """What the check found (`findings`, errors first) and the estimate (`estimate`, units in its keys)."""

    recipe: str
    findings: list[Finding] = field(default_factory=list)
    estimate: dict = field(default_factory=dict)
    config: str | None = None
    _table: str = ""

    def of(self, *levels: str) -> list[Finding]:
        return [f for f in self.findings if f.level in levels]

    @property
    def errors(self) -> int:
        """Findings the recipe or TRL would refuse to start with."""
        return len(self.of("error"))

    @property
    def warnings(self) -> int:
        """Settings that will be ignored or overridden, and risky ones: what --strict turns into errors."""
        return len(self.of("ignored", "risky"))

    def table(self) -> str:
        """The memory and time estimate, one screen."""
        return self._table

    def text(self) -> str:
        """The table, every finding, and a verdict line."""
        where = f" with {self.config}" if self.config else ""
        lines = [f"pre-flight: recipes/{self.recipe}.py{where}", self.table(), ""]
        lines += [f.line(width=119) for f in self.findings] or ["no setting is ignored or risky"]
        lines += ["", self.verdict()]
        return "\n".join(lines)

    def verdict(self) -> str:
        counts = {level: len(self.of(level)) for level in LEVELS}
        tally = ", ".join(f"{n} {level}" for level, n in counts.items() if n) or "clean"
        if self.errors:
            return f"verdict: {tally}: the run would stop on the errors."
        return f"verdict: {tally}" + (": --strict stops on the ignored and risky ones." if self.warnings else ".")
