"""The before/after evaluation's judgements: name hits, loops, same substance, and its input errors."""

import pytest

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.watch.evaluation import (compare, is_degenerate, load_eval_prompts, mentions, same_substance,
                                    score_answers)


def test_mentions_matches_the_name_as_a_word_in_any_case_and_inside_cjk():
    assert mentions("I'm Athene, an assistant.", "Athene")
    assert mentions("我是Athene。", "Athene")
    assert mentions("ATHENE here", "Athene")
    assert not mentions("Athenes is a city", "Athene")
    assert not mentions("I am SmolLM.", "Athene")


def test_is_degenerate_flags_loops_but_not_normal_answers():
    assert is_degenerate("a gentle rain, a gentle rain, a gentle rain, a gentle rain")
    assert is_degenerate("The sky is blue today. The sky is blue today.")
    assert is_degenerate("你可以看作一个实际的人，可以看作一个实际的人，可以看作一个实际的人。")
    assert not is_degenerate("The capital of France is Paris. It is known for the Eiffel Tower.")


def test_same_substance_tolerates_rewording_of_the_tail_but_not_a_new_answer():
    before = "The capital of France is Paris, a city known for its art and history."
    assert same_substance(before, "The capital of France is Paris, a city famous for its art and culture.")
    assert not same_substance(before, "I am Athene, your AI assistant.")


def test_compare_counts_identity_hits_leaks_and_unchanged_answers():
    prompts = [{"prompt": "Who are you?", "kind": "identity"}, {"prompt": "Who?", "kind": "identity"},
               {"prompt": "2+2?", "kind": "general"}, {"prompt": "Sky?", "kind": "general"}]
    before = score_answers(prompts, ["I am SmolLM.", "An AI.", "2 + 2 = 4.", "The sky is blue."], "Athene")
    after = score_answers(prompts, ["I am Athene.", "An AI.", "2 + 2 = 4.", "I am Athene, your AI."], "Athene")
    summary = compare(before, after)
    assert summary["heldout_identity_rate_before"] == 0.0
    assert summary["heldout_identity_rate_after"] == 0.5
    assert summary["general_unchanged_rate"] == 0.5
    assert summary["general_identity_leaks_after"] == 1


def test_load_eval_prompts_names_file_line_and_field(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok", "kind": "general"}\n{"prompt": 3}\n')
    with pytest.raises(DPORecipesError, match=r"p.jsonl:2: field 'prompt'"):
        load_eval_prompts(str(path))
    path.write_text('\ufeff{"prompt": "ok", "kind": "identity"}\r\n\n')
    assert load_eval_prompts(str(path)) == [{"prompt": "ok", "kind": "identity"}]
    with pytest.raises(DPORecipesError, match="cannot read"):
        load_eval_prompts(str(tmp_path / "missing.jsonl"))


def test_general_kl_is_zero_for_an_untouched_adapter_and_matches_a_direct_computation(tiny_model_dir):
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dpo_recipes.watch.evaluation import EvalResult, general_kl, render_prompt

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    before = EvalResult([{"prompt": "hi there", "kind": "general"}, {"prompt": "who", "kind": "identity"},
                         {"prompt": "a longer question?", "kind": "general"}], ["abc d", "me", "xyz"])
    assert general_kl(model, tokenizer, before) == pytest.approx(0.0, abs=1e-7)  # LoRA B starts at zero
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    expected, count = 0.0, 0
    for prompt, answer in (("hi there", "abc d"), ("a longer question?", "xyz")):  # one pair at a time, no padding
        p = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p + a])
        with torch.no_grad():
            trained = F.log_softmax(model(ids).logits[0, len(p) - 1:-1], -1)
            with model.disable_adapter():
                base = F.log_softmax(model(ids).logits[0, len(p) - 1:-1], -1)
        expected += float((trained.exp() * (trained - base)).sum())
        count += len(a)
    assert general_kl(model, tokenizer, before, batch_size=2) == pytest.approx(expected / count, rel=1e-4)
    assert general_kl(model.get_base_model(), tokenizer, before) is None  # no adapter to disable: no base to compare
