"""The recipe's own arguments: what TRL's `ScriptArguments`, `DPOConfig` and `ModelConfig` do not cover.

Parsed by `TrlParser` next to TRL's dataclasses, so `--config FILE.yaml` and CLI flags set them the same way.
TRL's own flags (`--dataset_name`, `--learning_rate`, `--lora_r`, ...) keep their names.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, ScriptArguments

from dpo_recipes.config.flags import _cli_value, _without_config_flag, canonical_flags, unknown_arguments
from dpo_recipes.config.presets import PRESETS, default_preset, preset_defaults
from dpo_recipes.data import ValidationConfig
from dpo_recipes.errors import DPORecipesError
from dpo_recipes.shipped import resolve_yaml_paths
from dpo_recipes.train.distributed import check_launch_environment
from dpo_recipes.train.reference_cache import default_dir
from dpo_recipes.versions import warn_outside_tested_window


@dataclass
class RecipeArguments(ScriptArguments):
    """Data, validation, evaluation, preset and loss-hook options of a dpo-recipes recipe."""

    # --- preset -------------------------------------------------------------------------------------------------
    preset: str | None = field(
        default=None,
        metadata={"help": "Name of a preset in `dpo_recipes.config.presets` whose DPOConfig values become the "
                  "defaults. "
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
    eval_repetition_penalty: float = field(
        default=1.2, metadata={"help": "CTRL's repetition penalty (1.2, Keskar et al. 2019) on each evaluation "
                                       "answer's own tokens, not the prompt's: greedy decoding alone sends a small "
                                       "model into loops (the embedded model's base answers loop on 11 of the "
                                       "default 56 prompts). 1.0: plain greedy."}
    )

    # --- held-out preference evaluation (TRL's eval loop: eval_loss, eval_rewards/*) ------------------------------
    eval_fraction: float | None = field(
        default=None,
        metadata={"help": "Carve this share (0-0.5) of the validated training pairs off as the eval set, seeded with "
                  "data_seed (else seed). The eval set is never trained on."},
    )
    eval_dataset_name: str | None = field(
        default=None,
        metadata={"help": "A separate file / folder / hub id of eval pairs, validated like the training data (its "
                  "split: dataset_test_split). Without it and without eval_fraction, a hub or save_to_disk "
                  "dataset_name's dataset_test_split is the eval set when eval_strategy is not 'no'."},
    )

    # --- watching the run ---------------------------------------------------------------------------------------
    health_monitor: str = field(
        default="warn",
        metadata={"help": "DPO health alarms (dpo_recipes.watch.monitor): warn prints each alarm once and logs it; "
                  "stop "
                  "also stops the run at the first alarm; off disables them. A NaN/inf loss or gradient always skips "
                  "its update and stops the run.",
                  "choices": ["off", "warn", "stop"]},
    )
    health_thresholds: str | None = field(
        default=None,
        metadata={"help": "Override alarm thresholds as 'name=value,name=value' (a mapping in YAML); the names "
                  "are the fields of dpo_recipes.watch.monitor.HealthThresholds."},
    )
    preflight: str = field(
        default="warn",
        metadata={"help": "The pre-flight check before any model work (dpo_recipes.check.preflight): warn prints its "
                  "findings; strict stops on any warning; off skips it.", "choices": ["off", "warn", "strict"]},
    )
    plots: bool = field(
        default=True, metadata={"help": "Write PNG plots of the run's curves into output_dir at the end."}
    )

    # Where each resolved value came from ('cli', 'yaml:PATH', 'preset:NAME', 'hardware', 'default'): set by
    # parse_recipe_args, logged with the run's config. Not an argument.
    value_sources: dict = field(default_factory=dict, init=False, repr=False)

    # --- outputs ------------------------------------------------------------------------------------------------
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start fresh in an output_dir that holds another run: remove its checkpoints, adapter, "
                  "merged model and reports first. Without it, a run resumes only its own unfinished run."},
    )
    merge: bool = field(
        default=False,
        metadata={"help": "Also write the base model with the LoRA adapter merged in, to OUTPUT_DIR/merged."},
    )

    # --- speed --------------------------------------------------------------------------------------------------
    share_prompts: bool = field(
        default=True,
        metadata={"help": "Run each pair's prompt through the model once instead of once per answer (the same "
                  "log-probs to float rounding; see dpo_recipes.train.shared_prompt). false: TRL's two rows per pair."},
    )
    reference_cache: str | None = field(
        default="auto",
        metadata={"help": "Folder keeping the reference's log-probs per pair, so later epochs and later runs on the "
                  "same pairs and model skip the reference forward. auto: $DPO_RECIPES_REFERENCE_CACHE, else "
                  "reference-logps in the cache folder (~/.cache/dpo-recipes); none: off."},
    )

    # --- loss hooks TRL lacks -----------------------------------------------------------------------------------
    loss_hook: str | None = field(
        default=None,
        metadata={"help": "Replace TRL's sigmoid term with ODPO ('odpo', needs score_chosen/score_rejected) or "
                  "length-regularized DPO ('rdpo'); 'none' unsets a hook a preset or config set."},
    )
    odpo_alpha: float = field(default=1.0, metadata={"help": "ODPO offset scale alpha (Amini et al. 2024)."})
    odpo_ratio: bool = field(
        default=False, metadata={"help": "ODPO offset log(s_w / s_l) instead of log(s_w - s_l)."}
    )
    rdpo_alpha: float = field(
        default=0.01, metadata={"help": "R-DPO length coefficient per completion token (Park et al. 2024, eq. 9); "
                                     "`dpo-recipes audit --tokenizer ...` suggests one for your data."}
    )
    anchor_coef: float = field(
        default=0.0, metadata={"help": "Weight of the anchor term: on pairs marked anchor: true (general answers to "
                                       "keep), the mean per-token 1/2 (log pi - log pi_ref)^2 on the chosen side, an "
                                       "estimate of the drift from the reference there. 0: off."}
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
    allow_score_ties: bool = field(
        default=False, metadata={"help": "Keep scored pairs with score_chosen <= score_rejected (dropped by default: "
                                         "ODPO needs s_w > s_l; plain DPO does not read the scores)."}
    )
    drop_truncated: bool = field(
        default=False, metadata={"help": "Drop (instead of only counting) pairs longer than max_length tokens."}
    )

    def __post_init__(self):
        if hasattr(super(), "__post_init__"):
            super().__post_init__()
        # The CLI can only pass strings: 'none', 'None', 'null' and '' unset a hook a preset or YAML set.
        if isinstance(self.loss_hook, str) and self.loss_hook.strip().lower() in ("", "none", "null"):
            self.loss_hook = None
        if isinstance(self.reference_cache, str) and self.reference_cache.strip().lower() in ("", "none", "null"):
            self.reference_cache = None
        elif self.reference_cache == "auto":
            self.reference_cache = str(default_dir())
        if self.eval_fraction is not None and not 0 < self.eval_fraction <= 0.5:
            raise DPORecipesError(f"--eval_fraction {self.eval_fraction}: use a share between 0 and 0.5 (e.g. 0.1).")
        if self.eval_fraction is not None and self.eval_dataset_name:
            raise DPORecipesError("--eval_fraction carves the eval set off the training data and --eval_dataset_name "
                                  "reads it from its own file: pass one of them.")
        if not self.eval_repetition_penalty > 0:
            raise DPORecipesError(f"--eval_repetition_penalty {self.eval_repetition_penalty}: use a value above 0 (1.0: "
                                  "plain greedy; above 1 weighs against tokens the answer already used).")
        if self.loss_hook not in (None, "odpo", "rdpo"):
            raise DPORecipesError(f"--loss_hook {self.loss_hook!r}: use odpo, rdpo, or none (TRL's loss as is).")

    def validation_config(self):
        """The data layer's ValidationConfig for these arguments."""
        return ValidationConfig(min_chosen_chars=self.min_chosen_chars, min_rejected_chars=self.min_rejected_chars,
                                max_similarity=self.max_similarity, drop_truncated=self.drop_truncated,
                                require_score_order=not self.allow_score_ties)


