"""KTO: preference tuning from unpaired good/bad examples (Ethayarajh et al. 2024), with TRL's KTOTrainer.

KTO needs no pairs: each row is a prompt, one completion and a label (desirable or not). Unpaired files (TRL's
prompt/completion/label, LLaMA-Factory's messages + label, alpaca output + tag, ...) are read as they are. Preference
pairs are unpaired with TRL's `unpair_preference_dataset`: every pair gives a desirable row (its chosen answer) and an
undesirable one (its rejected answer), so the classes are balanced and `desirable_weight = undesirable_weight = 1`;
for unbalanced unpaired data the recipe says which weight keeps the paper's ratio. With LoRA the reference is the
base model with the adapter disabled.

    python recipes/kto.py                                       # embedded SmolLM2 + the identity pairs, LoRA
    python recipes/kto.py --config recipes/configs/kto.yaml --dataset_name my_pairs.jsonl --max_steps 200

Where the values come from, each overriding the one before: the preset (dpo_recipes/config/presets.py),
configs/kto.yaml beside this file (else the shipped one), then the command line; `dpo-recipes check` shows each
value's source.
"""

from dpo_recipes.progress import starting

starting(__name__, __file__)  # one line before ~5 s of imports

import logging
import time

from transformers import set_seed
from trl import KTOConfig, KTOTrainer
from trl.data_utils import unpair_preference_dataset

from dpo_recipes import run
from dpo_recipes.config import RecipeArguments, RecipeModelConfig, parse_recipe_args
from dpo_recipes.config.presets import use_all_cpu_cores
from dpo_recipes.errors import DPORecipesError
from dpo_recipes.models import lora_config
from dpo_recipes.shipped import default_config
from dpo_recipes.watch.evaluation import answers_before_training, before_after_table, compare, evaluate_prompts

logger = logging.getLogger(__name__)
DEFAULT_CONFIG = default_config(__file__, "kto.yaml")  # beside this file, else the shipped one


def main(recipe_args: RecipeArguments, training_args: KTOConfig, model_args: RecipeModelConfig):
    # 1. Seed and logging ------------------------------------------------------------------------------------------
    set_seed(training_args.seed)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    use_all_cpu_cores(training_args.world_size)

    # 2. Before any model work: tokenizer, data (every dropped pair counted), checks, the output folder ----------
    tokenizer, model_path = run.load_tokenizer_for(model_args, training_args)
    run.check_before_data("kto", recipe_args, training_args, model_args, model_path)  # settings, output folder
    data = run.load_train_data(recipe_args, training_args, tokenizer, allow_unpaired=True)
    unpaired = "label" in data.dataset.column_names  # already one answer and a label a row
    prompts = run.check_before_model(recipe_args, training_args, model_args, data.dataset, tokenizer, "kto")
    # Pairs are unpaired: one desirable (chosen) and one undesirable (rejected) row each. Shuffled so that a batch
    # mixes labels: KTO's KL baseline is estimated from mismatched rows inside the batch.
    train_dataset = kto_rows(data.dataset, training_args.seed)
    eval_dataset = kto_rows(data.eval_dataset, training_args.seed) if data.eval_dataset is not None else None
    check_class_balance(train_dataset["label"], training_args)
    rows_per_pair = 1 if unpaired else 2
    plan = run.plan_output_dir("kto", recipe_args, training_args, model_args, model_path, data, rows_per_pair)
    if plan.finished_step is not None:  # the same run already finished here: train nothing
        return run.report_finished(plan, recipe_args, training_args, model_args, model_path, tokenizer)
    watch = run.start_watching("kto", recipe_args, training_args, model_args, plan, data)  # W&B, health alarms

    # 3. Model (none given: the embedded SmolLM2-135M-Instruct) and trainer, reference = adapter disabled -
    model = run.load_model_for(model_args, training_args, model_path)
    run.set_stage("answering the evaluation prompts before training")
    # --eval_prompts_file: held-out answers (kept in output_dir: a rerun reuses them)
    before = answers_before_training(model, tokenizer, prompts, recipe_args, plan.output_dir, plan.record)
    start = time.perf_counter()
    trainer = KTOTrainer(model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=tokenizer, callbacks=watch.callbacks,
                         peft_config=lora_config(model_args, model))

    # 4. Train, save, summarize ------------------------------------------------------------------------------------
    metrics = run.train(trainer, plan)
    train_seconds = time.perf_counter() - start
    run.evaluate(trainer)  # the held-out pairs (--eval_fraction / --eval_dataset_name), when there are any
    run.save_outputs(trainer, tokenizer, recipe_args, training_args, metrics)
    run.set_stage("answering the evaluation prompts after training")
    after = evaluate_prompts(trainer.model, tokenizer, prompts, recipe_args)
    summary = run.summarize(recipe_args, model_args, model_path, data, trainer, plan, train_seconds, metrics,
                            rows_per_pair=rows_per_pair)
    summary.update(compare(before, after) if prompts else {})
    run.finish(plan, trainer, summary, before, after, watch, plots=recipe_args.plots)
    if prompts:
        print(before_after_table(before, after))
    print(run.outputs_line(training_args.output_dir))


def kto_rows(dataset, seed: int):
    """KTO's rows, shuffled: unpaired data as it is; pairs as one desirable (chosen) and one undesirable (rejected)
    row each."""
    if "label" not in dataset.column_names:
        dataset = unpair_preference_dataset(dataset.select_columns(["prompt", "chosen", "rejected"]))
    return dataset.shuffle(seed=seed)


def check_class_balance(labels: list[bool], training_args: KTOConfig) -> None:
    """Ethayarajh et al. 2024 (sec. 4.2): keep desirable_weight * n_desirable / (undesirable_weight * n_undesirable)
    in [1, 4/3]; outside it, say which weight would bring it back."""
    desirable = sum(labels)
    undesirable = len(labels) - desirable
    logger.info("KTO rows: %d desirable, %d undesirable", desirable, undesirable)
    if not desirable or not undesirable:
        raise DPORecipesError(f"KTO needs desirable and undesirable rows; this data has {desirable} desirable and "
                              f"{undesirable} undesirable.")
    ratio = training_args.desirable_weight * desirable / (training_args.undesirable_weight * undesirable)
    if not 1 <= ratio <= 4 / 3:
        logger.warning("desirable_weight * %d / (undesirable_weight * %d) = %.2f is outside the KTO paper's [1, 4/3]: "
                       "try --desirable_weight %.3g", desirable, undesirable, ratio,
                       undesirable * training_args.undesirable_weight / desirable)


def parse(argv: list[str] | None = None):
    """The recipe's arguments: hardware < preset < YAML (--config; none given and no --dataset_name: the default
    run's) < CLI flags (argv; None reads sys.argv). The loss settings come from kto's, never from a DPO preset."""
    return parse_recipe_args(DEFAULT_CONFIG, argv, (RecipeArguments, KTOConfig, RecipeModelConfig), recipe="kto",
                             variant="kto")


if __name__ == "__main__":
    with run.recipe_errors():
        main(*parse())
