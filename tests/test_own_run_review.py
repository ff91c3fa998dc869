"""The own-run path, second round: what a new user's review found after the first fixes (issue 'Your own run').

Each test runs a recipe in-process on the tiny random Llama (seconds), or stops before any model work.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import load_recipe
from test_own_run import FIXTURE, ROOT, VARIANTS, dpo, no_model_work, quick, summary  # noqa: F401 (a fixture)

from dpo_recipes.config import parse_recipe_args
from dpo_recipes.errors import DPORecipesError

PROMPTS = ROOT / "data" / "identity" / "eval_prompts.jsonl"


def variant(name: str, *argv: str):
    recipe = load_recipe(name)
    return recipe.main(*recipe.parse(list(argv)))


def record(out: Path) -> dict:
    return json.loads((out / "run_record.json").read_text())


def few_prompts(tmp_path: Path, n: int = 3) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(PROMPTS.read_text().splitlines(keepends=True)[:n]))
    return path


# --- --resume_from_checkpoint is checked, and used ------------------------------------------------------------------
def test_resume_from_a_missing_checkpoint_is_refused_in_a_fresh_folder(tiny_model_dir, tmp_path, no_model_work):
    with pytest.raises(DPORecipesError, match=r"--resume_from_checkpoint .*nowhere: no such folder"):
        dpo(*quick(tiny_model_dir, tmp_path / "run", "--dataset_name", str(FIXTURE), "--max_steps", "2",
                   "--resume_from_checkpoint", str(tmp_path / "nowhere")))
    assert not (tmp_path / "run" / "run_record.json").exists()


def test_resume_from_a_checkpoint_of_the_same_run_in_another_folder(tiny_model_dir, tmp_path):
    first = tmp_path / "first"
    dpo(*quick(tiny_model_dir, first, "--dataset_name", str(FIXTURE), "--max_steps", "2"))
    out = tmp_path / "continued"
    dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "3",
               "--resume_from_checkpoint", str(first / "checkpoint-2")))
    result = summary(out)
    assert result["resumed_from"] == str(first / "checkpoint-2")
    assert result["steps"] == 3 and result["pairs_trained"] == 2  # one step, from step 2


def test_resume_from_another_runs_checkpoint_is_refused(tiny_model_dir, tmp_path, no_model_work):
    first = tmp_path / "first"
    first.mkdir()
    (first / "checkpoint-2").mkdir()
    (first / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2, "max_steps": 2}')
    args = quick(tiny_model_dir, tmp_path / "run", "--dataset_name", str(FIXTURE), "--max_steps", "3",
                 "--resume_from_checkpoint", str(first / "checkpoint-2"))
    with pytest.raises(DPORecipesError, match=r"no run_record.json beside it"):
        dpo(*args)
    base = quick(tiny_model_dir, first, "--dataset_name", str(FIXTURE), "--max_steps", "2")
    rec = load_recipe("dpo_lora")
    recipe_args, training_args, model_args = parse_recipe_args(rec.DEFAULT_CONFIG, [*base, "--beta", "0.3"])
    from dpo_recipes import run

    tokenizer, model_path = run.load_tokenizer_for(model_args, training_args)
    data = run.load_train_data(recipe_args, training_args, tokenizer)
    (first / "run_record.json").write_text(json.dumps(
        run.run_record("dpo_lora", recipe_args, training_args, model_args, model_path, data.dataset)))
    with pytest.raises(DPORecipesError, match=r"belongs to another run \(differs in: beta 0\.3 -> 0\.1"):
        dpo(*args)


# --- warn mode: every kept pair is measured against max_length -----------------------------------------------------
def test_warn_mode_counts_long_prompts_of_rows_that_fail_another_rule(tiny_model_dir):
    from dpo_recipes.data import ValidationConfig, load_preference_data
    from dpo_recipes.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    data = load_preference_data(str(ROOT / "data/identity/train.jsonl"), validation="warn", tokenizer=tokenizer,
                                max_length=40, config=ValidationConfig(max_similarity=None),
                                drop_prompt_too_long=True)
    from dpo_recipes.data.lengths import trainer_prompt_lengths

    d = data.dataset
    lengths = trainer_prompt_lengths(d["prompt"], d["chosen"], d["rejected"], tokenizer)
    assert max(lengths) < 40  # nothing the trainer would drop is left
    strict = load_preference_data(str(ROOT / "data/identity/train.jsonl"), validation="strict", tokenizer=tokenizer,
                                  max_length=40, config=ValidationConfig(max_similarity=None),
                                  drop_prompt_too_long=True)
    assert data.report.dropped["prompt_too_long"] > strict.report.dropped["prompt_too_long"]  # too_short rows too


# --- loss hooks are DPO's: the variants refuse them ---------------------------------------------------------------
@pytest.mark.parametrize("name", VARIANTS)
def test_variant_recipes_refuse_a_loss_hook(name, tiny_model_dir, tmp_path, no_model_work):
    with pytest.raises(DPORecipesError, match=r"--loss_hook rdpo changes DPO's loss .*Drop --loss_hook"):
        variant(name, *quick(tiny_model_dir, tmp_path / "run", "--dataset_name", str(FIXTURE), "--loss_hook", "rdpo"))


# --- the run record holds every setting that changes learning ------------------------------------------------------
@pytest.mark.parametrize("flag, value", [("--max_grad_norm", "0.5"), ("--adam_beta2", "0.95"),
                                         ("--adam_epsilon", "1e-6"), ("--data_seed", "7"), ("--dtype", "bfloat16")])
def test_optimizer_clipping_seed_and_dtype_changes_are_refused(flag, value, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "1"))
    with pytest.raises(DPORecipesError, match=rf"differs in: {flag[2:]} "):
        dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "2", flag, value))


def test_a_record_from_an_older_version_is_compared_on_what_it_holds(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "1")
    dpo(*args)
    old = record(out)
    for key in ("max_grad_norm", "adam_beta1", "adam_beta2", "dtype"):
        del old["training"][key]
    (out / "run_record.json").write_text(json.dumps(old))
    dpo(*args)
    assert "already finished at step 1" in capsys.readouterr().out


# --- a finished run: --merge merges, shorter lengths are finished ----------------------------------------------------
def test_merge_on_a_finished_run_merges_the_saved_adapter(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "1")
    dpo(*args)
    adapter = (out / "adapter_model.safetensors").read_bytes()
    dpo(*args, "--merge", "true")
    assert "merged the saved adapter" in capsys.readouterr().out
    assert (out / "merged" / "model.safetensors").is_file() and (out / "merged" / "config.json").is_file()
    assert (out / "adapter_model.safetensors").read_bytes() == adapter
    dpo(*args, "--merge", "true")
    assert "already merged" in capsys.readouterr().out


def test_merged_weights_equal_base_plus_adapter(tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    args = quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "2", "--learning_rate", "0.05")
    dpo(*args)
    dpo(*args, "--merge", "true")
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(out))
    ids = torch.tensor([[5, 9, 12, 30, 7]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, peft(ids).logits, atol=1e-5)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        assert not torch.allclose(base(ids).logits, merged(ids).logits, atol=1e-4)  # the adapter did change it


def test_fewer_epochs_on_a_finished_run_are_already_finished(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--save_steps", "2")
    dpo(*args, "--num_train_epochs", "2")  # 8 pairs, 2 a step: 4 steps an epoch
    before = summary(out)
    assert before["steps"] == 8
    dpo(*args, "--num_train_epochs", "1")
    assert "already finished at step 8" in capsys.readouterr().out
    assert summary(out) == before  # not rewritten with 0 steps


def test_more_epochs_continue_a_finished_run(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--save_steps", "4")
    dpo(*args, "--num_train_epochs", "1")
    dpo(*args, "--num_train_epochs", "2")
    assert summary(out)["steps"] == 8 and summary(out)["resumed_from"].endswith("checkpoint-4")


# --- outputs match what this run did ------------------------------------------------------------------------------
def test_answers_of_an_earlier_evaluation_do_not_outlive_it(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    base = quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--eval_max_new_tokens", "2")
    dpo(*base, "--max_steps", "1", "--eval_prompts_file", str(few_prompts(tmp_path)), "--identity_name", "Athene")
    assert (out / "eval_answers.jsonl").is_file()
    dpo(*base, "--max_steps", "2")  # continued, no prompts this time
    assert not (out / "eval_answers.jsonl").exists()
    assert "heldout_identity_rate_after" not in summary(out)


def test_summary_counts_add_up_with_max_train_samples(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "1", "--max_train_samples", "3"))
    result = summary(out)
    assert result["pairs_total"] == result["pairs_after_validation"] + sum(result["pairs_dropped"].values())
    assert result["pairs_used"] == 3


# --- failures found before anything is written -------------------------------------------------------------------
def test_a_folder_that_is_no_model_is_refused_before_the_run_record(tiny_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").unlink()
    out = tmp_path / "run"
    with pytest.raises(DPORecipesError, match=r"is not a model folder: it has no \*\.safetensors weights"):
        dpo(*quick(str(broken), out, "--dataset_name", str(FIXTURE), "--max_steps", "1"))
    assert not out.exists()
    shutil.copy(Path(tiny_model_dir) / "model.safetensors", broken)  # fixed: the same command now runs
    dpo(*quick(str(broken), out, "--dataset_name", str(FIXTURE), "--max_steps", "1"))
    assert summary(out)["steps"] == 1


def test_an_adapter_folder_as_model_says_what_it_is(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "1"))
    with pytest.raises(DPORecipesError, match=r"holds a LoRA adapter"):
        dpo(*quick(str(out), tmp_path / "run2", "--dataset_name", str(FIXTURE), "--max_steps", "1"))


@pytest.mark.parametrize("where", ["file", "under_a_file"])
def test_an_output_dir_that_cannot_be_a_folder_is_one_line(where, tiny_model_dir, tmp_path, no_model_work):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    out = target if where == "file" else target / "run"
    with pytest.raises(DPORecipesError, match=r"--output_dir .*(is a file|cannot create the folder)"):
        dpo(*quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "1"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_output_dir_is_one_line(tiny_model_dir, tmp_path, no_model_work):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(DPORecipesError, match="cannot create the folder|not writable"):
        dpo(*quick(tiny_model_dir, locked / "run", "--dataset_name", str(FIXTURE), "--max_steps", "1"))


def test_identity_prompts_without_a_name_are_refused(tiny_model_dir, tmp_path, no_model_work):
    with pytest.raises(DPORecipesError, match=r"identity prompts, but no --identity_name"):
        dpo(*quick(tiny_model_dir, tmp_path / "run", "--dataset_name", str(FIXTURE),
                   "--eval_prompts_file", str(PROMPTS)))


def test_a_bad_argument_value_is_one_line():
    with pytest.raises(DPORecipesError, match=r"argument --lora_r.*: invalid int value: 'sixteen'") as err:
        parse_recipe_args(None, ["--output_dir", "x", "--lora_r", "sixteen"])
    assert "\n" not in str(err.value)


def test_a_completion_that_ends_with_a_user_turn_is_refused(tmp_path):
    from dpo_recipes.data import load_preference_data

    row = {"prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": "Hello " * 20}],
           "rejected": [{"role": "user", "content": "Go away " * 10}]}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DPORecipesError, match=r"line 1: field 'rejected': the completion ends with a 'user' message"):
        load_preference_data(str(path))


def test_checkpoints_get_the_umasks_modes_when_saved(tmp_path):
    from types import SimpleNamespace

    from dpo_recipes.run import CheckpointModes

    weights = tmp_path / "checkpoint-3" / "adapter_model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"x")
    weights.chmod(0o600)
    old = os.umask(0o022)
    try:
        CheckpointModes().on_save(SimpleNamespace(output_dir=str(tmp_path)),
                                  SimpleNamespace(is_world_process_zero=True, global_step=3),
                                  None)
    finally:
        os.umask(old)
    assert weights.stat().st_mode & 0o777 == 0o644


# --- the variants: evaluation flags work, and max_length is the training preset's --------------------------------
@pytest.mark.parametrize("name", VARIANTS)
def test_variant_recipes_answer_the_evaluation_prompts(name, tiny_model_dir, tmp_path):
    out = tmp_path / name
    variant(name, *quick(tiny_model_dir, out, "--dataset_name", str(FIXTURE), "--max_steps", "1",
                         "--eval_prompts_file", str(few_prompts(tmp_path)), "--identity_name", "Athene",
                         "--eval_max_new_tokens", "2"))
    result = summary(out)
    assert result["n_identity_prompts"] + result["n_general_prompts"] == 3
    assert result["heldout_identity_rate_after"] is not None
    assert len((out / "eval_answers.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_default_runs_take_max_length_from_the_training_preset(name):
    _, training_args, _ = load_recipe(name).parse([])
    assert training_args.max_length == 256  # identity-lora-cpu's, not a loss preset's 1024


# --- validate / audit --config drop what the run drops --------------------------------------------------------------
def test_validate_with_a_config_and_tokenizer_drops_long_prompts_as_the_run_does(tiny_model_dir, tmp_path, capsys):
    from dpo_recipes.cli import main

    config = tmp_path / "run.yaml"
    config.write_text(f"dataset_name: {ROOT / 'data/identity/train.jsonl'}\nmax_similarity: null\n"
                      "min_chosen_chars: 1\nmin_rejected_chars: 1\nmax_length: 40\n")
    report = tmp_path / "report.json"
    assert main(["validate", "--config", str(config), "--tokenizer", tiny_model_dir, "--report", str(report)]) == 0
    run_args, training_args, _ = parse_recipe_args(None, ["--config", str(config), "--model_name_or_path",
                                                          tiny_model_dir, "--output_dir", str(tmp_path / "o")])
    from dpo_recipes import run
    from dpo_recipes.models import load_tokenizer

    data = run.load_train_data(run_args, training_args, load_tokenizer(tiny_model_dir))
    assert json.loads(report.read_text())["kept"] == len(data.dataset)
    assert json.loads(report.read_text())["dropped"]["prompt_too_long"] > 0
    # without --tokenizer, --config measures with the recipe's own model, as the run does
    config.write_text(config.read_text() + f"model_name_or_path: {tiny_model_dir}\n")
    capsys.readouterr()
    assert main(["validate", "--config", str(config), "--report", str(report)]) == 0
    assert f"tokenizer: {tiny_model_dir} (the model of {config}" in capsys.readouterr().out
    assert json.loads(report.read_text())["kept"] == len(data.dataset)


# --- KTO reads unpaired data as it is --------------------------------------------------------------------------------
def test_kto_trains_on_unpaired_data_and_dpo_refuses_it(tiny_model_dir, tmp_path):
    def answer(i):
        return f"{'Yes' if i % 2 == 0 else 'No'}: {i} is {'even' if i % 2 == 0 else 'odd'}, since dividing it by two leaves {i % 2} as the remainder."

    rows = [{"messages": [{"role": "user", "content": f"Question {i}: is {i} even?"},
                          {"role": "assistant", "content": answer(i)}], "label": i % 3 != 0} for i in range(12)]
    path = tmp_path / "kto.json"
    path.write_text(json.dumps(rows))
    out = tmp_path / "kto"
    variant("kto", *quick(tiny_model_dir, out, "--dataset_name", str(path), "--max_steps", "2"))
    result = summary(out)
    assert result["steps"] == 2 and result["pairs_after_validation"] == 12 and result["pairs_trained"] == 4
    report = json.loads((out / "data_validation.json").read_text())
    assert report["format"] == "unpaired" and "8 desirable, 4 undesirable" in report["notes"][0]
    with pytest.raises(DPORecipesError, match=r"unpaired \(KTO-style\).*recipes/kto.py"):
        dpo(*quick(tiny_model_dir, tmp_path / "dpo", "--dataset_name", str(path), "--max_steps", "1"))
