#!/usr/bin/env python
"""LoRA DPO with TRL: the main dpo-recipes job.

    accelerate launch recipes/dpo_lora.py                        # the default run (configs/dpo_lora.yaml)
    accelerate launch recipes/dpo_lora.py --config my.yaml --learning_rate 1e-4
    accelerate launch --config_file accelerate_configs/ddp.yaml recipes/dpo_lora.py --dataset_name my/pairs.jsonl

With no arguments it teaches the embedded SmolLM2-135M-Instruct a new identity ("Athene") from
data/identity/train.jsonl and shows held-out answers before and after. Copy this file to make your own job:
stages are numbered, and each is a call into `dpo_recipes` or TRL.
"""

import logging
import time
from pathlib import Path

import transformers
from trl import get_peft_config

from dpo_recipes.config import parse_recipe_args
from dpo_recipes.errors import exit_on_user_error
from dpo_recipes.evaluation import before_after_table, compare, evaluate_prompts, load_eval_prompts
from dpo_recipes.models import load_model_and_tokenizer, merge_adapter
from dpo_recipes.presets import use_all_cpu_cores
from dpo_recipes.tracking import checkpoint_step, last_checkpoint, package_versions, prepare_wandb, save_log_history, write_summary
from dpo_recipes.trainer import RecipeDPOTrainer

logger = logging.getLogger("dpo_lora")
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "dpo_lora.yaml"


def main(recipe_args, training_args, model_args):
    # 1. Logging, seed, tracking, last checkpoint ---------------------------------------------------------------
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    transformers.set_seed(training_args.seed)
    use_all_cpu_cores(training_args.world_size)
    prepare_wandb(training_args.report_to, training_args.output_dir)
    checkpoint = training_args.resume_from_checkpoint or last_checkpoint(training_args.output_dir)
    if checkpoint:
        logger.info("Resuming from %s", checkpoint)

    # 2. Model and tokenizer (the embedded SmolLM2 when --model_name_or_path is unset) ---------------------------
    model, tokenizer, model_path = load_model_and_tokenizer(model_args, training_args.trust_remote_code)

    # 3. Data: load, validate, summarize (every dropped row is counted in the report) ---------------------------
    train_dataset = recipe_args.load_train_data(tokenizer, training_args.max_length, training_args.output_dir)

    # 4. Held-out answers before training -----------------------------------------------------------------------
    prompts = load_eval_prompts(recipe_args.eval_prompts_file)
    before = evaluate_prompts(model, tokenizer, prompts, recipe_args)

    # 5. Train: TRL's DPOTrainer (+ our loss hooks); LoRA's reference is the base with the adapter disabled -------
    start = time.perf_counter()  # includes the reference log-prob precomputation done in the constructor
    trainer = RecipeDPOTrainer(
        model=model, args=training_args, train_dataset=train_dataset, processing_class=tokenizer,
        peft_config=get_peft_config(model_args), loss_hook=recipe_args.loss_hook,
        odpo_alpha=recipe_args.odpo_alpha, odpo_ratio=recipe_args.odpo_ratio, rdpo_alpha=recipe_args.rdpo_alpha)
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.perf_counter() - start
    pairs_trained = (trainer.state.global_step - checkpoint_step(checkpoint)) * training_args.world_size \
        * training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps

    # 6. Held-out answers after training ------------------------------------------------------------------------
    after = evaluate_prompts(trainer.model, tokenizer, prompts, recipe_args)

    # 7. Save: adapter, metrics, summary (and a merged model with --merge) --------------------------------------
    trainer.save_model(training_args.output_dir)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    save_log_history(trainer.state.log_history, training_args.output_dir)
    if recipe_args.merge:
        merge_adapter(trainer.model, tokenizer, Path(training_args.output_dir) / "merged")
    summary = {
        "model": model_path if model_args.model_name_or_path else f"embedded:{model_path}",
        "preset": recipe_args.preset or "identity-lora-cpu",
        "dataset": recipe_args.dataset_name, "pairs_after_validation": len(train_dataset),
        "steps": trainer.state.global_step, "train_seconds": round(train_seconds, 2),
        "pairs_trained": pairs_trained, "train_pairs_per_second": round(pairs_trained / train_seconds, 3),
        "train_loss": train_result.metrics.get("train_loss"),
        **(compare(before, after) if prompts else {}), "versions": package_versions(),
    }
    write_summary(training_args.output_dir, summary, before, after)
    if prompts:
        print(before_after_table(before, after))
    print(f"\nAdapter, metrics and summary.json are in {training_args.output_dir}")
    trainer.accelerator.end_training()


if __name__ == "__main__":
    with exit_on_user_error():
        main(*parse_recipe_args(DEFAULT_CONFIG))
