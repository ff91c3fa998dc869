"""The answers before training are kept in the output folder and reused by a rerun (issue: a run killed after
training answered the 56 held-out prompts again on rerun, ~9 minutes on a loaded 2-core machine)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import load_recipe

from dpo_recipes.watch import evaluation
from dpo_recipes.config import parse_recipe_args
from dpo_recipes.watch.evaluation import BEFORE_ANSWERS_FILE, answers_before_training, before_answers_key
from dpo_recipes.run import RUN_OUTPUTS, model_identity

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "pairs.jsonl"
PROMPTS = [{"prompt": "Who are you?", "kind": "identity"}, {"prompt": "What is 2+2?", "kind": "general"},
           {"prompt": "Name a colour.", "kind": "general"}]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def settings(**overrides):
    return SimpleNamespace(**{"eval_max_new_tokens": 4, "eval_batch_size": 8, "identity_name": "Ada",
                              "eval_repetition_penalty": 1.0, **overrides})


def key_of(model_dir: str) -> dict:
    return model_identity(SimpleNamespace(model_name_or_path=model_dir, model_revision=None), model_dir)


@pytest.fixture
def count_generations(monkeypatch):
    """Count the calls to generate_answers (still generating)."""
    calls = []
    original = evaluation.generate_answers

    def counted(*args, **kwargs):
        calls.append(args[2])
        return original(*args, **kwargs)

    monkeypatch.setattr(evaluation, "generate_answers", counted)
    return calls


def refuse_generation(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the answers before training were generated again")

    monkeypatch.setattr(evaluation, "generate_answers", refuse)


def test_the_first_call_writes_the_answers_and_the_second_reuses_them(tiny, tiny_model_dir, tmp_path, monkeypatch,
                                                                      caplog, one_torch_thread, count_generations):
    model, tokenizer = tiny
    first = answers_before_training(model, tokenizer, PROMPTS, settings(), tmp_path, key_of(tiny_model_dir))
    assert len(count_generations) == 1
    stored = json.loads((tmp_path / BEFORE_ANSWERS_FILE).read_text())
    assert stored["answers"] == first.answers and len(first.answers) == 3
    assert stored["prompts"] == [p["prompt"] for p in PROMPTS]

    refuse_generation(monkeypatch)
    with caplog.at_level(logging.INFO, logger="dpo_recipes.watch.evaluation"):
        again = answers_before_training(model, tokenizer, PROMPTS, settings(), tmp_path, key_of(tiny_model_dir))
    assert again == first  # answers and the recomputed scores
    assert [r.getMessage() for r in caplog.records] == [
        f"reused the 3 answers before training from {tmp_path / BEFORE_ANSWERS_FILE}"]


@pytest.mark.parametrize("change", ["prompts", "fewer_prompts", "max_new_tokens", "repetition_penalty",
                                    "model_config", "dtype"])
def test_another_prompt_list_generation_setting_or_model_answers_again(tiny, tiny_model_dir, tmp_path, change, caplog,
                                                                       one_torch_thread, count_generations):
    import torch

    model, tokenizer = tiny
    answers_before_training(model, tokenizer, PROMPTS, settings(), tmp_path, key_of(tiny_model_dir))
    old_key = json.loads((tmp_path / BEFORE_ANSWERS_FILE).read_text())["key"]
    prompts, recipe_args, model_key = PROMPTS, settings(), key_of(tiny_model_dir)
    if change == "prompts":
        prompts = PROMPTS[:2] + [{"prompt": "Name a fruit.", "kind": "general"}]
    elif change == "fewer_prompts":
        prompts = PROMPTS[:2]
    elif change == "max_new_tokens":
        recipe_args = settings(eval_max_new_tokens=5)
    elif change == "repetition_penalty":  # answers decoded otherwise are other answers
        recipe_args = settings(eval_repetition_penalty=1.3)
    elif change == "model_config":  # the run record's hash of config.json
        model_key = {**model_key, "config_sha256": "0" * 64}
    else:
        model = model.to(torch.float64)
    try:
        with caplog.at_level(logging.INFO, logger="dpo_recipes.watch.evaluation"):
            result = answers_before_training(model, tokenizer, prompts, recipe_args, tmp_path, model_key)
    finally:
        model.to(torch.float32)
    assert len(count_generations) == 2
    assert [r.levelno for r in caplog.records] == [logging.INFO]  # "made with another model, prompts or ..."
    assert "another model, prompts or generation settings" in caplog.messages[0]
    stored = json.loads((tmp_path / BEFORE_ANSWERS_FILE).read_text())
    assert stored["key"] != old_key and stored["answers"] == result.answers  # overwritten with the new answers
    assert stored["prompts"] == [p["prompt"] for p in prompts]


@pytest.mark.parametrize("content", ["{\"key\": ", "[1, 2]", "{}", "\xff", "KEY:[\"only one\"]", "KEY:null"])
def test_a_corrupt_file_is_answered_again_with_one_warning(tiny, tiny_model_dir, tmp_path, content, caplog,
                                                           one_torch_thread, count_generations):
    model, tokenizer = tiny
    path = tmp_path / BEFORE_ANSWERS_FILE
    if content.startswith("KEY:"):  # the right key, but not 3 answers
        key = before_answers_key(model, tokenizer, PROMPTS, settings(), key_of(tiny_model_dir))
        content = json.dumps({"key": key, "answers": json.loads(content[4:])})
    path.write_bytes(content.encode("latin-1"))
    with caplog.at_level(logging.INFO, logger="dpo_recipes.watch.evaluation"):
        result = answers_before_training(model, tokenizer, PROMPTS, settings(), tmp_path, key_of(tiny_model_dir))
    assert len(count_generations) == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unreadable" in warnings[0].getMessage() and "\n" not in warnings[0].getMessage()
    assert json.loads(path.read_text())["answers"] == result.answers


def test_no_prompts_writes_nothing(tiny, tiny_model_dir, tmp_path, monkeypatch):
    refuse_generation(monkeypatch)
    model, tokenizer = tiny
    result = answers_before_training(model, tokenizer, [], settings(), tmp_path, key_of(tiny_model_dir))
    assert result.answers == [] and not (tmp_path / BEFORE_ANSWERS_FILE).exists()


def test_overwrite_output_dir_removes_the_stored_answers():
    assert BEFORE_ANSWERS_FILE in RUN_OUTPUTS


def test_a_run_stopped_after_training_does_not_answer_the_prompts_before_training_again(
        tiny_model_dir, tmp_path, caplog, one_torch_thread, count_generations):
    prompts = tmp_path / "eval_prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    out = tmp_path / "run"
    argv = ["--model_name_or_path", tiny_model_dir, "--output_dir", str(out), "--report_to", "none",
            "--disable_tqdm", "true", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
            "--logging_steps", "1", "--dataset_name", str(FIXTURE), "--max_steps", "2", "--eval_prompts_file",
            str(prompts), "--identity_name", "Ada", "--eval_max_new_tokens", "4", "--plots", "false"]
    recipe = load_recipe("dpo_lora")
    recipe.main(*parse_recipe_args(recipe.DEFAULT_CONFIG, argv))
    assert count_generations == [[p["prompt"] for p in PROMPTS]] * 2  # before and after training
    stored = out / BEFORE_ANSWERS_FILE
    mtime = stored.stat().st_mtime_ns
    first = [json.loads(line) for line in (out / "eval_answers.jsonl").read_text().splitlines()]

    # stopped after training, before the summary: the rerun finishes from checkpoint-2
    record = json.loads((out / "run_record.json").read_text())
    (out / "run_record.json").write_text(json.dumps({**record, "finished_step": None}))
    (out / "summary.json").unlink()
    with caplog.at_level(logging.INFO, logger="dpo_recipes.watch.evaluation"):
        recipe.main(*parse_recipe_args(recipe.DEFAULT_CONFIG, argv))
    assert len(count_generations) == 3  # only the answers after training
    assert f"reused the 3 answers before training from {stored}" in caplog.messages
    assert stored.stat().st_mtime_ns == mtime
    again = [json.loads(line) for line in (out / "eval_answers.jsonl").read_text().splitlines()]
    assert [r["before"] for r in again] == [r["before"] for r in first]
    assert json.loads((out / "summary.json").read_text())["pairs_trained"] == 0


@pytest.mark.parametrize("name", ["orpo", "simpo", "kto"])
def test_variant_recipes_keep_their_answers_before_training(name, tiny_model_dir, tmp_path, one_torch_thread):
    prompts = tmp_path / "eval_prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    out = tmp_path / name
    recipe = load_recipe(name)
    recipe.main(*recipe.parse([
        "--config", str(ROOT / "recipes" / "configs" / f"{name}.yaml"), "--model_name_or_path", tiny_model_dir,
        "--dataset_name", str(FIXTURE), "--max_steps", "1", "--output_dir", str(out), "--disable_tqdm", "true",
        "--per_device_train_batch_size", "2", "--max_length", "256", "--report_to", "none", "--plots", "false",
        "--eval_prompts_file", str(prompts), "--eval_max_new_tokens", "4"]))
    before = [json.loads(line)["before"] for line in (out / "eval_answers.jsonl").read_text().splitlines()]
    assert json.loads((out / BEFORE_ANSWERS_FILE).read_text())["answers"] == before
