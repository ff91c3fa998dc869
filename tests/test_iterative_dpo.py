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
