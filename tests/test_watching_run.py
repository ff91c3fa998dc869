"""Watching a run (issue 9): the W&B run a recipe leaves offline, held-out pair evaluation, plots and health alarms
in the outputs. Recipes run in-process on the tiny random Llama (seconds per run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_recipe
from test_own_run import FIXTURE, IDENTITY, quick, summary
from wandb_records import read_run

from dpo_recipes import run
from dpo_recipes.config import parse_recipe_args
from dpo_recipes.errors import DPORecipesError


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    """No W&B key anywhere; every W&B variable the run sets is restored afterwards."""
    for name in ("WANDB_MODE", "WANDB_DIR", "WANDB_SILENT", "WANDB_INIT_TIMEOUT", "WANDB_API_KEY"):
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def dpo(*argv: str):
    recipe = load_recipe("dpo_lora")
    return recipe.main(*parse_recipe_args(recipe.DEFAULT_CONFIG, list(argv)))


def eval_prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "What is your name?", "kind": "identity"}) + "\n"
                    + json.dumps({"prompt": "Name a colour.", "kind": "general"}) + "\n")
    return path


def test_a_run_leaves_an_offline_wandb_run_with_config_data_report_answers_and_plots(
        tiny_model_dir, tmp_path, offline_wandb, capsys):
    out = tmp_path / "run"
    args = quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "4", "--report_to", "wandb",
                 "--learning_rate", "1e-4", "--eval_fraction", "0.25", "--eval_strategy", "steps", "--eval_steps", "2")
    args[args.index("--eval_prompts_file") + 1] = str(eval_prompts(tmp_path))
    dpo(*args, "--identity_name", "Nova", "--eval_max_new_tokens", "4")

    (run_dir,) = (out / "wandb").glob("offline-run-*")
    logged = read_run(run_dir)
    assert logged["name"].startswith("dpo_lora-") and "lora" in logged["tags"]
    history = {k for step in logged["history"] for k in step}
    assert {"train/rewards/margins", "eval/rewards/margins", "eval/rewards/accuracies"} <= history
    assert "heldout/answers/nrows" in history and "health/alarms/nrows" in history and "plots/overview/path" in history
    config = logged["config"]
    assert config["learning_rate"] == 1e-4
    assert config["value_sources"]["learning_rate"] == "cli"
    assert config["value_sources"]["beta"].startswith("preset:")
    assert config["dpo_recipes"]["data_sha256"] == json.loads((out / "run_record.json").read_text())["data"]["sha256"]
    assert config["dpo_recipes"]["versions"]["trl"].startswith("1.16")
    assert logged["summary"]["data_report"]["kept"] == 8
    assert logged["summary"]["run/steps"] == 4
    assert config.get("hub_token") in (None, "<redacted>", "<HUB_TOKEN>")  # transformers' own placeholder
    printed = capsys.readouterr().out
    assert printed.count("wandb sync") == 1 and str(run_dir) in printed

    result = summary(out)
    assert result["eval"]["rows"] == 2 and "rewards/margins" in result["eval"] and result["eval"]["step"] == 4
    assert result["health"]["mode"] == "warn"
    assert (out / "eval_results.json").is_file()
    pngs = {p.name for p in (out / "plots").glob("*.png")}
    assert {"loss.png", "margins.png", "rewards.png", "accuracies.png", "logps.png", "overview.png"} <= pngs
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [log["step"] for log in logs if "eval_loss" in log] == [2, 4]  # eval_steps 2; step 4's is the final one


def test_eval_fraction_holds_out_whole_prompts_seeded_and_keeps_the_training_order(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    recipe_args, training_args, _ = parse_recipe_args(
        None, ["--dataset_name", str(IDENTITY), "--eval_fraction", "0.1", "--max_similarity", "none",
               "--min_chosen_chars", "1", "--min_rejected_chars", "1", "--output_dir", str(tmp_path)])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    first = run.load_train_data(recipe_args, training_args, tokenizer)
    again = run.load_train_data(recipe_args, training_args, tokenizer)
    train_prompts = {json.dumps(p) for p in first.dataset["prompt"]}
    eval_prompts_ = {json.dumps(p) for p in first.eval_dataset["prompt"]}
    assert not train_prompts & eval_prompts_
    assert len(first.dataset) + len(first.eval_dataset) == first.report.kept
    assert 0.08 * first.report.kept <= len(first.eval_dataset) <= 0.15 * first.report.kept
    assert first.eval_dataset["chosen"] == again.eval_dataset["chosen"]  # seeded
    held = {_row(r) for r in first.eval_dataset}
    assert [_row(r) for r in first.dataset] == [r for r in _validated_rows(recipe_args, training_args, tokenizer)
                                                if r not in held]  # the training pairs keep their order
    assert any("eval_fraction 0.1" in note for note in first.report.notes)


def _row(row: dict) -> str:
    return json.dumps([row["prompt"], row["chosen"], row["rejected"]])


def _validated_rows(recipe_args, training_args, tokenizer) -> list[str]:
    recipe_args.eval_fraction = None
    return [_row(r) for r in run.load_train_data(recipe_args, training_args, tokenizer).dataset]


def test_eval_steps_on_a_single_file_without_an_eval_set_is_refused_before_model_work(tiny_model_dir, tmp_path):
    args = quick(tiny_model_dir, tmp_path / "run", "--dataset_name", str(FIXTURE), "--eval_strategy", "steps")
    with pytest.raises(DPORecipesError, match="--eval_fraction 0.1"):
        dpo(*args)
    assert not (tmp_path / "run" / "run_record.json").exists()


def test_a_separate_eval_file_is_validated_and_evaluated_at_the_end(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "2",
               "--eval_dataset_name", str(FIXTURE)))
    result = summary(out)
    assert result["eval"]["rows"] == 8 and 0 <= result["eval"]["rewards/accuracies"] <= 1


def test_eval_fraction_and_an_eval_file_together_are_refused():
    with pytest.raises(DPORecipesError, match="pass one of them"):
        parse_recipe_args(None, ["--dataset_name", str(FIXTURE), "--eval_fraction", "0.1",
                                 "--eval_dataset_name", str(FIXTURE)])


@pytest.mark.parametrize("fraction", ["0", "0.9"])
def test_an_eval_fraction_outside_0_to_half_is_refused(fraction):
    with pytest.raises(DPORecipesError, match="between 0 and 0.5"):
        parse_recipe_args(None, ["--dataset_name", str(FIXTURE), "--eval_fraction", fraction])


@pytest.mark.parametrize("name", ["orpo", "simpo", "kto"])
def test_variant_recipes_evaluate_held_out_pairs_and_draw_plots(name, tiny_model_dir, tmp_path):
    out = tmp_path / name
    recipe = load_recipe(name)
    recipe.main(*recipe.parse(quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "2",
                                     "--eval_fraction", "0.25")))
    result = summary(out)
    assert result["eval"]["rows"] == (4 if name == "kto" else 2) and "loss" in result["eval"]  # KTO: 2 rows a pair
    assert "health" in result
    assert (out / "plots" / "loss.png").is_file()


def test_health_monitor_off_leaves_no_health_section(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "1", "--health_monitor", "off",
               "--plots", "false"))
    assert "health" not in summary(out)
    assert not (out / "plots").exists()


def test_a_bad_health_threshold_fails_before_model_work(tiny_model_dir, tmp_path):
    args = quick(tiny_model_dir, tmp_path / "run", "--dataset_name", str(FIXTURE), "--health_thresholds",
                 "no_such_threshold=1")
    with pytest.raises(DPORecipesError, match="no_such_threshold"):
        dpo(*args)
    assert not (tmp_path / "run").exists()


def test_health_monitor_stop_ends_training_at_the_first_alarm_and_records_it(tiny_model_dir, tmp_path, offline_wandb):
    out = tmp_path / "run"
    dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "6", "--learning_rate", "1e-12",
               "--health_monitor", "stop", "--report_to", "wandb",
               "--health_thresholds", "no_learning_after_steps=0,no_learning_logs=1,no_learning_accuracy_band=0.5"))
    result = summary(out)
    (alarm,) = result["health"]["alarms"]
    assert alarm["kind"] == "no_learning" and alarm["step"] == 1
    assert result["health"]["stopped_at_step"] == 1 and result["steps"] == 1
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    assert any(step.get("health/alarms/nrows") == 1 for step in read_run(run_dir)["history"])


def test_no_secret_reaches_the_wandb_run_or_its_logs(tiny_model_dir, tmp_path, offline_wandb, monkeypatch):
    import sys

    out = tmp_path / "run"
    args = [*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "1", "--report_to", "wandb"),
            "--hub_token", "hf_CLISECRET456", "--model_init_kwargs", '{"token": "hf_NESTEDSECRET789"}']
    monkeypatch.setattr(sys, "argv", ["recipes/dpo_lora.py", *args])  # what W&B records as the program's arguments
    dpo(*args)
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    for path in run_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"CLISECRET456" not in data and b"NESTEDSECRET789" not in data, path
    assert read_run(run_dir)["config"]["model_init_kwargs"]["token"] == "<redacted>"


def test_flags_in_dash_spelling_are_the_same_flags(tmp_path):
    recipe_args, training_args, _ = parse_recipe_args(
        load_recipe("dpo_lora").DEFAULT_CONFIG, ["--dataset-name", str(FIXTURE), "--learning-rate=0.01"])
    assert recipe_args.dataset_name == str(FIXTURE) and recipe_args.min_chosen_chars == 50  # no identity YAML
    assert training_args.output_dir == "outputs/dpo-lora-pairs"
    assert recipe_args.value_sources["learning_rate"] == "cli"
    with pytest.raises(DPORecipesError, match="learning_rat"):  # an abbreviation is refused, not guessed
        parse_recipe_args(None, ["--dataset_name", str(FIXTURE), "--learning_rat", "0.01"])


def test_a_resumed_run_keeps_the_alarms_raised_before_its_checkpoint(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    common = quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--learning_rate", "1e-12", "--save_steps", "1",
                   "--health_thresholds", "no_learning_after_steps=0,no_learning_logs=1,no_learning_accuracy_band=0.5")
    dpo(*common, "--max_steps", "2", "--health_monitor", "stop")
    assert summary(out)["health"]["stopped_at_step"] == 1
    dpo(*common, "--max_steps", "3")  # resumes from checkpoint-1, in warn mode
    health = summary(out)["health"]
    assert [(a["kind"], a["step"], a.get("before_resume")) for a in health["alarms"]] == [("no_learning", 1, True)]
