#!/usr/bin/env python
"""LoRA DPO with TRL: the main dpo-recipes job.

    accelerate launch recipes/dpo_lora.py                        # the default run (configs/dpo_lora.yaml)
    accelerate launch recipes/dpo_lora.py --config my.yaml --learning_rate 1e-4
    accelerate launch --config_file accelerate_configs/ddp.yaml recipes/dpo_lora.py --dataset_name my/pairs.jsonl

With no arguments it teaches the embedded SmolLM2-135M-Instruct a new identity ("Athene") from
data/identity/train.jsonl and shows held-out answers before and after. Copy this file to make your own job
(`dpo-recipes cp dpo_lora my_job/`): stages are numbered, and each is a call into `dpo_recipes` or TRL.

Where the values come from, each overriding the one before: the preset the YAML names (dpo_recipes/config/presets.py,
a reason per value), configs/dpo_lora.yaml beside this file (else the shipped one; its relative data paths resolve
against its own folder), then the command line. `dpo-recipes check configs/dpo_lora.yaml` prints every value with the
place it came from. Change values there, not the plumbing here.
"""

from dpo_recipes.progress import starting

starting(__name__, __file__)  # one line before ~5 s of imports

import logging
import time

import transformers

from dpo_recipes import run
from dpo_recipes.config import parse_recipe_args
from dpo_recipes.config.presets import use_all_cpu_cores
from dpo_recipes.models import lora_config
from dpo_recipes.shipped import default_config
from dpo_recipes.train.trainer import RecipeDPOTrainer
from dpo_recipes.watch.evaluation import answers_before_training, before_after_table, compare, evaluate_prompts

logger = logging.getLogger("dpo_lora")
DEFAULT_CONFIG = default_config(__file__, "dpo_lora.yaml")  # beside this file, else the shipped one


def main(recipe_args, training_args, model_args):
    # 1. Logging, seed ------------------------------------------------------------------------------------------
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()
    transformers.set_seed(training_args.seed)
    use_all_cpu_cores(training_args.world_size)

    # 2. Before any model work: tokenizer, data (every dropped pair counted), checks, the output folder ----------
    tokenizer, model_path = run.load_tokenizer_for(model_args, training_args)
    run.check_before_data("dpo_lora", recipe_args, training_args, model_args, model_path)  # settings, output folder
    data = run.load_train_data(recipe_args, training_args, tokenizer)
    prompts = run.check_before_model(recipe_args, training_args, model_args, data.dataset, tokenizer, "dpo_lora")
    plan = run.plan_output_dir("dpo_lora", recipe_args, training_args, model_args, model_path, data)
    if plan.finished_step is not None:  # the same run already finished here: train nothing
        return run.report_finished(plan, recipe_args, training_args, model_args, model_path, tokenizer)
    watch = run.start_watching("dpo_lora", recipe_args, training_args, model_args, plan, data)  # W&B, health alarms

    # 3. Model (the embedded SmolLM2 when --model_name_or_path is unset) and held-out answers before training -----
    model = run.load_model_for(model_args, training_args, model_path)
    run.set_stage("answering the evaluation prompts before training")
    before = answers_before_training(model, tokenizer, prompts, recipe_args, plan.output_dir, plan.record)

    # 4. Train: TRL's DPOTrainer (+ our loss hooks); LoRA's reference is the base with the adapter disabled -------
    start = time.perf_counter()  # includes the reference log-prob precomputation done in the constructor
    trainer = RecipeDPOTrainer(
        model=model, args=training_args, train_dataset=data.dataset, eval_dataset=data.eval_dataset,
        processing_class=tokenizer, callbacks=watch.callbacks, peft_config=lora_config(model_args, model),
        loss_hook=recipe_args.loss_hook, odpo_alpha=recipe_args.odpo_alpha, odpo_ratio=recipe_args.odpo_ratio,
        rdpo_alpha=recipe_args.rdpo_alpha, share_prompts=recipe_args.share_prompts,
        reference_cache=recipe_args.reference_cache, anchor_coef=recipe_args.anchor_coef)
    metrics = run.train(trainer, plan)
    train_seconds = time.perf_counter() - start
    run.evaluate(trainer)  # the held-out pairs (--eval_fraction / --eval_dataset_name), when there are any

    # 5. Save: adapter, metrics (and a merged model with --merge) ----------------------------------------------------
    run.save_outputs(trainer, tokenizer, recipe_args, training_args, metrics)

    # 6. Held-out answers after training; summary, plots, W&B tables --------------------------------------------------
    run.set_stage("answering the evaluation prompts after training")
    after = evaluate_prompts(trainer.model, tokenizer, prompts, recipe_args)
    summary = run.summarize(recipe_args, model_args, model_path, data, trainer, plan, train_seconds, metrics)
    summary.update(compare(before, after) if prompts else {})
    run.finish(plan, trainer, summary, before, after, watch, plots=recipe_args.plots)
    if prompts:
        print(before_after_table(before, after))
    print(run.outputs_line(training_args.output_dir))
    trainer.accelerator.end_training()


if __name__ == "__main__":
    with run.recipe_errors():
        main(*parse_recipe_args(DEFAULT_CONFIG))
