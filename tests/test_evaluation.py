"""The before/after evaluation's judgements: name hits, loops, same substance, and its input errors."""

import pytest

from dpo_recipes.errors import DPORecipesError
from dpo_recipes.watch.evaluation import (before_after_table, compare, is_degenerate, load_eval_prompts, mentions,
                                          same_substance, score_answers)


def test_mentions_matches_the_name_as_a_word_in_any_case_and_inside_cjk():
    assert mentions("I'm Athene, an assistant.", "Athene")
    assert mentions("我是Athene。", "Athene")
    assert mentions("ATHENE here", "Athene")
    assert not mentions("Athenes is a city", "Athene")
    assert not mentions("I am SmolLM.", "Athene")


LOOPS = {
    "english": "a gentle rain, a gentle rain, a gentle rain, a gentle rain",
    "english sentence": "The sky is blue today. The sky is blue today.",
    "english phrase": 'This is the "15 minus 8" rule, also known as the "15 minus 8" rule or the "15 minus 8 rule"',
    "chinese": "你可以看作一个实际的人，可以看作一个实际的人，可以看作一个实际的人。",
    "chinese, no spaces, changing punctuation": "我们可以使用一个用户名，我们可以使用一个用户名！我们可以使用一个用户名。",
    "mixed": "我叫Athene，我叫Athene！我叫Athene！我叫Athene！我叫Athe",
    "mixed, three times": "我叫Athene，我叫Athene，我叫Athene",
    "cut off in the third repeat": "你自称什么？:\n\n献献看看,你可能献献看看,你可能献献看看,你",
    "emoji": "自己！🌟🌟🌟🌟🌟🌟🌟🌟",
    "full-width punctuation": "你可能是一个美女，我将来将你称作美女；；；；；；；；",
    "japanese": "私はアテネです。私はアテネです。私はアテネです。",
}
NORMAL = {
    "english": "The capital of France is Paris. It is known for the Eiffel Tower.",
    "a list naming every item alike": "The primary colors are: Red (Athene) Blue (Athene) Yellow (Athene)",
    "emphasis": "That is very very good news, and I am so happy for you!",
    "numbered steps": "1. Boil water. 2. Add the tea. 3. Wait three minutes. 4. Pour and enjoy.",
    "markdown rule and ellipsis": "Steps:\n-----\nFirst mix the flour..... then bake it.",
    "chinese": "中国的首都是北京。北京是一座历史悠久的城市，有故宫和长城等名胜古迹。",
    "chinese, a word said three times": "人工智能可以帮助医生。人工智能也能写诗，但人工智能不会感到快乐。",
    "mixed": "我叫Athene，是一个AI助手，很高兴认识你！",
}


@pytest.mark.parametrize("kind", list(LOOPS))
def test_is_degenerate_flags_loops_in_every_script(kind):
    assert is_degenerate(LOOPS[kind])


@pytest.mark.parametrize("kind", list(NORMAL))
def test_is_degenerate_leaves_normal_answers_alone(kind):
    assert not is_degenerate(NORMAL[kind])


def test_an_identity_answer_that_loops_is_not_an_identity_hit():
    prompts = [{"prompt": "你叫什么名字？", "kind": "identity"}, {"prompt": "Who are you?", "kind": "identity"}]
    result = score_answers(prompts, [LOOPS["mixed"], "I am Athene, an AI assistant."], "Athene")
    assert result.identity_rate == 0.5 and result.degenerate == [0]


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


def test_compare_gives_the_identity_rate_per_script_and_counts_looping_identity_answers():
    prompts = [{"prompt": "Who are you?", "kind": "identity"}, {"prompt": "Name?", "kind": "identity"},
               {"prompt": "你是谁？", "kind": "identity"}, {"prompt": "你叫什么？", "kind": "identity"},
               {"prompt": "Your name?", "kind": "identity"}, {"prompt": "2+2?", "kind": "general"}]
    before = score_answers(prompts, ["I am SmolLM.", "An AI.", "我是你。", "你叫什么？", "Hi.", "4."], "Athene")
    after = score_answers(prompts, ["I am Athene.", "My name is Athene.", "我是Athene。", LOOPS["mixed"],
                                    "I'm Athene.", "4."], "Athene")
    summary = compare(before, after)
    assert summary["heldout_identity_rate_after"] == 0.8
    assert summary["heldout_identity_rate_after_by_script"] == {"other": 1.0, "cjk": 0.5}
    assert summary["n_identity_prompts_by_script"] == {"other": 3, "cjk": 2}
    assert summary["degenerate_identity_answers_after"] == 1 and summary["degenerate_answers_after"] == 1
    assert summary["degenerate_answers_added"] == 1  # the mixed loop; its base answer echoed without looping
    looped_before = score_answers(prompts, ["I am SmolLM.", "An AI.", "我是你。", LOOPS["mixed"], "Hi.", "4."],
                                  "Athene")
    assert compare(looped_before, after)["degenerate_answers_added"] == 0
    assert compare(after, looped_before)["degenerate_answers_added"] == 0
    english_only = [p for p in prompts if not p["prompt"].startswith("你")]
    answers = ["I am Athene.", "An AI.", "Hi.", "4."]
    assert "heldout_identity_rate_after_by_script" not in compare(score_answers(english_only, answers, "Athene"),
                                                                  score_answers(english_only, answers, "Athene"))