@dataclass
class RecipeModelConfig(ModelConfig):
    """TRL's `ModelConfig` and the LoRA setting it lacks: which decoder layers get adapters."""

    lora_top_fraction: float = field(
        default=1.0,
        metadata={"help": "Share of the decoder layers, counted from the top, that get LoRA adapters (PEFT's "
                  "layers_to_transform): 1 = all; 0.5 on a 30-layer model = layers 15-29. The layers below keep the "
                  "base's weights, so the backward pass stops above them."},
    )

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.lora_top_fraction <= 1:
            raise DPORecipesError(f"--lora_top_fraction {self.lora_top_fraction}: use a share of the layers in (0, 1] "
                                  "(1 = every layer, 0.5 = the upper half).")


def apply_yaml(parser, argv: list[str], config: dict, config_path: str | None) -> list[str]:
    """Give `parser` the YAML's values as defaults, and return `argv` without its --config: TrlParser would read the
    file again as written, where `config`'s input paths are resolved against the YAML's folder. Its `env` mapping
    sets environment variables, as TrlParser does. A key or flag the parser lacks is refused first, in one line."""
    unknown_arguments(parser, argv, config, config_path)
    for key, value in (config.get("env") or {}).items():
        os.environ[key] = str(value)
    parser.set_defaults_with_config(**{k: v for k, v in config.items() if k != "env"})
    return _without_config_flag(argv)


def read_yaml_config(path: str) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise DPORecipesError(f"--config {path}: cannot read the YAML file ({exc}).") from None
    if not isinstance(config, dict):
        raise DPORecipesError(f"--config {path}: the YAML file must hold a mapping of argument: value.")
    return resolve_yaml_paths(config, path)


