"""Best-of-n scorers (a tiny random reward model from a folder, user functions), the held-out score, and loading a
LoRA adapter folder on its base as the student."""

from __future__ import annotations

import pytest
import torch
from test_trainer import tiny_model, tiny_tokenizer
from transformers import LlamaConfig, LlamaForSequenceClassification

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.pairs import build_scorer, heldout_score, load_policy, make_pairs
from dpo_recipes.pairs.generate import generate
from dpo_recipes.pairs.prompts import as_prompt_rows


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def save_reward_model(path, num_labels: int = 1, chat_template: bool = True, pickled: bool = False) -> str:
    tok = tiny_tokenizer()
    if not chat_template:
        tok.chat_template = None
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         num_labels=num_labels, pad_token_id=tok.pad_token_id)
    model = LlamaForSequenceClassification(config)
    model.save_pretrained(path)
    if pickled:  # an old-style folder: pickle weights only
        (path / "model.safetensors").unlink()
        torch.save(model.state_dict(), path / "pytorch_model.bin")
    tok.save_pretrained(path)
    return str(path)


ROWS = [{"prompt": "Say hi."}, {"prompt": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "Name a fruit."}]}]


def test_reward_model_scores_through_the_chat_template_the_same_in_any_batch(tmp_path):
    path = save_reward_model(tmp_path / "rm")
    rows = as_prompt_rows(ROWS * 2)
    answers = ["hi", "an apple, a long answer", "hello there", "kiwi"]
    scorer = build_scorer(path, batch_size=3)
    scores, passed = scorer(rows, answers)
    assert passed is None and len(scores) == 4 and len(set(scores)) == 4
    one_by_one = [build_scorer(path, batch_size=1)([r], [a])[0][0] for r, a in zip(rows, answers)]
    assert scores == pytest.approx(one_by_one, abs=1e-5)

    model = LlamaForSequenceClassification.from_pretrained(path)
    tok = tiny_tokenizer()
    text = tok.apply_chat_template(rows[1].messages + [{"role": "assistant", "content": answers[1]}], tokenize=False)
    with torch.no_grad():
        manual = model(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item()
    assert scores[1] == pytest.approx(manual, abs=1e-5)
    assert scorer.describe()["type"] == "reward_model" and len(scorer.describe()["fingerprint"]) == 16


def test_reward_model_without_template_reads_prompt_newline_answer_and_bad_folders_are_refused(tmp_path):
    path = save_reward_model(tmp_path / "rm", chat_template=False)
    scores, _ = build_scorer(path)(as_prompt_rows(ROWS[:1]), ["hi"])
    model, tok = LlamaForSequenceClassification.from_pretrained(path), tiny_tokenizer()
    with torch.no_grad():
        manual = model(**tok("Say hi.\nhi", return_tensors="pt")).logits[0, 0].item()
    assert scores[0] == pytest.approx(manual, abs=1e-5)
    with pytest.raises(DPORecipesError, match="it has 2 output labels; a reward model has one"):
        build_scorer(save_reward_model(tmp_path / "two", num_labels=2))
    with pytest.raises(DPORecipesError, match="only pickle weights"):
        build_scorer(save_reward_model(tmp_path / "pickled", pickled=True))
    with pytest.raises(DPORecipesError, match="no such folder here"):
        build_scorer(str(tmp_path / "missing"))


def test_best_of_n_with_a_reward_model_pairs_the_highest_and_lowest_reward(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    result = make_pairs(model, tok, ROWS, mode="best-of-n", scorer=save_reward_model(tmp_path / "rm"), k=3,
                        temperature=1.0, max_new_tokens=6, batch_size=2, work_file=tmp_path / "w.work.jsonl",
                        progress=False)
    assert result.counts["pairs"] == 2 and result.settings["scorer"]["type"] == "reward_model"
    assert all(r["score_chosen"] > r["score_rejected"] for r in result.rows)


def test_heldout_score_is_the_share_of_greedy_answers_passing(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    rows = [{"prompt": f"Q{i}?", "reference": str(i)} for i in range(3)] + [{"prompt": "no reference"}]
    answers = generate(model, tok, [r["prompt"] for r in rows[:3]], max_new_tokens=6)
    first = answers[0]
    held = heldout_score(model, tok, rows, lambda p, a, r: a == first and r.get("reference") == "0",
                         max_new_tokens=6, batch_size=2)
    assert (held.score, held.passed, held.checked, held.unchecked) == (0.25, 1, 4, 0)
    assert [r["answer"] for r in held.results[:3]] == answers
    exact = heldout_score(model, tok, rows, "exact", max_new_tokens=6)
    assert exact.checked == 3 and exact.unchecked == 1 and exact.score == 0.0


def test_an_adapter_folder_loads_on_its_base_and_answers_as_the_trained_policy(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from dpo_recipes.models import load_model, load_tokenizer

    base = load_model(tiny_model_dir)
    torch.manual_seed(0)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    tok = load_tokenizer(tiny_model_dir)
    expected = generate(peft_model, tok, ["Say hi.", "Name a fruit."], max_new_tokens=8)
    model, tokenizer, name = load_policy(str(tmp_path / "adapter"))
    assert name == f"{tiny_model_dir} + adapter {tmp_path / 'adapter'}"
    assert generate(model, tokenizer, ["Say hi.", "Name a fruit."], max_new_tokens=8) == expected
    assert expected != generate(load_model(tiny_model_dir), tok, ["Say hi.", "Name a fruit."], max_new_tokens=8)
