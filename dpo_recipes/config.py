"""The recipe's own arguments: what TRL's `ScriptArguments`, `DPOConfig` and `ModelConfig` do not cover.

Parsed by `TrlParser` next to TRL's dataclasses, so `--config FILE.yaml` and CLI flags set them the same way.
TRL's own flags (`--dataset_name`, `--learning_rate`, `--lora_r`, ...) keep their names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ScriptArguments


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
        default=0.01, metadata={"help": "R-DPO length penalty per completion token (Park et al. 2024, eq. 9)."}
    )
