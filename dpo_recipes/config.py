"""The recipe's own arguments: what TRL's `ScriptArguments`, `DPOConfig` and `ModelConfig` do not cover.

Parsed by `TrlParser` next to TRL's dataclasses, so `--config FILE.yaml` and CLI flags set them the same way.
TRL's own flags (`--dataset_name`, `--learning_rate`, `--lora_r`, ...) keep their names.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from trl import ScriptArguments

from dpo_recipes.errors import DPORecipesError


@dataclass
class RecipeArguments(ScriptArguments):
    """Data, validation, evaluation, preset and loss-hook options of a dpo-recipes recipe."""

    # --- preset -------------------------------------------------------------------------------------------------
    preset: str | None = field(
        default=None,
        metadata={"help": "Name of a preset in `dpo_recipes.presets` whose DPOConfig values become the defaults. "
                  "YAML and CLI values override it. None: the recipe's built-in preset."},
    )

    # --- data ---------------------------------------------------------------------------------------------------
    data_format: str | None = field(
        default=None,
        metadata={"help": "Force the preference-data format instead of detecting it: plain, conversational, "
                  "implicit_prompt, hh_rlhf."},
    )
    column_map: str | None = field(
        default=None,
        metadata={"help": "Rename source columns before normalizing, as 'src:dst,src:dst' "
                  "(e.g. 'question:prompt,good:chosen,bad:rejected')."},
    )
    validation: str = field(
        default="strict",
        metadata={"help": "strict: drop rows that fail a validation rule (each drop counted in the report); "
                  "warn: keep every row and only report; off: skip the row rules.",
                  "choices": ["strict", "warn", "off"]},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training pairs after validation (for quick runs)."}
    )

    # --- evaluation before/after --------------------------------------------------------------------------------
    eval_prompts_file: str | None = field(
        default=None,
        metadata={"help": "JSONL of prompts answered greedily before and after training: one object per line with "
                  "'prompt' and 'kind' ('identity' or 'general'). None: no before/after generation."},
    )
    identity_name: str | None = field(
        default=None,
        metadata={"help": "The name the run teaches; identity answers containing it count as hits."},
    )
    eval_max_new_tokens: int = field(
        default=64, metadata={"help": "Tokens generated per prompt in the before/after evaluation."}
    )
    eval_batch_size: int = field(default=16, metadata={"help": "Prompts generated at once in the evaluation."})

    # --- outputs ------------------------------------------------------------------------------------------------
    merge: bool = field(
        default=False,
        metadata={"help": "Also write the base model with the LoRA adapter merged in, to OUTPUT_DIR/merged."},
    )

    # --- loss hooks TRL lacks -----------------------------------------------------------------------------------
    loss_hook: str | None = field(
        default=None,
        metadata={"help": "Replace TRL's sigmoid term with ODPO ('odpo', needs score_chosen/score_rejected) or "
                  "length-regularized DPO ('rdpo').", "choices": [None, "odpo", "rdpo"]},
    )
    odpo_alpha: float = field(default=1.0, metadata={"help": "ODPO offset scale alpha (Amini et al. 2024)."})
    odpo_ratio: bool = field(
        default=False, metadata={"help": "ODPO offset log(s_w / s_l) instead of log(s_w - s_l)."}
    )
    rdpo_alpha: float = field(
        default=0.01, metadata={"help": "R-DPO length coefficient per completion token (Park et al. 2024, eq. 9); "
                                     "`dpo-recipes audit --tokenizer ...` suggests one for your data."}
    )

    # --- validation thresholds (dpo_recipes.data.ValidationConfig) ------------------------------------------------
    min_chosen_chars: int = field(default=50, metadata={"help": "Drop pairs whose chosen text is shorter (chars)."})
    min_rejected_chars: int = field(
        default=20, metadata={"help": "Drop pairs whose rejected text is shorter (chars)."}
    )
    max_similarity: float | None = field(
        default=0.9,
        metadata={"help": "Drop pairs whose chosen/rejected similarity (rapidfuzz ratio, 0-1) is above this; "
                  "None disables the filter."},
    )
    drop_truncated: bool = field(
        default=False, metadata={"help": "Drop (instead of only counting) pairs longer than max_length tokens."}
    )

    def validation_config(self):
        """The data layer's ValidationConfig for these arguments."""
        from dpo_recipes.data import ValidationConfig

        return ValidationConfig(min_chosen_chars=self.min_chosen_chars, min_rejected_chars=self.min_rejected_chars,
                                max_similarity=self.max_similarity, drop_truncated=self.drop_truncated)


    def load_train_data(self, tokenizer, max_length: int | None, output_dir: str, default_source: str | None = None):
        """The recipes' data stage: load and validate `dataset_name`, print the summary, save the report into
        `output_dir`, and keep the first `max_train_samples` pairs. Returns the training `datasets.Dataset`."""
        from dpo_recipes.data import REPORT_FILENAME, load_preference_data

        data = load_preference_data(
            self.dataset_name or default_source, split=self.dataset_train_split, data_format=self.data_format,
            column_map=self.column_map, validation=self.validation, config=self.validation_config(),
            tokenizer=tokenizer, max_length=max_length)
        print(data.report.summary())
        data.report.save(Path(output_dir) / REPORT_FILENAME)
        if self.max_train_samples:
            return data.dataset.select(range(min(self.max_train_samples, len(data.dataset))))
        return data.dataset


def _peek_preset(argv: list[str]) -> str | None:
    """The preset named on the command line, else in the YAML given with --config (needed before parsing)."""
    for i, arg in enumerate(argv):
        if arg == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--preset="):
            return arg.split("=", 1)[1]
    if "--config" in argv:
        import yaml

        path = argv[argv.index("--config") + 1]
        try:
            with open(path, encoding="utf-8") as f:
                config = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise DPORecipesError(f"--config {path}: cannot read the YAML file ({exc}).") from None
        if not isinstance(config, dict):
            raise DPORecipesError(f"--config {path}: the YAML file must hold a mapping of argument: value.")
        return config.get("preset")
    return None


def parse_recipe_args(default_config: str | Path | None = None, argv: list[str] | None = None,
                      dataclass_types: tuple | None = None):
    """Parse a recipe's arguments: hardware defaults < preset < YAML (`--config`) < command line.

    With no `--config`, `default_config` is used, so a recipe run without arguments is its default run.
    `--preset a,b` overlays presets left to right (e.g. `identity-lora-cpu,rdpo`).
    Returns the dataclass instances, (RecipeArguments, DPOConfig, ModelConfig) by default.
    """
    from trl import DPOConfig, ModelConfig, TrlParser

    from dpo_recipes.presets import preset_defaults

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv and default_config is not None:
        argv = ["--config", str(default_config), *argv]
    parser = TrlParser(dataclass_types or (RecipeArguments, DPOConfig, ModelConfig))
    parser.set_defaults_with_config(**preset_defaults(_peek_preset(argv)))
    try:
        return parser.parse_args_and_config(argv)
    except ValueError as exc:  # TrainingArguments' own checks, e.g. --bf16 on a machine without bf16
        raise DPORecipesError(f"Invalid arguments: {exc}") from None