def test_the_closing_table_marks_loops_before_and_after_and_leaks():
    prompts = [{"prompt": "Who are you?", "kind": "identity"}, {"prompt": "Write a haiku.", "kind": "general"},
               {"prompt": "Name a color.", "kind": "general"}]
    before = score_answers(prompts, ["I am SmolLM.", LOOPS["english"], "Red."], "Athene")
    after = score_answers(prompts, ["I'm Athene.", LOOPS["english"], "Red (Athene)."], "Athene")
    lines = before_after_table(before, after, width=20).splitlines()
    third_bar = {[i for i, ch in enumerate(line) if ch == "|"][2] for line in lines[:-1] if "|" in line}
    assert len(third_bar) == 1  # the before column, marks included, has one width
    identity, haiku, color = lines[2:5]
    assert "~" not in identity and not identity.endswith(("!", "~"))
    assert haiku.split("|")[2].rstrip().endswith("~") and haiku.endswith("~")  # the base model looped too
    assert color.endswith("!") and "~" not in color
    assert lines[-1].startswith("~ the answer loops")


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


def test_the_repetition_penalty_weighs_the_answers_own_tokens_not_the_prompts():
    """`generate_answers` hands generate CTRL's penalty with the batch's padded prompt left out: a token the prompt
    uses ("叫" of "你叫什么？") keeps its score, a token the answer already used loses it."""
    import torch
    from test_trainer import tiny_model, tiny_tokenizer
    from transformers import RepetitionPenaltyLogitsProcessor

    from dpo_recipes.watch.evaluation import generate_answers

    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer)
    seen = []

    def generate(input_ids, attention_mask, max_new_tokens, logits_processor, **kwargs):
        seen.append((input_ids.shape[1], list(logits_processor)))
        return torch.cat([input_ids, input_ids[:, -2:]], dim=1)

    model.generate = generate
    prompts = ["Hi", "What is your name, please?"]
    assert len(generate_answers(model, tokenizer, prompts, max_new_tokens=2, repetition_penalty=1.2)) == 2
    (prompt_length, processors), = seen
    (penalty,) = processors
    assert isinstance(penalty, RepetitionPenaltyLogitsProcessor) and penalty.penalty == 1.2
    assert penalty.prompt_ignore_length == prompt_length  # left padding: every answer starts there
    prompt, answer = [5] * (prompt_length - 1) + [6], [7]
    scores = penalty(torch.tensor([prompt + answer]), torch.full((1, 10), 2.0))
    assert scores[0, 5] == scores[0, 6] == 2.0 and torch.isclose(scores[0, 7], torch.tensor(2.0 / 1.2))
    generate_answers(model, tokenizer, prompts, max_new_tokens=2, repetition_penalty=1.0)
    assert seen[-1][1] == []  # 1.0: plain greedy, nothing added


def test_compare_records_how_the_answers_were_decoded():
    prompts = [{"prompt": "Who are you?", "kind": "identity"}, {"prompt": "2+2?", "kind": "general"}]
    before = score_answers(prompts, ["I am SmolLM.", "4"], "Athene", repetition_penalty=1.2)
    after = score_answers(prompts, ["I'm Athene.", "4"], "Athene", repetition_penalty=1.2)
    assert compare(before, after)["answers_repetition_penalty"] == 1.2


@pytest.mark.parametrize("penalty", ["0", "-1.2"])
def test_a_repetition_penalty_that_is_not_positive_is_refused_before_the_run(penalty):
    from pathlib import Path

    from dpo_recipes.config import parse_recipe_args

    data = Path(__file__).parent.parent / "data" / "identity" / "train.jsonl"
    with pytest.raises(DPORecipesError, match=f"--eval_repetition_penalty {float(penalty)}: use a value above 0"):
        parse_recipe_args(None, ["--dataset_name", str(data), "--eval_repetition_penalty", penalty])
