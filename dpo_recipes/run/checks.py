"""Every check that needs no model weights, run before loading them: the pre-flight (`dpo_recipes.check`), the hub
for --push_to_hub, the alarm thresholds, --merge, the chat template, the evaluation prompts, the hooks' settings."""

from __future__ import annotations

from urllib.parse import urlparse

from huggingface_hub import constants
from trl import DPOConfig

from dpo_recipes.check.preflight import check_before_run
from dpo_recipes.data.lengths import require_chat_template
from dpo_recipes.errors import DPORecipesError
from dpo_recipes.run.plan import precheck_output_dir
from dpo_recipes.run.stage import set_stage
from dpo_recipes.train.hooks import check_anchor_config, check_hook_config, check_hook_scores
from dpo_recipes.watch.evaluation import load_eval_prompts
from dpo_recipes.watch.thresholds import parse_thresholds
from dpo_recipes.watch.tracking import server_answers


def check_before_model(recipe_args, training_args, model_args, dataset, tokenizer, recipe: str = "dpo_lora"
                       ) -> list[dict]:
    """Every check that needs no model weights: run before loading them. Returns the evaluation prompts it read.

    First the pre-flight check (`dpo_recipes.check.preflight`: settings TRL or PEFT ignore, risky combinations, a memory
    and time estimate; `--preflight strict` stops on any of them)."""
    set_stage("checking the settings")
    check_before_run(recipe_args, training_args, model_args, recipe, dataset=dataset, tokenizer=tokenizer)
    prompts = _settings(recipe_args, training_args, model_args)
    if dataset is not None and len(dataset) and isinstance(dataset[0]["prompt"], list):
        require_chat_template(tokenizer, model_args.model_name_or_path)
    if getattr(recipe_args, "loss_hook", None) == "odpo":
        check_hook_scores(dataset, "train_dataset", recipe_args.odpo_ratio)
    if getattr(recipe_args, "anchor_coef", 0) and _is_dpo(training_args):
        check_anchor_config(recipe_args.anchor_coef, dataset, training_args.precompute_ref_log_probs)
    return prompts


def check_before_data(recipe: str, recipe_args, training_args, model_args, model_path: str) -> None:
    """The checks that need neither the data nor the model, before the data is read: the settings below and the
    output folder with its run record (`plan.precheck_output_dir`). A conflict then costs seconds, not the minute
    that reading and tokenizing a large data set takes."""
    set_stage("checking the settings")
    _settings(recipe_args, training_args, model_args)
    precheck_output_dir(recipe, recipe_args, training_args, model_args, model_path)


def _settings(recipe_args, training_args, model_args) -> list[dict]:
    """Checks of the settings alone (no data, no model); returns the evaluation prompts they read."""
    _check_push_to_hub(training_args)
    parse_thresholds(recipe_args.health_thresholds)  # a bad alarm threshold fails before the output folder is claimed
    if recipe_args.merge and not model_args.use_peft:
        raise DPORecipesError("--merge merges a LoRA adapter into its base model, but use_peft is false: the model "
                              f"saved in {training_args.output_dir} is already the full model. Drop --merge.")
    prompts = load_eval_prompts(recipe_args.eval_prompts_file)  # a bad prompts file fails now, not after training
    if any(p["kind"] == "identity" for p in prompts) and not recipe_args.identity_name:
        raise DPORecipesError(f"{recipe_args.eval_prompts_file} has identity prompts, but no --identity_name says "
                              "which name their answers should contain.")
    loss_hook = getattr(recipe_args, "loss_hook", None)
    if loss_hook is not None and not _is_dpo(training_args):
        raise DPORecipesError(f"--loss_hook {loss_hook} changes DPO's loss (recipes/dpo_lora.py); this recipe trains "
                              f"with {type(training_args).__name__.removesuffix('Config')}'s own loss. Drop "
                              "--loss_hook, or run recipes/dpo_lora.py.")
    if loss_hook is not None:
        check_hook_config(loss_hook, training_args)
    return prompts


def _check_push_to_hub(training_args) -> None:
    """--push_to_hub needs the hub: refuse before model work when it is unreachable (Trainer would fail on creating
    the repository after the model is loaded)."""
    if not training_args.push_to_hub:
        return

    if constants.HF_HUB_OFFLINE:
        raise DPORecipesError("--push_to_hub true, but HF_HUB_OFFLINE is set: unset it, or drop --push_to_hub.")


    if not server_answers(constants.ENDPOINT, timeout=5):
        raise DPORecipesError(f"--push_to_hub true, but {urlparse(constants.ENDPOINT).hostname} does not answer from "
                              "this machine: push later with `huggingface-cli upload`, or drop --push_to_hub.")


def _is_dpo(training_args) -> bool:
    return isinstance(training_args, DPOConfig)
