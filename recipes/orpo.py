"""ORPO: preference tuning without a reference model (Hong et al. 2024), with TRL's experimental ORPOTrainer.

ORPO adds an odds-ratio penalty, weighted by lambda (`beta` here), to the SFT loss on the chosen answer, so it needs
no reference model and no separate SFT stage. Same data as the DPO recipes: prompt/chosen/rejected pairs.

    python recipes/orpo.py                                      # embedded SmolLM2 + the identity pairs, LoRA
    python recipes/orpo.py --config recipes/configs/orpo.yaml --dataset_name my_pairs.jsonl --max_steps 200

Where the values come from, each overriding the one before: the preset (dpo_recipes/config/presets.py),
configs/orpo.yaml beside this file (else the shipped one), then the command line; `dpo-recipes check` shows each
value's source.
"""

from dpo_recipes.progress import starting

starting(__name__, __file__)  # one line before ~5 s of imports

import logging
import time

from transformers import set_seed
from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from dpo_recipes import run
from dpo_recipes.config import RecipeArguments, RecipeModelConfig, parse_recipe_args
from dpo_recipes.config.presets import use_all_cpu_cores
from dpo_recipes.models import lora_config
from dpo_recipes.shipped import default_config
from dpo_recipes.watch.evaluation import answers_before_training, before_after_table, compare, evaluate_prompts

logger = logging.getLogger(__name__)
DEFAULT_CONFIG = default_config(__file__, "orpo.yaml")  # beside this file, else the shipped one


def main(recipe_args: RecipeArguments, training_args: ORPOConfig, model_args: RecipeModelConfig):
    # 1. Seed and logging ------------------------------------------------------------------------------------------
    set_seed(training_args.seed)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    use_all_cpu_cores(training_args.world_size)

    # 2. Before any model work: tokenizer, data (every dropped pair counted), checks, the output folder ----------
    tokenizer, model_path = run.load_tokenizer_for(model_args, training_args)
    run.check_before_data("orpo", recipe_args, training_args, model_args, model_path)  # settings, output folder
    data = run.load_train_data(recipe_args, training_args, tokenizer)
    prompts = run.check_before_model(recipe_args, training_args, model_args, data.dataset, tokenizer, "orpo")
    plan = run.plan_output_dir("orpo", recipe_args, training_args, model_args, model_path, data)
    if plan.finished_step is not None:  # the same run already finished here: train nothing
        return run.report_finished(plan, recipe_args, training_args, model_args, model_path, tokenizer)
    watch = run.start_watching("orpo", recipe_args, training_args, model_args, plan, data)  # W&B, health alarms
    train_dataset = data.dataset.select_columns(["prompt", "chosen", "rejected"])  # ORPO ignores scores
    eval_dataset = run.pairs_only(data.eval_dataset)  # --eval_fraction / --eval_dataset_name, or None

    # 3. Model (none given: the embedded SmolLM2-135M-Instruct) and trainer: no reference model ------------
    model = run.load_model_for(model_args, training_args, model_path)
    run.set_stage("answering the evaluation prompts before training")
    # --eval_prompts_file: held-out answers (kept in output_dir: a rerun reuses them)
    before = answers_before_training(model, tokenizer, prompts, recipe_args, plan.output_dir, plan.record)
    start = time.perf_counter()
    trainer = ORPOTrainer(model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                          processing_class=tokenizer, callbacks=watch.callbacks,
                          peft_config=lora_config(model_args, model))

    # 4. Train, save, summarize ------------------------------------------------------------------------------------
    metrics = run.train(trainer, plan)
    train_seconds = time.perf_counter() - start
    run.evaluate(trainer)  # the held-out pairs (--eval_fraction / --eval_dataset_name), when there are any
    run.save_outputs(trainer, tokenizer, recipe_args, training_args, metrics)
    run.set_stage("answering the evaluation prompts after training")
    after = evaluate_prompts(trainer.model, tokenizer, prompts, recipe_args)
    summary = run.summarize(recipe_args, model_args, model_path, data, trainer, plan, train_seconds, metrics)
    summary.update(compare(before, after) if prompts else {})
    run.finish(plan, trainer, summary, before, after, watch, plots=recipe_args.plots)
    if prompts:
        print(before_after_table(before, after))
    print(run.outputs_line(training_args.output_dir))


def parse(argv: list[str] | None = None):
    """The recipe's arguments: hardware < preset < YAML (--config; none given and no --dataset_name: the default
    run's) < CLI flags (argv; None reads sys.argv). The loss settings come from orpo's, never from a DPO preset."""
    return parse_recipe_args(DEFAULT_CONFIG, argv, (RecipeArguments, ORPOConfig, RecipeModelConfig), recipe="orpo",
                             variant="orpo")


if __name__ == "__main__":
    with run.recipe_errors():
        main(*parse())
