#!/usr/bin/env python
"""Full-parameter DPO with a separate frozen reference model: the job for DeepSpeed ZeRO-3.

    accelerate launch --config_file accelerate_configs/zero3.yaml recipes/dpo_full.py \
        --model_name_or_path Qwen/Qwen2.5-1.5B-Instruct --dataset_name my/pairs.jsonl

The stages are dpo_lora.py's; what differs: the preset is `full-gpu` (beta 0.1, lr 5e-7, gradient checkpointing),
every weight trains, and the reference is a second copy of the model that TRL loads from the same path and keeps
frozen (under ZeRO-3 both are sharded across the processes). The model is saved whole: ZeRO-3's shards are
gathered into one safetensors model (16-bit with zero3_save_16bit_model, as in accelerate_configs/zero3.yaml; fp32
when the launch runs fp32). `--dataset_name` is required: the identity run is a LoRA job.

Where the values come from, each overriding the one before: the preset (dpo_recipes/config/presets.py),
configs/dpo_lora.yaml beside this file (else the shipped one), then the command line; `dpo-recipes check` shows each
value's source.
"""

from dpo_recipes.progress import starting

starting(__name__, __file__)  # one line before ~5 s of imports

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import dpo_lora  # noqa: E402  (the same stages)

from dpo_recipes import run  # noqa: E402
from dpo_recipes.config import parse_recipe_args  # noqa: E402
from dpo_recipes.errors import DPORecipesError  # noqa: E402

DEFAULT_PRESET = "full-gpu"


def parse(argv: list[str]):
    """dpo_lora's arguments with the full-parameter preset (unless the command line or YAML names one), LoRA
    refused."""
    recipe_args, training_args, model_args = parse_recipe_args(None, argv, recipe="dpo_full", preset=DEFAULT_PRESET)
    if not recipe_args.dataset_name:
        raise DPORecipesError("recipes/dpo_full.py needs --dataset_name (or --config): full-parameter DPO of your "
                              "pairs. The default identity run is recipes/dpo_lora.py.")
    if model_args.use_peft:
        raise DPORecipesError("recipes/dpo_full.py trains every weight; for LoRA use recipes/dpo_lora.py.")
    return recipe_args, training_args, model_args


if __name__ == "__main__":
    with run.recipe_errors():
        dpo_lora.main(*parse(sys.argv[1:]))