def run_name(dataset_name: str) -> str:
    """A folder name for a run on `dataset_name`: the file stem or the hub id's last part ('my_pairs')."""
    import re

    path = Path(dataset_name.rstrip("/"))
    stem = path.name
    for suffix in (".gz", ".jsonl", ".json", ".csv", ".parquet"):
        stem = stem.removesuffix(suffix)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "data"


def _refuse_argument(message: str):
    raise DPORecipesError(f"{message} (--help lists the arguments).")


def parse_recipe_args(default_config: str | Path | None = None, argv: list[str] | None = None,
                      dataclass_types: tuple | None = None, recipe: str = "dpo_lora", variant: str | None = None,
                      preset: str | None = None):
    """Parse a recipe's arguments: hardware defaults < preset < YAML (`--config`) < command line.

    Which YAML: `--config FILE`; with no `--config` and no `--dataset_name`, the recipe's `default_config` (its
    default run on the shipped identity data). With `--dataset_name` and no `--config`, no YAML applies: the
    identity run's data rules, evaluation prompts and output folder are for the identity data only, so your data
    gets the rules' defaults, no identity evaluation, and `outputs/<recipe>-<data name>` as output_dir.
    Preset: `--preset a,b` (overlaid left to right), else the YAML's `preset`, else the recipe's own `preset`
    (dpo_full.py: full-gpu), else `default_preset()` for this hardware. `variant` ('orpo', 'simpo', 'kto'): take the
    loss from that trainer's settings (see `preset_defaults`).
    Returns the dataclass instances, (RecipeArguments, DPOConfig, RecipeModelConfig) by default;
    `RecipeArguments.preset` holds the preset names that applied.
    """
    warn_outside_tested_window()  # once per process: an installed torch/TRL/transformers/... outside the tested window

    from trl import DPOConfig, TrlParser

    check_launch_environment()

    parser = TrlParser(dataclass_types or (RecipeArguments, DPOConfig, RecipeModelConfig))
    parser.error = _refuse_argument  # one line ('--lora_r sixteen'), not argparse's usage screen
    argv = canonical_flags(parser, list(sys.argv[1:] if argv is None else argv))
    config_path = _cli_value(argv, "--config")
    if config_path is None and default_config is not None and _cli_value(argv, "--dataset_name") is None:
        config_path = str(default_config)
        argv = ["--config", config_path, *argv]
    config = read_yaml_config(config_path) if config_path else {}
    preset = _cli_value(argv, "--preset") or config.get("preset") or preset or default_preset()
    defaults = preset_defaults(preset, variant=variant)
    defaults["preset"] = preset
    dataset_name = _cli_value(argv, "--dataset_name") or config.get("dataset_name")
    if dataset_name:
        defaults["output_dir"] = f"outputs/{recipe.replace('_', '-')}-{run_name(str(dataset_name))}"

    given = set(config) | {arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--")}
    for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                     ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
        if old in given and new not in given:  # the user's old name decides, not a preset's new one
            defaults.pop(new, None)
    unknown = parser.set_defaults_with_config(**defaults)
    if unknown:  # a preset key no dataclass has would be dropped without a word (e.g. transformers 5's warmup_ratio)
        raise DPORecipesError(f"Preset {preset!r} sets {unknown[0].lstrip('-')!r}, which this recipe's configs do "
                              "not have.")
    argv = apply_yaml(parser, argv, config, config_path)
    try:
        parsed = parser.parse_args_and_config(argv)
    except ValueError as exc:  # TrainingArguments' own checks, e.g. --bf16 on a machine without bf16
        raise DPORecipesError(f"Invalid arguments: {exc}") from None
    sources = value_sources(parsed, argv, config, config_path, defaults, preset)
    for instance in parsed:
        if hasattr(instance, "value_sources"):
            instance.value_sources = sources
    return parsed


def value_sources(parsed, argv: list[str], config: dict, config_path: str | None, defaults: dict,
                  preset: str) -> dict[str, str]:
    """Where each resolved argument came from: 'cli', 'yaml:PATH', 'preset:NAME' (the last preset in `preset` that
    sets it), 'hardware' (precision picked for the machine), or 'default' (the dataclass default)."""
    import dataclasses

    given = {arg[2:].split("=", 1)[0] for arg in argv if arg.startswith("--")}
    names = [n.strip() for n in preset.split(",")]
    sources = {}
    for instance in parsed:
        for f in dataclasses.fields(instance):
            if not f.init or f.name in sources:
                continue
            key = f.name
            if key in given and key != "config":
                sources[key] = "cli"
            elif key in config:
                sources[key] = f"yaml:{config_path}"
            elif key in defaults:
                setters = [n for n in names if key in PRESETS.get(n, {})]
                sources[key] = f"preset:{setters[-1]}" if setters else \
                    "preset" if key == "preset" else "hardware" if key in ("bf16", "fp16", "use_cpu") else "recipe"
            else:
                sources[key] = "default"
    return sources
