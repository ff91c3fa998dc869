"""ORPO: preference tuning without a reference model (Hong et al. 2024), with TRL's experimental ORPOTrainer.

ORPO adds an odds-ratio penalty, weighted by lambda (`beta` here), to the SFT loss on the chosen answer, so it needs
no reference model and no separate SFT stage. Same data as the DPO recipes: prompt/chosen/rejected pairs.

    python recipes/orpo.py                                      # embedded SmolLM2 + the identity pairs, LoRA
    python recipes/orpo.py --config recipes/configs/orpo.yaml --dataset_name my_pairs.jsonl --max_steps 200
"""

import logging
from pathlib import Path

from transformers import set_seed
from trl import ModelConfig, TrlParser, get_peft_config
from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from dpo_recipes.config import RecipeArguments
from dpo_recipes.errors import exit_on_user_error
from dpo_recipes.loss_presets import variant_defaults
from dpo_recipes.models import load_model_and_tokenizer
from dpo_recipes.presets import hardware_defaults

logger = logging.getLogger(__name__)
DEFAULT_DATA = Path(__file__).resolve().parents[1] / "data" / "identity" / "train.jsonl"
# A run with no config: ORPO's settings (dpo_recipes.loss_presets) + LoRA on the embedded model. YAML/CLI override.
DEFAULTS = {**variant_defaults("orpo"), "output_dir": "runs/orpo", "learning_rate": 1e-4, "num_train_epochs": 3,
            "per_device_train_batch_size": 4, "logging_steps": 5, "save_strategy": "no", "report_to": "none",
            "use_peft": True, "lora_r": 16, "lora_alpha": 32, "lora_target_modules": "all-linear",
            **hardware_defaults()}  # bf16/fp16/fp32 for this machine: TRL's bf16 default fails on a CPU


def main(script_args: RecipeArguments, training_args: ORPOConfig, model_args: ModelConfig):
    # 1. Seed and logging ------------------------------------------------------------------------------------------
    set_seed(training_args.seed)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    # 2. Model and tokenizer (no model given: the embedded SmolLM2-135M-Instruct) --------------------------------
    model, tokenizer, model_path = load_model_and_tokenizer(model_args)
    logger.info("Model: %s", model_path)

    # 3. Data: read, normalize and validate the pairs; the report says what was dropped and why -------------------
    train_dataset = script_args.load_train_data(tokenizer, training_args.max_length, training_args.output_dir,
                                                default_source=str(DEFAULT_DATA))
    train_dataset = train_dataset.select_columns(["prompt", "chosen", "rejected"])  # ORPO ignores scores

    # 4. Trainer: no reference model; with LoRA only the adapter trains --------------------------------------------
    trainer = ORPOTrainer(model=model, args=training_args, train_dataset=train_dataset, processing_class=tokenizer,
                          peft_config=get_peft_config(model_args))

    # 5. Train and save ------------------------------------------------------------------------------------------
    result = trainer.train()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_model(training_args.output_dir)
    tokenizer.save_pretrained(training_args.output_dir)
    logger.info("Saved to %s", training_args.output_dir)


def parse(argv: list[str] | None = None):
    """The recipe's arguments: DEFAULTS, then --config YAML, then CLI flags (argv; None reads sys.argv)."""
    parser = TrlParser((RecipeArguments, ORPOConfig, ModelConfig))
    parser.set_defaults(**DEFAULTS)
    return parser.parse_args_and_config(args=argv)


if __name__ == "__main__":
    with exit_on_user_error():
        main(*parse())
