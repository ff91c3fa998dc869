"""recipes/iterative_dpo.py on the tiny random Llama: rounds leave their pairs, adapters and held-out scores."""

from __future__ import annotations

import json

import pytest
from conftest import load_recipe

from dpo_recipes.errors import DPORecipesError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def prompts(path, texts):
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    return str(path)


def scorer_file(tmp_path):
    path = tmp_path / "score.py"
    path.write_text("def score(prompt, answer, row):\n    return float(len(answer))\n")  # distinct samples differ
    return f"{path}:score"


def flags(tiny_model_dir, tmp_path, *extra):
    train = prompts(tmp_path / "train.jsonl", [f"question {i}?" for i in range(6)])
    held = prompts(tmp_path / "held.jsonl", ["held one?", "held two?"])
    return ["--model_name_or_path", tiny_model_dir, "--prompts_file", train, "--heldout_file", held,
            "--verifier", '{"type": "python", "function": "' + scorer_file(tmp_path) + '", "threshold": 5}',
            "--k", "3", "--answer_max_new_tokens", "6", "--rounds", "2", "--output_dir", str(tmp_path / "out"),
            "--per_device_train_batch_size", "2", "--max_length", "128", "--disable_tqdm", "true", *extra]


@pytest.mark.parametrize("reference", ["fixed", "previous"])
def test_two_rounds_keep_pairs_adapters_and_held_out_scores(tiny_model_dir, tmp_path, reference):
    recipe = load_recipe("iterative_dpo")
    summary = recipe.main(*recipe.parse(flags(tiny_model_dir, tmp_path, "--reference", reference)))
    out = tmp_path / "out"
    assert len(summary["heldout_score_by_round"]) == 3 and summary["heldout_prompts"] == 2
    for k in (0, 1):
        assert (out / f"round_{k}" / "pairs.jsonl").is_file()
        assert (out / f"round_{k}" / "adapter_model.safetensors").is_file()
        assert (out / f"round_{k}" / "metrics.jsonl").is_file()
    assert json.loads((out / "summary.json").read_text())["reference"] == reference
    assert (out / "heldout.png").is_file()


def test_held_out_prompts_that_are_also_training_prompts_are_refused(tiny_model_dir, tmp_path):
    recipe = load_recipe("iterative_dpo")
    argv = flags(tiny_model_dir, tmp_path)
    argv[argv.index("--heldout_file") + 1] = prompts(tmp_path / "held.jsonl", ["question 3?", "held two?"])
    with pytest.raises(DPORecipesError, match="must never train"):
        recipe.main(*recipe.parse(argv))


def test_general_answers_are_measured_against_the_base_after_every_round(tiny_model_dir, tmp_path):
    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps(r) + "\n" for r in [{"prompt": "Who are you?", "kind": "identity"},
                                                              {"prompt": "Name a colour.", "kind": "general"},
                                                              {"prompt": "Count to three.", "kind": "general"}]))
    recipe = load_recipe("iterative_dpo")
    argv = flags(tiny_model_dir, tmp_path, "--general_prompts_file", str(general), "--eval_max_new_tokens", "5")
    summary = recipe.main(*recipe.parse(argv))
    assert summary["general_before"]["prompts"] == 2  # the identity prompt is not a general one
    for k, entry in enumerate(summary["rounds"]):
        figures = entry["general"]
        assert figures["kl_to"] == "base" and figures["kl_per_token"] >= 0
        assert 0 <= figures["unchanged_rate"] <= 1 and figures["format_leaks"] == {}  # a python check has no form
        rows = [json.loads(line) for line in (tmp_path / "out" / f"round_{k}" / "general_answers.jsonl").open()]
        assert [r["prompt"] for r in rows] == ["Name a colour.", "Count to three."]
        held = [json.loads(line) for line in (tmp_path / "out" / f"round_{k}" / "heldout_answers.jsonl").open()]
        assert len(held) == 2 and {"answer", "passed", "score"} <= held[0].keys()
    assert (tmp_path / "out" / "heldout_answers_before.jsonl").is_file()


def test_general_prompts_file_without_general_prompts_is_refused_before_model_work(tmp_path):
    general = tmp_path / "general.jsonl"
    general.write_text(json.dumps({"prompt": "Who are you?", "kind": "identity"}) + "\n")
    recipe = load_recipe("iterative_dpo")
    argv = flags("/nonexistent-model", tmp_path, "--general_prompts_file", str(general))
    with pytest.raises(DPORecipesError, match="no prompt of kind 'general'"):
        recipe.main(*recipe.parse(argv))


def test_a_stopped_run_resumes_after_its_last_round_as_if_never_stopped(tiny_model_dir, tmp_path):
    recipe = load_recipe("iterative_dpo")
    (tmp_path / "whole").mkdir()
    (tmp_path / "parts").mkdir()
    whole = recipe.main(*recipe.parse(flags(tiny_model_dir, tmp_path / "whole")))
    argv = flags(tiny_model_dir, tmp_path / "parts")
    argv[argv.index("--rounds") + 1] = "1"
    first = recipe.main(*recipe.parse(argv))  # a run stopped after round 0...
    assert len(first["heldout_score_by_round"]) == 2
    argv[argv.index("--rounds") + 1] = "2"
    resumed = recipe.main(*recipe.parse(argv))  # ...and the same command with --rounds 2
    assert resumed["heldout_score_by_round"] == whole["heldout_score_by_round"]
    for k in (0, 1):
        assert (tmp_path / "parts" / "out" / f"round_{k}" / "pairs.jsonl").read_text() == \
            (tmp_path / "whole" / "out" / f"round_{k}" / "pairs.jsonl").read_text()
    again = recipe.main(*recipe.parse(argv))  # finished: nothing more to do
    assert again["heldout_score_by_round"] == whole["heldout_score_by_round"]


def test_resuming_with_other_settings_is_refused_naming_them(tiny_model_dir, tmp_path):
    recipe = load_recipe("iterative_dpo")
    argv = flags(tiny_model_dir, tmp_path)
    argv[argv.index("--rounds") + 1] = "1"
    recipe.main(*recipe.parse(argv))
    argv[argv.index("--k") + 1] = "2"
    with pytest.raises(DPORecipesError, match=r"other settings \(IterativeArguments.k: 3 then, 2 now\)"):
        recipe.main(*recipe.parse(argv))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    argv[argv.index("--output_dir") + 1] = str(tmp_path / "other")
    with pytest.raises(DPORecipesError, match="holds no iterative run"):
        recipe.main(*recipe.parse(argv))
